import CVFIO
import Dispatch
import Foundation
import Logging
import Synchronization
import VFIO
import VFIOHost
import VFIOManager

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The intermediary of the VFIO design: owns the groups on their users' behalf and hands each
/// caller, known by SO_PEERCRED, the open descriptors of exactly the groups the ledger gives it.
///
/// One thread runs a level-triggered epoll loop over the listening sockets, every connection
/// (non-blocking, so no thread waits on an idle client), the kernel's device-request eventfds
/// and a wake eventfd. Grants made in one pass of the loop are recorded in one ledger
/// transaction before any of their descriptors leaves (group commit). What may take long
/// (walking /proc for holders, resetting a device) runs on a worker queue and comes back
/// through the wake eventfd; the loop's own state is touched by the loop only.
public final class Broker: @unchecked Sendable {
  public struct Configuration: Sendable {
    public static let defaultSocket = "/run/swift-vfio/broker.sock"
    public var stateDirectory: String
    public var maxConnections: Int
    /// Bytes queued for a client that does not read before it is dropped.
    public var maxQueuedOutput: Int
    /// A client that leaves a message half sent (or does not read) this long is dropped.
    public var stalledAfter: Double
    /// How often ended leases are checked for remaining holders.
    public var reapInterval: Double
    public var server: String

    public init(
      stateDirectory: String = Ledger.defaultDirectory, maxConnections: Int = 8192, maxQueuedOutput: Int = 1 << 20,
      stalledAfter: Double = 10, reapInterval: Double = 0.2, server: String = "swift-vfio broker"
    ) {
      self.stateDirectory = stateDirectory
      self.maxConnections = maxConnections
      self.maxQueuedOutput = maxQueuedOutput
      self.stalledAfter = stalledAfter
      self.reapInterval = reapInterval
      self.server = server
    }
  }

  public let configuration: Configuration
  let source: any GrantSource
  let ledger: Ledger
  let logger: Logger
  let bootID: String?

  private let epoll: Descriptor
  private let wake: Descriptor
  private var listeners: [Descriptor] = []
  private var connections: [UInt64: Connection] = [:]
  private var nextConnection: UInt64 = 1
  private var leases: [Int: ActiveLease] = [:]
  /// Answers owed when a lease ends: to `revoke` (root) and to `release` (the holder).
  private var revocations: [Int: Waiter] = [:]
  private var releases: [Int: Waiter] = [:]
  private var pendingGrants: [PendingGrant] = []
  /// The ledger's groups and members as of `recordsVersion`, reread when another process
  /// (an administrator's vfioctl, a reset) has committed since: every grant is decided on the
  /// ledger as it is, without decoding it anew each time.
  private var records: [Int: (group: LedgerGroup, members: [LedgerMember])] = [:]
  private var recordsVersion: Int?
  private var pendingHistory: [HistoryEntry] = []
  /// Refusals of `open`, answered after the pass's commit like grants: a client that was told
  /// no finds its refusal in the history.
  private var pendingRefusals: [(connection: UInt64, response: BrokerResponse)] = []
  private var lastReap = 0.0
  private var reapInFlight = false
  private var reapSoon = false
  private let stopping = Atomic<Bool>(false)
  private let finished = Mutex<[ReapOutcome]>([])
  private let worker = DispatchQueue(label: "swift-vfio broker worker")

  /// Counters for tests and the benchmark.
  public struct Statistics: Sendable, Equatable {
    public var accepted = 0
    public var granted = 0
    public var refused = 0
    public var leasesEnded = 0
    public var dropped = 0
  }
  private let statistics = Mutex(Statistics())
  public var stats: Statistics { statistics.withLock { $0 } }

