import PCI
import VFIOHost
import CVFIO
import Foundation
import Logging
import VFIOBrokerClient

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The broker's connections and nothing else: accepting (with a cap per user and slots kept
/// for root), reading and framing, one request at a time per connection and a few per pass,
/// queueing and flushing answers, and dropping clients that stall, idle, flood or send
/// descriptors. What a request means is the `Broker`'s business; this type never blocks the
/// loop on a client: every socket is non-blocking, descriptors are refused by the kernel
/// (SO_PASSRIGHTS) or closed on another thread, and a connection's memory is bounded.
final class BrokerTransport {
  struct Limits: Sendable {
    var maxConnections: Int
    /// Connections one non-root user may have at once.
    var maxConnectionsPerUser: Int
    /// Of `maxConnections`, the last ones only root may take: an administrator can always
    /// reach a broker that other users have filled.
    var reservedForRoot: Int
    /// Requests of one connection handled in one pass of the loop before the others' turn.
    var requestsPerPass: Int
    /// Requests of all of one user's connections handled in one pass.
    var requestsPerUserPerPass: Int = 16
    /// A connection holding no lease and no watch, with nothing in flight, is closed after
    /// this many seconds without a request.
    var idleTimeout: Double
    /// Half a message in, or answers not taken, for this long: dropped.
    var stalledAfter: Double
    /// Answers queued for a client that does not read: above this no further request of its is
    /// read (backpressure); the stall timeout ends it.
    var maxQueuedOutput: Int
    /// Ask the kernel to refuse descriptors sent to the broker (SO_PASSRIGHTS, Linux 6.16+).
    /// Tests turn it off to exercise the fallback: descriptors received and closed off the loop.
    var refuseDescriptors: Bool
    /// New connections a non-root user may open per second, after a burst.
    var connectionsPerSecond: Double = 200
    var connectionBurst: Int = 100
  }

  let limits: Limits
  let logger: Logger
  let epoll: Int32
  let closer = DescriptorCloser()
  private(set) var connections: [UInt64: Connection] = [:]
  private var perUser: [Int: Int] = [:]
  private var nextID: UInt64 = 1
  private var listeners: [Descriptor] = []
  /// Connections with requests decoded and not yet handled.
  private var ready: Set<UInt64> = []

  /// A request's body from a connection that is not busy; the handler must end it with `reply`.
  var onRequest: (Connection, [UInt8]) -> Void = { _, _ in }
  /// A connection is gone (its leases end, its waiters are forgotten).
  var onClosed: (Connection) -> Void = { _ in }

  /// Counters for tests, the benchmark and the hostile-client harness.
  struct Counters: Sendable, Equatable {
    var accepted = 0
    var refusedAtAccept = 0
    var dropped = 0
    var descriptorsRefused = 0
    var descriptorsQuarantined = 0
  }
  private(set) var counters = Counters()

  init(limits: Limits, epoll: Int32, logger: Logger) {
    self.limits = limits
    self.epoll = epoll
    self.logger = logger
  }

  deinit { closer.stop() }

  func addListener(_ fd: Int32) {
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    // Set on the listener, the refusal is the accepted sockets' from their first byte: a
    // client that sends descriptors before the broker accepted it is refused too.
    let refused = limits.refuseDescriptors && cvfio_refuse_rights(fd) == 0
    listeners.append(Descriptor(fd))
    refusesRights.append(refused)
    _ = cvfio_epoll_add(epoll, fd, Token.listener(listeners.count - 1).raw)
  }

  /// Per listener: whether the kernel refuses descriptors on its connections.
  private var refusesRights: [Bool] = []

  // MARK: Accepting

  func accept(listener index: Int, now: Double) {
    let listener = listeners[index].fd
    // A bounded number per wakeup: a connect storm cannot keep the loop here.
    for _ in 0..<64 {
      let fd = cvfio_accept(listener)
      if fd < 0 {
        if -fd == EMFILE || -fd == ENFILE { logger.warning("out of descriptors; not accepting now") }
        return
      }
      guard let peer = PeerCredentials.of(fd) else {
        close(fd)
        continue
      }
      // A user who connects faster than its rate gets the shortest answer there is: closed,
      // unread (its connections, not the broker's time, are what it spends).
      if peer.uid != 0 && !takeConnectionToken(uid: peer.uid, now: now) {
        counters.refusedAtAccept += 1
        close(fd)
        continue
      }
      if let refusal = admission(peer) {
        refuse(fd, refusal)
        continue
      }
      let rightsRefused = refusesRights[index]
      let id = nextID
      nextID += 1
      let connection = Connection(id: id, socket: fd, peer: peer, rightsRefused: rightsRefused, now: now)
      connections[id] = connection
      perUser[peer.uid, default: 0] += 1
      _ = cvfio_epoll_add(epoll, fd, Token.connection(id).raw)
      counters.accepted += 1
    }
  }

