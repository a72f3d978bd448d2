import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// A group that is not simply the host's: what `vfioctl owners` lists.
public struct OwnerReport: Codable, Sendable, Equatable {
  public let group: IOMMUGroupID
  public let state: GroupState
  public let owner: Ownership?
  public let ownedSince: String?
  public let reservedFor: String?
  public let reservedSince: String?
  /// The process the reservation lasts for (libvirtd, for a domain its hook took the group
  /// for): when it is gone, `reconcile` gives the group back.
  public let reservedWhileRunning: Int?
  public let persisted: Bool
  public let holders: [OpenHolder]
}

/// Who may open a detached group's nodes, and for which guest it is kept: ownership (`own`,
/// `disown`) and reservations (`reserve`, `unreserve`), each a ledger fact applied to the
/// nodes the kernel recreates.
public struct GroupAccess: ManagerPart {
  let manager: AssignmentManager

  /// The VFIO nodes of a group: the group node and each device's cdev, where they exist. The
  /// group node is the one of the group the kernel has the devices in now: an owner is bound to
  /// the devices, and the number the ledger knows the group by may have been given to other
  /// devices since (a reboot, a hot-plug). Devices split over several groups get no node.
  func nodes(group: IOMMUGroupID, devices: [PCIAddress]) -> [String] {
    let cdevs = OpenHolderScanner(sysfs: sysfs).cdevNodes(of: devices)
    guard let current = currentGroup(of: devices) else { return cdevs.filter(sysfs.exists) }
    return (["/dev/vfio/\(current)"] + cdevs).filter(sysfs.exists)
  }

  /// The IOMMU group the kernel has all of `devices` in now, if they share one.
  func currentGroup(of devices: [PCIAddress]) -> IOMMUGroupID? {
    let groups = Set(devices.compactMap { sysfs.linkName("/sys/bus/pci/devices/\($0)/iommu_group").flatMap { IOMMUGroupID($0) } })
    return groups.count == 1 ? groups.first : nil
  }

  /// Records `setting` (when given) and applies the ledger's ownership of `group` to its nodes,
  /// which the kernel recreates root-owned whenever the group's first device binds to vfio-pci.
  /// Returns what it did, for the report.
  @discardableResult
  /// A `brokerOnly` setting keeps the nodes root's, 0600: the owner gets descriptors from the
  /// broker and nothing else.
  func applyOwnership(
    group: IOMMUGroupID, ledger: Ledger, setting: Ownership?, brokerOnly: Bool = false, devices: [PCIAddress]
  ) throws(ManagerError) -> [String] {
    if let setting {
      try ledger.recordOwner(group: group, setting, brokerOnly: brokerOnly)
    }
    guard let record = try ledger.group(group), let ownership = record.nodeOwnership else { return [] }
    var notes: [String] = []
    for node in nodes(group: group, devices: devices) {
      try give(node, to: ownership, group: group)
      notes.append("\(node) owned by \(ownership)")
    }
    if record.brokerOnly, let owner = record.ownership {
      notes.append("owner \(owner.uid) reaches the group only through the broker")
    }
    return notes
  }

  func give(_ node: String, to ownership: Ownership, group: IOMMUGroupID) throws(ManagerError) {
    do {
      try host.setOwner(node, ownership)
    } catch {
      throw .stepFailed(
        group: group, step: 0, description: "give \(node) to \(ownership)", why: error.description, restored: false,
        rollbackErrors: [])
    }
  }

  /// Gives a detached group's nodes to a user (`vfioctl own`).
  public func own(_ target: Selector, owner: Ownership, brokerOnly: Bool = false) throws(ManagerError) -> OwnerReport {
    try changeOwnership(target) { ledger, group, record throws(ManagerError) in
      guard record?.state == .detached else {
        throw .notDetached(group: group, why: "is not detached by swift-vfio: `vfioctl detach \(group) --owner ...` first")
      }
      try applyOwnership(
        group: group, ledger: ledger, setting: owner, brokerOnly: brokerOnly, devices: try memberAddresses(group, ledger))
      try history(ledger, group, "ok", "owned by \(owner)" + (brokerOnly ? " through the broker only" : ""))
    }
  }

  /// Gives the nodes back to root, mode 0600, and forgets the owner (`vfioctl disown`).
  public func disown(_ target: Selector) throws(ManagerError) -> OwnerReport {
    try changeOwnership(target) { ledger, group, record throws(ManagerError) in
      guard record?.ownerUID != nil else {
        throw .notDetached(group: group, why: "has no owner recorded; nothing to disown")
      }
      if let reserved = record?.reservedFor {
        throw .refused(
          group: group,
          [.init(code: "reserved", message: "IOMMU group \(group) is reserved for \(reserved)", remedy: "`vfioctl unreserve \(group)` first")])
      }
      try endOwner(group: group, ledger: ledger)
      try history(ledger, group, "ok", "disowned: nodes back to root, mode 0600")
    }
  }