  public init(source: any GrantSource, ledger: Ledger, configuration: Configuration, logger: Logger, bootID: String?)
    throws(BrokerError)
  {
    self.source = source
    self.ledger = ledger
    self.configuration = configuration
    self.logger = logger
    self.bootID = bootID
    let epfd = cvfio_epoll_create()
    guard epfd >= 0 else { throw BrokerError(.internalError, "epoll_create: \(String(cString: strerror(-epfd)))") }
    epoll = Descriptor(epfd)
    let efd = cvfio_eventfd(0, cvfio_EFD_NONBLOCK)
    guard efd >= 0 else { throw BrokerError(.internalError, "eventfd: \(String(cString: strerror(-efd)))") }
    wake = Descriptor(efd)
    _ = cvfio_epoll_add(epfd, efd, Token.wake.raw)
    // Leases outlive the broker: their holders still have the descriptors. They are ended
    // (and the group reset) once the holders are gone.
    do {
      for lease in try ledger.leases() {
        leases[lease.groupID] = ActiveLease(record: lease, connection: nil, requestEvent: nil, ending: true)
      }
    } catch {
      throw BrokerError(.ledger, "the ledger's leases cannot be read: \(error)", next: "`vfioctl status` checks the ledger")
    }
    if !leases.isEmpty {
      logger.info("leases from the ledger", metadata: ["groups": "\(leases.keys.sorted())"])
    }
  }

  /// Serves `fd`, a listening Unix stream socket (its own or one systemd passed).
  public func serve(listener fd: Int32) {
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    listeners.append(Descriptor(fd))
    _ = cvfio_epoll_add(epoll.fd, fd, Token.listener(listeners.count - 1).raw)
  }

  /// Ends `run` from any thread (SIGTERM).
  public func stop() {
    stopping.store(true, ordering: .releasing)
    var one: UInt64 = 1
    _ = Glibc.write(wake.fd, &one, 8)
  }

  /// The leases now, by group (for tests).
  public var leasedGroups: [Int] { leases.keys.sorted() }

  // MARK: The loop

  public func run() {
    logger.info("serving", metadata: ["listeners": "\(listeners.count)", "leases": "\(leases.count)"])
    var tokens = [UInt64](repeating: 0, count: 64)
    while !stopping.load(ordering: .acquiring) {
      let timeout = Int32(configuration.reapInterval * 1000)
      let n = tokens.withUnsafeMutableBufferPointer { cvfio_epoll_wait(epoll.fd, $0.baseAddress, 64, timeout) }
      if n < 0 && -n != EINTR {
        logger.critical("epoll_wait failed", metadata: ["errno": "\(-n)"])
        break
      }
      for token in tokens.prefix(Int(max(n, 0))) {
        switch Token(raw: token) {
        case .wake: drainWake()
        case .listener(let index): accept(from: listeners[index].fd)
        case .connection(let id): service(id)
        case .request(let group): relayRequest(group)
        }
      }
      commit()
      housekeeping()
    }
    // Leases stay as they are: the ledger has them, and the next broker ends them.
    for connection in connections.values { _ = cvfio_epoll_del(epoll.fd, connection.socket.fd) }
    connections = [:]
    worker.sync {}
    logger.info("stopped")
  }

  private func drainWake() {
    var value: UInt64 = 0
    _ = Glibc.read(wake.fd, &value, 8)
    let outcomes = finished.withLock { done -> [ReapOutcome] in
      defer { done = [] }
      return done
    }
    for outcome in outcomes { apply(outcome) }
  }

  private func accept(from listener: Int32) {
    while true {
      let fd = cvfio_accept(listener)
      if fd < 0 {
        if -fd == EMFILE || -fd == ENFILE { logger.warning("out of descriptors; not accepting now") }
        return
      }
      let socket = Descriptor(fd)
      guard connections.count < configuration.maxConnections, let peer = PeerCredentials.of(fd) else {
        // Told why, best effort, and gone: the daemon keeps serving those it has.
        if let bytes = try? Wire.encode(
          BrokerResponse.failure(BrokerError(.busy, "the broker is at its connection limit", next: "try again"), id: nil))
        {
          _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        }
        statistics.withLock { $0.dropped += 1 }
        continue
      }
      let id = nextConnection
      nextConnection += 1
      connections[id] = Connection(id: id, socket: socket, peer: peer, now: monotonicSeconds())
      _ = cvfio_epoll_add(epoll.fd, fd, Token.connection(id).raw)
      statistics.withLock { $0.accepted += 1 }
    }
  }

