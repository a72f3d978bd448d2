import VFIOHost
import VFIOTestSupport
import XCTest

final class ConfigSpaceTests: XCTestCase {
  private func config(_ address: String, fixture: String = "q35-vtd") throws -> [UInt8] {
    let sysfs = Fixtures.sysfs(fixture)
    let link = try XCTUnwrap(sysfs.readLink("/sys/bus/pci/devices/\(address)"))
    return try XCTUnwrap(sysfs.readBytes(resolve(link: link, in: "/sys/bus/pci/devices") + "/config", limit: 4096))
  }

  func testParsesAPCIeEndpoint() throws {
    // e1000e (82574L) on the root bus of the q35 guest.
    let space = try ConfigSpace(try config("0000:00:02.0"))
    XCTAssertEqual(space.vendorID, 0x8086)
    XCTAssertEqual(space.deviceID, 0x10D3)
    XCTAssertEqual(space.classCode, 0x020000)
    XCTAssertEqual(space.headerType, 0)
    XCTAssertTrue(space.standardChainComplete)
    XCTAssertTrue(space.chainErrors.isEmpty)
    XCTAssertNotNil(space.powerManagement)
    XCTAssertNotNil(space.msix)
    XCTAssertNotNil(space.express)
    XCTAssertEqual(space.powerManagement?.noSoftReset, false)
  }

  func testNVMeBehindARootPortAdvertisesFLR() throws {
    let space = try ConfigSpace(try config("0000:02:00.0"))
    XCTAssertEqual(space.express?.functionLevelReset, true)
    XCTAssertEqual(space.express?.portType, .endpoint)
  }

  func testParsesBridges() throws {
    let rootPort = try ConfigSpace(try config("0000:00:06.0"))
    XCTAssertEqual(rootPort.headerType, 1)
    XCTAssertEqual(rootPort.express?.portType, .rootPort)
    XCTAssertEqual(rootPort.secondaryBus, 2)
    let pciBridge = try ConfigSpace(try config("0000:00:04.0"))
    XCTAssertEqual(pciBridge.express?.portType, .pcieToPCIBridge)
  }

  func testConventionalPCIHasNoExpressCapability() throws {
    let space = try ConfigSpace(try config("0000:01:01.0"))
    XCTAssertNil(space.express)
    XCTAssertTrue(space.standardChainComplete)
    XCTAssertEqual(space.interruptPin, 1)
  }

  func testTruncatedConfigIsAnError() {
    XCTAssertThrowsError(try ConfigSpace([])) { XCTAssertEqual($0 as? ConfigSpaceError, .truncated(0)) }
    XCTAssertThrowsError(try ConfigSpace([UInt8](repeating: 0x86, count: 63))) {
      XCTAssertEqual($0 as? ConfigSpaceError, .truncated(63))
      XCTAssertTrue("\($0)".contains("truncated"))
    }
  }

  func testAbsentDeviceIsAnError() {
    XCTAssertThrowsError(try ConfigSpace([UInt8](repeating: 0xFF, count: 256))) {
      XCTAssertEqual($0 as? ConfigSpaceError, .notPresent(0xFFFF))
    }
  }

  func testHeaderOnlyReadLeavesCapabilitiesUnknown() throws {
    let space = try ConfigSpace(Array(try config("0000:00:02.0").prefix(64)))
    XCTAssertFalse(space.standardChainComplete)
    XCTAssertNil(space.msix)
    XCTAssertEqual(space.vendorID, 0x8086)
  }

  func testLoopingCapabilityChainIsCutAndReported() throws {
    var bytes = try config("0000:00:02.0")
    let first = Int(bytes[0x34])
    bytes[first + 1] = UInt8(first)  // the first capability points at itself
    let space = try ConfigSpace(bytes)
    XCTAssertEqual(space.capabilities.count, 1)
    XCTAssertEqual(space.chainErrors, [.loop(first)])
    XCTAssertFalse(space.standardChainComplete)
  }

  func testPointerIntoTheHeaderIsReported() throws {
    var bytes = try config("0000:00:02.0")
    bytes[Int(bytes[0x34]) + 1] = 0x10
    XCTAssertEqual(try ConfigSpace(bytes).chainErrors, [.badPointer(0x10)])
  }

  func testLoopingExtendedChainIsReported() throws {
    var bytes = try config("0000:02:00.0")
    XCTAssertEqual(bytes.count, 4096)
    // Header at 0x100: keep the ID, point "next" back at 0x100.
    bytes[0x102] = (bytes[0x102] & 0x0F)
    bytes[0x103] = 0x10
    let space = try ConfigSpace(bytes)
    XCTAssertEqual(space.chainErrors, [.loop(0x100)])
  }

  func testRandomGarbageNeverCrashes() {
    var generator = SystemRandomNumberGenerator()
    for size in [64, 65, 100, 255, 256, 300, 4095, 4096] {
      for _ in 0..<300 {
        var bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes[0] = 0x86  // a present vendor, so the chains get walked
        bytes[6] |= 0x10
        if let space = try? ConfigSpace(bytes) {
          XCTAssertLessThanOrEqual(space.capabilities.count, 48)
          XCTAssertLessThanOrEqual(space.extendedCapabilities.count, 960)
          _ = (space.msi, space.msix, space.acs, space.sriov, space.express, space.powerManagement)
        }
      }
    }
  }
}
