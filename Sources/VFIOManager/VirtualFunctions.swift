import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// What `vfioctl vfs` changed: the PF's VF count before and after, and each VF now.
public struct VirtualFunctionReport: Codable, Sendable, Equatable {
  public let physicalFunction: PCIAddress
  public let before: Int
  public let after: Int
  public let virtualFunctions: [VirtualFunction]
  public let notes: [String]

  public struct VirtualFunction: Codable, Sendable, Equatable {
    public let address: PCIAddress
    public let group: IOMMUGroupID?
    public let driver: String?
    public let owner: Ownership?
  }
}

/// SR-IOV: a PF's VF count, with the VFs created detached and given back when it shrinks.
public struct VirtualFunctions: ManagerPart {
  let manager: AssignmentManager

  /// Sets a PF's SR-IOV VF count. The kernel only changes a non-zero count through 0, which
  /// destroys every VF, so any change is refused while a VF is detached by hand, owned,
  /// reserved or open; VFs this command detached itself are given back first. With `detach`
  /// the new VFs are created with autoprobe off (no host driver ever binds) and each group is
  /// detached to vfio-pci, owned by `owner`, and recorded like any other detachment.
  public func setVirtualFunctions(
    _ pf: PCIAddress, count: Int, detach: Bool = false, owner: Ownership? = nil, dryRun: Bool = false
  ) throws(ManagerError) -> VirtualFunctionReport {
    let inventory = try readInventory()
    guard let device = inventory.device(pf) else { throw .noSuchDevice(pf.description) }
    guard let sriov = device.sriov else {
      throw .usage("\(pf) has no SR-IOV capability (no sriov_totalvfs): it cannot have VFs")
    }
    guard count >= 0, count <= sriov.totalVFs else {
      throw .usage("--count \(count): \(pf) supports 0 to \(sriov.totalVFs) VFs")
    }
    if owner != nil && !detach { throw .usage("--owner needs --detach: only detached VFs are given to a user") }
    let path = PlanExecutor.devicePath(pf)
    var notes: [String] = []
    if count == sriov.numVFs, !detach {
      return report(pf, before: sriov.numVFs, notes: ["\(pf) already has \(count) VF\(count == 1 ? "" : "s")"])
    }
    let ledger = try Ledger.open(directory: configuration.stateDirectory, create: !dryRun)
    // Every existing VF disappears when the count changes (through 0).
    let doomed = count == sriov.numVFs ? [] : sriov.virtualFunctions
    var giveBack: [IOMMUGroupID] = []
    var refusals: [ManagerError.Refusal] = []
    var vfsOf: [IOMMUGroupID: [PCIAddress]] = [:]
    for vf in doomed { if let group = inventory.device(vf)?.iommuGroup { vfsOf[group, default: []].append(vf) } }
    let holdersOf = OpenHolderScanner(sysfs: sysfs).holders(of: vfsOf)
    for vf in doomed {
      guard let group = inventory.device(vf)?.iommuGroup else { continue }
      let record = try ledger?.group(group)
      let holders = holdersOf[group] ?? []
      let uses = inventory.uses(of: vf).filter(\.active)
      if !uses.isEmpty {
        refusals.append(
          .init(
            code: "host-in-use", message: "VF \(vf) is in use by the host: " + uses.map(\.description).joined(separator: "; "),
            remedy: uses.map(\.remedy).joined(separator: "; ")))
      } else if !holders.isEmpty {
        refusals.append(.init(code: "open", message: "VF \(vf): " + holders.map(\.description).joined(separator: "; ")))
      } else if let name = record?.reservedFor {
        refusals.append(.init(code: "reserved", message: "VF \(vf) (group \(group)) is reserved for \(name)", remedy: "`vfioctl unreserve \(group)` first"))
      } else if let owner = record?.ownership {
        refusals.append(.init(code: "owned", message: "VF \(vf) (group \(group)) is owned by \(owner)", remedy: "`vfioctl disown \(group)` first"))
      } else if record?.state == .detached {
        if record?.detachedBy == "vfs" { giveBack.append(group) } else {
          refusals.append(.init(code: "detached", message: "VF \(vf) (group \(group)) is detached", remedy: "`vfioctl attach \(group)` first"))
        }
      } else if record?.state == .changing {
        refusals.append(.init(code: "changing", message: "VF \(vf) (group \(group)) is being changed", remedy: "`vfioctl recover`"))
      }
    }
    guard refusals.isEmpty else { throw .refused(group: device.iommuGroup ?? -1, refusals) }
    if dryRun {
      notes += giveBack.map { "would attach VF group \($0) (detached by `vfioctl vfs`)" }
      if !doomed.isEmpty { notes.append("would write 0 to \(path)/sriov_numvfs") }
      if count > 0 { notes.append("would write \(count) to \(path)/sriov_numvfs" + (detach ? " with sriov_drivers_autoprobe 0, then detach each VF" : "")) }
      return report(pf, before: sriov.numVFs, notes: notes)
    }
    guard let ledger else { throw .ledger(path: configuration.stateDirectory, "could not be created") }
    // One `vfs` per PF at a time: its group's lock (the VFs' groups are locked by their detach).
    let lock = try device.iommuGroup.map { group throws(ManagerError) in try self.lock(group: group) }
    defer { withExtendedLifetime(lock) {} }
    for group in giveBack {
      let attached = try manager.groups.attach(.group(group))
      notes.append("gave back VF group \(group) (\(attached.steps.count) steps)")
      try ledger.forgetDetacher(group: group)
    }
    let autoprobe = sysfs.readString(path + "/sriov_drivers_autoprobe")
    func write(_ value: String, _ attribute: String) throws(ManagerError) {
      do { try host.write(value, to: path + "/" + attribute) } catch {
        throw .stepFailed(
          group: device.iommuGroup ?? -1, step: 0, description: "write \(value) to \(path)/\(attribute)",
          why: error.description, restored: false, rollbackErrors: [])
      }
    }
    if detach, autoprobe != "0" { try write("0", "sriov_drivers_autoprobe") }
    defer { if detach, let autoprobe, autoprobe != "0" { try? host.write(autoprobe, to: path + "/sriov_drivers_autoprobe") } }
    if sriov.numVFs != 0 && count != sriov.numVFs { try write("0", "sriov_numvfs") }
    if count != 0 && count != sriov.numVFs { try write(String(count), "sriov_numvfs") }
    try history(ledger, device.iommuGroup ?? -1, "ok", "\(pf): \(sriov.numVFs) -> \(count) VFs")
    let created = try waitForVirtualFunctions(pf, count: count)
    if detach {
      for vf in created {
        let result = try manager.groups.detach(.device(vf), owner: owner, detachedBy: "vfs")
        notes.append("VF \(vf) detached to vfio-pci (group \(result.group))" + (owner.map { ", owner \($0.uid)" } ?? ""))
      }
    }
    return report(pf, before: sriov.numVFs, notes: notes)
  }

