import Foundation
import GRDB
import PCI
import Synchronization
import VFIOHost
import VFIOPolicy

/// The embedded SQLite database of everything swift-vfio has done to the host.
///
/// Writes happen in transactions, so a process killed at any moment leaves either the state
/// before or after a write, never half of one; the group locks (`GroupLock`) keep two
/// processes from changing one group at once.
public final class Ledger: Sendable {
  public static let defaultDirectory = "/var/lib/swift-vfio"
  public static let fileName = "ledger.sqlite"
  public let path: String
  let queue: DatabaseQueue
  private let writing = Mutex<(seconds: Double, transactions: Int)>((0, 0))

  /// Seconds spent in write transactions so far (what the ledger costs a command).
  public var secondsWriting: Double { writing.withLock { $0.seconds } }
  /// Write transactions so far.
  public var writeTransactions: Int { writing.withLock { $0.transactions } }

  /// Opens the ledger in `directory`, creating it (and migrating the schema) when `create`.
  /// Returns nil when it does not exist and `create` is false: nothing was ever recorded.
  public static func open(directory: String, create: Bool) throws(ManagerError) -> Ledger? {
    let path = directory + "/" + fileName
    if !create && access(path, F_OK) != 0 { return nil }
    if create { try makeStateDirectory(directory) }
    var config = Configuration()
    config.busyMode = .timeout(30)
    config.readonly = !create
    config.label = "swift-vfio ledger"
    if create {
      // Many small transactions (one per step): WAL writes each once, and NORMAL syncs at
      // checkpoints only. A killed process loses nothing that committed; a power loss may
      // lose the last transactions, never consistency, and takes sysfs's state with it anyway.
      config.journalMode = .wal
      // The WAL is reused after each checkpoint; the size limit truncates it back to 1 MiB,
      // so a burst of writes (a busy broker) does not leave a large file behind.
      config.prepareDatabase { db in
        try db.execute(sql: "PRAGMA synchronous = NORMAL; PRAGMA journal_size_limit = 1048576")
      }
    }
    do {
      let queue = try DatabaseQueue(path: path, configuration: config)
      // The schema version in one read; the migrator's own checks only when it differs.
      let version = try queue.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0 }
      if version == schemaVersion { return Ledger(path: path, queue: queue) }
      let migrator = Self.migrator
      let superseded = try queue.read { db in try migrator.hasBeenSuperseded(db) }
      if superseded {
        let known = Set(migrator.migrations)
        let applied = try queue.read { db in try migrator.appliedIdentifiers(db) }
        throw ManagerError.ledgerTooNew(path: path, unknown: applied.subtracting(known).sorted())
      }
      if create {
        try migrator.migrate(queue)
      } else if try queue.read({ db in try !migrator.hasCompletedMigrations(db) }) {
        // An older or empty file that only a writing command may migrate: nothing to read yet.
        return nil
      }
      return Ledger(path: path, queue: queue)
    } catch let error as ManagerError {
      throw error
    } catch {
      throw .ledger(path: path, error.localizedDescription)
    }
  }

  private init(path: String, queue: DatabaseQueue) {
    self.path = path
    self.queue = queue
  }

  /// `PRAGMA user_version` once every migration below has run.
  static let schemaVersion = 4

  /// Versioned from the first schema; a migration once shipped is never edited, only followed.
  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1") { db in
      try db.create(table: "iommu_group") { t in
        t.primaryKey("id", .integer)
        t.column("state", .text).notNull()
        t.column("driver", .text)
        t.column("since", .datetime).notNull()
        t.column("uid", .integer).notNull()
      }
      try db.create(table: "member") { t in
        t.column("groupID", .integer).notNull().references("iommu_group", onDelete: .cascade)
        t.column("address", .text).notNull()
        t.column("vendorID", .integer).notNull()
        t.column("deviceID", .integer).notNull()
        t.column("originalDriver", .text)
        t.column("originalOverride", .text)
        t.primaryKey(["groupID", "address"])
      }
      try db.create(table: "operation") { t in
        t.autoIncrementedPrimaryKey("id")
        t.column("groupID", .integer).notNull().indexed()
        t.column("kind", .text).notNull()
        t.column("plan", .text).notNull()
        t.column("stepsDone", .integer).notNull()
        t.column("status", .text).notNull()
        t.column("started", .datetime).notNull()
        t.column("finished", .datetime)
        t.column("pid", .integer).notNull()
        t.column("uid", .integer).notNull()
        t.column("command", .text).notNull()
        t.column("detail", .text)
      }
      try db.create(table: "history") { t in
        t.autoIncrementedPrimaryKey("id")
        t.column("at", .datetime).notNull()
        t.column("uid", .integer).notNull()
        t.column("pid", .integer).notNull()
        t.column("groupID", .integer).indexed()
        t.column("command", .text).notNull()
        t.column("result", .text).notNull()
        t.column("detail", .text).notNull()
      }
      // The history is evidence: the database itself refuses to rewrite it.
      try db.execute(
        sql: """
          CREATE TRIGGER history_no_update BEFORE UPDATE ON history
            BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;
          CREATE TRIGGER history_no_delete BEFORE DELETE ON history
            BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;
          """)
    }
    // Ownership, reservations, persistence and SR-IOV VFs.
    migrator.registerMigration("v2") { db in
      try db.alter(table: "iommu_group") { t in
        t.add(column: "ownerUID", .integer)
        t.add(column: "ownerGID", .integer)
        t.add(column: "mode", .integer)
        t.add(column: "ownedSince", .datetime)
        t.add(column: "reservedFor", .text)
        t.add(column: "reservedSince", .datetime)
        t.add(column: "persisted", .boolean).notNull().defaults(to: false)
        t.add(column: "bootID", .text)
        t.add(column: "detachedBy", .text)
      }
      try db.execute(sql: "PRAGMA user_version = 2")
    }
    // The broker: broker-only owners and the leases of granted descriptors.
    migrator.registerMigration("v3") { db in
      try db.alter(table: "iommu_group") { t in
        t.add(column: "brokerOnly", .boolean).notNull().defaults(to: false)
      }
      try db.create(table: "lease") { t in
        t.primaryKey("groupID", .integer).references("iommu_group", onDelete: .cascade)
        t.column("uid", .integer).notNull()
        t.column("gid", .integer).notNull()
        t.column("pid", .integer).notNull()
        t.column("command", .text).notNull()
        t.column("backend", .text).notNull()
        t.column("device", .text).notNull()
        t.column("guest", .text)
        t.column("started", .datetime).notNull()
        t.column("bootID", .text)
      }
      try db.execute(sql: "PRAGMA user_version = 3")
    }
    // Bounded state and atomic revocation: refusals counted per caller, group and reason
    // instead of a row each; the history pruned by a retention policy, and only inside a
    // prune window (the trigger still refuses every other delete); the closing mark; the
    // lease holder's start time.
    migrator.registerMigration("v4") { db in
      try db.alter(table: "iommu_group") { t in
        t.add(column: "closing", .boolean).notNull().defaults(to: false)
      }
      try db.alter(table: "lease") { t in t.add(column: "pidStart", .integer) }
      try db.create(table: "refusal") { t in
        t.column("uid", .integer).notNull()
        t.column("groupID", .integer).notNull()
        t.column("code", .text).notNull()
        t.column("count", .integer).notNull()
        t.column("first", .datetime).notNull()
        t.column("last", .datetime).notNull()
        t.column("detail", .text).notNull()
        t.primaryKey(["uid", "groupID", "code"])
      }
      try db.create(table: "history_prune") { t in t.column("upTo", .integer).notNull() }
      try db.execute(
        sql: """
          DROP TRIGGER history_no_delete;
          CREATE TRIGGER history_no_delete BEFORE DELETE ON history
            WHEN NOT EXISTS (SELECT 1 FROM history_prune WHERE OLD.id <= upTo)
            BEGIN SELECT RAISE(ABORT, 'the history is append-only (vfioctl history --prune applies the retention policy)'); END;
          PRAGMA user_version = 4;
          """)
    }
    // Reservations bounded by the life of the process that runs the guest (libvirtd).
    migrator.registerMigration("v5") { db in
      try db.alter(table: "iommu_group") { t in
        t.add(column: "runnerPID", .integer)
        t.add(column: "runnerStart", .integer)
      }
      try db.execute(sql: "PRAGMA user_version = 5")
    }
    return migrator
  }

  /// Creates the state directory 0700 and refuses one that is not safe: a symbolic link, not a
  /// directory, owned by someone else than this user or root, or writable by group or others
  /// (whoever can write there can plant a ledger that gives devices away).
  static func makeStateDirectory(_ directory: String) throws(ManagerError) {
    if let code = makeDirectories(directory, mode: 0o700) ?? (access(directory, W_OK) == 0 ? nil : errno) {
      throw .stateDirectory(path: directory, errno: code)
    }
    var info = stat()
    guard lstat(directory, &info) == 0 else { throw .stateDirectory(path: directory, errno: errno) }
    switch info.st_mode & S_IFMT {
    case S_IFDIR: break
    case S_IFLNK: throw .unsafeStateDirectory(path: directory, why: "it is a symbolic link")
    default: throw .unsafeStateDirectory(path: directory, why: "it is not a directory")
    }
    guard info.st_uid == geteuid() || info.st_uid == 0 else {
      throw .unsafeStateDirectory(path: directory, why: "it belongs to uid \(info.st_uid)")
    }
    guard info.st_mode & 0o022 == 0 else {
      throw .unsafeStateDirectory(
        path: directory, why: "group or others may write it (mode 0\(String(info.st_mode & 0o7777, radix: 8)))")
    }
  }

  // MARK: Reading

  public func group(_ id: IOMMUGroupID) throws(ManagerError) -> LedgerGroup? {
    try read { db in try LedgerGroup.fetchOne(db, key: id) }
  }

  public func groups() throws(ManagerError) -> [LedgerGroup] {
    try read { db in try LedgerGroup.order(Column("id")).fetchAll(db) }
  }

  public func members(of group: IOMMUGroupID) throws(ManagerError) -> [LedgerMember] {
    try read { db in
      try LedgerMember.filter(Column("groupID") == group).order(Column("address")).fetchAll(db)
    }
  }

  /// The operation on `group` that neither finished nor was undone, if any.
  public func unfinishedOperation(group: IOMMUGroupID) throws(ManagerError) -> LedgerOperation? {
    try read { db in
      try LedgerOperation.filter(Column("groupID") == group && Column("status") == LedgerOperation.Status.running)
        .order(Column("id").desc).fetchOne(db)
    }
  }

  public func unfinishedOperations() throws(ManagerError) -> [LedgerOperation] {
    try read { db in
      try LedgerOperation.filter(Column("status") == LedgerOperation.Status.running).order(Column("id")).fetchAll(db)
    }
  }

  public func operations(group: IOMMUGroupID? = nil) throws(ManagerError) -> [LedgerOperation] {
    try read { db in
      var request = LedgerOperation.order(Column("id"))
      if let group { request = request.filter(Column("groupID") == group) }
      return try request.fetchAll(db)
    }
  }

  /// Every group with its members, in one read: the broker's copy of the ledger, reread when
  /// another process committed.
  public func groupsWithMembers() throws(ManagerError) -> [IOMMUGroupID: (group: LedgerGroup, members: [LedgerMember])] {
    try read { db in
      let groups = try LedgerGroup.fetchAll(db)
      let members = try LedgerMember.order(Column("address")).fetchAll(db)
      let byGroup = Dictionary(grouping: members, by: \.groupID)
      return Dictionary(uniqueKeysWithValues: groups.map { ($0.id, ($0, byGroup[$0.id] ?? [])) })
    }
  }

  /// SQLite's `PRAGMA data_version`: changes whenever another connection (another vfioctl)
  /// committed since the last call on this one. Outside any transaction, from a cached
  /// statement: what a long-running reader (the broker) checks before trusting its copy.
  public func dataVersion() throws(ManagerError) -> Int {
    do {
      return try queue.inDatabase { db in try Int.fetchOne(db.cachedStatement(sql: "PRAGMA data_version")) ?? 0 }
    } catch {
      throw .ledger(path: path, error.localizedDescription)
    }
  }

  public func lease(group: IOMMUGroupID) throws(ManagerError) -> LedgerLease? {
    try read { db in try LedgerLease.fetchOne(db, key: group) }
  }

  public func leases() throws(ManagerError) -> [LedgerLease] {
    try read { db in try LedgerLease.order(Column("groupID")).fetchAll(db) }
  }

  public func history(group: IOMMUGroupID? = nil) throws(ManagerError) -> [HistoryEntry] {
    try read { db in
      var request = HistoryEntry.order(Column("id"))
      if let group { request = request.filter(Column("groupID") == group) }
      return try request.fetchAll(db)
    }
  }

  // MARK: Writing

  /// Runs `body` in one transaction: the intents (LedgerIntents.swift) and the broker's
  /// bounded records are its only callers outside this file.
  func write<T>(_ body: (Database) throws -> T) throws(ManagerError) -> T {
    let start = monotonicSeconds()
    defer {
      writing.withLock {
        $0.seconds += monotonicSeconds() - start
        $0.transactions += 1
      }
    }
    do {
      return try queue.write(body)
    } catch let error as ManagerError {
      throw error
    } catch {
      throw .ledger(path: path, error.localizedDescription)
    }
  }

  func read<T>(_ body: (Database) throws -> T) throws(ManagerError) -> T {
    do {
      return try queue.read(body)
    } catch {
      throw .ledger(path: path, error.localizedDescription)
    }
  }

  /// Appends to the history, in its own transaction.
  public func record(_ entry: HistoryEntry) throws(ManagerError) {
    try write { db in try Self.insert(db, entry) }
  }
}

