import PCI
import VFIOHost
import VFIOManager
import VFIOPolicy

/// Turns the host model and the verdicts into report values; pure, so tests compare them.
public struct ReportBuilder: Sendable {
  public let inventory: HostInventory
  public let names: PCIIDDatabase?
  let assessor: Assessor
  let resets: ResetPlanner
  /// Group verdicts computed once; a device's verdict is its group's unless it is a bridge.
  let groupAssessments: [IOMMUGroupID: Assessment]
  /// Groups swift-vfio holds, from its ledger.
  public let ledger: [IOMMUGroupID: LedgerRecord]

  public init(inventory: HostInventory, names: PCIIDDatabase?, ledger: [IOMMUGroupID: LedgerRecord] = [:]) {
    self.inventory = inventory
    self.names = names
    self.ledger = ledger
    self.assessor = Assessor(inventory: inventory, reservations: LedgerRecord.reservations(ledger))
    self.resets = ResetPlanner(inventory: inventory)
    var assessments: [IOMMUGroupID: Assessment] = [:]
    for assessment in assessor.assessAllGroups() {
      if let id = assessment.group { assessments[id] = assessment }
    }
    self.groupAssessments = assessments
  }

  public func list() -> ListReport {
    ListReport(
      kernelRelease: inventory.kernelRelease,
      iommu: .init(enabled: inventory.iommuEnabled, units: inventory.iommuUnits), vfio: inventory.vfio,
      groups: inventory.groups.map(group), devices: inventory.devices.map(summary),
      unreadable: inventory.unreadable.map { .init(name: $0.name, reason: $0.reason) })
  }

  public func show(_ selector: Selector) throws(CLIError) -> ShowReport {
    switch selector {
    case .device(let address):
      guard let found = inventory.device(address) else { throw .noSuchDevice(address.description) }
      return ShowReport(group: found.iommuGroup.flatMap(inventory.group).map(group), devices: [device(found)])
    case .group(let id):
      guard let found = inventory.group(id) else { throw .noSuchGroup(id) }
      return ShowReport(group: group(found), devices: found.devices.compactMap(inventory.device).map(device))
    }
  }

  public func explain(_ selector: Selector) throws(CLIError) -> ExplainReport {
    let assessment: Assessment
    switch selector {
    case .device(let address):
      guard let found = assessor.assess(device: address) else { throw .noSuchDevice(address.description) }
      assessment = found
    case .group(let id):
      guard inventory.group(id) != nil else { throw .noSuchGroup(id) }
      assessment = assessor.assess(group: id)
    }
    var plan = assessment.plan
    let record = assessment.group.flatMap { ledger[$0] }
    if let record, let group = assessment.group {
      // Detached by us: the plan that matters is the restore of what the ledger recorded.
      plan = AssignmentPlan(
        group: group, members: assessment.members, inventory: inventory,
        originals: Dictionary(record.originals.map { ($0.address, $0.binding) }, uniquingKeysWith: { a, _ in a }),
        driver: record.driver ?? "vfio-pci")
    }
    return ExplainReport(
      target: selector.description, group: assessment.group, verdict: assessment.verdict,
      reasons: assessment.reasons, members: assessment.members, plan: plan, ledger: record)
  }

  public func doctor(memlock requirement: MemlockRequirement? = nil) -> DoctorReport {
    let owners = ledger.compactMap { group, record in
      record.owner.map { Doctor.GroupOwner(group: group, uid: $0.uid, gid: $0.gid) }
    }.sorted { $0.group < $1.group }
    let findings = Doctor(inventory: inventory, owners: owners).run()
    return DoctorReport(
      kernelRelease: inventory.kernelRelease, ok: !findings.contains { $0.status == .problem },
      findings: findings, backends: VFIOBackends.read(inventory.sysfs),
      memlock: requirement.map { MemlockReport($0, current: inventory.readEnvironment().memlockLimit) })
  }

  public func verdict(of device: PCIDevice) -> Verdict {
    guard device.isEndpoint, let id = device.iommuGroup, let assessment = groupAssessments[id] else {
      return .notAssignable
    }
    return assessment.verdict
  }

