import PCI
import VFIOHost

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The verdict on one IOMMU group (or on one device, which is judged by its group), with every
/// reason, each member's role and reset, and the plan that would assign it.
public struct Assessment: Sendable, Codable {
  /// What was asked about: a device or a whole group.
  public let target: Target
  public let group: IOMMUGroupID?
  public let verdict: Verdict
  public let reasons: [Reason]
  public let members: [Member]
  /// The steps that would assign the group to vfio-pci; nil when not assignable.
  public let plan: AssignmentPlan?

  public enum Target: Sendable, Codable, Equatable {
    case device(PCIAddress)
    case group(IOMMUGroupID)
  }

  /// A group member and what assignment does with it.
  public struct Member: Sendable, Codable, Equatable {
    public let address: PCIAddress
    public let role: PCIFunctionKind
    public let driver: String?
    /// The reset vfio-pci would use; nil for bridges, which stay with the host.
    public let reset: ResetChoice?
  }
}

/// Judges IOMMU groups against the rules the kernel and the VFIO design impose.
public struct Assessor: Sendable {
  public let inventory: HostInventory
  let resets: ResetPlanner

  /// Groups kept for a guest, by group number; the caller's uid decides whose they are.
  public let reservations: [IOMMUGroupID: Reservation]
  public let callerUID: Int

  /// A group kept for a guest that is not running, and the user who owns it.
  public struct Reservation: Sendable, Equatable {
    public let name: String
    public let ownerUID: Int?
    public let since: String
    public init(name: String, ownerUID: Int?, since: String) {
      self.name = name
      self.ownerUID = ownerUID
      self.since = since
    }
  }

  public init(inventory: HostInventory, reservations: [IOMMUGroupID: Reservation] = [:], callerUID: Int = Int(getuid())) {
    self.inventory = inventory
    self.resets = ResetPlanner(inventory: inventory)
    self.reservations = reservations
    self.callerUID = callerUID
  }

  /// Every group, in numeric order.
  public func assessAllGroups() -> [Assessment] {
    inventory.groups.map { assess(group: $0.id) }
  }

  /// The verdict for one device: its group's, plus what is wrong with the device itself.
  public func assess(device address: PCIAddress) -> Assessment? {
    guard let device = inventory.device(address) else { return nil }
    var reasons: [Reason] = []
    if !device.isEndpoint {
      reasons.append(
        Reason(
          .notEndpoint, .blocker,
          device.isBridge
            ? "\(address) is a PCI bridge; bridges are never assigned, they stay with the host and remain in the group"
            : "\(address) is a host or ISA bridge; it belongs to the platform",
          devices: [address]))
    }
    guard let groupID = device.iommuGroup, inventory.group(groupID) != nil else {
      // Without a group nothing can be assigned, but the rest of what stands in the way is
      // still worth saying: the user fixing the IOMMU needs to know what comes next.
      reasons += missingGroupReasons(device)
      let members = [member(device)]
      if device.isEndpoint { reasons += rules(members: members, devices: [device]) }
      return Assessment(
        target: .device(address), group: nil, verdict: reasons.verdict, reasons: reasons,
        members: members, plan: nil)
    }
    let groupAssessment = assess(group: groupID)
    reasons += groupAssessment.reasons
    let verdict = reasons.verdict
    return Assessment(
      target: .device(address), group: groupID, verdict: verdict, reasons: reasons,
      members: groupAssessment.members, plan: verdict == .notAssignable ? nil : groupAssessment.plan)
  }

