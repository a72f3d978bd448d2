import Foundation
import VFIOBrokerClient
import VFIOBrokerTestSupport
import VFIOManager
import VFIOManagerTestSupport
import VFIOTestSupport
import XCTest

@testable import VFIOBroker

#if canImport(Glibc)
  import Glibc
#endif

/// Clients that try to stall the broker, starve others or grow its state (issue: trust). The
/// harness in `Tests/BrokerSiege` runs the same attacks as other uids against `vfioctl serve`.
extension BrokerTests {
  /// An honest round trip must come back quickly whatever the others do.
  func assertServedPromptly(_ what: String, within limit: Double = 1.0, file: StaticString = #filePath, line: UInt = #line) {
    let start = Date()
    do {
      let client = try BrokerClient(socketPath: socketPath)
      _ = try client.hello()
      _ = try client.list()
    } catch {
      return XCTFail("\(what): \(error)", file: file, line: line)
    }
    let took = Date().timeIntervalSince(start)
    XCTAssertLessThan(took, limit, "\(what): an honest hello + list took \(took) s", file: file, line: line)
  }

  func lingeringSocket() throws -> (socket: Int32, listener: Int32) {
    try XCTUnwrap(lingeringTCPSocket(), "a lingering loopback TCP socket")
  }

  func testADescriptorWhoseCloseBlocksNeverStallsTheLoop() throws {
    // The kernel's refusal (SO_PASSRIGHTS) off: the fallback older kernels take.
    try startBroker { $0.refuseDescriptors = false }
    let (tcp, listener) = try lingeringSocket()
    defer { close(listener) }
    let sender = try UnixSocket.connect(path: socketPath)
    try UnixSocket.sendAll(sender, try Wire.encode(BrokerRequest(.hello, id: 1)), descriptors: [tcp])
    close(tcp)
    assertServedPromptly("after a lingering socket was passed to the broker")
    var byte: UInt8 = 0
    XCTAssertEqual(recv(sender, &byte, 1, 0), 0, "the sender of descriptors is dropped unanswered")
    close(sender)
    waitUntil("the descriptor to be closed off the loop") { running.broker.stats.descriptorsQuarantined == 1 }
  }

  func testTheKernelRefusesDescriptorsWhereItCan() throws {
    try startBroker()
    let (tcp, listener) = try lingeringSocket()
    defer { close(listener) }
    let sender = try UnixSocket.connect(path: socketPath)
    do {
      try UnixSocket.sendAll(sender, try Wire.encode(BrokerRequest(.hello, id: 1)), descriptors: [tcp])
      // Before Linux 6.16 the broker receives it, hands it to the closer and drops the sender.
      waitUntil("the descriptor to be closed off the loop") { running.broker.stats.descriptorsQuarantined == 1 }
    } catch let error as SocketError {
      XCTAssertEqual(error.errno, EPERM, "SO_PASSRIGHTS: the sender's own sendmsg fails")
    }
    close(tcp)
    close(sender)
    assertServedPromptly("after descriptors were sent")
  }

  func testAClientThatPipelinesAndNeverReadsStarvesNobody() throws {
    try startBroker()
    var greedy: [Int32] = []
    for _ in 0..<8 {
      let socket = try UnixSocket.connect(path: socketPath)
      _ = fcntl(socket, F_SETFL, fcntl(socket, F_GETFL) | O_NONBLOCK)
      let request = try Wire.encode(BrokerRequest(.list, id: 1))
      let burst = Array((0..<2000).map { _ in request }.joined())
      _ = burst.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
      greedy.append(socket)
    }
    for round in 0..<5 { assertServedPromptly("round \(round) beside 8 pipelining clients") }
    XCTAssertLessThanOrEqual(source.state.withLock { $0.assessments }, 3, "list answers share one assessment of the host")
    greedy.forEach { close($0) }
  }

  func testIdleConnectionsAreClosedAndHoldersAreNot() throws {
    try startBroker { $0.idleTimeout = 0.3 }
    let idle = try UnixSocket.connect(path: socketPath)
    let holder = try BrokerClient(socketPath: socketPath)
    let grant = try holder.open("2")
    grant.close()
    usleep(700_000)
    var byte: UInt8 = 0
    XCTAssertEqual(recv(idle, &byte, 1, 0), 0, "an idle connection is closed")
    close(idle)
    XCTAssertEqual(running.broker.leasedGroups, [2], "a connection with a lease is not idle")
    XCTAssertEqual(try holder.release(group: 2), "released")
  }

  func testConnectionSlotsPerUserAndForRoot() {
    let limits = BrokerTransport.Limits(
      maxConnections: 10, maxConnectionsPerUser: 3, reservedForRoot: 2, requestsPerPass: 4, idleTimeout: 60,
      stalledAfter: 10, maxQueuedOutput: 1 << 16, refuseDescriptors: true)
    XCTAssertNil(BrokerTransport.admission(uid: 1000, connections: 5, ofUser: 2, limits: limits))
    XCTAssertEqual(BrokerTransport.admission(uid: 1000, connections: 5, ofUser: 3, limits: limits)?.code, .busy)
    XCTAssertEqual(BrokerTransport.admission(uid: 1001, connections: 8, ofUser: 0, limits: limits)?.code, .busy)
    XCTAssertNil(BrokerTransport.admission(uid: 0, connections: 9, ofUser: 9, limits: limits), "root has the reserved slots")
    XCTAssertEqual(BrokerTransport.admission(uid: 0, connections: 10, ofUser: 0, limits: limits)?.code, .busy)
  }

