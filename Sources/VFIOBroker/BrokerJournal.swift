import Dispatch
import Foundation
import Logging
import PCI
import VFIOBrokerClient
import VFIOHost
import VFIOManager

/// The broker's side of the ledger. On the loop it collects what each pass decided (grants,
/// refusals, ended leases, history) and what waits for that to be durable; one write at a
/// time runs on its own queue with everything decided meanwhile (group commit), and the
/// waiters run back on the loop once it committed (or failed: a grant is then withdrawn). It
/// also keeps the loop's copy of the ledger's groups, reread only when another process
/// committed since, and applies the history's retention now and then.
///
/// The ledger has one connection, and a write or a prune holds it: the loop reads (the
/// version check, the groups) only while neither is in flight, and a request that needs the
/// groups meanwhile waits in `recordWaiters` for the write to finish instead of the loop
/// waiting for the disk.
///
/// Confined to the broker's loop thread; the writer's closures touch only the ledger and the
/// logger, and come back through `onLoop`.
final class BrokerJournal: @unchecked Sendable {
  let ledger: Ledger
  private let logger: Logger
  private let retention: HistoryRetention
  private let onLoop: (@escaping @Sendable () -> Void) -> Void
  private let writer = DispatchQueue(label: "swift-vfio broker ledger")

  private var batch = BrokerRecords()
  private var afterCommit: [(Bool) -> Void] = []
  private var writeInFlight = false
  /// What waits for the write in flight.
  private var committing: [(Bool) -> Void] = []
  private var historySincePrune = 0
  private var lastPrune = 0.0
  private var pruneInFlight = false
  /// What waits for the ledger's groups until the write or prune in flight has finished.
  private var recordWaiters: [(Result<Records, BrokerError>) -> Void] = []

  typealias Records = [IOMMUGroupID: (group: LedgerGroup, members: [LedgerMember])]

  /// The ledger's groups and members as of `recordsVersion`.
  private var records: Records = [:]
  private(set) var recordsVersion: Int?

  init(
    ledger: Ledger, logger: Logger, retention: HistoryRetention,
    onLoop: @escaping (@escaping @Sendable () -> Void) -> Void
  ) {
    self.ledger = ledger
    self.logger = logger
    self.retention = retention
    self.onLoop = onLoop
  }

  // MARK: What a pass decided

  /// A lease to record before its descriptors leave; `then` learns whether it is durable.
  func grant(_ lease: LedgerLease, detail: String, then: @escaping (Bool) -> Void) {
    batch.grants.append(lease)
    batch.history.append(Self.historyEntry(lease, "granted", detail))
    afterCommit.append(then)
  }

  /// A refused `open`, counted (not a row each); `then` answers it once the count committed.
  func refusal(_ refusal: LedgerRefusal, then: @escaping (Bool) -> Void) {
    batch.refusals.append(refusal)
    afterCommit.append(then)
  }

  /// A lease that ended, with what happened to its group; `then` runs once that is recorded.
  func ended(_ lease: LedgerLease, history: [(result: String, detail: String)], then: @escaping (Bool) -> Void) {
    batch.endedLeases.append(lease.groupID)
    for entry in history { batch.history.append(Self.historyEntry(lease, entry.result, entry.detail)) }
    afterCommit.append(then)
  }

  /// A line of history about a lease, with the next write.
  func history(_ lease: LedgerLease, _ result: String, _ detail: String) {
    batch.history.append(Self.historyEntry(lease, result, detail))
  }

  // MARK: Writing

  /// Records what the passes decided, on the writer's queue; one write at a time, and whatever
  /// is decided meanwhile goes with the next.
  func commit() {
    guard !writeInFlight, !batch.isEmpty || !afterCommit.isEmpty else { return }
    let records = batch
    let waiting = afterCommit
    batch = BrokerRecords()
    afterCommit = []
    historySincePrune += records.history.count
    guard !records.isEmpty else {
      for item in waiting { item(true) }
      return
    }
    writeInFlight = true
    committing = waiting
    let ledger = self.ledger
    let logger = self.logger
    writer.async { [self] in
      let committed: Bool
      do {
        try ledger.recordBroker(records)
        committed = true
      } catch {
        logger.error("ledger write failed; grants withheld", metadata: ["error": "\(error)"])
        committed = false
      }
      onLoop { [self] in
        writeInFlight = false
        let done = committing
        committing = []
        for item in done { item(committed) }
        ledgerIsFree()
      }
    }
  }

  /// Applies the retention policy hourly, or sooner when the history grew by 5,000 lines.
  func pruneIfDue(now: Double) {
    guard now - lastPrune > 3600 || historySincePrune > 5_000 else { return }
    lastPrune = now
    historySincePrune = 0
    pruneInFlight = true
    let ledger = self.ledger
    let policy = retention
    let logger = self.logger
    writer.async { [self] in
      defer {
        onLoop { [self] in
          pruneInFlight = false
          ledgerIsFree()
        }
      }
      do {
        let report = try ledger.prune(policy, uid: Int(getuid()), pid: Int(getpid()), command: "broker (retention)")
        if report.historyRemoved > 0 {
          logger.info("history pruned", metadata: ["removed": "\(report.historyRemoved)", "kept": "\(report.historyKept)"])
        }
      } catch {
        logger.warning("history prune failed", metadata: ["error": "\(error)"])
      }
    }
  }

  /// Waits for the write in flight and the prunes queued before it (at shutdown).
  func drain() { writer.sync {} }

  // MARK: Reading

  /// Runs `body` on the loop with the ledger's groups as they are now: at once when the
  /// ledger's connection is free, else as soon as the write or prune in flight has finished,
  /// in the order asked.
  func withRecords(_ body: @escaping (Result<Records, BrokerError>) -> Void) {
    guard !writeInFlight && !pruneInFlight else {
      recordWaiters.append(body)
      return
    }
    body(Result { () throws(BrokerError) in try currentRecords() })
  }

  /// The write or prune in flight finished: what waited for the groups reads them (once for
  /// all of them), then the next write starts with what they decided.
  private func ledgerIsFree() {
    guard !writeInFlight && !pruneInFlight else { return }
    if !recordWaiters.isEmpty {
      let waiting = recordWaiters
      recordWaiters = []
      let records = Result { () throws(BrokerError) in try currentRecords() }
      for body in waiting { body(records) }
    }
    commit()
  }

  /// The ledger's groups and members, reread when another process (an administrator's
  /// vfioctl) committed since the last read. Only while no write or prune is in flight.
  private func currentRecords() throws(BrokerError) -> Records {
    let version = try read(try ledger.dataVersion())
    if version != recordsVersion {
      records = try read(try ledger.groupsWithMembers())
      recordsVersion = version
    }
    return records
  }

  private func read<T>(_ body: @autoclosure () throws(ManagerError) -> T) throws(BrokerError) -> T {
    do {
      return try body()
    } catch {
      throw BrokerError(.ledger, "the ledger cannot be read: \(error)", next: "`vfioctl status` as root says more")
    }
  }

  static func historyEntry(_ lease: LedgerLease, _ result: String, _ detail: String) -> HistoryEntry {
    HistoryEntry(
      uid: lease.uid, pid: lease.pid, groupID: lease.groupID, command: "broker \(lease.command)", result: result,
      detail: detail)
  }
}
