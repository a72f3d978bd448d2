import CVFIO
import Dispatch
import Foundation
import Logging
import PCI
import Synchronization
import VFIO
import VFIOBrokerClient
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
/// One thread runs the loop: `BrokerTransport` (the connections and their framing), `LeaseBook`
/// (the leases, a pure state machine), `GrantPolicy` (who may have what), `BrokerJournal` (the
/// ledger) and the dispatch below, and nothing on it waits for a client, the host or the disk.
/// Work that reads or changes the host (assessing groups for `list`, opening a grant's
/// descriptors, finding holders, resetting) runs on worker queues; the journal writes on its
/// own queue, one transaction for what a pass decided (group commit), and a grant's
/// descriptors leave only once its lease is durable. Results come back through a wake
/// eventfd; the loop's state is touched by the loop only.
public final class Broker: @unchecked Sendable {
  public struct Configuration: Sendable {
    public static let defaultSocket = Wire.defaultSocket
    public var stateDirectory: String
    public var maxConnections: Int
    /// Connections one non-root user may hold at once.
    public var maxConnectionsPerUser: Int
    /// Connection slots only root may take.
    public var reservedForRoot: Int
    /// Requests of one connection handled per pass of the loop.
    public var requestsPerPass: Int
    /// New connections per second a non-root user may open (after a burst of half as many).
    public var connectionsPerSecond: Double = 200
    /// A connection without lease, watch or request in flight is closed after this many idle seconds.
    public var idleTimeout: Double
    /// Bytes of answers queued for a client that does not read before its requests wait (four
    /// times that is the most any connection queues).
    public var maxQueuedOutput: Int
    /// A client that leaves a message half sent (or does not read) this long is dropped.
    public var stalledAfter: Double
    /// How often ended leases are checked for remaining holders.
    public var reapInterval: Double
    /// The longest a `list` answer's assessment of the host is reused (uevents and the ledger
    /// invalidate it sooner).
    public var assessmentMaxAge: Double
    /// The kernel refuses descriptors clients send (SO_PASSRIGHTS, Linux 6.16+); off only in tests.
    public var refuseDescriptors: Bool
    public var retention: HistoryRetention
    public var server: String

    public init(
      stateDirectory: String = Ledger.defaultDirectory, maxConnections: Int = 8192, maxConnectionsPerUser: Int = 64,
      reservedForRoot: Int = 32, requestsPerPass: Int = 4, idleTimeout: Double = 60, maxQueuedOutput: Int = 256 << 10,
      stalledAfter: Double = 10, reapInterval: Double = 0.2, assessmentMaxAge: Double = 5, refuseDescriptors: Bool = true,
      retention: HistoryRetention = .standard, server: String = "swift-vfio broker"
    ) {
      self.stateDirectory = stateDirectory
      self.maxConnections = maxConnections
      self.maxConnectionsPerUser = maxConnectionsPerUser
      self.reservedForRoot = reservedForRoot
      self.requestsPerPass = requestsPerPass
      self.idleTimeout = idleTimeout
      self.maxQueuedOutput = maxQueuedOutput
      self.stalledAfter = stalledAfter
      self.reapInterval = reapInterval
      self.assessmentMaxAge = assessmentMaxAge
      self.refuseDescriptors = refuseDescriptors
      self.retention = retention
      self.server = server
    }
  }

  public let configuration: Configuration
  let source: any GrantSource
  let logger: Logger
  let bootID: String?

  private let epoll: Descriptor
  private let waker: LoopWaker
  private let transport: BrokerTransport
  private var book = LeaseBook()
  /// The kernel's device requests of leased groups (legacy grants), by group.
  private var relays: [IOMMUGroupID: Descriptor] = [:]
  /// The process each lease was granted to, by group: a pidfd, while its connection lasted.
  private var grantees: [IOMMUGroupID: Descriptor] = [:]
  /// Leases given back by an explicit `release` (not by a closed connection).
  private var releasedExplicitly: Set<IOMMUGroupID> = []

  /// What the loop records in the ledger, and its copy of the ledger's groups.
  private let journal: BrokerJournal

  /// The host's view of the detached groups for `list`, computed off the loop, single flight.
  private var assessment: Assessment?
  private var assessmentInFlight = false
  private var listWaiters: [(connection: UInt64, requestID: Int?)] = []
  private var uevent: Descriptor?
  private var ueventCount = 0

