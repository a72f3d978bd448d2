import Foundation
import GRDB
import PCI
import VFIOHost

/// How often one caller was refused one group for one reason: the broker counts refusals
/// instead of writing a history row for each, so a caller who asks in a loop grows a number,
/// not the ledger.
public struct LedgerRefusal: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "refusal"
  public var uid: Int
  public var groupID: IOMMUGroupID
  /// The broker's error code (`not-owner`, `leased`, `reserved`, ...).
  public var code: String
  public var count: Int
  public var first: Date
  public var last: Date
  /// The last refusal's message.
  public var detail: String

  public init(uid: Int, groupID: IOMMUGroupID, code: String, count: Int = 1, first: Date = Date(), last: Date = Date(), detail: String) {
    self.uid = uid
    self.groupID = groupID
    self.code = code
    self.count = count
    self.first = first
    self.last = last
    self.detail = HistoryEntry.bounded(detail)
  }
}

/// How much history the ledger keeps: entries older than `maxAge` go, and the oldest beyond
/// `maxEntries`. Pruning is the only way rows leave the history (the database refuses any
/// other delete), and it leaves a line saying what it removed.
public struct HistoryRetention: Sendable, Equatable, CustomStringConvertible {
  public var maxAge: TimeInterval
  public var maxEntries: Int

  public init(maxAge: TimeInterval, maxEntries: Int) {
    self.maxAge = maxAge
    self.maxEntries = maxEntries
  }

  /// 90 days and 100,000 entries: a few tens of MB at most (README, "How large the ledger gets").
  public static let standard = HistoryRetention(maxAge: 90 * 86_400, maxEntries: 100_000)

  public var description: String { "\(Int(maxAge / 86_400)) days, \(maxEntries) entries" }
}

/// What a prune removed.
public struct PruneReport: Codable, Sendable, Equatable {
  public let historyRemoved: Int
  public let refusalsRemoved: Int
  public let historyKept: Int
}

/// What one pass of the broker decided, recorded in one transaction (group commit): a grant's
/// lease is durable before its descriptors leave, and a refused caller finds the refusal counted
/// when the answer arrives.
public struct BrokerRecords: Sendable {
  public var grants: [LedgerLease] = []
  /// Groups whose lease ended (nobody holds them any more).
  public var endedLeases: [IOMMUGroupID] = []
  public var history: [HistoryEntry] = []
  public var refusals: [LedgerRefusal] = []

  public init() {}

  public var isEmpty: Bool { grants.isEmpty && endedLeases.isEmpty && history.isEmpty && refusals.isEmpty }
}

extension HistoryEntry {
  /// The longest detail the history keeps: every string that reaches it is bounded, so a row
  /// has a size the retention policy can promise.
  public static let maximumDetail = 512

  static func bounded(_ text: String) -> String {
    text.utf8.count <= maximumDetail ? text : String(decoding: text.utf8.prefix(maximumDetail), as: UTF8.self) + "…"
  }
}