  public func assess(group id: IOMMUGroupID) -> Assessment {
    guard let group = inventory.group(id) else {
      return Assessment(
        target: .group(id), group: nil, verdict: .notAssignable,
        reasons: [
          Reason(.noGroup, .blocker, "IOMMU group \(id) does not exist", remedy: "run `vfioctl list` to see the groups")
        ],
        members: [], plan: nil)
    }
    let devices = group.devices.compactMap(inventory.device)
    let members = devices.map(member)
    let endpoints = devices.filter(\.isEndpoint)
    var reasons: [Reason] = []
    if endpoints.isEmpty {
      reasons.append(Reason(.noEndpoint, .blocker, "group \(id) holds only bridges; there is nothing to assign"))
    }
    reasons += platformReasons(devices)
    reasons += companionReasons(endpoints, group: id)
    reasons += topologyReasons(endpoints)
    reasons += rules(members: members, devices: devices)
    if let reservation = reservations[id] {
      let owner = reservation.ownerUID.map { " (owner \($0))" } ?? ""
      let message = "IOMMU group \(id) is reserved for \(reservation.name)\(owner) since \(reservation.since)"
      // Someone else's reservation takes the group off the market; the owner's is a note.
      reasons.append(
        reservation.ownerUID == callerUID
          ? Reason(.reserved, .condition, message + ": yours")
          : Reason(.reserved, .blocker, message, remedy: "`vfioctl unreserve \(id)` releases it (root)"))
    }
    let sorted = reasons.enumerated().sorted { a, b in
      a.element.severity != b.element.severity ? a.element.severity < b.element.severity : a.offset < b.offset
    }.map(\.element)
    let verdict = sorted.verdict
    let plan = verdict == .notAssignable ? nil : AssignmentPlan(group: id, members: members, inventory: inventory)
    return Assessment(target: .group(id), group: id, verdict: verdict, reasons: sorted, members: members, plan: plan)
  }

  /// The rules that look at each member on its own: host use, config, BARs, INTx, SR-IOV, reset.
  private func rules(members: [Assessment.Member], devices: [PCIDevice]) -> [Reason] {
    var reasons = hostUseReasons(devices)
    let addresses = Set(devices.map(\.address))
    for device in devices where device.isEndpoint {
      reasons += configReasons(device)
      reasons += barReasons(device)
      reasons += interruptReasons(device, members: addresses)
      reasons += sriovReasons(device)
    }
    return reasons + resetReasons(members)
  }

  private func member(_ device: PCIDevice) -> Assessment.Member {
    let role = device.kind
    return Assessment.Member(
      address: device.address, role: role, driver: device.driver,
      reset: role == .endpoint ? resets.choose(for: device) : nil)
  }

  // MARK: Rules

  private func missingGroupReasons(_ device: PCIDevice) -> [Reason] {
    if !inventory.iommuEnabled {
      return [
        Reason(
          .noIOMMU, .blocker, "the host has no IOMMU groups: no IOMMU is enabled, so no device can be isolated",
          remedy: "run `vfioctl doctor` for the kernel and firmware settings that turn the IOMMU on")
      ]
    }
    return [
      Reason(
        .noGroup, .blocker, "\(device.address) has no IOMMU group: no IOMMU translates its DMA",
        devices: [device.address], remedy: "check that the device sits behind an IOMMU unit (`vfioctl doctor`)")
    ]
  }

  private func platformReasons(_ devices: [PCIDevice]) -> [Reason] {
    let platform = devices.filter(\.isPlatformBridge)
    guard !platform.isEmpty, devices.contains(where: \.isEndpoint) else { return [] }
    return [
      Reason(
        .platformDevice, .blocker,
        "the group contains host/ISA bridge \(list(platform.map(\.address))); the whole group would have to leave the host with it",
        devices: platform.map(\.address))
    ]
  }

  private func hostUseReasons(_ devices: [PCIDevice]) -> [Reason] {
    var reasons: [Reason] = []
    for device in devices {
      let uses = inventory.uses(of: device.address)
      let active = uses.filter(\.active)
      let idle = uses.filter { !$0.active }
      if !active.isEmpty {
        reasons.append(
          Reason(
            .hostInUse, .blocker,
            "\(device.address) is in use by the host: " + active.map(\.description).joined(separator: "; "),
            devices: [device.address],
            remedy: active.map(\.remedy).joined(separator: "; ") + "; then try again"))
      }
      if !idle.isEmpty {
        reasons.append(
          Reason(
            .hostUse, .condition,
            "\(device.address) will disappear from the host: " + idle.map(\.description).joined(separator: "; "),
            devices: [device.address]))
      }
    }
    return reasons
  }

  private func companionReasons(_ endpoints: [PCIDevice], group: IOMMUGroupID) -> [Reason] {
    guard endpoints.count > 1 else { return [] }
    let addresses = endpoints.map(\.address)
    return [
      Reason(
        .companions, .condition,
        "IOMMU group \(group) has \(plural(endpoints.count, "endpoint")) (\(list(addresses))); they are detached and assigned together",
        devices: addresses)
    ]
  }