  private func service(_ id: UInt64) {
    guard let connection = connections[id] else { return }
    if !connection.output.isEmpty && !flush(connection) { return }
    var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    // A few reads per wakeup, then the others' turn: one busy client cannot starve the rest.
    for _ in 0..<4 {
      // A client has no business sending descriptors: any that come are closed at once.
      let got: (count: Int, descriptors: [Int32], truncated: Bool)
      do {
        got = try UnixSocket.receive(connection.socket.fd, into: &buffer, maxDescriptors: 0)
      } catch {
        if error.wouldBlock || error.errno == EINTR { return }
        drop(id, why: "receive failed: \(error)")
        return
      }
      do {
        if got.count == 0 {
          drop(id, why: connection.decoder.pending > 0 ? "ended mid-message" : nil)
          return
        }
        connection.lastProgress = monotonicSeconds()
        let messages: [[UInt8]]
        do {
          messages = try connection.decoder.feed(buffer[0..<got.count])
        } catch {
          // The stream's framing is lost: answer once, then hang up.
          send(.failure(error, id: nil), to: connection)
          connection.closeAfterFlush = true
          if connection.output.isEmpty { drop(id, why: error.message) }
          return
        }
        for message in messages {
          handle(message, from: connection)
          if connections[id] == nil { return }
        }
        if got.count < buffer.count { return }
      }
    }
  }

  private func handle(_ body: [UInt8], from connection: Connection) {
    let request: BrokerRequest
    do {
      request = try Wire.decode(BrokerRequest.self, from: body)
    } catch {
      send(.failure(error, id: nil), to: connection)
      return
    }
    do {
      switch request.type {
      case .hello:
        if let version = request.version, version != Wire.version {
          throw BrokerError(.version, "this broker speaks protocol \(Wire.version), not \(version)")
        }
        var response = BrokerResponse(.hello, id: request.id)
        response.version = Wire.version
        response.server = configuration.server
        response.uid = connection.peer.uid
        response.gid = connection.peer.gid
        send(response, to: connection)
      case .list:
        send(try list(for: connection, id: request.id), to: connection)
      case .open:
        try open(request, for: connection)
      case .release:
        guard let group = request.group, let lease = leases[group], lease.connection == connection.id else {
          throw BrokerError(.invalidTarget, "no lease of group \(request.group.map(String.init) ?? "(none)") on this connection")
        }
        // Answered once the group is free again (nobody holds it, reset done), so that the
        // client can ask for it anew; or after a bound, saying who still holds it.
        releases[group] = Waiter(
          connection: connection.id, requestID: request.id, deadline: monotonicSeconds() + 10, force: false, forced: false)
        end(lease, why: "released by pid \(connection.peer.pid)")
      case .watch:
        connection.watching = true
        send(BrokerResponse(.watching, id: request.id), to: connection)
      case .revoke:
        try revoke(request, for: connection)
      }
    } catch let error as BrokerError {
      if request.type == .open {
        pendingRefusals.append((connection.id, .failure(error, id: request.id)))
      } else {
        send(.failure(error, id: request.id), to: connection)
      }
    } catch {
      send(.failure(BrokerError(.internalError, "\(error)"), id: request.id), to: connection)
    }
  }

  // MARK: Requests

