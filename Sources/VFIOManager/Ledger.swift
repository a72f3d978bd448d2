import Foundation
import GRDB
import Synchronization
import VFIOHost
import VFIOPolicy

/// Where a group stands, as far as swift-vfio knows.
public enum GroupState: String, Codable, Sendable, DatabaseValueConvertible {
  /// Host drivers may bind; nothing of ours is in force.
  case host
  /// Every endpoint is on the VFIO driver by our hand; `members` says what to restore.
  case detached
  /// A plan is being executed (or was interrupted: see the group's unfinished operation).
  case changing
}

/// A group the ledger knows: the unit swift-vfio moves between the host and VFIO.
public struct LedgerGroup: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "iommu_group"
  public var id: Int
  public var state: GroupState
  /// The VFIO driver it was detached to.
  public var driver: String?
  /// When it entered `state`.
  public var since: Date
  public var uid: Int
  /// Who may open the group's nodes (`/dev/vfio/N` and its devices' cdevs): a ledger fact
  /// that outlives an attach and is applied again after every bind, until `disown`.
  public var ownerUID: Int? = nil
  public var ownerGID: Int? = nil
  public var mode: Int? = nil
  public var ownedSince: Date? = nil
  /// The guest (or job) the group is kept for while it is not running.
  public var reservedFor: String? = nil
  public var reservedSince: Date? = nil
  /// Kept across reboots and hot-plug by generated udev rules and `vfioctl reconcile`.
  public var persisted: Bool = false
  /// `/proc/sys/kernel/random/boot_id` when it was detached: a detachment that was not
  /// persisted ends with the boot it was made in.
  public var bootID: String? = nil
  /// `detach` or `vfs` (SR-IOV VFs created detached, which lowering the VF count may attach).
  public var detachedBy: String? = nil
  /// The owner reaches the group only through descriptors the broker grants: the nodes stay
  /// root's, mode 0600, whatever `ownership` says.
  public var brokerOnly: Bool = false
  /// An administrator is taking the group back (`attach` while the broker has it leased):
  /// set under the group's lock before the holder is asked to let go, so no new grant can
  /// slip in between the revoke and the attach.
  public var closing: Bool = false
  /// The process whose life bounds the reservation (libvirtd, for a domain its hook took the
  /// group for), by pid and start time: when it is gone and nothing holds the group's nodes,
  /// nobody will give the group back but `reconcile`. nil for a reservation that outlives its
  /// guest (`reserve`, or a domain marked to keep its groups).
  public var runnerPID: Int? = nil
  public var runnerStart: Int64? = nil

  /// The group's row, changed by `change`; a new row (state host) when there is none yet, so
  /// that what other commands recorded (owner, reservation) is never lost by a rewrite.
  static func update(_ db: Database, group: Int, _ change: (inout LedgerGroup) -> Void) throws {
    var record =
      try LedgerGroup.fetchOne(db, key: group)
      ?? LedgerGroup(id: group, state: .host, driver: nil, since: Date(), uid: Int(getuid()))
    change(&record)
    try record.save(db)
  }

  /// The group is the host's again: nothing of a user's stays with it. Ownership, reservation,
  /// persistence and the broker-only mark end with the detachment; a later detach starts from
  /// a host-owned group.
  mutating func returnToHost() {
    state = .host
    since = Date()
    ownerUID = nil
    ownerGID = nil
    mode = nil
    ownedSince = nil
    reservedFor = nil
    reservedSince = nil
    persisted = false
    brokerOnly = false
    closing = false
    runnerPID = nil
    runnerStart = nil
  }

  /// nil without an owner, and for values no uid, gid or mode can have (a tampered ledger
  /// must not reach chown with them).
  public var ownership: Ownership? {
    let ids = 0..<Int(UInt32.max)
    guard let ownerUID, ids.contains(ownerUID), ids.contains(ownerGID ?? 0), (0...0o777).contains(mode ?? 0) else {
      return nil
    }
    return Ownership(uid: ownerUID, gid: ownerGID ?? 0, mode: mode ?? Ownership.defaultMode)
  }

  /// What the group's nodes carry: the owner's, or root's 0600 for a broker-only owner.
  public var nodeOwnership: Ownership? {
    guard let ownership else { return nil }
    return brokerOnly ? .rootOnly : ownership
  }
}

