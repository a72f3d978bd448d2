import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// Whole groups for a virtual machine that names only some of their functions (libvirt's
/// `<hostdev>`): every group is checked before any is touched, so a refusal changes nothing;
/// what one call detached is given back if a later group fails; each group taken is reserved
/// for the guest, so no one else gets it while the guest runs, and its release finds it again
/// by that reservation even if the guest's definition changed meanwhile.
public struct GuestAssignment: ManagerPart {
  let manager: AssignmentManager

  /// What one guest call did to one group.
  public struct GuestGroup: Sendable, Equatable {
    public let group: IOMMUGroupID
    public let devices: [PCIAddress]
    public let outcome: String
  }

  /// Detaches the groups of `devices` (companions included, bridges stay with the host), gives
  /// their nodes to `owner` and reserves them for `guest`. A group this guest already has is
  /// left as it is (its owner applied again): a start that is retried, or a daemon restarted.
  /// A group detached for another use, reserved for another guest, or that a detach would
  /// refuse, refuses the whole call with every group's reasons, before anything changes.
  /// With `runner` (the process that runs the guest and will call `release`), the groups
  /// detached here are the guest's only while it lives: `reconcile` gives them back once it is
  /// gone and nothing holds them. Without, the reservation lasts until `release`.
  public func assign(
    _ devices: [PCIAddress], to guest: String, owner: Ownership?, detachedBy: String, runner: ProcessIdentity? = nil,
    allowNoReset: Bool = false
  ) throws(ManagerError) -> [GuestGroup] {
    try Reservation.validate(guest: guest)
    let groups = try groupsOf(devices)
    let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false)
    var refusals: [IOMMUGroupID: [ManagerError.Refusal]] = [:]
    var toDetach: [IOMMUGroupID] = []
    for (group, _) in groups {
      let record = try ledger?.group(group)
      if let other = record?.reservedFor, other != guest {
        refusals[group] = [
          .init(
            code: "reserved", message: "IOMMU group \(group) is reserved for \(other)",
            remedy: "`vfioctl attach \(group) --release` once \(other) is stopped, if it no longer needs the group")
        ]
      } else if record?.state == .detached, record?.reservedFor == nil {
        refusals[group] = [
          .init(
            code: "detached", message: "IOMMU group \(group) is detached by swift-vfio for another use (\(record?.detachedBy ?? "detach")\(record?.ownership.map { ", owned by uid \($0.uid)" } ?? ""))",
            remedy: "`vfioctl reserve \(group) --for \(guest)` gives it to this guest, or `vfioctl attach \(group)` gives it back first")
        ]
      } else if record?.state != .detached {
        toDetach.append(group)
      }
    }
    // The groups to detach are one batch, which refuses them all before changing any: with
    // refusals from the ledger already, a dry run adds the detach's own to the answer.
    let batch = toDetach.map { Selector.group($0) }
    do {
      if !refusals.isEmpty, !batch.isEmpty {
        _ = try manager.groups.detach(batch, allowNoReset: allowNoReset, dryRun: true)
      }
    } catch .refused(let group, let reasons) {
      refusals[group] = reasons
    } catch .refusedGroups(let more) {
      refusals.merge(more) { ledgers, _ in ledgers }
    }
    guard refusals.isEmpty else { throw .refusedGroups(refusals) }
    var done: [GuestGroup] = []
    var detachedHere: [IOMMUGroupID] = []
    do throws(ManagerError) {
      let outcomes: [GroupOutcome]
      do {
        outcomes = batch.isEmpty ? [] : try manager.groups.detach(batch, allowNoReset: allowNoReset, detachedBy: detachedBy)
      } catch .refused(let group, let reasons) {
        throw .refusedGroups([group: reasons])
      }
      // Another call (a second domain's hook) may have detached a group since the check: then
      // it is not this call's to give back, and the reservation below settles who has it.
      for case .success(let report) in outcomes where report.outcome == .done { detachedHere.append(report.group) }
      for case .failure(let failure) in outcomes { throw failure }
      for (group, members) in groups {
        _ = try manager.access.reserve(
          .group(group), for: guest, owner: owner, runner: runner.map { ($0, detachedBy: detachedBy) })
        let outcome = detachedHere.contains(group) ? "detached" : "already \(guest)'s"
        done.append(GuestGroup(group: group, devices: members, outcome: outcome))
      }
    } catch {
      // All or nothing: what this call took goes back before the failure is reported, unless
      // someone else has reserved it meanwhile.
      let ledger = try? Ledger.open(directory: configuration.stateDirectory, create: false)
      for group in detachedHere.reversed() {
        let reserved = (try? ledger?.group(group))??.reservedFor
        if reserved == nil || reserved == guest { _ = try? manager.groups.attach(.group(group), release: true) }
      }
      throw error
    }
    return done
  }

  /// Ends `guest`'s use of its groups: each group reserved for it, and each group of `devices`
  /// detached by `detachedBy` without a reservation (a start interrupted before it reserved).
  /// `keep` (or a reservation made before the guest took the group) keeps it detached and
  /// reserved, the nodes back to root; otherwise it goes back to the host exactly.
  public func release(guest: String, devices: [PCIAddress], keep: Bool, detachedBy: String) throws(ManagerError)
    -> [GuestGroup]
  {
    try Reservation.validate(guest: guest)
    guard let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false) else { return [] }
    var wanted = Set(try ledger.groups().filter { $0.reservedFor == guest }.map(\.id))
    for (group, _) in (try? groupsOf(devices)) ?? [] {
      if let record = try ledger.group(group), record.state == .detached, record.reservedFor == nil,
        record.detachedBy == detachedBy
      {
        wanted.insert(group)
      }
    }
    var done: [GuestGroup] = []
    var failures: [String] = []
    for group in wanted.sorted() {
      let record = try ledger.group(group)
      let members = try manager.access.memberAddresses(group, ledger)
      do {
        if keep || record?.detachedBy != detachedBy {
          _ = try endOwnership(.group(group), keepingReservationFor: guest)
          done.append(GuestGroup(group: group, devices: members, outcome: "kept for \(guest)"))
        } else {
          _ = try manager.groups.attach(.group(group), release: true)
          done.append(GuestGroup(group: group, devices: members, outcome: "given back"))
        }
      } catch {
        // One group that cannot go back must not keep the others from going.
        failures.append(error.description)
      }
    }
    guard failures.isEmpty else { throw .unavailable(failures.joined(separator: "\n")) }
    return done
  }

  /// The groups of `devices` this guest runs with, as the ledger has them; for a daemon that
  /// reconnects to a running guest: nothing is detached or given back (the VMM has the
  /// devices), a detachment this guest started but did not reserve is reserved now.
  public func confirm(guest: String, devices: [PCIAddress], detachedBy: String, runner: ProcessIdentity? = nil)
    throws(ManagerError) -> [GuestGroup]
  {
    try Reservation.validate(guest: guest)
    guard let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false) else {
      return try groupsOf(devices).map { GuestGroup(group: $0.group, devices: $0.devices, outcome: "not detached by swift-vfio") }
    }
    var found: [GuestGroup] = []
    for (group, members) in try groupsOf(devices) {
      let record = try ledger.group(group)
      var outcome = "not detached by swift-vfio"
      if record?.state == .detached, record?.reservedFor == guest {
        outcome = "\(guest)'s"
      } else if record?.state == .detached, record?.reservedFor == nil, record?.detachedBy == detachedBy {
        _ = try manager.access.reserve(.group(group), for: guest, owner: nil)
        outcome = "reserved for \(guest) again"
      } else if let other = record?.reservedFor {
        outcome = "reserved for \(other), not \(guest)"
      }
      // The guest's new runner (a restarted libvirtd) bounds a reservation its old one did.
      if let runner, record?.state == .detached, record?.detachedBy == detachedBy, record?.runnerPID != nil,
        record?.reservedFor == guest || record?.reservedFor == nil
      {
        try setRunner(runner, group: group)
      }
      found.append(GuestGroup(group: group, devices: members, outcome: outcome))
    }
    return found
  }

  /// The nodes back to root, mode 0600, the owner forgotten, the reservation kept: a guest
  /// that stopped keeps its groups, and nobody may open them meanwhile.
  func endOwnership(_ target: Selector, keepingReservationFor guest: String) throws(ManagerError) -> OwnerReport {
    try manager.access.changeOwnership(target) { ledger, group, record throws(ManagerError) in
      guard record?.state == .detached else { throw .notDetached(group: group, why: "is not detached by swift-vfio") }
      // Kept for the guest alone: it stopped, so no runner bounds the reservation any more.
      let kept = Reservation(guest: guest, since: record?.reservedSince ?? Date())
      try manager.access.endOwner(group: group, ledger: ledger, keepingReservation: kept)
      try history(ledger, group, "ok", "\(guest) stopped: kept reserved for it, nodes back to root, mode 0600")
    }
  }

  func setRunner(_ runner: ProcessIdentity?, group: IOMMUGroupID) throws(ManagerError) {
    let lock = try lock(group: group)
    defer { withExtendedLifetime(lock) {} }
    guard let ledger = try recordedLedger() else { return }
    try ledger.setRunner(group: group, runner)
    if let runner { try history(ledger, group, "ok", "reserved while \(runner) runs its guest") }
  }

  /// A detached group whose runner is gone (no process has its pid and start time now): a
  /// libvirtd killed with its QEMU never called release. Whether something still holds the
  /// group's nodes is `attach`'s to say.
  func runnerIsGone(_ record: LedgerGroup) -> Bool {
    guard record.state == .detached, let pid = record.runnerPID else { return false }
    guard let now = ProcessIdentity.startTime(pid: pid, sysfs: sysfs) else { return true }
    return now != record.runnerStart
  }

  /// Each distinct group of `devices` (in the order first named) with the devices named in it.
  func groupsOf(_ devices: [PCIAddress]) throws(ManagerError) -> [(group: IOMMUGroupID, devices: [PCIAddress])] {
    var groups: [(group: IOMMUGroupID, devices: [PCIAddress])] = []
    for device in devices {
      let group = try lockingGroup(.device(device))
      if let index = groups.firstIndex(where: { $0.group == group }) {
        if !groups[index].devices.contains(device) { groups[index].devices.append(device) }
      } else {
        groups.append((group, [device]))
      }
    }
    return groups
  }
}