  private func list(for connection: Connection, id: Int?) throws(BrokerError) -> BrokerResponse {
    let caller = connection.peer
    let records = try currentRecords().values
      .filter { $0.group.state == .detached && ($0.group.ownerUID == caller.uid || caller.uid == 0) }
      .sorted { $0.group.id < $1.group.id }
    let assessed = source.assess(groups: records.map(\.group.id))
    var groups: [BrokerGroup] = []
    for (record, recorded) in records {
      let members = recorded.compactMap(\.pciAddress)
      let view = assessed[record.id]
      let lease = leases[record.id]
      groups.append(
        BrokerGroup(
          group: record.id, devices: members.map(\.description), owner: record.ownerUID ?? 0,
          reservedFor: record.reservedFor, leasedTo: lease?.record.pid,
          verdict: lease != nil ? "leased" : (view?.verdict ?? "unknown"), reasons: view?.reasons ?? [],
          backends: [Backend.legacy, .iommufd].filter { source.resolve($0, devices: members) == $0 }.map(\.rawValue)))
    }
    var response = BrokerResponse(.groups, id: id)
    response.groups = groups
    response.memlock = MemlockBudget(accounting: "process", limit: source.memlockLimit(pid: caller.pid))
    return response
  }

  private func open(_ request: BrokerRequest, for connection: Connection) throws(BrokerError) {
    let caller = connection.peer
    let (group, devices) = try resolveTarget(request.target)
    let backend = try parseBackend(request.backend)
    let recorded = try currentRecords()[group]
    do {
      try GrantPolicy.decide(
        caller: caller, group: group, record: recorded?.group,
        lease: leases[group]?.record ?? pendingGrants.first { $0.lease.groupID == group }?.lease, guest: request.guest)
    } catch {
      refuse(group: group, caller: caller, error)
      throw error
    }
    let members = (recorded?.members ?? []).compactMap(\.pciAddress)
    let wanted = devices ?? members
    guard !wanted.isEmpty, wanted.allSatisfy(members.contains) else {
      throw BrokerError(.invalidTarget, "\(request.target ?? "") is not a detached endpoint of group \(group)")
    }
    let resolved = source.resolve(backend, devices: wanted)
    let opened: OpenedGrant
    do {
      opened = try source.open(group: group, devices: wanted, backend: resolved)
    } catch {
      refuse(group: group, caller: caller, error)
      throw error
    }
    let lease = LedgerLease(
      groupID: group, uid: caller.uid, gid: caller.gid, pid: caller.pid, command: command(of: caller.pid),
      backend: resolved.rawValue, device: wanted[0].description, guest: request.guest, bootID: bootID)
    pendingGrants.append(PendingGrant(connection: connection.id, requestID: request.id, lease: lease, opened: opened))
  }

  private func revoke(_ request: BrokerRequest, for connection: Connection) throws(BrokerError) {
    guard connection.peer.uid == 0 else {
      throw BrokerError(.notPermitted, "only root may revoke a lease")
    }
    guard let group = request.group else { throw BrokerError(.invalidTarget, "revoke needs a group") }
    guard let lease = leases[group] else {
      var response = BrokerResponse(.revoked, id: request.id)
      response.group = group
      response.outcome = "none"
      send(response, to: connection)
      return
    }
    let wait = min(max(request.wait ?? 10, 0), 3600)
    revocations[group] = Waiter(
      connection: connection.id, requestID: request.id, deadline: monotonicSeconds() + wait, force: request.force ?? false,
      forced: false)
    notify(lease, .deviceRequest, "the administrator asks for group \(group) back within \(Int(wait)) s")
    lease.ending = true
    pendingHistory.append(Broker.historyEntry(lease.record, "revoke", "asked pid \(lease.record.pid) to release within \(wait) s"))
  }

  private func resolveTarget(_ text: String?) throws(BrokerError) -> (group: Int, devices: [PCIAddress]?) {
    guard let text, !text.isEmpty, text.count <= 32 else {
      throw BrokerError(.invalidTarget, "open needs a target: a PCI address or an IOMMU group number")
    }
    // Parsed, never used as a path: the broker opens only nodes it derives itself.
    let selector: Selector
    do {
      selector = try Selector(parsing: text)
    } catch {
      throw BrokerError(.invalidTarget, "'\(text)' is neither a PCI address nor a group number: \(error)")
    }
    switch selector {
    case .group(let id): return (id, nil)
    case .device(let address):
      guard let group = try currentRecords().values.first(where: { record in
        record.members.contains { $0.address == address.description }
      })?.group.id else {
        throw BrokerError(.notDetached, "\(address) is in no group swift-vfio detached", next: "`vfioctl list` shows its group")
      }
      return (group, [address])
    }
  }