  private var lastHousekeeping = 0.0
  private var reapInFlight = false
  private var reapSoon = false
  private let stopping = Atomic<Bool>(false)
  private let hostWork = DispatchQueue(label: "swift-vfio broker host work")
  private let grantWork = DispatchQueue(label: "swift-vfio broker grants")

  /// Counters for tests and the benchmark.
  public struct Statistics: Sendable, Equatable {
    public var accepted = 0
    public var granted = 0
    public var refused = 0
    public var leasesEnded = 0
    public var dropped = 0
    public var descriptorsQuarantined = 0
    public var connections = 0
  }
  private let statistics = Mutex(Statistics())
  public var stats: Statistics { statistics.withLock { $0 } }

  struct Assessment {
    var groups: [IOMMUGroupID: GroupAssessment]
    var ueventCount: Int
    var recordsVersion: Int?
    var at: Double
  }

  public init(source: any GrantSource, ledger: Ledger, configuration: Configuration, logger: Logger, bootID: String?)
    throws(BrokerError)
  {
    self.source = source
    self.configuration = configuration
    self.logger = logger
    self.bootID = bootID
    let epfd = cvfio_epoll_create()
    guard epfd >= 0 else { throw BrokerError(.internalError, "epoll_create: \(String(cString: strerror(-epfd)))") }
    epoll = Descriptor(epfd)
    let waker = try LoopWaker()
    self.waker = waker
    _ = cvfio_epoll_add(epfd, waker.descriptor.fd, Token.wake.raw)
    transport = BrokerTransport(
      limits: .init(
        maxConnections: configuration.maxConnections, maxConnectionsPerUser: configuration.maxConnectionsPerUser,
        reservedForRoot: configuration.reservedForRoot, requestsPerPass: configuration.requestsPerPass,
        idleTimeout: configuration.idleTimeout, stalledAfter: configuration.stalledAfter,
        maxQueuedOutput: configuration.maxQueuedOutput, refuseDescriptors: configuration.refuseDescriptors,
        connectionsPerSecond: configuration.connectionsPerSecond,
        connectionBurst: max(1, Int(configuration.connectionsPerSecond / 2))),
      epoll: epfd, logger: logger)
    journal = BrokerJournal(ledger: ledger, logger: logger, retention: configuration.retention, onLoop: waker.post)
    // Uevents invalidate what `list` knows of the host; without them (a test tree, no
    // permission) the assessment only ages out.
    let ueventFD = cvfio_uevent_socket()
    if ueventFD >= 0 {
      uevent = Descriptor(ueventFD)
      _ = cvfio_epoll_add(epfd, ueventFD, Token.uevent.raw)
    }
    do {
      // A lease of an earlier boot died with it: its holder and descriptors are gone.
      let dropped = try ledger.dropLeases(
        notOf: bootID, uid: Int(getuid()), pid: Int(getpid()), command: "broker (start)")
      if !dropped.isEmpty {
        logger.notice("leases of an earlier boot dropped", metadata: ["groups": "\(dropped.map(\.groupID))"])
      }
      // Leases outlive the broker: their holders still have the descriptors. They are ended
      // (and the group reset) once the holders are gone.
      book.restore(try ledger.leases())
    } catch {
      throw BrokerError(.ledger, "the ledger's leases cannot be read: \(error)", next: "`vfioctl status` checks the ledger")
    }
    if !book.leasedGroups.isEmpty {
      logger.info("leases from the ledger", metadata: ["groups": "\(book.leasedGroups)"])
    }
    transport.onRequest = { [unowned self] connection, body in handle(body, from: connection) }
    transport.onClosed = { [unowned self] connection in
      if connection.watching || !connection.leases.isEmpty {
        logger.debug("connection closed", metadata: ["pid": "\(connection.peer.pid)"])
      }
      perform(book.connectionClosed(connection.id))
    }
  }

  /// Serves `fd`, a listening Unix stream socket (its own or one systemd passed).
  public func serve(listener fd: Int32) { transport.addListener(fd) }

  /// Ends `run` from any thread (SIGTERM).
  public func stop() {
    stopping.store(true, ordering: .releasing)
    waker.signal()
  }

  /// The leases now, by group (for tests).
  public var leasedGroups: [IOMMUGroupID] { book.leasedGroups }