  public func displayName(_ device: PCIDevice) -> String {
    let vendor = names?.vendorName(device.vendorID)
    let model = names?.deviceName(vendor: device.vendorID, device: device.deviceID)
    switch (vendor, model) {
    case (let v?, let m?): return "\(v) \(m)"
    case (let v?, nil): return "\(v) device \(hex4(device.deviceID))"
    default: return "\(hex4(device.vendorID)):\(hex4(device.deviceID))"
    }
  }

  func group(_ group: IOMMUGroup) -> GroupReport {
    let assessment = groupAssessments[group.id] ?? assessor.assess(group: group.id)
    return GroupReport(
      id: group.id, type: group.type, devices: group.devices,
      endpoints: assessment.members.filter { $0.role == .endpoint }.map(\.address), otherMembers: group.otherMembers,
      verdict: assessment.verdict, reasons: assessment.reasons, ledger: ledger[group.id])
  }

  func summary(_ device: PCIDevice) -> DeviceSummary {
    DeviceSummary(
      address: device.address, vendorID: hex4(device.vendorID), deviceID: hex4(device.deviceID),
      classCode: hex(device.classCode, width: 6), className: PCIClassNames.name(device.classCode),
      name: displayName(device),
      kind: device.kind, driver: device.driver,
      driverOverride: device.driverOverride, iommuGroup: device.iommuGroup, parent: device.upstreamBridges.first,
      resetMethods: resets.methods(of: device).methods, bars: device.bars, sriov: device.sriov,
      physicalFunction: device.physicalFunction, hostUse: inventory.uses(of: device.address),
      verdict: verdict(of: device), warnings: device.warnings)
  }

  func device(_ device: PCIDevice) -> DeviceReport {
    let config = device.config
    let (methods, source) = resets.methods(of: device)
    let sharing = device.interrupt.irq.flatMap { inventory.sharedIRQs[$0] }?.filter { $0 != device.address } ?? []
    let acs = config?.acs.map { DeviceReport.ACS(supported: $0.supported.names, enabled: $0.enabled.names) }
    return DeviceReport(
      address: device.address, vendorID: hex4(device.vendorID), deviceID: hex4(device.deviceID),
      subsystemVendorID: device.subsystemVendorID.map(hex4), subsystemID: device.subsystemID.map(hex4),
      classCode: hex(device.classCode, width: 6), revision: hex(device.revision, width: 2),
      vendorName: names?.vendorName(device.vendorID),
      deviceName: names?.deviceName(vendor: device.vendorID, device: device.deviceID),
      className: PCIClassNames.name(device.classCode), name: displayName(device),
      kind: device.kind,
      driver: device.driver, driverOverride: device.driverOverride, iommuGroup: device.iommuGroup,
      numaNode: device.numaNode, headerType: Int(device.headerType), multifunction: device.isMultifunction,
      express: config?.express.map {
        .init(portType: $0.portType.name, version: Int($0.version), flr: $0.functionLevelReset)
      },
      upstreamBridges: device.upstreamBridges, resetMethods: methods, resetMethodsSource: source, bars: device.bars,
      capabilities: .init(
        standard: config?.capabilities.map { hex($0.id, width: 2) } ?? [],
        extended: config?.extendedCapabilities.map { hex($0.id, width: 4) } ?? [],
        complete: (config?.standardChainComplete ?? false)
          && (config.map { $0.bytes.count >= 4096 || $0.express == nil } ?? false),
        powerManagement: config?.powerManagement, advancedFeaturesFLR: config?.advancedFeatures?.functionLevelReset,
        msi: config?.msi, msix: config?.msix, acs: acs),
      sriov: device.sriov, physicalFunction: device.physicalFunction,
      interrupt: .init(
        pin: device.interrupt.pinName, irq: device.interrupt.irq, masking: device.interrupt.masking, sharedWith: sharing
      ),
      hostUse: inventory.uses(of: device.address), bootVGA: device.bootVGA, verdict: verdict(of: device),
      configError: device.configError ?? config?.chainErrors.first?.description, warnings: device.warnings)
  }
}

func hex4(_ value: UInt16) -> String { hex(value, width: 4) }
