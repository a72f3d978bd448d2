import Foundation
import GRDB
import PCI
import VFIOHost

/// The ledger's writes, each named for what it records: callers say what happened to a group,
/// never how its rows change. Each is one transaction, so a process killed at any moment
/// leaves the ledger before or after it.
extension Ledger {
  // MARK: Operations (the crash-safe core)

  // The writes below run once per command and once per step: each is a few statements
  // prepared once per connection (`cachedStatement`) and bound column by column, with no
  // record encoded or fetched to change one column.

  /// Records a detach before its first step: the group changing to `driver`, the members'
  /// originals (replacing what an earlier detachment recorded), and the plan. Returns the
  /// operation with its row id.
  public func beginDetach(
    _ operation: LedgerOperation, driver: String, bootID: String?, detachedBy: String, originals: [LedgerMember]
  ) throws(ManagerError) -> LedgerOperation {
    let group = operation.groupID
    return try write { db in
      try Self.ensureRow(db, group: group)
      try db.cachedStatement(
        sql: "UPDATE iommu_group SET state = ?, driver = ?, since = ?, uid = ?, bootID = ?, detachedBy = ? WHERE id = ?"
      ).execute(arguments: [GroupState.changing, driver, Date(), Int(getuid()), bootID, detachedBy, group])
      try db.cachedStatement(sql: "DELETE FROM member WHERE groupID = ?").execute(arguments: [group])
      let insert = try db.cachedStatement(
        sql: """
          INSERT INTO member (groupID, address, vendorID, deviceID, originalDriver, originalOverride)
          VALUES (?, ?, ?, ?, ?, ?)
          """)
      for member in originals {
        try insert.execute(arguments: [
          member.groupID, member.address, member.vendorID, member.deviceID, member.originalDriver,
          member.originalOverride,
        ])
      }
      return try Self.insert(db, operation)
    }
  }

  /// Records an attach or a reset before its first step; an attach marks the group changing.
  public func begin(_ operation: LedgerOperation) throws(ManagerError) -> LedgerOperation {
    try write { db in
      let inserted = try Self.insert(db, operation)
      if operation.kind == .attach {
        try Self.ensureRow(db, group: operation.groupID)
        try db.cachedStatement(sql: "UPDATE iommu_group SET state = ? WHERE id = ?").execute(arguments: [
          GroupState.changing, operation.groupID,
        ])
      }
      return inserted
    }
  }

  /// Marks how far an operation got: the steps up to `stepsDone` are performed and verified.
  public func markStep(_ operation: LedgerOperation) throws(ManagerError) {
    try write { db in
      try db.cachedStatement(sql: "UPDATE operation SET stepsDone = ? WHERE id = ?").execute(arguments: [
        operation.stepsDone, operation.id,
      ])
    }
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
      try db.cachedStatement(sql: "UPDATE operation SET stepsDone = ?, status = ?, finished = ?, detail = ? WHERE id = ?")
        .execute(arguments: [operation.stepsDone, operation.status, operation.finished, operation.detail, operation.id])
      if let history { try Self.insert(db, history) }
      switch groupState {
      case nil: break
      case .host?: try Self.returnToHost(db, group: operation.groupID)
      case let state?:
        try db.cachedStatement(sql: "UPDATE iommu_group SET state = ?, since = ? WHERE id = ?").execute(arguments: [
          state, Date(), operation.groupID,
        ])
      }
    }
  }

  /// A detachment that ended without an operation (it was not persisted and the host
  /// rebooted): the group is the host's again and its members are forgotten.
  public func endDetachment(group: IOMMUGroupID) throws(ManagerError) {
    try write { db in
      try Self.ensureRow(db, group: group)
      try Self.returnToHost(db, group: group)
    }
  }

  /// The group is the host's again: nothing of a user's stays with it. Ownership, reservation,
  /// persistence, the broker-only and closing marks and the runner end with the detachment,
  /// and its members are forgotten; a later detach starts from a host-owned group. (A group
  /// the ledger has no row for is left without one.)
  static func returnToHost(_ db: Database, group: IOMMUGroupID) throws {
    try db.cachedStatement(
      sql: """
        UPDATE iommu_group SET state = ?, since = ?, ownerUID = NULL, ownerGID = NULL, mode = NULL,
          ownedSince = NULL, reservedFor = NULL, reservedSince = NULL, persisted = 0, brokerOnly = 0, closing = 0,
          runnerPID = NULL, runnerStart = NULL
        WHERE id = ?
        """
    ).execute(arguments: [GroupState.host, Date(), group])
    try db.cachedStatement(sql: "DELETE FROM member WHERE groupID = ?").execute(arguments: [group])
  }

  /// The group's row, made (state host, nothing recorded) when the ledger has none yet.
  static func ensureRow(_ db: Database, group: IOMMUGroupID) throws {
    try db.cachedStatement(sql: "INSERT OR IGNORE INTO iommu_group (id, state, since, uid) VALUES (?, ?, ?, ?)")
      .execute(arguments: [group, GroupState.host, Date(), Int(getuid())])
  }

  /// Inserts the operation; returns it with its row id.
  private static func insert(_ db: Database, _ operation: LedgerOperation) throws -> LedgerOperation {
    try db.cachedStatement(
      sql: """
        INSERT INTO operation (groupID, kind, plan, stepsDone, status, started, finished, pid, uid, command, detail)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """
    ).execute(arguments: [
      operation.groupID, operation.kind, operation.plan, operation.stepsDone, operation.status, operation.started,
      operation.finished, operation.pid, operation.uid, operation.command, operation.detail,
    ])
    var inserted = operation
    inserted.id = db.lastInsertedRowID
    return inserted
  }

  /// Appends one line to the history.
  static func insert(_ db: Database, _ entry: HistoryEntry) throws {
    try db.cachedStatement(
      sql: "INSERT INTO history (at, uid, pid, groupID, command, result, detail) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ).execute(arguments: [entry.at, entry.uid, entry.pid, entry.groupID, entry.command, entry.result, entry.detail])
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