/// A grant the broker made: the group's descriptors are in the hands of `pid` (uid `uid`).
/// It ends when that process no longer holds any of the group's nodes, and the group is then
/// reset and free for its owner again; a broker that restarts finds its leases here.
public struct LedgerLease: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "lease"
  public var groupID: Int
  public var uid: Int
  public var gid: Int
  public var pid: Int
  public var command: String
  /// `legacy` or `iommufd`.
  public var backend: String
  /// The device the grant named (a group grant names every endpoint; this is the first).
  public var device: String
  /// The guest the grant was for, when the group is reserved.
  public var guest: String?
  public var started: Date
  public var bootID: String?
  /// The holder's start time (`/proc/PID/stat` field 22, clock ticks since boot): with the
  /// boot, what tells the process from a later one that got the same pid.
  public var pidStart: Int64? = nil

  public init(
    groupID: Int, uid: Int, gid: Int, pid: Int, command: String, backend: String, device: String, guest: String?,
    started: Date = Date(), bootID: String?, pidStart: Int64? = nil
  ) {
    self.groupID = groupID
    self.uid = uid
    self.gid = gid
    self.pid = pid
    self.command = command
    self.backend = backend
    self.device = device
    self.guest = guest
    self.started = started
    self.bootID = bootID
    self.pidStart = pidStart
  }
}

/// uid, gid and mode for a group's VFIO nodes.
public struct Ownership: Codable, Sendable, Equatable, CustomStringConvertible {
  public static let defaultMode = 0o660
  public let uid: Int
  public let gid: Int
  public let mode: Int

  public init(uid: Int, gid: Int, mode: Int = Ownership.defaultMode) {
    self.uid = uid
    self.gid = gid
    self.mode = mode
  }

  public var description: String { "\(uid):\(gid) mode 0\(String(mode, radix: 8))" }
  /// What the kernel gives a fresh node, and what `disown` and broker-only groups keep.
  public static let rootOnly = Ownership(uid: 0, gid: 0, mode: 0o600)
}

/// One endpoint of a detached group and exactly what it had before.
public struct LedgerMember: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "member"
  public var groupID: Int
  public var address: String
  /// The card that was in the slot, so a different one in its place is noticed.
  public var vendorID: Int
  public var deviceID: Int
  public var originalDriver: String?
  public var originalOverride: String?

  public var pciAddress: PCIAddress? { try? PCIAddress(parsing: address) }
  public var original: DriverBinding { DriverBinding(driver: originalDriver, driverOverride: originalOverride) }
  public var identity: String { cardIdentity(vendorID: vendorID, deviceID: deviceID) }
  /// The card in the slot is the one that was detached (a different card keeps its binding).
  public func isSameCard(as device: PCIDevice) -> Bool {
    vendorID == Int(device.vendorID) && deviceID == Int(device.deviceID)
  }
}

/// `vendor:device` as lspci prints it: how the ledger names the card that was in a slot.
public func cardIdentity(vendorID: Int, deviceID: Int) -> String {
  hex(UInt16(truncatingIfNeeded: vendorID), width: 4) + ":" + hex(UInt16(truncatingIfNeeded: deviceID), width: 4)
}

extension PCIDevice {
  var cardIdentity: String { VFIOManager.cardIdentity(vendorID: Int(vendorID), deviceID: Int(deviceID)) }
}

extension Array where Element == LedgerMember {
  /// What each member was bound to before it was detached, as plans take it.
  var originalBindings: [PCIAddress: DriverBinding] {
    Dictionary(compactMap { member in member.pciAddress.map { ($0, member.original) } }, uniquingKeysWith: { a, _ in a })
  }
}

/// A plan being (or having been) executed on a group, and how far it got.
public struct LedgerOperation: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
  public static let databaseTableName = "operation"
  public enum Kind: String, Codable, Sendable, DatabaseValueConvertible {
    case detach, attach, reset
  }
  public enum Status: String, Codable, Sendable, DatabaseValueConvertible {
    case running
    case done
    /// A step failed and every device was put back.
    case rolledBack = "rolled-back"
    /// Interrupted, then finished or rolled back by the next command (see `detail`).
    case recovered
    /// Neither done nor undone: the devices need a look (the history says which).
    case failed
  }

  public var id: Int64?
  public var groupID: Int
  public var kind: Kind
  /// JSON of the `[PlanStep]` executed, numbered from 1 as `detach --dry-run` prints them.
  public var plan: String
  /// Steps performed and verified.
  public var stepsDone: Int
  public var status: Status
  public var started: Date
  public var finished: Date?
  public var pid: Int
  public var uid: Int
  public var command: String
  public var detail: String?

  public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

  public var steps: [PlanStep] { (try? JSONDecoder().decode([PlanStep].self, from: Data(plan.utf8))) ?? [] }
}

