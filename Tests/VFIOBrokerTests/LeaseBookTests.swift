import Foundation
import PCI
import VFIOBrokerClient
import VFIOManager
import VFIOHost
import XCTest

@testable import VFIOBroker

/// The lease state machine on its own: no socket, no thread, no clock but the one passed in.
final class LeaseBookTests: XCTestCase {
  func lease(_ group: IOMMUGroupID, pid: Int = 100, uid: Int = 1000) -> LedgerLease {
    LedgerLease(
      groupID: group, uid: uid, gid: uid, pid: pid, command: "qemu", backend: "legacy", device: "0000:00:02.0", guest: nil,
      started: Date(timeIntervalSince1970: 0), bootID: "b", pidStart: 42)
  }

  func testAGrantIsPendingUntilRecordedThenBelongsToItsConnection() {
    var book = LeaseBook()
    book.beginGrant(group: 2, connection: 7)
    XCTAssertTrue(book.isPending(2))
    XCTAssertNil(book.holding(2))
    XCTAssertEqual(book.granted(lease(2), connection: 7), [])
    XCTAssertFalse(book.isPending(2))
    XCTAssertEqual(book.holding(2)?.pid, 100)
    XCTAssertEqual(book.ending, [:], "a lease on a live connection is not ending")
  }

  func testAGrantWhoseClientLeftBeforeTheAnswerEndsAtOnce() {
    var book = LeaseBook()
    book.beginGrant(group: 2, connection: 7)
    let effects = book.granted(lease(2), connection: nil)
    XCTAssertTrue(effects.contains(.reap))
    XCTAssertEqual(Array(book.ending.keys), [2])
  }

  func testReleaseIsAnsweredWhenTheLeaseEndsAndOnlyOnItsConnection() throws {
    var book = LeaseBook()
    _ = book.granted(lease(2), connection: 7)
    XCTAssertThrowsError(try book.release(group: 2, connection: 8, requestID: 1, now: 0)) {
      XCTAssertEqual(($0 as? BrokerError)?.code, .invalidTarget)
    }
    XCTAssertEqual(try book.release(group: 2, connection: 7, requestID: 3, now: 0), [.reap])
    XCTAssertEqual(Array(book.ending.keys), [2])
    let effects = book.ended(group: 2, reset: .done)
    XCTAssertTrue(
      effects.contains(
        .answer(connection: 7, requestID: 3, kind: .released, group: 2, outcome: "released", detail: "reset after the lease")))
    XCTAssertTrue(effects.contains(.stopRelaying(group: 2)))
    XCTAssertNil(book.holding(2))
  }

  func testAReleaseNotFreedInTimeIsAnsweredPending() throws {
    var book = LeaseBook()
    _ = book.granted(lease(2), connection: 7)
    _ = try book.release(group: 2, connection: 7, requestID: 3, now: 0)
    XCTAssertEqual(book.tick(now: 5), [])
    let late = book.tick(now: LeaseBook.releaseWait + 0.1)
    guard case .answer(7, 3, .released, 2, "pending", _)? = late.first else { return XCTFail("\(late)") }
    XCTAssertEqual(Array(book.ending.keys), [2], "it still ends once the holders let go")
  }

  func testRevokeAsksTheHolderThenTimesOutOrForces() {
    var book = LeaseBook()
    _ = book.granted(lease(2), connection: 7)
    let asked = book.revoke(group: 2, connection: 9, requestID: 1, wait: 3, force: false, now: 0)
    XCTAssertTrue(
      asked.contains(
        .notify(group: 2, event: .deviceRequest, detail: "the administrator asks for group 2 back within 3 s", holder: 7, uid: 1000)))
    XCTAssertEqual(book.tick(now: 3.5), [.answer(connection: 9, requestID: 1, kind: .revoked, group: 2, outcome: "timeout", detail: nil)])
    XCTAssertEqual(book.ending, [:], "not given back in time: its live connection keeps it")

    _ = book.revoke(group: 2, connection: 9, requestID: 2, wait: 1, force: true, now: 10)
    XCTAssertEqual(book.tick(now: 11.5), [.terminateHolders(group: 2, lease: lease(2))])
    let ended = book.ended(group: 2, reset: .done)
    XCTAssertTrue(ended.contains(.answer(connection: 9, requestID: 2, kind: .revoked, group: 2, outcome: "forced", detail: nil)))
  }

  func testRevokeOfNothingSaysNone() {
    var book = LeaseBook()
    XCTAssertEqual(
      book.revoke(group: 4, connection: 9, requestID: 1, wait: 3, force: false, now: 0),
      [.answer(connection: 9, requestID: 1, kind: .revoked, group: 4, outcome: "none", detail: nil)])
  }

  func testAClosedConnectionEndsItsLeasesAndForgetsWhatItWaitedFor() throws {
    var book = LeaseBook()
    _ = book.granted(lease(2), connection: 7)
    _ = book.granted(lease(4), connection: 8)
    _ = book.revoke(group: 4, connection: 7, requestID: 1, wait: 30, force: false, now: 0)
    book.beginGrant(group: 6, connection: 7)
    XCTAssertEqual(book.connectionClosed(7), [.reap])
    XCTAssertEqual(Set(book.ending.keys), [2, 4])
    XCTAssertFalse(book.isPending(6))
    XCTAssertTrue(book.revocations.isEmpty, "nobody is left to answer")
  }

  func testLeasesFromTheLedgerEndOnceNobodyHoldsThem() {
    var book = LeaseBook()
    book.restore([lease(2), lease(3)])
    XCTAssertEqual(Set(book.ending.keys), [2, 3])
    XCTAssertEqual(book.kernelRequest(group: 2).count, 1)
    _ = book.ended(group: 2, reset: nil)
    XCTAssertEqual(book.leasedGroups, [3])
  }
}

/// `MAJOR:MINOR` from sysfs against `st_rdev`: what a granted cdev is checked by.
final class DeviceNumberTests: XCTestCase {
  func testEncodesAsStatDoes() {
    // /dev/null 1:3, /dev/zero 1:5, /dev/tty 5:0 on every Linux.
    for (path, text) in [("/dev/null", "1:3"), ("/dev/zero", "1:5"), ("/dev/tty", "5:0")] {
      var info = stat()
      XCTAssertEqual(stat(path, &info), 0)
      XCTAssertEqual(DeviceNumber(text)?.rawValue, UInt64(info.st_rdev), path)
    }
    // Majors and minors past 8 bits are split as glibc splits them.
    XCTAssertEqual(DeviceNumber("4095:1048575")?.rawValue, 0xffff_ffff)
    XCTAssertEqual(DeviceNumber("4096:256")?.rawValue, 0x1000_0010_0000)
    XCTAssertNil(DeviceNumber("1"))
    XCTAssertNil(DeviceNumber("a:b"))
  }
}
