import PCI
import XCTest

final class PCIAddressTests: XCTestCase {
  func testParsesFullAndShortForms() throws {
    XCTAssertEqual(try PCIAddress(parsing: "0000:01:00.0"), PCIAddress(domain: 0, bus: 1, device: 0, function: 0))
    XCTAssertEqual(try PCIAddress(parsing: "01:00.0"), PCIAddress(domain: 0, bus: 1, device: 0, function: 0))
    XCTAssertEqual(try PCIAddress(parsing: "10000:AB:1f.7").description, "10000:ab:1f.7")
    XCTAssertEqual(try PCIAddress(parsing: "00:1f.3").description, "0000:00:1f.3")
  }

  func testSysfsSpellingAndUpperCaseParseAlike() throws {
    let address = PCIAddress(domain: 0xA, bus: 0xBC, device: 0x1F, function: 7)
    XCTAssertEqual(try PCIAddress(parsing: "000a:bc:1f.7"), address)
    XCTAssertEqual(try PCIAddress(parsing: "000A:BC:1F.7"), address)
    XCTAssertEqual(address.description, "000a:bc:1f.7")
  }

  func testRejectsMalformedAddressesWithAClearMessage() {
    for bad in [
      "", "1", "01:00", "01.00.0", "0000:01:00.0.1", "zz:00.0", "0000:01:00.x", "00:01:02:03.0", " 01:00.0", "01:00.0 ",
      "-1:00.0", "000000000:00:00.0",
    ] {
      XCTAssertThrowsError(try PCIAddress(parsing: bad), bad) { error in
        XCTAssertTrue("\(error)".contains("not a PCI address"), "\(error)")
      }
    }
  }

  func testRejectsDeviceAndFunctionOutOfRange() {
    XCTAssertThrowsError(try PCIAddress(parsing: "00:20.0")) { XCTAssertTrue("\($0)".contains("above 0x1f")) }
    XCTAssertThrowsError(try PCIAddress(parsing: "00:1f.8")) { XCTAssertTrue("\($0)".contains("above 7")) }
  }

  func testOrdersByDomainBusDeviceFunction() throws {
    let sorted = try ["0001:00:00.0", "00:1f.3", "01:00.0", "00:02.0"].map(PCIAddress.init(parsing:)).sorted()
    XCTAssertEqual(sorted.map(\.description), ["0000:00:02.0", "0000:00:1f.3", "0000:01:00.0", "0001:00:00.0"])
  }
}