  /// The group's nodes back to root, mode 0600, and its owner forgotten; with
  /// `keepingReservation`, in the same write, the group stays reserved for that guest alone.
  func endOwner(group: IOMMUGroupID, ledger: Ledger, keepingReservation: Reservation? = nil) throws(ManagerError) {
    for node in nodes(group: group, devices: try memberAddresses(group, ledger)) {
      try give(node, to: .rootOnly, group: group)
    }
    try ledger.endOwner(group: group, keepingReservation: keepingReservation)
  }

  /// Keeps a detached group for a guest that is not running (`vfioctl reserve`): until it is
  /// ended, by nothing else.
  public func reserve(_ target: Selector, for name: String, owner: Ownership?) throws(ManagerError) -> OwnerReport {
    try reserve(target, for: name, owner: owner, runner: nil)
  }

  /// `reserve`, bounded by `runner` when the group is one `detachedBy` took (libvirt's hook);
  /// a group reserved before the hook took it keeps a reservation nothing bounds. The
  /// reservation, its runner and the owner are recorded under the group's one lock.
  func reserve(
    _ target: Selector, for name: String, owner: Ownership?, runner: (ProcessIdentity, detachedBy: String)?
  ) throws(ManagerError) -> OwnerReport {
    try Reservation.validate(guest: name)
    return try changeOwnership(target) { ledger, group, record throws(ManagerError) in
      guard record?.state == .detached else {
        throw .notDetached(group: group, why: "is not detached by swift-vfio: `vfioctl detach \(group)` it first, then reserve it")
      }
      if let other = record?.reservedFor, other != name {
        throw .refused(
          group: group,
          [.init(code: "reserved", message: "IOMMU group \(group) is already reserved for \(other)", remedy: "`vfioctl unreserve \(group)` first")])
      }
      let bound = runner.flatMap { record?.detachedBy == $0.detachedBy ? $0.0 : nil }
      try ledger.reserve(group: group, Reservation(guest: name, runner: bound))
      if let owner { try applyOwnership(group: group, ledger: ledger, setting: owner, devices: try memberAddresses(group, ledger)) }
      try history(ledger, group, "ok", "reserved for \(name)" + (bound.map { " while \($0) runs its guest" } ?? ""))
    }
  }

  public func unreserve(_ target: Selector) throws(ManagerError) -> OwnerReport {
    try changeOwnership(target) { ledger, group, record throws(ManagerError) in
      guard let name = record?.reservedFor else { throw .notDetached(group: group, why: "is not reserved") }
      try ledger.reserve(group: group, nil)
      try history(ledger, group, "ok", "no longer reserved for \(name)")
    }
  }

  /// Every group that is not simply the host's: owned, reserved or detached.
  public func owners() throws(ManagerError) -> [OwnerReport] {
    guard let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false) else { return [] }
    let records = try ledger.groups().filter { $0.state != .host || $0.ownerUID != nil || $0.reservedFor != nil }
    return try ownerReports(records, ledger: ledger)
  }

  /// The reports of `records`, with who holds each open from one walk of /proc.
  func ownerReports(_ records: [LedgerGroup], ledger: Ledger) throws(ManagerError) -> [OwnerReport] {
    var devices: [IOMMUGroupID: [PCIAddress]] = [:]
    for record in records { devices[record.id] = try memberAddresses(record.id, ledger) }
    let holders = OpenHolderScanner(sysfs: sysfs).holders(of: devices)
    return records.map { record in
      OwnerReport(
        group: record.id, state: record.state, owner: record.ownership, ownedSince: record.ownedSince.map(timestamp),
        reservedFor: record.reservedFor, reservedSince: record.reservedSince.map(timestamp),
        reservedWhileRunning: record.reservation?.runner?.pid,
        persisted: record.persisted, holders: holders[record.id] ?? [])
    }
  }

  func memberAddresses(_ group: IOMMUGroupID, _ ledger: Ledger) throws(ManagerError) -> [PCIAddress] {
    try ledger.members(of: group).compactMap(\.pciAddress)
  }

  /// Takes the group's lock, recovers, runs `change`, and reports the group afterwards.
  func changeOwnership(
    _ target: Selector, _ change: (Ledger, IOMMUGroupID, LedgerGroup?) throws(ManagerError) -> Void
  ) throws(ManagerError) -> OwnerReport {
    let group = try lockingGroup(target)
    let (lock, ledger, _) = try begin(group: group)
    defer { withExtendedLifetime(lock) {} }
    try change(ledger, group, try ledger.group(group))
    _ = try manager.persistence.refreshPersistence(ledger: ledger)
    guard let record = try ledger.group(group) else { throw .noSuchGroup(group) }
    return try ownerReports([record], ledger: ledger)[0]
  }
}