extension Ledger {
  /// Records a pass of the broker in one transaction, through statements prepared once per
  /// connection and bound column by column: a pass of 64 grants is 64 bindings of one
  /// statement, not 64 records encoded through `Codable` and 64 SQL texts compiled.
  public func recordBroker(_ records: BrokerRecords) throws(ManagerError) {
    guard !records.isEmpty else { return }
    try write { db in
      if !records.grants.isEmpty {
        let insert = try db.cachedStatement(
          sql: """
            INSERT INTO lease (groupID, uid, gid, pid, command, backend, device, guest, started, bootID, pidStart)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        for lease in records.grants {
          try insert.execute(arguments: [
            lease.groupID, lease.uid, lease.gid, lease.pid, lease.command, lease.backend, lease.device, lease.guest,
            lease.started, lease.bootID, lease.pidStart,
          ])
        }
      }
      if !records.endedLeases.isEmpty {
        let delete = try db.cachedStatement(sql: "DELETE FROM lease WHERE groupID = ?")
        for group in records.endedLeases { try delete.execute(arguments: [group]) }
      }
      for entry in records.history { try Self.insert(db, entry) }
      if !records.refusals.isEmpty {
        let upsert = try db.cachedStatement(
          sql: """
            INSERT INTO refusal (uid, groupID, code, count, first, last, detail) VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(uid, groupID, code) DO UPDATE SET
              count = count + excluded.count, last = excluded.last, detail = excluded.detail
            """)
        for refusal in records.refusals {
          try upsert.execute(arguments: [
            refusal.uid, refusal.groupID, refusal.code, refusal.count, refusal.first, refusal.last, refusal.detail,
          ])
        }
      }
    }
  }

  public func refusals(group: IOMMUGroupID? = nil) throws(ManagerError) -> [LedgerRefusal] {
    try read { db in
      var request = LedgerRefusal.order(Column("groupID"), Column("uid"), Column("code"))
      if let group { request = request.filter(Column("groupID") == group) }
      return try request.fetchAll(db)
    }
  }

  public func historyCount() throws(ManagerError) -> Int {
    try read { db in try HistoryEntry.fetchCount(db) }
  }

  /// Removes the leases recorded in another boot than `bootID` (their holders and descriptors
  /// died with it), saying so in the history; returns them. Without a boot id nothing is dropped.
  public func dropLeases(notOf bootID: String?, uid: Int, pid: Int, command: String) throws(ManagerError) -> [LedgerLease] {
    guard let bootID else { return [] }
    return try write { db in
      let stale = try LedgerLease.fetchAll(db).filter { $0.bootID != bootID }
      for lease in stale {
        _ = try LedgerLease.deleteOne(db, key: lease.groupID)
        var entry = HistoryEntry(
          uid: uid, pid: pid, groupID: lease.groupID, command: command, result: "lease-dropped",
          detail: "the lease of pid \(lease.pid) (uid \(lease.uid)) was made in an earlier boot: its holder is gone")
        try entry.insert(db)
      }
      return stale
    }
  }

  /// Applies `policy`: history entries older than its age or beyond its count, and refusal
  /// counts not bumped within its age, are removed; a history line records the prune.
  @discardableResult
  public func prune(
    _ policy: HistoryRetention, now: Date = Date(), uid: Int, pid: Int, command: String
  ) throws(ManagerError) -> PruneReport {
    try write { db in
      let total = try HistoryEntry.fetchCount(db)
      let cutoff = now.addingTimeInterval(-policy.maxAge)
      var upTo = try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM history WHERE at < ?", arguments: [cutoff]) ?? 0
      if total > policy.maxEntries {
        let beyond = try Int64.fetchOne(
          db, sql: "SELECT id FROM history ORDER BY id LIMIT 1 OFFSET ?", arguments: [total - policy.maxEntries - 1]) ?? 0
        upTo = max(upTo, beyond)
      }
      var removed = 0
      if upTo > 0 {
        try db.execute(sql: "INSERT INTO history_prune (upTo) VALUES (?)", arguments: [upTo])
        removed = try HistoryEntry.filter(Column("id") <= upTo).deleteAll(db)
        try db.execute(sql: "DELETE FROM history_prune")
      }
      let refusalsRemoved = try LedgerRefusal.filter(Column("last") < cutoff).deleteAll(db)
      if removed > 0 || refusalsRemoved > 0 {
        var entry = HistoryEntry(
          uid: uid, pid: pid, groupID: nil, command: command, result: "pruned",
          detail: "\(removed) history entries and \(refusalsRemoved) refusal counts removed (retention: \(policy))")
        try entry.insert(db)
      }
      return PruneReport(
        historyRemoved: removed, refusalsRemoved: refusalsRemoved, historyKept: try HistoryEntry.fetchCount(db))
    }
  }
}