  private func parseBackend(_ text: String?) throws(BrokerError) -> Backend {
    guard let text else { return .auto }
    guard let backend = Backend(rawValue: text) else {
      throw BrokerError(.invalidTarget, "backend must be legacy, iommufd or auto, not '\(text.prefix(32))'")
    }
    return backend
  }

  private func refuse(group: Int?, caller: PeerCredentials, _ error: BrokerError) {
    statistics.withLock { $0.refused += 1 }
    pendingHistory.append(
      HistoryEntry(
        uid: caller.uid, pid: caller.pid, groupID: group, command: "broker open", result: "refused",
        detail: "[\(error.code.rawValue)] \(error.message)"))
  }

  // MARK: Group commit

  /// Records this pass's grants and history in one transaction, then sends the grants. A
  /// grant whose record did not commit is never sent.
  private func commit() {
    defer { answerRefusals() }
    guard !pendingGrants.isEmpty || !pendingHistory.isEmpty else { return }
    let grants = pendingGrants
    let entries = pendingHistory + grants.map { Broker.historyEntry($0.lease, "granted", "\($0.lease.backend): \($0.opened.descriptors.count) descriptors") }
    pendingGrants = []
    pendingHistory = []
    do {
      try ledger.write { db in
        for grant in grants { try grant.lease.insert(db) }
        for var entry in entries { try entry.insert(db) }
      }
    } catch {
      logger.error("ledger write failed; grants withheld", metadata: ["error": "\(error)"])
      for grant in grants {
        guard let connection = connections[grant.connection] else { continue }
        send(.failure(BrokerError(.ledger, "the grant could not be recorded: \(error)"), id: grant.requestID), to: connection)
      }
      return
    }
    for grant in grants {
      let lease = ActiveLease(
        record: grant.lease, connection: grant.connection, requestEvent: grant.opened.requestEvent, ending: false)
      leases[grant.lease.groupID] = lease
      if let event = grant.opened.requestEvent {
        _ = cvfio_epoll_add(epoll.fd, event.fd, Token.request(grant.lease.groupID).raw)
      }
      statistics.withLock { $0.granted += 1 }
      guard let connection = connections[grant.connection] else {
        // Gone before its answer: the lease ends like any other.
        end(lease, why: "client gone before the grant was sent")
        continue
      }
      connection.leases.insert(grant.lease.groupID)
      var response = BrokerResponse(.granted, id: grant.requestID)
      response.group = grant.lease.groupID
      response.backend = grant.lease.backend
      response.descriptors = grant.opened.descriptors.map(\.0)
      response.memlock = MemlockBudget(
        accounting: grant.opened.memlockAccounting, limit: source.memlockLimit(pid: connection.peer.pid))
      send(response, to: connection, descriptors: grant.opened.descriptors.map(\.1), keep: grant.opened)
      logger.info(
        "granted",
        metadata: [
          "group": "\(grant.lease.groupID)", "uid": "\(grant.lease.uid)", "pid": "\(grant.lease.pid)",
          "backend": "\(grant.lease.backend)",
        ])
    }
  }

  private func answerRefusals() {
    let refusals = pendingRefusals
    pendingRefusals = []
    for (id, response) in refusals {
      if let connection = connections[id] { send(response, to: connection) }
    }
  }

  // MARK: Leases

  /// The lease stops belonging to a connection; the worker ends it once nobody holds the group.
  private func end(_ lease: ActiveLease, why: String) {
    if let id = lease.connection { connections[id]?.leases.remove(lease.record.groupID) }
    lease.connection = nil
    lease.ending = true
    logger.info("lease ending", metadata: ["group": "\(lease.record.groupID)", "why": "\(why)"])
    // Now rather than at the next tick: a client that closed its descriptors first (as it
    // should) has the group back as soon as the reset is done.
    reapSoon = true
  }