  // MARK: The loop

  public func run() {
    logger.info("serving", metadata: ["leases": "\(book.leasedGroups.count)"])
    var tokens = [UInt64](repeating: 0, count: 128)
    var more = false
    while !stopping.load(ordering: .acquiring) {
      let timeout = more ? 0 : Int32(configuration.reapInterval * 1000)
      let n = tokens.withUnsafeMutableBufferPointer { cvfio_epoll_wait(epoll.fd, $0.baseAddress, 128, timeout) }
      if n < 0 && -n != EINTR {
        logger.critical("epoll_wait failed", metadata: ["errno": "\(-n)"])
        break
      }
      let now = monotonicSeconds()
      for token in tokens.prefix(Int(max(n, 0))) {
        switch Token(raw: token) {
        case .wake: runPosted()
        case .listener(let index): transport.accept(listener: index, now: now)
        case .connection(let id): transport.service(id, now: now)
        case .request(let group): relayRequest(group)
        case .uevent: drainUevents()
        }
      }
      more = transport.serveReady()
      journal.commit()
      housekeeping(now: monotonicSeconds())
      let counters = transport.counters
      statistics.withLock {
        $0.accepted = counters.accepted
        $0.dropped = counters.dropped + counters.refusedAtAccept
        $0.descriptorsQuarantined = counters.descriptorsQuarantined
        $0.connections = transport.connections.count
      }
    }
    // Leases stay as they are: the ledger has them, and the next broker ends them.
    transport.closeAll()
    grantWork.sync {}
    hostWork.sync {}
    runPosted()
    journal.commit()
    journal.drain()
    runPosted()
    logger.info("stopped")
  }

  /// Runs `work` on the loop thread at its next pass (from a worker queue).
  private func onLoop(_ work: @escaping @Sendable () -> Void) { waker.post(work) }

  /// On the loop thread: what the workers and the journal handed back.
  private func runPosted() {
    for work in waker.take() { work() }
  }