/// One line of the append-only history: who did what to which group, and how it ended.
public struct HistoryEntry: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
  public static let databaseTableName = "history"
  public var id: Int64?
  public var at: Date
  public var uid: Int
  public var pid: Int
  public var groupID: Int?
  public var command: String
  /// `ok`, `refused`, `failed`, `rolled-back`, `recovered`, `dry-run`.
  public var result: String
  public var detail: String

  public init(at: Date = Date(), uid: Int, pid: Int, groupID: Int?, command: String, result: String, detail: String) {
    self.at = at
    self.uid = uid
    self.pid = pid
    self.groupID = groupID
    self.command = HistoryEntry.bounded(command)
    self.result = result
    self.detail = HistoryEntry.bounded(detail)
  }

  public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

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
  private let writing = Mutex<Double>(0)

  /// Seconds spent in write transactions so far (what the ledger costs a command).
  public var secondsWriting: Double { writing.withLock { $0 } }

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

  public func group(_ id: Int) throws(ManagerError) -> LedgerGroup? {
    try read { db in try LedgerGroup.fetchOne(db, key: id) }
  }

  public func groups() throws(ManagerError) -> [LedgerGroup] {
    try read { db in try LedgerGroup.order(Column("id")).fetchAll(db) }
  }

  public func members(of group: Int) throws(ManagerError) -> [LedgerMember] {
    try read { db in
      try LedgerMember.filter(Column("groupID") == group).order(Column("address")).fetchAll(db)
    }
  }

  /// The operation on `group` that neither finished nor was undone, if any.
  public func unfinishedOperation(group: Int) throws(ManagerError) -> LedgerOperation? {
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

  public func operations(group: Int? = nil) throws(ManagerError) -> [LedgerOperation] {
    try read { db in
      var request = LedgerOperation.order(Column("id"))
      if let group { request = request.filter(Column("groupID") == group) }
      return try request.fetchAll(db)
    }
  }

  /// Groups (all, or those of `ids`) with their members, in one read: the broker reads this
  /// for every grant.
  public func groupsWithMembers(_ ids: [Int]? = nil) throws(ManagerError) -> [Int: (group: LedgerGroup, members: [LedgerMember])] {
    try read { db in
      let groups = try (ids.map { LedgerGroup.filter(keys: $0) } ?? LedgerGroup.all()).fetchAll(db)
      let members = try (ids.map { LedgerMember.filter($0.contains(Column("groupID"))) } ?? LedgerMember.all())
        .order(Column("address")).fetchAll(db)
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

  public func lease(group: Int) throws(ManagerError) -> LedgerLease? {
    try read { db in try LedgerLease.fetchOne(db, key: group) }
  }

  public func leases() throws(ManagerError) -> [LedgerLease] {
    try read { db in try LedgerLease.order(Column("groupID")).fetchAll(db) }
  }

  public func history(group: Int? = nil) throws(ManagerError) -> [HistoryEntry] {
    try read { db in
      var request = HistoryEntry.order(Column("id"))
      if let group { request = request.filter(Column("groupID") == group) }
      return try request.fetchAll(db)
    }
  }

  // MARK: Writing

  /// Runs `body` in one transaction.
  public func write<T>(_ body: (Database) throws -> T) throws(ManagerError) -> T {
    let start = monotonicSeconds()
    defer { writing.withLock { $0 += monotonicSeconds() - start } }
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
    var entry = entry
    try write { db in try entry.insert(db) }
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
  public static func reservations(_ records: [Int: LedgerRecord]) -> [Int: Assessor.Reservation] {
    records.compactMapValues { record in
      record.reservedFor.map { Assessor.Reservation(name: $0, ownerUID: record.owner?.uid, since: record.reservedSince ?? record.since) }
    }
  }

  /// Every group the ledger in `directory` holds away from the host, owns or reserves; empty
  /// without a ledger.
  public static func all(directory: String) throws(ManagerError) -> [Int: LedgerRecord] {
    guard let ledger = try Ledger.open(directory: directory, create: false) else { return [:] }
    var records: [Int: LedgerRecord] = [:]
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
