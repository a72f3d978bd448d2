import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// What the ledger says, as the read-only commands show it: status, history, refusals, leases;
/// and the history's retention.
public struct ManagerRecords: ManagerPart {
  let manager: AssignmentManager

  // MARK: status and history

  public func status(_ target: Selector?) throws(ManagerError) -> StatusReport {
    let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false)
    let inventory = try readInventory()
    var wanted: IOMMUGroupID?
    if let target { wanted = try lockingGroup(target) }
    let records = try ledger?.groups() ?? []
    var groups: [StatusReport.GroupStatus] = []
    let ids = wanted.map { [$0] } ?? records.filter { $0.state != .host }.map(\.id)
    var membersOf: [IOMMUGroupID: [LedgerMember]] = [:]
    for id in ids { membersOf[id] = try ledger?.members(of: id) ?? [] }
    let holders = OpenHolderScanner(sysfs: sysfs).holders(of: membersOf.mapValues { $0.compactMap(\.pciAddress) })
    for id in ids {
      let record = records.first { $0.id == id }
      let members = membersOf[id] ?? []
      let unfinished = try ledger?.unfinishedOperation(group: id)
      groups.append(
        StatusReport.GroupStatus(
          group: id, state: record?.state ?? .host, driver: record?.driver, since: record.map { timestamp($0.since) },
          uid: record?.uid,
          members: members.map { member in
            let device = member.pciAddress.flatMap(inventory.device)
            return StatusReport.MemberStatus(
              address: member.address, identity: member.identity,
              identityNow: device?.cardIdentity, original: member.original,
              now: member.pciAddress.flatMap(executor.binding))
          },
          unfinished: unfinished.map {
            .init(kind: $0.kind, stepsDone: $0.stepsDone, steps: $0.steps.count, pid: $0.pid, started: timestamp($0.started))
          },
          holders: holders[id] ?? [],
          lease: try ledger?.lease(group: id).map {
            .init(uid: $0.uid, pid: $0.pid, command: $0.command, backend: $0.backend, guest: $0.guest, since: timestamp($0.started))
          }))
    }
    return StatusReport(ledger: ledger?.path, groups: groups)
  }

  /// Applies a retention policy to the history now (the broker applies the standard one on its
  /// own, hourly and as the history grows).
  public func pruneHistory(_ policy: HistoryRetention) throws(ManagerError) -> PruneReport {
    guard let ledger = try recordedLedger() else { return PruneReport(historyRemoved: 0, refusalsRemoved: 0, historyKept: 0) }
    return try ledger.prune(policy, uid: Int(getuid()), pid: Int(getpid()), command: configuration.command)
  }

  /// The broker's refusal counts (per caller, group and reason), for `vfioctl history --refusals`.
  public func refusals(_ target: Selector?) throws(ManagerError) -> [LedgerRefusal] {
    guard let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false) else { return [] }
    return try ledger.refusals(group: try target.map(lockingGroup))
  }

  public func history(_ target: Selector?) throws(ManagerError) -> [HistoryLine] {
    guard let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false) else { return [] }
    guard let target else { return try ledger.history().map(HistoryLine.init) }
    return try ledger.history(group: try lockingGroup(target)).map(HistoryLine.init)
  }

  /// The broker's lease on the target's group, if it has one: what `attach` asks the broker
  /// to revoke before it can give the group back.
  public func lease(_ target: Selector) throws(ManagerError) -> LedgerLease? {
    let group = try lockingGroup(target)
    return try Ledger.open(directory: configuration.stateDirectory, create: false)?.lease(group: group)
  }
}
