import Foundation
import VFIOHost
import VFIOTestSupport
import XCTest

/// Uevents as the kernel sends them (a message captured from a real kernel's netlink socket),
/// and the monitor's inotify half on a scratch directory.
final class HostChangeMonitorTests: XCTestCase {
  func testAKernelUeventIsParsed() throws {
    let bytes = try XCTUnwrap(Sysfs().readBytes(Fixtures.directory + "/uevent-pci-change.bin"))
    let event = try XCTUnwrap(Uevent(message: bytes))
    XCTAssertEqual(event.action, "change")
    XCTAssertEqual(event.devpath, "/devices/pci0000:00/0000:00:00.0")
    XCTAssertEqual(event.subsystem, "pci")
    XCTAssertEqual(event.properties["PCI_SLOT_NAME"], "0000:00:00.0")
    XCTAssertTrue(HostChangeMonitor.subsystems.contains(try XCTUnwrap(event.subsystem)))
  }

  func testWhatIsNotAKernelUeventIsRefused() throws {
    let bytes = try XCTUnwrap(Sysfs().readBytes(Fixtures.directory + "/uevent-pci-change.bin"))
    // udev's own multicast messages start with a "libudev" header; garbage and truncation too.
    XCTAssertNil(Uevent(message: Array("libudev".utf8) + [0] + bytes.dropFirst(7)))
    XCTAssertNil(Uevent(message: [UInt8]()))
    XCTAssertNil(Uevent(message: Array("no at sign".utf8)))
    // The header's action must be the one the properties give.
    XCTAssertNil(Uevent(message: Array("add@/devices/x\u{0}ACTION=remove\u{0}".utf8)))
    XCTAssertNil(Uevent(message: bytes.prefix(10)))
  }

  func testAWriteInAWatchedDirectoryWakesTheMonitor() throws {
    let directory = NSTemporaryDirectory() + "monitor-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let monitor: HostChangeMonitor
    do { monitor = try HostChangeMonitor(watching: [directory]) } catch {
      throw XCTSkip("no uevent socket here: \(error)")
    }
    XCTAssertEqual(monitor.next(timeout: 0.05)?.filter { $0 == .directory(directory) }, [])
    try Data("x".utf8).write(to: URL(fileURLWithPath: directory + "/ledger.sqlite-wal"))
    XCTAssertEqual(monitor.next(timeout: 2)?.filter { $0 == .directory(directory) }, [.directory(directory)])
    monitor.stop()
    XCTAssertNil(monitor.next(timeout: 2), "stopped: nil at once")
  }

  func testAMissingDirectoryIsAClearError() {
    XCTAssertThrowsError(try HostChangeMonitor(watching: ["/nonexistent/swift-vfio"])) { error in
      guard let failure = error as? HostChangeMonitor.Failure else { return XCTFail("\(error)") }
      if case .inotify(let path, _) = failure { XCTAssertEqual(path, "/nonexistent/swift-vfio") }
      XCTAssertTrue(failure.description.contains("cannot be watched"), failure.description)
    }
  }
}
