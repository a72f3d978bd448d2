import Foundation
import GRDB
import PCI
import VFIOHost

/// The ledger's writes, each named for what it records: callers say what happened to a group,
/// never how its rows change. Each is one transaction, so a process killed at any moment
/// leaves the ledger before or after it.
extension Ledger {
  // MARK: Operations (the crash-safe core)

  /// Records a detach before its first step: the group changing to `driver`, the members'
  /// originals (replacing what an earlier detachment recorded), and the plan. Returns the
  /// operation with its row id.
  public func beginDetach(
    _ operation: LedgerOperation, driver: String, bootID: String?, detachedBy: String, originals: [LedgerMember]
  ) throws(ManagerError) -> LedgerOperation {
    let group = operation.groupID
    return try write { db in
      var operation = operation
      try LedgerGroup.update(db, group: group) {
        $0.state = .changing
        $0.driver = driver
        $0.since = Date()
        $0.uid = Int(getuid())
        $0.bootID = bootID
        $0.detachedBy = detachedBy
      }
      try LedgerMember.filter(Column("groupID") == group).deleteAll(db)
      for member in originals { try member.insert(db) }
      try operation.insert(db)
      return operation
    }
  }

  /// Records an attach or a reset before its first step; an attach marks the group changing.
  public func begin(_ operation: LedgerOperation) throws(ManagerError) -> LedgerOperation {
    try write { db in
      var operation = operation
      try operation.insert(db)
      if operation.kind == .attach { try LedgerGroup.update(db, group: operation.groupID) { $0.state = .changing } }
      return operation
    }
  }

  /// Marks how far an operation got: the steps up to `stepsDone` are performed and verified.
  public func markStep(_ operation: LedgerOperation) throws(ManagerError) {
    try write { db in try operation.update(db, columns: ["stepsDone"]) }
  }

  /// Records how an operation ended and, with `groupState`, where its group now stands: back
  /// with the host (nothing of a user's stays with it, the members are forgotten) or another
  /// state since now.
  /// With `history`, the entry is written in the same transaction.
  public func finish(
    _ operation: inout LedgerOperation, _ status: LedgerOperation.Status, detail: String? = nil, groupState: GroupState?,
    history: HistoryEntry? = nil
  ) throws(ManagerError) {
    operation.status = status
    operation.finished = Date()
    operation.detail = detail
    let operation = operation
    try write { db in
      try operation.update(db)
      if var history { try history.insert(db) }
      guard let groupState, var record = try LedgerGroup.fetchOne(db, key: operation.groupID) else { return }
      if groupState == .host {
        record.returnToHost()
        try LedgerMember.filter(Column("groupID") == operation.groupID).deleteAll(db)
      } else {
        record.state = groupState
        record.since = Date()
      }
      try record.update(db)
    }
  }

  /// A detachment that ended without an operation (it was not persisted and the host
  /// rebooted): the group is the host's again and its members are forgotten.
  public func endDetachment(group: IOMMUGroupID) throws(ManagerError) {
    try write { db in
      try LedgerGroup.update(db, group: group) { $0.returnToHost() }
      try LedgerMember.filter(Column("groupID") == group).deleteAll(db)
    }
  }

  /// Marks (or clears) an administrator taking the group back while the broker has it leased.
  public func setClosing(group: IOMMUGroupID, _ closing: Bool) throws(ManagerError) {
    try update(group) { $0.closing = closing }
  }

  /// The boot a persisted detachment was last put right in.
  public func recordBoot(group: IOMMUGroupID, bootID: String) throws(ManagerError) {
    try update(group) { $0.bootID = bootID }
  }

  // MARK: Access

  /// Records who may open the group's nodes, from now.
  public func recordOwner(group: IOMMUGroupID, _ owner: Ownership, brokerOnly: Bool) throws(ManagerError) {
    try update(group) {
      $0.ownerUID = owner.uid
      $0.ownerGID = owner.gid
      $0.mode = owner.mode
      $0.ownedSince = Date()
      $0.brokerOnly = brokerOnly
    }
  }

  /// Forgets the group's owner; with `keepingReservation`, the group's reservation becomes that
  /// one, in the same write.
  public func endOwner(group: IOMMUGroupID, keepingReservation reservation: Reservation? = nil) throws(ManagerError) {
    try update(group) {
      $0.ownerUID = nil
      $0.ownerGID = nil
      $0.mode = nil
      $0.ownedSince = nil
      $0.brokerOnly = false
      if let reservation { $0.reservation = reservation }
    }
  }

  /// Keeps the group for a guest that is not running, or (nil) ends the reservation.
  public func reserve(group: IOMMUGroupID, _ reservation: Reservation?) throws(ManagerError) {
    try update(group) { $0.reservation = reservation }
  }

  /// Bounds the group's reservation by the life of `runner` (nil: by nothing).
  public func setRunner(group: IOMMUGroupID, _ runner: ProcessIdentity?) throws(ManagerError) {
    try update(group) {
      $0.runnerPID = runner?.pid
      $0.runnerStart = runner?.startTime
    }
  }

  // MARK: Persistence and virtual functions

  /// Whether udev rules and the boot unit keep the group detached across boots and hot-plug.
  public func setPersisted(group: IOMMUGroupID, _ persisted: Bool) throws(ManagerError) {
    try update(group) { $0.persisted = persisted }
  }

  /// The group is no longer one `vfs` created detached (its VF went back to the host): neither
  /// persisted nor a VF count's to end.
  public func forgetDetacher(group: IOMMUGroupID) throws(ManagerError) {
    try update(group) {
      $0.detachedBy = nil
      $0.persisted = false
    }
  }

  private func update(_ group: IOMMUGroupID, _ change: @escaping (inout LedgerGroup) -> Void) throws(ManagerError) {
    try write { db in try LedgerGroup.update(db, group: group, change) }
  }
}
