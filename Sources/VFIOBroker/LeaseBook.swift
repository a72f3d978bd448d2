import PCI
import VFIOHost
import VFIOBrokerClient
import VFIOManager

/// The broker's leases as a pure state machine: grants, releases, revocations, deadlines and
/// reaps go in, effects (answers, events, history lines, what to end or kill) come out. It
/// reads no clock (callers pass `now`), touches no socket, descriptor or file, so tests drive
/// every transition without sockets or sleeps; `Broker` carries the effects out.
struct LeaseBook {
  struct Lease: Equatable {
    var record: LedgerLease
    /// The connection the descriptors went to; nil once it released or closed, and for leases
    /// found in the ledger at start-up.
    var connection: UInt64?
    /// Ends (reset, then free) as soon as no process holds the group.
    var ending: Bool
  }

  /// Someone owed an answer when a lease ends, by `deadline` at the latest.
  struct Waiter: Equatable {
    let connection: UInt64
    let requestID: Int?
    var deadline: Double
    let force: Bool
    var forced: Bool
  }

  enum Effect: Equatable {
    /// An answer to a `release` or `revoke` request.
    case answer(connection: UInt64, requestID: Int?, kind: BrokerResponse.Kind, group: IOMMUGroupID, outcome: String, detail: String?)
    /// An event for the lease's connection and for the watchers of its uid (and root's).
    case notify(group: IOMMUGroupID, event: BrokerResponse.Event, detail: String, holder: UInt64?, uid: Int)
    case history(LedgerLease, result: String, detail: String)
    /// Kill whoever still holds the group (a forced revoke): found and signalled off the loop.
    case terminateHolders(group: IOMMUGroupID, lease: LedgerLease)
    /// The kernel's device requests for the group are no longer relayed.
    case stopRelaying(group: IOMMUGroupID)
    /// Leases are ending: check their holders soon.
    case reap
  }

  private(set) var leases: [IOMMUGroupID: Lease] = [:]
  /// Groups whose grant is being opened or recorded, by connection: a second grant of the same
  /// group is refused as if it were leased.
  private(set) var pending: [IOMMUGroupID: UInt64] = [:]
  private(set) var revocations: [IOMMUGroupID: Waiter] = [:]
  private(set) var releases: [IOMMUGroupID: Waiter] = [:]

  /// How long a `release` waits for the group to be free before it is answered "pending".
  static let releaseWait = 10.0
  /// How long a forced revoke waits after the kill.
  static let forcedWait = 10.0

  var leasedGroups: [IOMMUGroupID] { leases.keys.sorted() }

  /// The lease (or grant in progress) that makes `group` busy.
  func holding(_ group: IOMMUGroupID) -> LedgerLease? { leases[group]?.record }
  func isPending(_ group: IOMMUGroupID) -> Bool { pending[group] != nil }

  /// Leases found in the ledger at start-up: their holders have the descriptors still, so they
  /// end once nobody holds the group.
  mutating func restore(_ records: [LedgerLease]) {
    for record in records { leases[record.groupID] = Lease(record: record, connection: nil, ending: true) }
  }

  mutating func beginGrant(group: IOMMUGroupID, connection: UInt64) { pending[group] = connection }

  /// The grant could not be opened or recorded: the group is free again (and a revoke that
  /// waited for it has nothing to take back).
  mutating func abandonGrant(group: IOMMUGroupID) -> [Effect] {
    pending[group] = nil
    guard leases[group] == nil, let revocation = revocations.removeValue(forKey: group) else { return [] }
    return [
      .answer(connection: revocation.connection, requestID: revocation.requestID, kind: .revoked, group: group, outcome: "none", detail: nil)
    ]
  }

  /// The grant's lease is durable. With `connection` nil the client left before its answer:
  /// the lease ends like any other.
  mutating func granted(_ record: LedgerLease, connection: UInt64?) -> [Effect] {
    let group = record.groupID
    pending[group] = nil
    leases[group] = Lease(record: record, connection: connection, ending: connection == nil)
    var effects: [Effect] =
      connection == nil ? [.history(record, result: "lease-ending", detail: "client gone before the grant was sent"), .reap] : []
    // A revoke that came while this grant was being made: the new holder is asked at once.
    if revocations[group] != nil {
      leases[group]?.ending = true
      effects += [
        .notify(
          group: group, event: .deviceRequest, detail: "the administrator asks for group \(group) back",
          holder: connection, uid: record.uid),
        .history(record, result: "revoke", detail: "asked pid \(record.pid) to release (revoked while being granted)"),
        .reap,
      ]
    }
    return effects
  }

  /// The holder gives the group back; answered once the group is free (or after `releaseWait`).
  mutating func release(group: IOMMUGroupID, connection: UInt64, requestID: Int?, now: Double) throws(BrokerError) -> [Effect] {
    guard let lease = leases[group], lease.connection == connection else {
      throw BrokerError(.invalidTarget, "no lease of group \(group) on this connection")
    }
    releases[group] = Waiter(
      connection: connection, requestID: requestID, deadline: now + Self.releaseWait, force: false, forced: false)
    return end(group)
  }