  func testALeaseOfAnEarlierBootIsDroppedAtStart() throws {
    try setUpTree("q35-vtd")
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: me.uid, gid: me.gid), brokerOnly: true)
    try XCTUnwrap(try Ledger.open(directory: state.path, create: true)).recordBroker({
      var records = BrokerRecords()
      records.grants = [
        LedgerLease(
          groupID: 2, uid: me.uid, gid: me.gid, pid: 1, command: "old", backend: "legacy", device: "0000:00:02.0",
          guest: nil, bootID: "an-earlier-boot", pidStart: 5)
      ]
      return records
    }())
    source = RecordingGrantSource()
    running = try RunningBroker(source: source, stateDirectory: state.path, socket: socketPath)
    XCTAssertEqual(running.broker.leasedGroups, [])
    XCTAssertNil(try ledger().lease(group: 2))
    XCTAssertTrue(try ledger().history(group: 2).contains { $0.result == "lease-dropped" })
    XCTAssertEqual(source.state.withLock { $0.terminated }, [], "nobody is signalled for a lease of another boot")
  }
}

/// Revocation is atomic: the group is marked closing under its lock before the holder is asked,
/// and no grant slips in between the revoke and the attach.
extension BrokerTests {
  func testAttachRefusesALeasedGroupUnlessItRevokes() throws {
    try startBroker()
    let holder = try BrokerClient(socketPath: socketPath)
    try holder.open("2").close()
    try assertRefused({ _ = try manager().groups.attach(.group(2)) }, code: "leased", mentions: "--revoke-after")
    XCTAssertEqual(try ledger().group(2)?.state, .detached)
  }

  func testRevokeUnderTheLockLetsNoReopenSlipIn() throws {
    try startBroker()
    let holder = try BrokerClient(socketPath: socketPath)
    try holder.open("2").close()
    var racer: BrokerError?
    let report = try manager().groups.attach(.group(2)) { lease throws(ManagerError) -> String in
      XCTAssertEqual(lease.groupID, 2)
      XCTAssertEqual(try? self.ledger().group(2)?.closing, true, "marked closing before the holder is asked")
      // The holder lets go; a second process of the same owner tries to take the group at once.
      XCTAssertEqual(try? holder.release(group: 2), "released")
      do {
        _ = try BrokerClient(socketPath: self.socketPath).open("2")
      } catch {
        racer = error as? BrokerError
      }
      return "released"
    }
    XCTAssertEqual(racer?.code, .closing, "a reopen between the revoke and the attach is refused")
    XCTAssertEqual(report.outcome, .done)
    XCTAssertEqual(try ledger().group(2)?.state, .host)
    XCTAssertEqual(try ledger().group(2)?.closing, false)
    XCTAssertTrue(report.notes.contains { $0.contains("was revoked: released") }, "\(report.notes)")
  }

  func testARevokeThatDoesNotFreeTheGroupRefusesTheAttachAndClearsTheMark() throws {
    try startBroker()
    let holder = try BrokerClient(socketPath: socketPath)
    try holder.open("2").close()
    try assertRefused({ _ = try manager().groups.attach(.group(2)) { _ throws(ManagerError) in "timeout" } }, code: "leased", mentions: "still holds")
    XCTAssertEqual(try ledger().group(2)?.closing, false)
    XCTAssertEqual(try ledger().group(2)?.state, .detached)
  }

  func testAClosingMarkLeftByAKilledAttachIsClearedByTheNextCommand() throws {
    try setUpTree("q35-vtd")
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: me.uid, gid: me.gid), brokerOnly: true)
    let writable = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    try writable.setClosing(group: 2, true)
    _ = try manager().access.own(.group(2), owner: Ownership(uid: me.uid, gid: me.gid), brokerOnly: true)
    XCTAssertEqual(try ledger().group(2)?.closing, false)
    XCTAssertTrue(try ledger().history(group: 2).contains { $0.detail.contains("closing mark") })
  }
}

/// An iommufd grant's cdev is handed over unbound, and an unbound cdev makes no group node busy:
/// one kept in flight in a socket escapes every holder scan. So its lease does not end when the
/// connection closes while the process it was granted to still runs.
extension BrokerTests {
  func testAnIommufdLeaseOutlivesItsConnectionWhileTheGranteeRuns() throws {
    try setUpTree("q35-vtd")
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: me.uid, gid: me.gid), brokerOnly: true)
    source = RecordingGrantSource(backend: .iommufd)
    running = try RunningBroker(source: source, stateDirectory: state.path, socket: socketPath)
    var client: BrokerClient? = try BrokerClient(socketPath: socketPath)
    let grant = try XCTUnwrap(client).open("2", backend: .iommufd)
    XCTAssertEqual(grant.backend, .iommufd)
    grant.close()
    client = nil  // the connection closes; this process (the grantee) runs on
    usleep(500_000)
    XCTAssertEqual(running.broker.leasedGroups, [2], "the grantee still runs: the lease stays")
    XCTAssertEqual(source.state.withLock { $0.resets }, [], "and the group is not reset under it")
  }
}