  private func relayRequest(_ group: Int) {
    guard let lease = leases[group], let event = lease.requestEvent else { return }
    var count: UInt64 = 0
    _ = Glibc.read(event.fd, &count, 8)
    notify(lease, .deviceRequest, "the kernel asks for group \(group) back (VFIO device request)")
  }

  private func notify(_ lease: ActiveLease, _ event: BrokerResponse.Event, _ detail: String) {
    var message = BrokerResponse(.event)
    message.event = event
    message.group = lease.record.groupID
    message.detail = detail
    for connection in connections.values
    where connection.id == lease.connection
      || (connection.watching && (connection.peer.uid == lease.record.uid || connection.peer.uid == 0))
    {
      send(message, to: connection)
    }
  }

  private func housekeeping() {
    let now = monotonicSeconds()
    if reapSoon && !reapInFlight {
      reapSoon = false
      reap()
    }
    guard now - lastReap >= configuration.reapInterval else { return }
    lastReap = now
    for connection in connections.values where connection.stalled(now: now, after: configuration.stalledAfter) {
      drop(connection.id, why: "stalled for \(Int(configuration.stalledAfter)) s")
    }
    for (group, revocation) in revocations where now >= revocation.deadline {
      if revocation.force && !revocation.forced, let lease = leases[group] {
        revocations[group]?.forced = true
        revocations[group]?.deadline = now + 10
        let pids = Set([lease.record.pid] + (source.holders(of: [group: []])[group] ?? []).compactMap(\.pid))
        for pid in pids where pid > 1 { source.terminate(pid: pid) }
        pendingHistory.append(Broker.historyEntry(lease.record, "revoke", "forced: killed \(pids.sorted())"))
      } else {
        answer(&revocations, group, .revoked, outcome: "timeout")
        leases[group]?.ending = leases[group]?.connection == nil
      }
    }
    for (group, release) in releases where now >= release.deadline {
      answer(&releases, group, .released, outcome: "pending", detail: "still held; the lease ends when its holders close the descriptors")
    }
    reap()
  }

  /// Hands the ending leases to the worker: holders, then reset, then the ledger.
  private func reap() {
    guard !reapInFlight else { return }
    let candidates = leases.filter { $0.value.ending }.mapValues(\.record)
    guard !candidates.isEmpty else { return }
    reapInFlight = true
    let source = self.source
    let ledger = self.ledger
    worker.async { [self] in
      var outcomes: [ReapOutcome] = []
      let recorded = (try? ledger.groupsWithMembers(Array(candidates.keys))) ?? [:]
      let held = source.holders(of: candidates.mapValues { lease in
        (recorded[lease.groupID]?.members ?? []).compactMap(\.pciAddress)
      })
      var ended: [(group: Int, reset: LeaseReset?)] = []
      var entries: [HistoryEntry] = []
      for (group, lease) in candidates {
        if let holders = held[group], !holders.isEmpty {
          outcomes.append(.held(group))
          continue
        }
        // Reset only what is still ours: an attach may have given the group back meanwhile.
        let detached = recorded[group]?.group.state == .detached
        let reset = detached ? source.reset(group: group) : nil
        entries.append(Broker.historyEntry(lease, "lease-ended", "no process holds the group any more"))
        if let reset { entries.append(Broker.historyEntry(lease, reset.history.result, reset.history.detail)) }
        ended.append((group, reset))
      }
      // One transaction for the pass, as grants share one.
      do {
        try ledger.write { db in
          for lease in ended { _ = try LedgerLease.deleteOne(db, key: lease.group) }
          for var entry in entries { try entry.insert(db) }
        }
        outcomes += ended.map { .ended($0.group, reset: $0.reset) }
      } catch {
        outcomes += ended.map { .held($0.group) }
      }
      finished.withLock { $0.append(contentsOf: outcomes + [.pass]) }
      var one: UInt64 = 1
      _ = Glibc.write(wake.fd, &one, 8)
    }
  }