  /// A connection closed: its leases end, and nobody there is owed an answer any more.
  mutating func connectionClosed(_ id: UInt64) -> [Effect] {
    var effects: [Effect] = []
    for (group, lease) in leases where lease.connection == id { effects += end(group) }
    for (group, waiting) in pending where waiting == id { pending[group] = nil }
    revocations = revocations.filter { $0.value.connection != id }
    releases = releases.filter { $0.value.connection != id }
    return effects
  }

  /// Root asks for the group back: the holder is told now, and the lease ends when it lets go,
  /// or at `wait` (killed first when `force`).
  mutating func revoke(group: IOMMUGroupID, connection: UInt64, requestID: Int?, wait: Double, force: Bool, now: Double)
    -> [Effect]
  {
    guard var lease = leases[group] else {
      if pending[group] != nil {
        // Being granted right now: the revoke waits for the lease, then takes it back.
        revocations[group] = Waiter(connection: connection, requestID: requestID, deadline: now + wait, force: force, forced: false)
        return []
      }
      return [.answer(connection: connection, requestID: requestID, kind: .revoked, group: group, outcome: "none", detail: nil)]
    }
    revocations[group] = Waiter(connection: connection, requestID: requestID, deadline: now + wait, force: force, forced: false)
    lease.ending = true
    leases[group] = lease
    return [
      .notify(
        group: group, event: .deviceRequest, detail: "the administrator asks for group \(group) back within \(Int(wait)) s",
        holder: lease.connection, uid: lease.record.uid),
      .history(lease.record, result: "revoke", detail: "asked pid \(lease.record.pid) to release within \(wait) s"),
      .reap,
    ]
  }

  /// The kernel asks for the group (an unbind of a held device): relayed to the holder.
  func kernelRequest(group: IOMMUGroupID) -> [Effect] {
    guard let lease = leases[group] else { return [] }
    return [
      .notify(
        group: group, event: .deviceRequest, detail: "the kernel asks for group \(group) back (VFIO device request)",
        holder: lease.connection, uid: lease.record.uid)
    ]
  }

  /// Deadlines passed by `now`.
  mutating func tick(now: Double) -> [Effect] {
    var effects: [Effect] = []
    for (group, revocation) in revocations where now >= revocation.deadline {
      if revocation.force && !revocation.forced, let lease = leases[group] {
        revocations[group]?.forced = true
        revocations[group]?.deadline = now + Self.forcedWait
        effects.append(.terminateHolders(group: group, lease: lease.record))
      } else {
        revocations[group] = nil
        effects.append(
          .answer(connection: revocation.connection, requestID: revocation.requestID, kind: .revoked, group: group, outcome: "timeout", detail: nil))
        // Not given back in time: the holder keeps it, unless its connection is gone already.
        if let lease = leases[group] { leases[group]?.ending = lease.connection == nil }
      }
    }
    for (group, release) in releases where now >= release.deadline {
      releases[group] = nil
      effects.append(
        .answer(
          connection: release.connection, requestID: release.requestID, kind: .released, group: group, outcome: "pending",
          detail: "still held; the lease ends when its holders close the descriptors"))
    }
    return effects
  }

  /// The leases to check for holders now.
  var ending: [IOMMUGroupID: LedgerLease] { leases.filter { $0.value.ending }.mapValues(\.record) }

  /// Nobody holds the group any more: the lease is over. `reset` is nil when the group was no
  /// longer detached (not the broker's to reset).
  mutating func ended(group: IOMMUGroupID, reset: LeaseReset?) -> [Effect] {
    guard let lease = leases.removeValue(forKey: group) else { return [] }
    var effects: [Effect] = [
      .stopRelaying(group: group),
      .notify(group: group, event: .leaseEnded, detail: "group \(group) is free again", holder: lease.connection, uid: lease.record.uid),
    ]
    if let reset {
      effects.append(
        .notify(
          group: group, event: .resetDone, detail: reset == .done ? "group \(group) was reset" : reset.history.detail,
          holder: lease.connection, uid: lease.record.uid))
    }
    if let revocation = revocations.removeValue(forKey: group) {
      effects.append(
        .answer(
          connection: revocation.connection, requestID: revocation.requestID, kind: .revoked, group: group,
          outcome: revocation.forced ? "forced" : "released", detail: nil))
    }
    if let release = releases.removeValue(forKey: group) {
      effects.append(
        .answer(
          connection: release.connection, requestID: release.requestID, kind: .released, group: group, outcome: "released",
          detail: reset.map { $0.history.detail }))
    }
    return effects
  }

  /// The lease stops belonging to its connection; it ends once nobody holds the group.
  private mutating func end(_ group: IOMMUGroupID) -> [Effect] {
    guard var lease = leases[group] else { return [] }
    lease.connection = nil
    lease.ending = true
    leases[group] = lease
    return [.reap]
  }
}
