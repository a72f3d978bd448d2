import PCI
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
    let table = parseResources(text, pageSize: 4096)
    XCTAssertEqual(table.problems, [])
    let bars = table.bars
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

  func testMalformedLinesAreSkippedWithAProblem() {
    let table = parseResources("0x0 0x1\ngarbage here now\n0x1000 0x1fff 0x200\n", pageSize: 4096)
    XCTAssertEqual(table.bars.map(\.index), [2])
    XCTAssertEqual(table.problems.count, 2)
    XCTAssertTrue(table.problems[0].description.contains("resource line 0"), table.problems[0].description)
  }

  /// Found by vfio-fuzz: `end - start + 1` overflowed (BAR.swift:70) and an inverted line was
  /// taken as a huge BAR.
  func testInvertedAndWholeSpaceLinesAreIgnoredNotTrapped() {
    let text = """
      0x00000000fea20000 0x00000000fea1ffff 0x0000000000040200
      0x0000000000000000 0xffffffffffffffff 0x0000000000040200
      0xffffffffffffffff 0xffffffffffffffff 0x0000000000040101
      """
    let table = parseResources(text, pageSize: 4096)
    XCTAssertEqual(table.problems, [.inverted(0, start: 0xfea2_0000, end: 0xfea1_ffff), .tooLarge(1)])
    XCTAssertEqual(table.bars.map(\.size), [1], "a one-byte resource at the top of the space is still one")
    XCTAssertTrue(table.problems[0].description.contains("is not start ≤ end"))
  }

  /// Found by vfio-fuzz (`--page-size 0`): `start % pageSize` divided by zero (BAR.swift:93).
  func testPageSizeZeroDoesNotTrap() throws {
    XCTAssertEqual(parseResources("0x1000 0x1fff 0x200\n", pageSize: 0).bars.count, 1)
    XCTAssertThrowsError(try HostInventory.read(Fixtures.sysfs("q35-vtd"), pageSize: 0)) {
      XCTAssertEqual($0 as? InventoryError, .badPageSize(0))
    }
    XCTAssertFalse(isValidPageSize(6000))
    XCTAssertTrue(isValidPageSize(65536))
  }
}