  private func apply(_ outcome: ReapOutcome) {
    switch outcome {
    case .pass:
      reapInFlight = false
    case .held:
      break
    case .ended(let group, let reset):
      guard let lease = leases.removeValue(forKey: group) else { return }
      if let event = lease.requestEvent { _ = cvfio_epoll_del(epoll.fd, event.fd) }
      statistics.withLock { $0.leasesEnded += 1 }
      notify(lease, .leaseEnded, "group \(group) is free again")
      if let reset { notify(lease, .resetDone, reset == .done ? "group \(group) was reset" : reset.history.detail) }
      answer(&revocations, group, .revoked, outcome: revocations[group]?.forced == true ? "forced" : "released")
      answer(&releases, group, .released, outcome: "released", detail: reset.map { $0.history.detail })
      logger.info("lease ended", metadata: ["group": "\(group)", "reset": "\(reset.map { $0.history.result } ?? "not ours")"])
    }
  }

  private func answer(
    _ waiters: inout [Int: Waiter], _ group: Int, _ type: BrokerResponse.Kind, outcome: String, detail: String? = nil
  ) {
    guard let waiter = waiters.removeValue(forKey: group), let connection = connections[waiter.connection] else { return }
    var response = BrokerResponse(type, id: waiter.requestID)
    response.group = group
    response.outcome = outcome
    response.detail = detail
    send(response, to: connection)
  }

  // MARK: Connections

  private func send(_ response: BrokerResponse, to connection: Connection, descriptors: [Int32] = [], keep: AnyObject? = nil) {
    guard let bytes = try? Wire.encode(response) else { return }
    connection.output.append(Outgoing(bytes: bytes, descriptors: descriptors, keep: keep))
    connection.queued += bytes.count
    if connection.queued > configuration.maxQueuedOutput {
      drop(connection.id, why: "does not read its answers")
      return
    }
    _ = flush(connection)
  }

  /// Writes what is queued; false when the connection was dropped.
  @discardableResult
  private func flush(_ connection: Connection) -> Bool {
    while let first = connection.output.first {
      let remaining = Array(first.bytes[first.offset...])
      let sent = remaining.withUnsafeBytes { raw in
        first.descriptors.withUnsafeBufferPointer {
          cvfio_send_with_fds(
            connection.socket.fd, raw.baseAddress, UInt(raw.count), $0.baseAddress,
            first.offset == 0 ? Int32($0.count) : 0)
        }
      }
      if sent == -Int(EAGAIN) || sent == -Int(EINTR) {
        if !connection.wantsWrite {
          connection.wantsWrite = true
          _ = cvfio_epoll_want_write(epoll.fd, connection.socket.fd, Token.connection(connection.id).raw, 1)
        }
        return true
      }
      guard sent > 0 else {
        drop(connection.id, why: "send failed")
        return false
      }
      connection.lastProgress = monotonicSeconds()
      connection.queued -= sent
      if first.offset + sent == first.bytes.count {
        connection.output.removeFirst()
      } else {
        connection.output[0].offset += sent
      }
    }
    if connection.wantsWrite {
      connection.wantsWrite = false
      _ = cvfio_epoll_want_write(epoll.fd, connection.socket.fd, Token.connection(connection.id).raw, 0)
    }
    if connection.closeAfterFlush {
      drop(connection.id, why: nil)
      return false
    }
    return true
  }

  private func drop(_ id: UInt64, why: String?) {
    guard let connection = connections.removeValue(forKey: id) else { return }
    _ = cvfio_epoll_del(epoll.fd, connection.socket.fd)
    if let why {
      logger.notice("client dropped", metadata: ["pid": "\(connection.peer.pid)", "why": "\(why)"])
    }
    for group in connection.leases {
      if let lease = leases[group] { end(lease, why: "connection of pid \(connection.peer.pid) closed") }
    }
    revocations = revocations.filter { $0.value.connection != id }
    releases = releases.filter { $0.value.connection != id }
  }

  // MARK: Helpers