  /// New connections per non-root user: a bucket of `connectionBurst` refilled at
  /// `connectionsPerSecond`.
  private var connectionTokens: [Int: (tokens: Double, at: Double)] = [:]

  private func takeConnectionToken(uid: Int, now: Double) -> Bool {
    var bucket = connectionTokens[uid] ?? (Double(limits.connectionBurst), now)
    bucket.tokens = min(Double(limits.connectionBurst), bucket.tokens + (now - bucket.at) * limits.connectionsPerSecond)
    bucket.at = now
    let granted = bucket.tokens >= 1
    if granted { bucket.tokens -= 1 }
    connectionTokens[uid] = bucket
    // Forgotten once full again, so the table holds only users who connect often.
    if bucket.tokens >= Double(limits.connectionBurst) - 1 && perUser[uid] == nil { connectionTokens[uid] = nil }
    return granted
  }

  /// Why `peer` may not have another connection now, if it may not.
  private func admission(_ peer: PeerCredentials) -> BrokerError? {
    BrokerTransport.admission(uid: peer.uid, connections: connections.count, ofUser: perUser[peer.uid, default: 0], limits: limits)
  }

  /// Root may fill every slot; others neither the last `reservedForRoot` nor more than
  /// `maxConnectionsPerUser` of their own.
  static func admission(uid: Int, connections: Int, ofUser: Int, limits: Limits) -> BrokerError? {
    let full = BrokerError(.busy, "the broker is at its connection limit", next: "try again")
    if uid == 0 { return connections < limits.maxConnections ? nil : full }
    if connections >= max(limits.maxConnections - limits.reservedForRoot, 0) { return full }
    if ofUser >= limits.maxConnectionsPerUser {
      return BrokerError(
        .busy, "uid \(uid) has \(limits.maxConnectionsPerUser) connections to the broker already", next: "close one first")
    }
    return nil
  }

  /// Told why, best effort (non-blocking), and gone.
  private func refuse(_ fd: Int32, _ error: BrokerError) {
    if let bytes = try? Wire.encode(BrokerResponse.failure(error, id: nil)) {
      _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
    }
    counters.refusedAtAccept += 1
    release(fd, rightsRefused: false)
  }

  // MARK: Reading

  /// The socket is readable or writable (or hung up): flush, then read if the connection may
  /// take another request.
  func service(_ id: UInt64, now: Double) {
    guard let connection = connections[id] else { return }
    if !connection.output.isEmpty && !flush(connection, now: now) { return }
    guard connection.takesInput(limit: limits.maxQueuedOutput) else {
      updateInterest(connection)
      return
    }
    var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    // Room for every descriptor a message can carry, whatever the kernel was told: none may be
    // left for the kernel to close in this thread. Any that come go to the closer, and their
    // sender is dropped: a client has no business sending descriptors.
    var fds = [Int32](repeating: -1, count: Int(CVFIO_SCM_MAX_FD))
    var received: Int32 = 0
    let got = buffer.withUnsafeMutableBytes { raw in
      fds.withUnsafeMutableBufferPointer {
        cvfio_receive_all_fds(connection.socket, raw.baseAddress, UInt(raw.count), $0.baseAddress, &received)
      }
    }
    if got < 0 {
      if -got == EAGAIN || -got == EINTR { return }
      drop(id, why: "receive failed: \(String(cString: strerror(Int32(-got))))")
      return
    }
    if received > 0 {
      quarantine(Array(fds.prefix(Int(received))))
      drop(id, why: "sent \(received) descriptors")
      return
    }
    if got == 0 {
      drop(id, why: connection.decoder.pending > 0 ? "ended mid-message" : nil)
      return
    }
    connection.lastActivity = now
    do {
      connection.backlog += try connection.decoder.feed(buffer[0..<Int(got)])
    } catch {
      // The stream's framing is lost: answer once, then hang up.
      connection.closeAfterFlush = true
      queue(.failure(error, id: nil), to: connection, now: now)
      return
    }
    if !connection.backlog.isEmpty { ready.insert(id) }
    updateInterest(connection)
  }