  /// Why devices share a group: a conventional PCI bus behind a bridge, or missing ACS.
  private func topologyReasons(_ endpoints: [PCIDevice]) -> [Reason] {
    var reasons: [Reason] = []
    var bridgesSeen = Set<PCIAddress>()
    for device in endpoints {
      for bridgeAddress in device.upstreamBridges {
        guard let bridge = inventory.device(bridgeAddress),
          bridge.config?.express?.portType == .pcieToPCIBridge || (bridge.isBridge && bridge.isConventionalPCI == true),
          bridgesSeen.insert(bridgeAddress).inserted
        else { continue }
        let behind = endpoints.filter { $0.upstreamBridges.contains(bridgeAddress) }.map(\.address)
        reasons.append(
          Reason(
            .behindPCIBridge, .condition,
            "\(list(behind)) \(behind.count == 1 ? "is" : "are") conventional PCI behind bridge \(bridgeAddress): every function there uses the bridge's requester ID, so the bridge's whole bus is one group and goes together",
            devices: behind + [bridgeAddress]))
      }
    }
    guard endpoints.count > 1 else { return reasons }
    // Ports without ACS isolation on the path let peers talk without the IOMMU seeing it.
    var portsSeen = Set<PCIAddress>()
    for device in endpoints {
      let path = [device] + device.upstreamBridges.compactMap(inventory.device)
      for port in path {
        let isPort = [.rootPort, .downstreamPort].contains(port.config?.express?.portType)
        let isMultifunction = port.isMultifunction && port.isEndpoint
        guard isPort || isMultifunction, portsSeen.insert(port.address).inserted else { continue }
        let what: String
        if port.isConventionalPCI == true {
          what = "is conventional PCI, which has no ACS"
        } else if port.config?.extendedChainComplete == true {
          let missing = port.config?.acs?.missingForIsolation ?? ACSControls.isolation
          guard !missing.isEmpty else { continue }
          what =
            port.config?.acs == nil
            ? "has no ACS capability" : "has ACS without \(missing.names.joined(separator: "/")) enabled"
        } else {
          continue  // extended config space unreadable: ACS unknown
        }
        let kind = isPort ? port.config?.express?.portType.name ?? "port" : "multifunction"
        reasons.append(
          Reason(
            .acsMissing, .condition,
            "\(port.address) (\(kind)) \(what), so the kernel cannot isolate \(isPort ? "the functions below it" : "its sibling functions") and grouped them together",
            devices: [port.address]))
      }
    }
    return reasons
  }

  private func configReasons(_ device: PCIDevice) -> [Reason] {
    let partial = device.config.flatMap { config in
      !config.standardChainComplete && config.chainErrors.isEmpty
        ? "only \(config.bytes.count) bytes of config space were readable" : nil
    }
    guard let error = device.configError ?? device.config?.chainErrors.first?.description ?? partial else { return [] }
    return [
      Reason(
        .configUnreadable, .condition, "\(device.address): \(error); capabilities may be missing from this report",
        devices: [device.address], remedy: "run as root for the full config space")
    ]
  }

  private func barReasons(_ device: PCIDevice) -> [Reason] {
    var reasons: [Reason] = []
    let page = inventory.pageSize
    for bar in device.bars {
      guard let (pageStart, pageEnd) = Self.pagesShared(by: bar, page: page) else { continue }
      let neighbours = inventory.devices.filter { other in
        other.address != device.address
          && other.bars.contains { $0.isMMIO(reaching: pageStart, pageEnd) }
      }
      let size = "BAR\(bar.index) is \(bar.size) bytes at 0x\(String(bar.start, radix: 16))"
      if !neighbours.isEmpty {
        reasons.append(
          Reason(
            .sharedBARPage, .blocker,
            "\(device.address) \(size), in a page shared with \(list(neighbours.map(\.address))): mapping it would expose their registers",
            devices: [device.address] + neighbours.map(\.address),
            remedy: "boot with `pci=resource_alignment=\(device.address)` so the kernel gives the BAR a page of its own"
          ))
      } else if bar.subPage {
        reasons.append(
          Reason(
            .subPageBAR, .condition,
            "\(device.address) \(size), smaller than a \(page)-byte page: vfio-pci reserves the rest of the page; accesses may trap instead of going direct",
            devices: [device.address]))
      }
    }
    return reasons
  }

