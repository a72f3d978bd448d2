import Foundation
import Logging
import Synchronization
import VFIO
import VFIOBroker
import VFIOBrokerClient
import VFIOBrokerTestSupport
import VFIOHost
import VFIOManager
import VFIOManagerTestCase
import VFIOManagerTestSupport
import VFIOTestSupport
import XCTest

#if canImport(Glibc)
  import Glibc
#endif

/// A broker on a real Unix socket in a scratch directory, on its own thread.
final class RunningBroker {
  let broker: Broker
  let socket: String
  let thread: Thread

  init(
    source: RecordingGrantSource, stateDirectory: String, socket: String,
    configure: (inout Broker.Configuration) -> Void = { _ in }
  ) throws {
    guard let ledger = try Ledger.open(directory: stateDirectory, create: true) else { throw BrokerError(.ledger, "no ledger") }
    var logger = Logger(label: "test.broker")
    logger.logLevel = .critical
    var configuration = Broker.Configuration(stateDirectory: stateDirectory, stalledAfter: 0.5, reapInterval: 0.02)
    configure(&configuration)
    broker = try Broker(source: source, ledger: ledger, configuration: configuration, logger: logger, bootID: "test")
    self.socket = socket
    broker.serve(listener: try UnixSocket.listen(path: socket))
    let broker = self.broker
    thread = Thread { broker.run() }
    thread.start()
  }

  func stop() {
    broker.stop()
    while !thread.isFinished { usleep(1000) }
  }
}

final class BrokerTests: ManagerTestCase {
  var source: RecordingGrantSource!
  var running: RunningBroker!
  var socketPath: String { state.path + "/broker.sock" }
  let me = PeerCredentials(pid: Int(getpid()), uid: Int(getuid()), gid: Int(getgid()))

  override func tearDown() {
    running?.stop()
    running = nil
    super.tearDown()
  }