/// What the ledger says of one group that is not simply the host's, as the read-only reports
/// (`list`, `show`, `explain`) show it.
public struct LedgerRecord: Codable, Sendable, Equatable {
  public let state: GroupState
  public let driver: String?
  public let since: String
  public let uid: Int
  public let originals: [Original]
  /// Who the group's nodes belong to, when someone does.
  public let owner: Ownership?
  public let reservedFor: String?
  public let reservedSince: String?
  public let persisted: Bool

  public struct Original: Codable, Sendable, Equatable {
    public let address: PCIAddress
    public let driver: String?
    public let driverOverride: String?
    public var binding: DriverBinding { DriverBinding(driver: driver, driverOverride: driverOverride) }
  }

  /// The reservations, as the assessor weighs them.
  public static func reservations(_ records: [IOMMUGroupID: LedgerRecord]) -> [IOMMUGroupID: Assessor.Reservation] {
    records.compactMapValues { record in
      record.reservedFor.map { Assessor.Reservation(name: $0, ownerUID: record.owner?.uid, since: record.reservedSince ?? record.since) }
    }
  }

  /// Every group the ledger in `directory` holds away from the host, owns or reserves; empty
  /// without a ledger.
  public static func all(directory: String) throws(ManagerError) -> [IOMMUGroupID: LedgerRecord] {
    guard let ledger = try Ledger.open(directory: directory, create: false) else { return [:] }
    var records: [IOMMUGroupID: LedgerRecord] = [:]
    for group in try ledger.groups() where group.state != .host || group.ownerUID != nil || group.reservedFor != nil {
      let originals = try ledger.members(of: group.id).compactMap { member in
        member.pciAddress.map {
          Original(address: $0, driver: member.originalDriver, driverOverride: member.originalOverride)
        }
      }
      records[group.id] = LedgerRecord(
        state: group.state, driver: group.driver, since: timestamp(group.since), uid: group.uid, originals: originals,
        owner: group.ownership, reservedFor: group.reservedFor, reservedSince: group.reservedSince.map(timestamp),
        persisted: group.persisted)
    }
    return records
  }
}

/// `mkdir -p`: every missing directory of `path`, relative paths from the working directory.
/// Returns the errno of the first mkdir that failed for another reason than EEXIST, or nil.
public func makeDirectories(_ path: String, mode: mode_t) -> Int32? {
  var made = path.hasPrefix("/") ? "" : "."
  for component in path.split(separator: "/", omittingEmptySubsequences: true) {
    made += "/" + component
    if mkdir(made, mode) != 0 && errno != EEXIST { return errno }
  }
  return nil
}

public func monotonicSeconds() -> Double {
  var now = timespec()
  clock_gettime(CLOCK_MONOTONIC, &now)
  return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
