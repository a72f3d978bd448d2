import VFIOHost
import VFIOTestSupport
import XCTest

final class PCIIDsTests: XCTestCase {
  /// The database's own format (pci.ids(5)), not kernel data.
  let sample = """
    # comment
    1234  Technical Corp.
    \t1111  Emulated VGA
    \t11e8  Edu device
    8086  Intel Corporation
    \t10d3  82574L Gigabit Network Connection
    \t\t8086 a01f  Gigabit CT Desktop Adapter
    \t2918  82801IB (ICH9) LPC Interface Controller

    C 02  Network controller
    \t00  Ethernet controller
    C 06  Bridge
    \t04  PCI bridge
    \t\t01  Subtractive decode

    """

  func testLooksUpVendorsDevicesAndClasses() {
    let db = PCIIDDatabase(bytes: Array(sample.utf8))
    XCTAssertEqual(db.vendorName(0x8086), "Intel Corporation")
    XCTAssertEqual(db.deviceName(vendor: 0x8086, device: 0x10D3), "82574L Gigabit Network Connection")
    XCTAssertEqual(db.deviceName(vendor: 0x8086, device: 0x2918), "82801IB (ICH9) LPC Interface Controller")
    XCTAssertEqual(db.deviceName(vendor: 0x1234, device: 0x11E8), "Edu device")
    XCTAssertNil(db.deviceName(vendor: 0x1234, device: 0x10D3), "a device of another vendor must not match")
    XCTAssertNil(db.vendorName(0xABCD))
    XCTAssertEqual(db.className(0x020000), "Ethernet controller")
    XCTAssertEqual(db.className(0x060400), "PCI bridge")
    XCTAssertEqual(db.className(0x068000), "Bridge", "falls back to the base class")
    XCTAssertNil(db.className(0xFF0000))
  }

  func testTruncatedDatabaseDoesNotCrash() {
    let bytes = Array(sample.utf8)
    for cut in stride(from: 0, to: bytes.count, by: 7) {
      let db = PCIIDDatabase(bytes: Array(bytes[..<cut]))
      _ = db.deviceName(vendor: 0x8086, device: 0x2918)
      _ = db.className(0x060401)
    }
  }
}