  private func interruptReasons(_ device: PCIDevice, members: Set<PCIAddress>) -> [Reason] {
    guard let irq = Self.onlyINTx(device), let sharing = inventory.sharedIRQs[irq] else { return [] }
    let others = sharing.filter { !members.contains($0) }
    guard !others.isEmpty else { return [] }
    let masking =
      device.interrupt.masking == .required
      ? "PCIe requires INTx masking, so sharing works"
      : "it is conventional PCI, so vfio-pci must find INTx masking (DisINTx) working or it will refuse to share the line"
    return [
      Reason(
        .sharedINTx, .condition,
        "\(device.address) has only INTx (\(device.interrupt.pinName ?? "?"), IRQ \(irq)), shared with \(list(others)); \(masking)",
        devices: [device.address] + others)
    ]
  }

  /// The pages an MMIO BAR lies in when it does not fill them (another function's registers
  /// may share them); nil for a BAR that fills its pages, and for I/O ports and ROMs.
  static func pagesShared(by bar: BAR, page: UInt64) -> (first: UInt64, last: UInt64)? {
    guard bar.role == .bar, bar.kind == .mmio, bar.subPage || !bar.pageAligned else { return nil }
    return (bar.start & ~(page - 1), bar.end | (page - 1))
  }

  /// The IRQ of a function that can only interrupt through its INTx pin (no MSI, no MSI-X).
  static func onlyINTx(_ device: PCIDevice) -> Int? {
    guard device.interrupt.pin != 0, device.config?.msi == nil, device.config?.msix == nil else { return nil }
    return device.interrupt.irq
  }

  private func sriovReasons(_ device: PCIDevice) -> [Reason] {
    guard let sriov = device.sriov, sriov.numVFs > 0 else { return [] }
    let busy = sriov.virtualFunctions.filter { vf in inventory.uses(of: vf).contains(where: \.active) }
    if !busy.isEmpty {
      return [
        Reason(
          .sriovVFs, .blocker,
          "\(device.address) is an SR-IOV PF whose VF \(list(busy)) is in use by the host; unbinding the PF's driver removes its VFs",
          devices: [device.address] + busy)
      ]
    }
    return [
      Reason(
        .sriovVFs, .condition,
        "\(device.address) is an SR-IOV PF with \(sriov.numVFs) VFs enabled (\(list(sriov.virtualFunctions))); unbinding its driver usually removes them, and users of the VFs need the PF's VF token",
        devices: [device.address] + sriov.virtualFunctions)
    ]
  }

  private func resetReasons(_ members: [Assessment.Member]) -> [Reason] {
    var reasons: [Reason] = []
    var busResetsSeen = Set<[PCIAddress]>()
    for member in members {
      guard let reset = member.reset else { continue }
      guard reset.method != nil else {
        reasons.append(
          Reason(
            .noReset, .blocker,
            "\(member.address) has no reset method (no FLR, no PM reset, and it sits on a root bus, so no bus reset): state would leak from one user to the next",
            devices: [member.address]))
        continue
      }
      if !reset.affectsInUse.isEmpty {
        reasons.append(
          Reason(
            .noReset, .blocker,
            "\(member.address) can only be reset by a bus reset, which would also hit \(list(reset.affectsInUse)), in use by the host",
            devices: [member.address] + reset.affectsInUse,
            remedy: "free those devices, or leave this one to the host"))
        continue
      }
      guard reset.method?.affectsOtherFunctions == true, reset.affects.count > 1,
        busResetsSeen.insert(reset.affects).inserted
      else { continue }
      let outside = reset.affectsOutsideGroup
      let message =
        outside.isEmpty
        ? "\(member.address) is reset by a bus reset that hits \(list(reset.affects)), all in this group; the kernel allows it while the user owns them all"
        : "\(member.address) is reset by a bus reset that also hits \(list(outside)) in other groups; those must be detached too (or be unused) before the kernel allows it"
      reasons.append(Reason(.busReset, .condition, message, devices: reset.affects))
    }
    return reasons
  }
}

public func list(_ addresses: [PCIAddress]) -> String {
  addresses.map(\.description).joined(separator: ", ")
}