  /// Handles up to `requestsPerPass` queued requests of each ready connection; true when some
  /// remain (the loop then polls without waiting).
  func serveReady() -> Bool {
    let turn = ready
    ready = []
    // Fair between users, not only between connections: one uid's many connections get no
    // more of a pass than `requestsPerUserPerPass` requests together.
    var handledOf: [Int: Int] = [:]
    for id in turn {
      guard let connection = connections[id] else { continue }
      var handled = 0
      while handled < limits.requestsPerPass, handledOf[connection.peer.uid, default: 0] < limits.requestsPerUserPerPass,
        !connection.busy, !connection.backlog.isEmpty, connection.queued <= limits.maxQueuedOutput / 4,
        connections[id] != nil
      {
        let body = connection.backlog.removeFirst()
        connection.busy = true
        handled += 1
        handledOf[connection.peer.uid, default: 0] += 1
        onRequest(connection, body)
      }
      if connections[id] != nil, !connection.backlog.isEmpty, !connection.busy { ready.insert(id) }
      if connections[id] != nil { updateInterest(connection) }
    }
    return !ready.isEmpty
  }

  private func quarantine(_ fds: [Int32]) {
    if closer.offer(fds) {
      counters.descriptorsQuarantined += fds.count
    } else {
      // The closer is backed up (closes that block): these are closed here after all, having
      // been set to reset at once; the sender is dropped either way.
      logger.warning("descriptor closer backed up; closing here", metadata: ["count": "\(fds.count)"])
      for fd in fds {
        _ = cvfio_abort_on_close(fd)
        close(fd)
      }
    }
  }

  // MARK: Writing

  /// The answer to the connection's current request: it may take the next one afterwards.
  func reply(_ response: BrokerResponse, to connection: Connection, descriptors: [Int32] = [], keep: AnyObject? = nil, now: Double) {
    connection.busy = false
    if !connection.backlog.isEmpty { ready.insert(connection.id) }
    queue(response, to: connection, descriptors: descriptors, keep: keep, now: now)
  }

  /// A message that answers no request (an event).
  func queue(_ response: BrokerResponse, to connection: Connection, descriptors: [Int32] = [], keep: AnyObject? = nil, now: Double) {
    guard connections[connection.id] != nil, let bytes = try? Wire.encode(response) else { return }
    connection.output.append(Outgoing(bytes: bytes, descriptors: descriptors, keep: keep))
    connection.queued += bytes.count
    // Events pile up only for a client that never reads: cut it off well before it costs much.
    if connection.queued > limits.maxQueuedOutput * 2 {
      drop(connection.id, why: "does not read its answers")
      return
    }
    _ = flush(connection, now: now)
  }

  /// Writes what is queued; false when the connection was dropped.
  @discardableResult
  private func flush(_ connection: Connection, now: Double) -> Bool {
    while let first = connection.output.first {
      let sent = first.bytes.withUnsafeBytes { raw in
        first.descriptors.withUnsafeBufferPointer {
          cvfio_send_with_fds(
            connection.socket, raw.baseAddress! + first.offset, UInt(raw.count - first.offset), $0.baseAddress,
            first.offset == 0 ? Int32($0.count) : 0)
        }
      }
      if sent == -Int(EAGAIN) || sent == -Int(EINTR) { break }
      guard sent > 0 else {
        drop(connection.id, why: "send failed")
        return false
      }
      connection.lastActivity = now
      connection.queued -= sent
      if first.offset + sent == first.bytes.count {
        connection.output.removeFirst()
      } else {
        connection.output[0].offset += sent
      }
    }
    if connection.output.isEmpty && connection.closeAfterFlush {
      drop(connection.id, why: nil)
      return false
    }
    updateInterest(connection)
    return true
  }

  /// Readable while it may take input, writable while answers wait.
  private func updateInterest(_ connection: Connection) {
    let readable = connection.takesInput(limit: limits.maxQueuedOutput) && !connection.closeAfterFlush
    let writable = !connection.output.isEmpty
    guard readable != connection.interest.readable || writable != connection.interest.writable else { return }
    connection.interest = (readable, writable)
    _ = cvfio_epoll_interest(epoll, connection.socket, Token.connection(connection.id).raw, readable ? 1 : 0, writable ? 1 : 0)
  }

  // MARK: Ending

  func drop(_ id: UInt64, why: String?) {
    guard let connection = connections.removeValue(forKey: id) else { return }
    ready.remove(id)
    _ = cvfio_epoll_del(epoll, connection.socket)
    perUser[connection.peer.uid, default: 1] -= 1
    if perUser[connection.peer.uid] == 0 { perUser[connection.peer.uid] = nil }
    counters.dropped += why == nil ? 0 : 1
    if let why {
      logger.notice("client dropped", metadata: ["pid": "\(connection.peer.pid)", "uid": "\(connection.peer.uid)", "why": "\(why)"])
    }
    connection.output = []
    release(connection.socket, rightsRefused: connection.rightsRefused)
    onClosed(connection)
  }