  /// q35-vtd with the e1000e's group (2) detached and given to `owner`, through the broker only.
  func startBroker(
    owner: Int? = nil, reservedFor: String? = nil, configure: (inout Broker.Configuration) -> Void = { _ in }
  ) throws {
    try setUpTree("q35-vtd")
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: owner ?? me.uid, gid: me.gid), brokerOnly: true)
    if let reservedFor { _ = try manager().access.reserve(.group(2), for: reservedFor, owner: nil) }
    source = RecordingGrantSource()
    running = try RunningBroker(source: source, stateDirectory: state.path, socket: socketPath, configure: configure)
  }

  func waitUntil(_ what: String, timeout: Double = 5, _ condition: () throws -> Bool) rethrows {
    let deadline = Date().addingTimeInterval(timeout)
    while try !condition() {
      if Date() > deadline { return XCTFail("timed out waiting for \(what)") }
      usleep(5000)
    }
  }

  func descriptorCount() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }

  /// The count once the broker has closed its ends of the connections already gone.
  func settledDescriptorCount() -> Int {
    var last = descriptorCount()
    for _ in 0..<100 {
      usleep(20_000)
      let now = descriptorCount()
      if now == last { return now }
      last = now
    }
    return last
  }

  // MARK: Grants and refusals

  func testBrokerOnlyKeepsTheNodesRootsAndTheOwnerGetsWorkingDescriptors() throws {
    try startBroker()
    let node = try XCTUnwrap(Sysfs(root: tree.path).permissions("/dev/vfio/2"))
    XCTAssertEqual([node.uid, node.gid, node.mode], [0, 0, 0o600], "broker-only: the node is not given to the owner")
    let client = try BrokerClient(socketPath: socketPath)
    let hello = try client.hello()
    XCTAssertEqual(hello.uid, me.uid)
    XCTAssertEqual(hello.version, Wire.version)
    let listed = try client.list()
    XCTAssertEqual(listed.groups.map(\.group), [2])
    XCTAssertEqual(listed.groups.first?.devices, ["0000:00:02.0"])
    XCTAssertEqual(listed.memlock?.limit, 64 << 20)

    let grant = try client.open("2")
    XCTAssertEqual(grant.descriptors.map(\.0.kind), [.container, .group, .device])
    for (_, fd) in grant.descriptors {
      XCTAssertGreaterThanOrEqual(fcntl(fd, F_GETFD), 0, "descriptor \(fd) arrived open")
      XCTAssertNotEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0, "received close-on-exec")
    }
    grant.close()
    let lease = try XCTUnwrap(try ledger().lease(group: 2))
    XCTAssertEqual(lease.uid, me.uid)
    XCTAssertEqual(lease.pid, me.pid)
    XCTAssertTrue(try ledger().history(group: 2).contains { $0.result == "granted" })
    // The group is the unit: a second open, even of the same device, is refused while leased.
    XCTAssertThrowsError(try client.open("0000:00:02.0")) { XCTAssertEqual(($0 as? BrokerError)?.code, .leased) }
  }

  func testAnotherUsersGroupIsRefusedRecordedAndNothingIsOpened() throws {
    try startBroker(owner: 4242)
    let client = try BrokerClient(socketPath: socketPath)
    XCTAssertThrowsError(try client.open("2")) { error in
      XCTAssertEqual((error as? BrokerError)?.code, .notOwner)
      XCTAssertFalse("\(error)".contains("4242"), "a refusal does not say whose the group is")
    }
    XCTAssertTrue(source.state.withLock { $0.opens.isEmpty })
    XCTAssertNil(try ledger().lease(group: 2))
    // Counted, not a row each: the answer came after the count committed.
    XCTAssertEqual(try ledger().refusals(group: 2).map { [$0.uid, $0.count] }, [[me.uid, 1]])
    XCTAssertEqual(try ledger().refusals(group: 2).first?.code, "not-owner")
    let rows = try ledger().history().count
    for _ in 0..<50 { XCTAssertThrowsError(try client.open("2")) }
    XCTAssertEqual(try ledger().refusals(group: 2).first?.count, 51)
    XCTAssertEqual(try ledger().history().count, rows, "refusals add no history rows")
    // A group the ledger never had is not recorded at all.
    XCTAssertThrowsError(try client.open("9")) { XCTAssertEqual(($0 as? BrokerError)?.code, .notDetached) }
    XCTAssertEqual(try ledger().refusals().map(\.groupID), [2])
    XCTAssertEqual(try client.list().groups.count, me.uid == 0 ? 1 : 0, "list shows only the caller's groups (root sees all)")
  }

  func testTargetsAreParsedNeverFollowedAndBadOnesChangeNothing() throws {
    try startBroker()
    let client = try BrokerClient(socketPath: socketPath)
    for target in ["../../etc/shadow", "/dev/vfio/2", "", "0000:00:02.0;rm", String(repeating: "9", count: 40), "4"] {
      XCTAssertThrowsError(try client.open(target), target) { error in
        let code = (error as? BrokerError)?.code
        XCTAssertTrue(code == .invalidTarget || code == .notDetached, "\(target): \(error)")
      }
    }
    XCTAssertTrue(source.state.withLock { $0.opens.isEmpty }, "nothing was opened for a bad target")
    XCTAssertNil(try ledger().lease(group: 2))
  }

  func testAnAdministratorsChangeWhileTheBrokerRunsDecidesTheNextGrant() throws {
    try startBroker()
    let client = try BrokerClient(socketPath: socketPath)
    let grant = try client.open("2")
    grant.close()
    XCTAssertEqual(try client.release(group: 2), "released")
    // Another connection (vfioctl disown) commits: the broker's copy of the ledger is stale.
    _ = try manager().access.disown(.group(2))
    XCTAssertThrowsError(try client.open("2")) { XCTAssertEqual(($0 as? BrokerError)?.code, .notOwner) }
    _ = try manager().access.own(.group(2), owner: Ownership(uid: me.uid, gid: me.gid), brokerOnly: true)
    try client.open("2").close()
  }

  func testAReservedGroupGoesOnlyToItsGuest() throws {
    try startBroker(reservedFor: "vm-db")
    let client = try BrokerClient(socketPath: socketPath)
    XCTAssertThrowsError(try client.open("2")) { XCTAssertEqual(($0 as? BrokerError)?.code, .reserved) }
    XCTAssertThrowsError(try client.open("2", guest: "vm-web")) { XCTAssertEqual(($0 as? BrokerError)?.code, .reserved) }
    let grant = try client.open("2", guest: "vm-db")
    XCTAssertEqual(grant.group, 2)
    grant.close()
  }

  // MARK: Leases

  func testALeaseEndsWhenTheClientGoesAndNobodyHoldsTheGroupThenTheGroupIsReset() throws {
    try startBroker()
    let watcher = try BrokerClient(socketPath: socketPath)
    try watcher.watch()
    var holder: BrokerClient? = try BrokerClient(socketPath: socketPath)
    let grant = try holder!.open("2")
    // The VMM still has the descriptors after its launcher hung up: the lease holds.
    source.hold(2, true)
    holder = nil
    usleep(200_000)
    XCTAssertEqual(running.broker.leasedGroups, [2])
    XCTAssertTrue(source.state.withLock { $0.resets.isEmpty })
    grant.close()
    source.hold(2, false)
    let ended = try XCTUnwrap(try watcher.nextEvent(timeout: 5))
    XCTAssertEqual(ended.event, .leaseEnded)
    XCTAssertEqual(try watcher.nextEvent(timeout: 5)?.event, .resetDone)
    XCTAssertEqual(source.state.withLock { $0.resets }, [2])
    XCTAssertNil(try ledger().lease(group: 2))
    XCTAssertEqual(try ledger().group(2)?.ownerUID, me.uid, "the group is free again and still owned")
    // Free again: the owner can have it.
    let again = try BrokerClient(socketPath: socketPath).open("2")
    again.close()
  }

  func testReleaseEndsTheLeaseOnALiveConnection() throws {
    try startBroker()
    let client = try BrokerClient(socketPath: socketPath)
    let grant = try client.open("2")
    grant.close()
    try client.release(group: 2)
    waitUntil("the lease to end") { running.broker.leasedGroups.isEmpty }
    XCTAssertThrowsError(try client.release(group: 2)) { XCTAssertEqual(($0 as? BrokerError)?.code, .invalidTarget) }
  }

  func testAConnectionsProcessIsReadOnceForAllItsGrants() throws {
    try startBroker()
    let client = try BrokerClient(socketPath: socketPath)
    for _ in 0..<3 {
      try client.open("2").close()
      XCTAssertEqual(try client.release(group: 2), "released")
    }
    XCTAssertEqual(source.state.withLock { [$0.opens.count, $0.identified, $0.memlockReads] }, [3, 1, 1])
    // Each lease still records the process, from the first read.
    let history = try ledger().history(group: 2).filter { $0.result == "granted" }
    XCTAssertEqual(history.count, 3)
    XCTAssertTrue(history.allSatisfy { $0.command == "broker test" && $0.pid == me.pid }, "\(history)")
    // Another connection is another process as far as the broker knows: read again.
    try BrokerClient(socketPath: socketPath).open("2").close()
    XCTAssertEqual(source.state.withLock { $0.identified }, 2)
  }

  func testARestartedBrokerKeepsTheLeaseUntilItsHolderIsGone() throws {
    try startBroker()
    let client = try BrokerClient(socketPath: socketPath)
    let grant = try client.open("2")
    source.hold(2, true)
    running.stop()
    running = try RunningBroker(source: source, stateDirectory: state.path, socket: socketPath)
    XCTAssertEqual(running.broker.leasedGroups, [2])
    XCTAssertThrowsError(try BrokerClient(socketPath: socketPath).open("2")) {
      XCTAssertEqual(($0 as? BrokerError)?.code, .leased)
    }
    grant.close()
    source.hold(2, false)
    waitUntil("the recovered lease to end") { running.broker.leasedGroups.isEmpty }
    XCTAssertEqual(source.state.withLock { $0.resets }, [2])
  }

  func testRevokeRelaysADeviceRequestAndAnswersWhenTheHolderLetsGo() throws {
    try XCTSkipIf(getuid() != 0, "revoke is root's")
    try startBroker()
    let holder = try BrokerClient(socketPath: socketPath)
    let grant = try holder.open("2")
    source.hold(2, true)
    let outcome = Mutex<String?>(nil)
    let admin = Thread { [socketPath] in
      let result = try? BrokerClient(socketPath: socketPath).revoke(group: 2, wait: 5, force: false)
      outcome.withLock { $0 = result }
    }
    admin.start()
    let request = try XCTUnwrap(try holder.nextEvent(timeout: 5))
    XCTAssertEqual(request.event, .deviceRequest)
    grant.close()
    source.hold(2, false)
    waitUntil("the revocation's answer") { outcome.withLock { $0 } != nil }
    XCTAssertEqual(outcome.withLock { $0 }, "released")
  }

  func testRevokeWithForceEndsAHolderThatDoesNotLetGo() throws {
    try XCTSkipIf(getuid() != 0, "revoke is root's")
    try startBroker()
    let holder = try BrokerClient(socketPath: socketPath)
    let grant = try holder.open("2")
    defer { grant.close() }
    source.hold(2, true)
    let admin = try BrokerClient(socketPath: socketPath)
    let timedOut = try admin.revoke(group: 2, wait: 0.1, force: false)
    XCTAssertEqual(timedOut, "timeout")
    XCTAssertEqual(running.broker.leasedGroups, [2], "a refused revocation leaves the lease alone")
    let forced = Thread { [source] in
      // The fake's terminate stands for SIGKILL: the holder is gone once it is called.
      while source!.state.withLock({ $0.terminated.isEmpty }) { usleep(2000) }
      source!.hold(2, false)
    }
    forced.start()
    XCTAssertEqual(try admin.revoke(group: 2, wait: 0.1, force: true), "forced")
    XCTAssertTrue(source.state.withLock { $0.terminated.contains(4242) })
  }

  // MARK: Hostile clients

  func testMalformedOversizedTruncatedAndStalledClientsLeaveTheBrokerServingAndLeakNothing() throws {
    try startBroker()
    _ = try BrokerClient(socketPath: socketPath).hello()
    let before = settledDescriptorCount()

    // Not JSON, in a good frame: an error, and the connection still works.
    let raw = try UnixSocket.connect(path: socketPath)
    try UnixSocket.sendAll(raw, frame(Array("{nope".utf8)))
    XCTAssertEqual(try readResponse(raw)?.error?.code, .malformed)
    try UnixSocket.sendAll(raw, try Wire.encode(BrokerRequest(.hello, id: 7)))
    XCTAssertEqual(try readResponse(raw)?.id, 7)
    // A request of the wrong shape.
    try UnixSocket.sendAll(raw, frame(Array(#"{"type":"open","target":7}"#.utf8)))
    XCTAssertEqual(try readResponse(raw)?.error?.code, .malformed)
    close(raw)

    // An announced length over the limit: refused from the length word, then hung up.
    let big = try UnixSocket.connect(path: socketPath)
    try UnixSocket.sendAll(big, [0x7f, 0xff, 0xff, 0xff])
    XCTAssertEqual(try readResponse(big)?.error?.code, .oversized)
    var byte: UInt8 = 0
    XCTAssertEqual(recv(big, &byte, 1, 0), 0, "closed after an oversized message")
    close(big)

    // Half a message, then gone; half a message, then silence past the stall limit.
    let truncated = try UnixSocket.connect(path: socketPath)
    try UnixSocket.sendAll(truncated, [0, 0, 1, 0, 0x7b])
    close(truncated)
    let stalled = try UnixSocket.connect(path: socketPath)
    try UnixSocket.sendAll(stalled, [0, 0, 1, 0, 0x7b])
    usleep(800_000)
    XCTAssertEqual(recv(stalled, &byte, 1, 0), 0, "a stalled client is dropped")
    close(stalled)

    // A client that sends descriptors: the kernel refuses them (SO_PASSRIGHTS, Linux 6.16+),
    // or the broker takes them off the loop to be closed and drops the sender; never kept.
    var pair: [Int32] = [0, 0]
    XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair), 0)
    let sender = try UnixSocket.connect(path: socketPath)
    do {
      try UnixSocket.sendAll(sender, try Wire.encode(BrokerRequest(.hello, id: 1)), descriptors: [pair[0], pair[1]])
      XCTAssertNil(try? readResponse(sender), "a sender of descriptors gets no answer")
    } catch let error as SocketError {
      XCTAssertEqual(error.errno, EPERM, "the kernel refused the descriptors")
    }
    close(sender)
    close(pair[0])
    close(pair[1])

    // Still serving.
    XCTAssertEqual(try BrokerClient(socketPath: socketPath).hello().version, Wire.version)
    waitUntil("the broker to close what it dropped") { descriptorCount() <= before }
    XCTAssertEqual(descriptorCount(), before, "no descriptor leaked, here or in the broker (same process)")
  }

  func testRandomBytesNeverCrashTheBrokerNorGrowItsBuffers() throws {
    try startBroker()
    var generator = SplitMix64(seed: 0x5eed)
    for round in 0..<200 {
      let socket = try UnixSocket.connect(path: socketPath)
      var bytes = (0..<Int(generator.next() % 600)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
      // Every few rounds a plausible header, so bodies (not just lengths) get fuzzed too.
      if round % 3 == 0 {
        let body = Array(bytes.prefix(200))
        bytes = frame(body) + bytes
      }
      _ = try? UnixSocket.sendAll(socket, bytes)
      close(socket)
    }
    var decoder = FrameDecoder(limit: 1024)
    for _ in 0..<2000 {
      let chunk = (0..<Int(generator.next() % 64)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
      if (try? decoder.feed(chunk)) == nil { decoder = FrameDecoder(limit: 1024) }
      XCTAssertLessThanOrEqual(decoder.pending, 1024 + 4 + 64)
    }
    XCTAssertEqual(try BrokerClient(socketPath: socketPath).hello().version, Wire.version)
  }

  func testAThousandConnectionsAreServedWithoutAThreadEach() throws {
    // One user's thousand: above the per-user limits that keep users from crowding each other out.
    try startBroker {
      $0.maxConnectionsPerUser = 4096
      $0.connectionsPerSecond = 1e6
    }
    let before = settledDescriptorCount()
    var clients: [BrokerClient] = []
    for _ in 0..<1000 { clients.append(try BrokerClient(socketPath: socketPath)) }
    for client in clients.shuffled().prefix(50) { XCTAssertEqual(try client.hello().version, Wire.version) }
    XCTAssertEqual(running.broker.stats.accepted, 1000)
    clients = []
    waitUntil("the broker to drop 1000 connections") { descriptorCount() <= before }
  }

  // MARK: Codec

  func testFrameDecoderSplitsJoinsAndRefusesBeforeAllocating() throws {
    let a = try Wire.encode(BrokerRequest(.hello, id: 1))
    let b = try Wire.encode(BrokerRequest(.list, id: 2))
    var decoder = FrameDecoder()
    var bodies: [[UInt8]] = []
    for byte in a + b { bodies += try decoder.feed([byte]) }
    XCTAssertEqual(try bodies.map { try Wire.decode(BrokerRequest.self, from: $0).id }, [1, 2])
    XCTAssertEqual(decoder.pending, 0)
    XCTAssertEqual(try decoder.feed(Array(a.prefix(6))), [])
    XCTAssertEqual(decoder.pending, 6)
    var small = FrameDecoder(limit: 16)
    XCTAssertThrowsError(try small.feed([0, 0, 0, 17])) { XCTAssertEqual(($0 as? BrokerError)?.code, .oversized) }
    XCTAssertEqual(small.pending, 0)
    XCTAssertThrowsError(try Wire.encode(BrokerRequest(.open, target: String(repeating: "x", count: Wire.maximumMessage))))
  }

  // MARK: Helpers

  func frame(_ body: [UInt8]) -> [UInt8] {
    let n = UInt32(body.count)
    return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
  }

  func readResponse(_ socket: Int32) throws -> BrokerResponse? {
    var decoder = FrameDecoder()
    var buffer = [UInt8](repeating: 0, count: 4096)
    var poll = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
    while Glibc.poll(&poll, 1, 5000) > 0 {
      let got = recv(socket, &buffer, buffer.count, 0)
      guard got > 0 else { return nil }
      if let body = try decoder.feed(buffer[0..<got]).first { return try Wire.decode(BrokerResponse.self, from: body) }
    }
    return nil
  }
}