  private func currentRecords() throws(BrokerError) -> [Int: (group: LedgerGroup, members: [LedgerMember])] {
    let version = try ledgerRead(try ledger.dataVersion())
    if version != recordsVersion {
      records = try ledgerRead(try ledger.groupsWithMembers())
      recordsVersion = version
    }
    return records
  }

  private func ledgerRead<T>(_ body: @autoclosure () throws(ManagerError) -> T) throws(BrokerError) -> T {
    do {
      return try body()
    } catch {
      throw BrokerError(.ledger, "the ledger cannot be read: \(error)", next: "`vfioctl status` as root says more")
    }
  }

  private func command(of pid: Int) -> String {
    String(((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "?").prefix(64))
      .trimmingCharacters(in: .whitespacesAndNewlines)
  }

  /// Reasons from the manager span lines; a log line and a history detail take one.
  static func oneLine(_ text: String) -> String {
    text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
  }

  static func historyEntry(_ lease: LedgerLease, _ result: String, _ detail: String) -> HistoryEntry {
    HistoryEntry(
      uid: lease.uid, pid: lease.pid, groupID: lease.groupID, command: "broker \(lease.command)", result: result,
      detail: detail)
  }
}

/// What an epoll event stands for: the kind in the top byte, an id below.
enum Token: Equatable {
  case wake
  case listener(Int)
  case connection(UInt64)
  case request(Int)

  var raw: UInt64 {
    switch self {
    case .wake: 0
    case .listener(let index): 1 << 56 | UInt64(index)
    case .connection(let id): 2 << 56 | id
    case .request(let group): 3 << 56 | UInt64(group)
    }
  }

  init(raw: UInt64) {
    let id = raw & (1 << 56 - 1)
    switch raw >> 56 {
    case 1: self = .listener(Int(id))
    case 2: self = .connection(id)
    case 3: self = .request(Int(id))
    default: self = .wake
    }
  }
}

struct Outgoing {
  let bytes: [UInt8]
  var offset = 0
  let descriptors: [Int32]
  /// The grant whose descriptors these are: closed only after they left.
  let keep: AnyObject?

  init(bytes: [UInt8], descriptors: [Int32], keep: AnyObject?) {
    self.bytes = bytes
    self.descriptors = descriptors
    self.keep = keep
  }
}

final class Connection {
  let id: UInt64
  let socket: Descriptor
  let peer: PeerCredentials
  var decoder = FrameDecoder()
  var output: [Outgoing] = []
  var queued = 0
  var wantsWrite = false
  var closeAfterFlush = false
  var watching = false
  var leases: Set<Int> = []
  var lastProgress: Double

  init(id: UInt64, socket: Descriptor, peer: PeerCredentials, now: Double) {
    self.id = id
    self.socket = socket
    self.peer = peer
    self.lastProgress = now
  }

  /// Half a message in, or answers not taken, and nothing moved for `after` seconds.
  func stalled(now: Double, after: Double) -> Bool {
    (decoder.pending > 0 || !output.isEmpty) && now - lastProgress > after
  }
}

final class ActiveLease {
  let record: LedgerLease
  var connection: UInt64?
  let requestEvent: Descriptor?
  /// Released, or its connection gone: ends when no process holds the group.
  var ending: Bool

  init(record: LedgerLease, connection: UInt64?, requestEvent: Descriptor?, ending: Bool) {
    self.record = record
    self.connection = connection
    self.requestEvent = requestEvent
    self.ending = ending
  }
}

struct PendingGrant {
  let connection: UInt64
  let requestID: Int?
  let lease: LedgerLease
  let opened: OpenedGrant
}

/// Someone owed an answer when a lease ends, by `deadline` at the latest.
struct Waiter {
  let connection: UInt64
  let requestID: Int?
  var deadline: Double
  let force: Bool
  var forced: Bool
}

enum ReapOutcome: Sendable {
  case held(Int)
  /// `reset` nil: the group was no longer detached, so not the broker's to reset.
  case ended(Int, reset: LeaseReset?)
  /// The worker's pass is over.
  case pass
}