  /// Closes a client's socket. One that could have been sent descriptors may still hold some
  /// in its queue, and closing it would close those in this thread: the closer does it.
  private func release(_ fd: Int32, rightsRefused: Bool) {
    if rightsRefused || !closer.offer([fd]) { close(fd) }
  }

  /// Drops connections that stalled or idled; called a few times a second.
  func housekeeping(now: Double) {
    for connection in Array(connections.values) {
      if connection.stalled(now: now, after: limits.stalledAfter) {
        drop(connection.id, why: "stalled for \(Int(limits.stalledAfter)) s")
      } else if connection.idle(now: now, after: limits.idleTimeout) {
        drop(connection.id, why: nil)
      }
    }
  }

  /// Every connection, closed (the broker stops).
  func closeAll() {
    for id in Array(connections.keys) {
      guard let connection = connections.removeValue(forKey: id) else { continue }
      _ = cvfio_epoll_del(epoll, connection.socket)
      release(connection.socket, rightsRefused: connection.rightsRefused)
    }
    perUser = [:]
    ready = []
  }

  func connectionCount(uid: Int) -> Int { perUser[uid] ?? 0 }
}

/// What an epoll event stands for: the kind in the top byte, an id below.
enum Token: Equatable {
  case wake
  case listener(Int)
  case connection(UInt64)
  case request(IOMMUGroupID)
  case uevent

  var raw: UInt64 {
    switch self {
    case .wake: 0
    case .listener(let index): 1 << 56 | UInt64(index)
    case .connection(let id): 2 << 56 | id
    case .request(let group): 3 << 56 | UInt64(truncatingIfNeeded: group.rawValue)
    case .uevent: 4 << 56
    }
  }

  init(raw: UInt64) {
    let id = raw & (1 << 56 - 1)
    switch raw >> 56 {
    case 1: self = .listener(Int(id))
    case 2: self = .connection(id)
    case 3: self = .request(IOMMUGroupID(Int(id)))
    case 4: self = .uevent
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

/// One client, as the transport and the broker see it.
final class Connection {
  let id: UInt64
  /// The socket; closed by the transport only (`drop`).
  let socket: Int32
  let peer: PeerCredentials
  /// A pidfd of the process that connected (SO_PEERPIDFD, taken when it is first needed: a
  /// grant): what signals and liveness checks go through, never the pid number.
  private(set) lazy var pidfd: Descriptor? = {
    let fd = cvfio_peer_pidfd(socket)
    return fd >= 0 ? Descriptor(fd) : nil
  }()
  /// The kernel refuses descriptors sent to this socket (SO_PASSRIGHTS off).
  let rightsRefused: Bool
  var decoder = FrameDecoder()
  /// Requests decoded and not yet handled, in order.
  var backlog: [[UInt8]] = []
  /// A request is being answered: nothing more of this connection is handled until it is.
  var busy = false
  var output: [Outgoing] = []
  var queued = 0
  var interest: (readable: Bool, writable: Bool) = (true, false)
  var closeAfterFlush = false
  var watching = false
  var leases: Set<IOMMUGroupID> = []
  var lastActivity: Double
  /// Who connected, read from /proc at the first grant: the process behind a connection never
  /// changes (SO_PEERCRED names it at connect), so later grants read nothing of the host.
  var grantee: Grantee?

  init(id: UInt64, socket: Int32, peer: PeerCredentials, rightsRefused: Bool, now: Double) {
    self.id = id
    self.socket = socket
    self.peer = peer
    self.rightsRefused = rightsRefused
    self.lastActivity = now
  }

  /// May the socket be read now: no request waiting, none in flight, answers taken.
  func takesInput(limit: Int) -> Bool { !busy && backlog.isEmpty && queued <= limit / 4 }

  /// Half a message in, or answers not taken, and nothing moved for `after` seconds.
  func stalled(now: Double, after: Double) -> Bool {
    (decoder.pending > 0 || !output.isEmpty) && now - lastActivity > after
  }

  /// Holding nothing, asking nothing, for `after` seconds.
  func idle(now: Double, after: Double) -> Bool {
    !busy && !watching && leases.isEmpty && backlog.isEmpty && output.isEmpty && decoder.pending == 0
      && now - lastActivity > after
  }
}
