import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// One part of the manager (`GroupTransitions`, `GroupAccess`, …): the context it shares with
/// the others is its `manager`, and the plumbing below (locks, the ledger, the inventory,
/// history and reports) is the same for all of them.
protocol ManagerPart {
  var manager: AssignmentManager { get }
}

extension ManagerPart {
  var sysfs: Sysfs { manager.sysfs }
  var host: any HostKernel { manager.host }
  var configuration: AssignmentManager.Configuration { manager.configuration }
  var executor: PlanExecutor { manager.executor }

  /// The whole host; with `groups`, only the part the verdicts on those groups (and on the
  /// groups of `devices`) depend on, which gives them the same verdicts and plans: a detach of
  /// one VF reads its VF, not the thousands of functions beside it.
  func readInventory(forVerdictsOn groups: [IOMMUGroupID]? = nil, devices: [PCIAddress] = [])
    throws(ManagerError) -> HostInventory
  {
    let start = monotonicSeconds()
    defer { manager.addTime { $0.inventory += monotonicSeconds() - start } }
    do {
      guard let groups else { return try HostInventory.read(sysfs, pageSize: configuration.pageSize) }
      return try HostInventory.read(sysfs, forVerdictsOn: groups, devices: devices, pageSize: configuration.pageSize)
    } catch {
      throw .unavailable(error.description)
    }
  }

  /// The group whose lock a command takes, from one sysfs link rather than the whole
  /// inventory (read once the lock is held, so that it is the state the command acts on).
  func lockingGroup(_ target: Selector) throws(ManagerError) -> IOMMUGroupID {
    switch target {
    case .device(let address):
      let path = "/sys/bus/pci/devices/\(address)"
      guard sysfs.exists(path) else { throw .noSuchDevice(address.description) }
      guard let name = sysfs.linkName(path + "/iommu_group"), let group = IOMMUGroupID(name) else {
        throw .noGroup(address.description)
      }
      return group
    case .group(let id):
      guard sysfs.exists("/sys/kernel/iommu_groups/\(id)") else { throw .noSuchGroup(id) }
      return id
    }
  }

  /// Takes the group's lock, opens (or creates) the ledger, and recovers what a crashed
  /// process left unfinished on this group.
  func begin(group: IOMMUGroupID) throws(ManagerError) -> (GroupLock, Ledger, String?) {
    let session = try begin(groups: [group])
    return (session.locks[0], session.ledger, session.recovered[group])
  }

  /// The same for several groups, locked in ascending order (two callers cannot deadlock).
  func begin(groups: [IOMMUGroupID]) throws(ManagerError)
    -> (locks: [GroupLock], ledger: Ledger, recovered: [IOMMUGroupID: String])
  {
    guard let ledger = try Ledger.open(directory: configuration.stateDirectory, create: true) else {
      throw .ledger(path: configuration.stateDirectory, "could not be created")
    }
    var locks: [GroupLock] = []
    var recovered: [IOMMUGroupID: String] = [:]
    for group in Set(groups).sorted() {
      locks.append(try lock(group: group))
      var note = try manager.groups.recoverIfNeeded(group: group, ledger: ledger)
      // With the lock held, a closing mark is an attach that died between marking and finishing.
      if try ledger.group(group)?.closing == true {
        try ledger.setClosing(group: group, false)
        try history(ledger, group, "recovered", "the closing mark of an interrupted attach was cleared")
        note = (note.map { $0 + "; " } ?? "") + "IOMMU group \(group): cleared the closing mark of an interrupted attach"
      }
      recovered[group] = note
    }
    return (locks, ledger, recovered)
  }

  /// The group's lock, waiting as configured.
  func lock(group: IOMMUGroupID) throws(ManagerError) -> GroupLock {
    try GroupLock(
      group: group, stateDirectory: configuration.stateDirectory, timeout: configuration.lockTimeout,
      command: configuration.command)
  }

  /// The ledger opened for writing, but only when one exists: recover and reconcile must not
  /// create a ledger just to find that nothing was recorded.
  func recordedLedger() throws(ManagerError) -> Ledger? {
    guard try Ledger.open(directory: configuration.stateDirectory, create: false) != nil else { return nil }
    return try Ledger.open(directory: configuration.stateDirectory, create: true)
  }

  func history(_ ledger: Ledger, _ group: IOMMUGroupID, _ result: String, _ detail: String) throws(ManagerError) {
    try ledger.record(historyEntry(group, result, detail))
  }

  func historyEntry(_ group: IOMMUGroupID, _ result: String, _ detail: String) -> HistoryEntry {
    HistoryEntry(
      uid: Int(getuid()), pid: Int(getpid()), groupID: group, command: configuration.command, result: result,
      detail: detail)
  }

  func report(
    _ action: LedgerOperation.Kind, _ group: IOMMUGroupID, _ outcome: ChangeReport.Outcome, _ steps: [PlanStep],
    _ recovered: String?, _ inventory: HostInventory, _ notes: [String], _ addresses: [PCIAddress]
  ) -> ChangeReport {
    // `inventory` was read before anything changed; sysfs now shows the result.
    let members = addresses.map { address in
      ChangeReport.MemberChange(
        address: address, before: inventory.device(address).map(DriverBinding.init), after: executor.binding(of: address))
    }
    return ChangeReport(
      action: action, group: group, outcome: outcome, steps: steps, recovered: recovered, members: members, notes: notes)
  }
}
