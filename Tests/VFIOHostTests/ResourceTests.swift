import VFIOHost
import VFIOTestSupport
import XCTest

final class ResourceTests: XCTestCase {
  func testParsesBARsROMAndFlags() throws {
    let text = """
      0x00000000fea00000 0x00000000fea1ffff 0x0000000000040200
      0x0000000000000000 0x0000000000000000 0x0000000000000000
      0x000000000000c040 0x000000000000c05f 0x0000000000040101
      0x0000000800000000 0x0000000bffffffff 0x000000000014220c
      0x0000000000000000 0x0000000000000000 0x0000000000000000
      0x0000000000000000 0x0000000000000000 0x0000000000000000
      0x00000000fe800000 0x00000000fe83ffff 0x0000000000046200
      """
    let bars = try parseResources(text, pageSize: 4096)
    XCTAssertEqual(bars.map(\.index), [0, 2, 3, 6])
    XCTAssertEqual(bars[0].size, 128 * 1024)
    XCTAssertEqual(bars[0].kind, .mmio)
    XCTAssertEqual(bars[1].kind, .io)
    XCTAssertEqual(bars[1].size, 32)
    XCTAssertFalse(bars[1].subPage, "I/O BARs are never mapped, so sub-page does not apply")
    XCTAssertTrue(bars[2].is64Bit)
    XCTAssertTrue(bars[2].prefetchable)
    XCTAssertEqual(bars[2].size, 16 << 30)
    XCTAssertEqual(bars[3].role, .rom)
  }

  func testSubPageBARFromTheCapturedWatchdog() throws {
    let inventory = try Fixtures.inventory("q35-vtd")
    let watchdog = try XCTUnwrap(inventory.device(try PCIAddress(parsing: "00:07.0")))
    let bar0 = try XCTUnwrap(watchdog.bars.first { $0.index == 0 })
    XCTAssertEqual(bar0.size, 16)
    XCTAssertTrue(bar0.subPage)
  }

  func testMalformedLineIsAnError() {
    XCTAssertThrowsError(try parseResources("0x0 0x1\n", pageSize: 4096)) {
      XCTAssertTrue("\($0)".contains("resource line 0"))
    }
    XCTAssertThrowsError(try parseResources("garbage here now\n", pageSize: 4096))
  }
}