  private func drainUevents() {
    guard let uevent else { return }
    var buffer = [UInt8](repeating: 0, count: 8192)
    // Bounded: a storm of uevents still leaves the loop its turn.
    for _ in 0..<64 {
      let got = buffer.withUnsafeMutableBytes { Glibc.recv(uevent.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
      guard got > 0 else { return }
      ueventCount &+= 1
    }
  }

  // MARK: Requests

  private func handle(_ body: [UInt8], from connection: Connection) {
    let now = monotonicSeconds()
    let request: BrokerRequest
    do {
      request = try Wire.decode(BrokerRequest.self, from: body)
    } catch {
      transport.reply(.failure(error, id: nil), to: connection, now: now)
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
        transport.reply(response, to: connection, now: now)
      case .list:
        list(request, for: connection)
      case .open:
        try open(request, for: connection)
      case .release:
        guard let group = request.group else { throw BrokerError(.invalidTarget, "release needs a group") }
        let effects = try book.release(group: group, connection: connection.id, requestID: request.id, now: now)
        connection.leases.remove(group)
        releasedExplicitly.insert(group)
        perform(effects)
      case .watch:
        connection.watching = true
        transport.reply(BrokerResponse(.watching, id: request.id), to: connection, now: now)
      case .revoke:
        try revoke(request, for: connection, now: now)
      }
    } catch let error as BrokerError {
      transport.reply(.failure(error, id: request.id), to: connection, now: now)
    } catch {
      transport.reply(.failure(BrokerError(.internalError, "\(error)"), id: request.id), to: connection, now: now)
    }
  }

  private func list(_ request: BrokerRequest, for connection: Connection) {
    if let assessment, isFresh(assessment) {
      answerList(connection.id, request.id, assessment)
      return
    }
    listWaiters.append((connection.id, request.id))
    refreshAssessment()
  }

  private func isFresh(_ assessment: Assessment) -> Bool {
    assessment.ueventCount == ueventCount && assessment.recordsVersion == journal.recordsVersion
      && monotonicSeconds() - assessment.at < configuration.assessmentMaxAge
  }

  /// One assessment of the host at a time, for every `list` waiting.
  private func refreshAssessment() {
    guard !assessmentInFlight else { return }
    assessmentInFlight = true
    journal.withRecords { [self] recorded in
      switch recorded {
      case .failure(let error):
        assessmentInFlight = false
        answerListWaiters(error: error)
      case .success(let records):
        assess(records.filter { $0.value.group.state == .detached }.mapValues { $0.members.compactMap(\.pciAddress) })
      }
    }
  }

  private func assess(_ groups: [IOMMUGroupID: [PCIAddress]]) {
    let stamp = (ueventCount, journal.recordsVersion)
    let source = self.source
    hostWork.async { [self] in
      let assessed = source.assess(groups: groups)
      onLoop { [self] in
        assessmentInFlight = false
        assessment = Assessment(groups: assessed, ueventCount: stamp.0, recordsVersion: stamp.1, at: monotonicSeconds())
        let waiting = listWaiters
        listWaiters = []
        for waiter in waiting { answerList(waiter.connection, waiter.requestID, assessment!) }
      }
    }
  }

  private func answerListWaiters(error: BrokerError) {
    let waiting = listWaiters
    listWaiters = []
    for waiter in waiting {
      guard let connection = transport.connections[waiter.connection] else { continue }
      transport.reply(.failure(error, id: waiter.requestID), to: connection, now: monotonicSeconds())
    }
  }

  private func answerList(_ id: UInt64, _ requestID: Int?, _ assessment: Assessment) {
    journal.withRecords { [self] records in
      guard let connection = transport.connections[id] else { return }
      switch records {
      case .failure(let error): transport.reply(.failure(error, id: requestID), to: connection, now: monotonicSeconds())
      case .success(let recorded): answerList(connection, requestID, assessment, recorded)
      }
    }
  }

  private func answerList(_ connection: Connection, _ requestID: Int?, _ assessment: Assessment, _ recorded: BrokerJournal.Records) {
    let caller = connection.peer
    let now = monotonicSeconds()
    let mine = recorded.values
      .filter { $0.group.state == .detached && ($0.group.ownerUID == caller.uid || caller.uid == 0) }
      .sorted { $0.group.id < $1.group.id }
    var groups: [BrokerGroup] = []
    for (record, members) in mine {
      let view = assessment.groups[record.id]
      let lease = book.holding(record.id)
      groups.append(
        BrokerGroup(
          group: record.id, devices: members.compactMap(\.pciAddress).map(\.description), owner: record.ownerUID ?? 0,
          reservedFor: record.reservedFor, leasedTo: lease?.pid,
          verdict: lease != nil ? "leased" : record.closing ? "closing" : (view?.verdict ?? "unknown"),
          reasons: view?.reasons ?? [], backends: view?.backends ?? []))
    }
    var response = BrokerResponse(.groups, id: requestID)
    response.groups = groups
    response.memlock = MemlockBudget(accounting: "process", limit: source.memlockLimit(pid: caller.pid))
    transport.reply(response, to: connection, now: now)
  }

  /// An `open`: checked as text at once, then decided against the ledger's groups (as soon
  /// as the ledger is free), opened off the loop, recorded, and sent.
  private func open(_ request: BrokerRequest, for connection: Connection) throws(BrokerError) {
    let selector = try parseTarget(request.target)
    let backend = try parseBackend(request.backend)
    if let guest = request.guest {
      guard !guest.isEmpty, guest.count <= 128, guest.allSatisfy({ $0.isLetter || $0.isNumber || "-_.@".contains($0) }) else {
        throw BrokerError(.invalidTarget, "a guest name is letters, digits and - _ . @ (at most 128)")
      }
    }
    let id = connection.id
    journal.withRecords { [self] records in
      guard let connection = transport.connections[id] else { return }
      do throws(BrokerError) {
        try open(request, selector, backend, records.get(), for: connection)
      } catch {
        transport.reply(.failure(error, id: request.id), to: connection, now: monotonicSeconds())
      }
    }
  }

  private func open(
    _ request: BrokerRequest, _ selector: Selector, _ backend: Backend, _ records: BrokerJournal.Records,
    for connection: Connection
  ) throws(BrokerError) {
    let caller = connection.peer
    let (group, devices) = try resolve(selector, in: records)
    let recorded = records[group]
    do {
      try GrantPolicy.decide(
        caller: caller, group: group, record: recorded?.group, lease: book.holding(group),
        pending: book.isPending(group), guest: request.guest)
    } catch {
      refuse(group: group, known: recorded != nil, caller: caller, error, connection: connection, requestID: request.id)
      return
    }
    let members = (recorded?.members ?? []).compactMap(\.pciAddress)
    let wanted = devices ?? members
    guard !wanted.isEmpty, wanted.allSatisfy(members.contains) else {
      throw BrokerError(.invalidTarget, "\(request.target ?? "") is not a detached endpoint of group \(group)")
    }
    // The grantee's pidfd now, while it surely runs: what its lease's liveness and a forced
    // revoke go through later.
    _ = connection.pidfd
    book.beginGrant(group: group, connection: connection.id)
    let source = self.source
    let bootID = self.bootID
    let requestID = request.id
    let guest = request.guest
    let connectionID = connection.id
    let known = connection.grantee
    grantWork.async { [self] in
      let resolved = source.resolve(backend, devices: wanted)
      let outcome: Result<OpenedGrant, BrokerError> = Result { () throws(BrokerError) in
        try source.open(group: group, devices: wanted, backend: resolved)
      }
      let grantee =
        known
        ?? Grantee(process: source.identify(pid: caller.pid), memlock: source.memlockLimit(pid: caller.pid))
      let (process, memlock) = (grantee.process, grantee.memlock)
      onLoop { [self] in
        transport.connections[connectionID]?.grantee = grantee
        switch outcome {
        case .failure(let error):
          perform(book.abandonGrant(group: group))
          if let connection = transport.connections[connectionID] {
            refuse(group: group, known: true, caller: caller, error, connection: connection, requestID: requestID)
          }
        case .success(let opened):
          let lease = LedgerLease(
            groupID: group, uid: caller.uid, gid: caller.gid, pid: caller.pid, command: printable(process.command),
            backend: resolved.rawValue, device: wanted[0].description, guest: guest, bootID: bootID,
            pidStart: process.identity?.startTime)
          journal.grant(lease, detail: "\(lease.backend): \(opened.descriptors.count) descriptors") { [self] committed in
            granted(lease, opened, committed: committed, connection: connectionID, requestID: requestID, memlock: memlock)
          }
        }
      }
    }
  }

  /// A grant's lease committed (or could not be): the descriptors leave, or the grant is withdrawn.
  private func granted(
    _ lease: LedgerLease, _ opened: OpenedGrant, committed: Bool, connection id: UInt64, requestID: Int?, memlock: UInt64?
  ) {
    let now = monotonicSeconds()
    guard committed else {
      perform(book.abandonGrant(group: lease.groupID))
      if let connection = transport.connections[id] {
        transport.reply(.failure(BrokerError(.ledger, "the grant could not be recorded"), id: requestID), to: connection, now: now)
      }
      return
    }
    let connection = transport.connections[id]
    perform(book.granted(lease, connection: connection?.id))
    statistics.withLock { $0.granted += 1 }
    if let event = opened.requestEvent {
      relays[lease.groupID] = event
      _ = cvfio_epoll_add(epoll.fd, event.fd, Token.request(lease.groupID).raw)
    }
    releasedExplicitly.remove(lease.groupID)
    guard let connection else { return }
    if let pidfd = connection.pidfd { grantees[lease.groupID] = pidfd }
    connection.leases.insert(lease.groupID)
    var response = BrokerResponse(.granted, id: requestID)
    response.group = lease.groupID
    response.backend = lease.backend
    response.descriptors = opened.descriptors.map(\.0)
    response.memlock = MemlockBudget(accounting: opened.memlockAccounting, limit: memlock)
    transport.reply(response, to: connection, descriptors: opened.descriptors.map(\.1), keep: opened, now: now)
    logger.info(
      "granted",
      metadata: [
        "group": "\(lease.groupID)", "uid": "\(lease.uid)", "pid": "\(lease.pid)", "backend": "\(lease.backend)",
      ])
  }

  /// A refused `open`: counted in the ledger (not a row each) when the group is one the ledger
  /// knows, and answered once that count committed. Groups the ledger never had are not
  /// recorded at all: asking for them costs the ledger nothing.
  private func refuse(
    group: IOMMUGroupID, known: Bool, caller: PeerCredentials, _ error: BrokerError, connection: Connection, requestID: Int?
  ) {
    statistics.withLock { $0.refused += 1 }
    let id = connection.id
    guard known else {
      transport.reply(.failure(error, id: requestID), to: connection, now: monotonicSeconds())
      return
    }
    let refusal = LedgerRefusal(
      uid: caller.uid, groupID: group, code: error.code.rawValue, detail: "pid \(caller.pid): \(error.message)")
    journal.refusal(refusal) { [self] _ in
      guard let connection = transport.connections[id] else { return }
      transport.reply(.failure(error, id: requestID), to: connection, now: monotonicSeconds())
    }
  }

  private func revoke(_ request: BrokerRequest, for connection: Connection, now: Double) throws(BrokerError) {
    guard connection.peer.uid == 0 else {
      throw BrokerError(.notPermitted, "only root may revoke a lease")
    }
    guard let group = request.group else { throw BrokerError(.invalidTarget, "revoke needs a group") }
    let wait = min(max(request.wait ?? 10, 0), 3600)
    perform(
      book.revoke(group: group, connection: connection.id, requestID: request.id, wait: wait, force: request.force ?? false, now: now))
  }

  private func parseTarget(_ text: String?) throws(BrokerError) -> Selector {
    guard let text, !text.isEmpty, text.count <= 32 else {
      throw BrokerError(.invalidTarget, "open needs a target: a PCI address or an IOMMU group number")
    }
    // Parsed, never used as a path: the broker opens only nodes it derives itself.
    do {
      return try Selector(parsing: text)
    } catch {
      throw BrokerError(.invalidTarget, "'\(printable(text))' is neither a PCI address nor a group number: \(error)")
    }
  }

  private func resolve(_ selector: Selector, in records: BrokerJournal.Records) throws(BrokerError)
    -> (group: IOMMUGroupID, devices: [PCIAddress]?)
  {
    switch selector {
    case .group(let id): return (id, nil)
    case .device(let address):
      guard let group = records.values.first(where: { record in
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
      throw BrokerError(.invalidTarget, "backend must be legacy, iommufd or auto, not '\(printable(String(text.prefix(32))))'")
    }
    return backend
  }

  // MARK: Effects of the lease book

  private func perform(_ effects: [LeaseBook.Effect]) {
    let now = monotonicSeconds()
    for effect in effects {
      switch effect {
      case .answer(let id, let requestID, let kind, let group, let outcome, let detail):
        guard let connection = transport.connections[id] else { continue }
        var response = BrokerResponse(kind, id: requestID)
        response.group = group
        response.outcome = outcome
        response.detail = detail
        transport.reply(response, to: connection, now: now)
      case .notify(let group, let event, let detail, let holder, let uid):
        var message = BrokerResponse(.event)
        message.event = event
        message.group = group
        message.detail = detail
        for connection in transport.connections.values
        where connection.id == holder || (connection.watching && (connection.peer.uid == uid || connection.peer.uid == 0)) {
          transport.queue(message, to: connection, now: now)
        }
      case .history(let lease, let result, let detail):
        journal.history(lease, result, detail)
      case .terminateHolders(let group, let lease):
        terminateHolders(group: group, lease: lease)
      case .stopRelaying(let group):
        if let event = relays.removeValue(forKey: group) { _ = cvfio_epoll_del(epoll.fd, event.fd) }
      case .reap:
        reapSoon = true
      }
    }
  }

  /// A forced revoke: whoever holds the group now, and the process it was granted to, are
  /// killed, each through a pidfd checked against the process's start time (a pid reused since
  /// is never signalled).
  private func terminateHolders(group: IOMMUGroupID, lease: LedgerLease) {
    journal.withRecords { [self] records in
      let members = ((try? records.get())?[group]?.members ?? []).compactMap(\.pciAddress)
      terminateHolders(group: group, members: members, lease: lease)
    }
  }

  private func terminateHolders(group: IOMMUGroupID, members: [PCIAddress], lease: LedgerLease) {
    let grantee = grantees[group]
    let source = self.source
    hostWork.async { [self] in
      let holders = source.holders(of: [group: members])[group] ?? []
      var killed: [Int] = []
      for process in holders.compactMap(\.process) where process.pid > 1 && source.terminate(process, pidfd: nil) {
        killed.append(process.pid)
      }
      if source.terminate(ProcessIdentity(pid: lease.pid, startTime: lease.pidStart), pidfd: grantee?.fd) {
        killed.append(lease.pid)
      }
      let pids = Array(Set(killed)).sorted()
      onLoop { [self] in
        journal.history(lease, "revoke", "forced: killed \(pids)")
        reapSoon = true
      }
    }
  }

  private func relayRequest(_ group: IOMMUGroupID) {
    guard let event = relays[group] else { return }
    var count: UInt64 = 0
    _ = Glibc.read(event.fd, &count, 8)
    perform(book.kernelRequest(group: group))
  }

  // MARK: Reaping

  private func housekeeping(now: Double) {
    if reapSoon && !reapInFlight {
      reapSoon = false
      reap()
    }
    guard now - lastHousekeeping >= configuration.reapInterval else { return }
    lastHousekeeping = now
    transport.housekeeping(now: now)
    perform(book.tick(now: now))
    reap()
    journal.pruneIfDue(now: now)
  }

  /// Hands the ending leases to a worker: holders, then reset; the ledger records the end.
  private func reap() {
    guard !reapInFlight else { return }
    let candidates = book.ending
    guard !candidates.isEmpty else { return }
    reapInFlight = true
    // The ledger's groups as of now (the version checked, reread if another process
    // committed): whether each is still ours to reset, and its members for the holders.
    journal.withRecords { [self] records in
      reap(candidates, recorded: (try? records.get()) ?? [:])
    }
  }

  private func reap(_ candidates: [IOMMUGroupID: LedgerLease], recorded: BrokerJournal.Records) {
    // An iommufd grant's cdev is unbound until its user binds it, and an unbound cdev makes no
    // group node busy: one left in flight in a socket of the grantee is seen by no scan. So the
    // lease of such a grant waits for its process to exit, unless that process released it.
    let alive = candidates.filter { group, lease in
      guard lease.backend == Backend.iommufd.rawValue, !releasedExplicitly.contains(group),
        let pidfd = grantees[group]
      else { return false }
      return !processExited(pidfd)
    }.keys
    let source = self.source
    let recorded = recorded.filter { candidates[$0.key] != nil }
    hostWork.async { [self] in
      let held = source.holders(
        of: candidates.mapValues { lease in (recorded[lease.groupID]?.members ?? []).compactMap(\.pciAddress) })
      var ended: [(group: IOMMUGroupID, reset: LeaseReset?)] = []
      for (group, _) in candidates where (held[group] ?? []).isEmpty && !alive.contains(group) {
        // Reset only what is still ours: an attach may have given the group back meanwhile, or
        // be doing so now (closing: it holds the group's lock and resets the group itself).
        let record = recorded[group]?.group
        let ours = record?.state == .detached && record?.closing == false
        ended.append((group, ours ? source.reset(group: group) : nil))
      }
      let finished = ended
      onLoop { [self] in
        reapInFlight = false
        for (group, reset) in finished {
          guard let lease = candidates[group] else { continue }
          let history = [("lease-ended", "no process holds the group any more")] + (reset.map { [($0.history.result, $0.history.detail)] } ?? [])
          journal.ended(lease, history: history) { [self] committed in
            guard committed else { return }
            grantees[group] = nil
            releasedExplicitly.remove(group)
            statistics.withLock { $0.leasesEnded += 1 }
            perform(book.ended(group: group, reset: reset))
            logger.info("lease ended", metadata: ["group": "\(group)", "reset": "\(reset.map { $0.history.result } ?? "not ours")"])
          }
        }
      }
    }
  }

  private func processExited(_ pidfd: Descriptor) -> Bool {
    var poll = pollfd(fd: pidfd.fd, events: Int16(POLLIN), revents: 0)
    return Glibc.poll(&poll, 1, 0) == 1
  }

  /// Reasons from the manager span lines; a log line and a history detail take one.
  static func oneLine(_ text: String) -> String {
    text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: " ")
  }
}

/// What a lease records of the process it is granted to, and the memlock limit its grants
/// report (as it was at the connection's first grant).
struct Grantee: Sendable {
  var process: (identity: ProcessIdentity?, command: String)
  var memlock: UInt64?
}

/// What `list` says of a detached group, from one assessment of the host.
public struct GroupAssessment: Sendable, Equatable {
  public var verdict: String
  public var reasons: [String]
  /// The backends the group can be opened on here (`legacy`, `iommufd`).
  public var backends: [String]

  public init(verdict: String, reasons: [String], backends: [String]) {
    self.verdict = verdict
    self.reasons = reasons
    self.backends = backends
  }
}