  /// The kernel adds VFs asynchronously to the write on some drivers; give it a moment.
  private func waitForVirtualFunctions(_ pf: PCIAddress, count: Int) throws(ManagerError) -> [PCIAddress] {
    let path = PlanExecutor.devicePath(pf)
    let deadline = Date().addingTimeInterval(10)
    while true {
      let links = sysfs.list(path).filter { $0.hasPrefix("virtfn") }
      let vfs = links.compactMap { sysfs.linkName(path + "/" + $0) }.compactMap { try? PCIAddress(parsing: $0) }
      let grouped = vfs.allSatisfy { sysfs.linkName(PlanExecutor.devicePath($0) + "/iommu_group") != nil }
      if vfs.count == count && grouped { return vfs.sorted() }
      if Date() >= deadline {
        throw .unavailable("\(pf): sriov_numvfs says \(count) VFs but \(vfs.count) appeared with groups within 10 s")
      }
      usleep(50_000)
    }
  }

  private func report(_ pf: PCIAddress, before: Int, notes: [String]) -> VirtualFunctionReport {
    let inventory = try? readInventory()
    let ledger = try? Ledger.open(directory: configuration.stateDirectory, create: false)
    let ledgerGroups = (try? ledger?.groups()) ?? []
    let vfs = inventory?.device(pf)?.sriov?.virtualFunctions ?? []
    return VirtualFunctionReport(
      physicalFunction: pf, before: before, after: inventory?.device(pf)?.sriov?.numVFs ?? 0,
      virtualFunctions: vfs.map { vf in
        let device = inventory?.device(vf)
        return .init(
          address: vf, group: device?.iommuGroup, driver: device?.driver,
          owner: device?.iommuGroup.flatMap { g in ledgerGroups.first { $0.id == g }?.ownership })
      }, notes: notes)
  }
}
