import PCI
import XCTest

final class ConfigRegisterTests: XCTestCase {
  func testBaseAddressRegistersAreFourBytesApartFrom0x10() {
    XCTAssertEqual((0..<6).map(PCIConfigRegister.baseAddress), [0x10, 0x14, 0x18, 0x1C, 0x20, 0x24])
    // The last BAR ends where the type 0 header's CardBus CIS pointer begins.
    XCTAssertEqual(PCIConfigRegister.baseAddress(5) + 4, 0x28)
  }

  func testHeaderRegistersDoNotOverlap() {
    let widths: [(Int, Int)] = [
      (PCIConfigRegister.vendorID, 2), (PCIConfigRegister.deviceID, 2), (PCIConfigRegister.command, 2),
      (PCIConfigRegister.status, 2), (PCIConfigRegister.revisionID, 1), (PCIConfigRegister.classCode, 3),
      (PCIConfigRegister.headerType, 1), (PCIConfigRegister.subsystemVendorID, 2), (PCIConfigRegister.subsystemID, 2),
      (PCIConfigRegister.capabilitiesPointer, 1), (PCIConfigRegister.interruptLine, 1),
      (PCIConfigRegister.interruptPin, 1),
    ]
    var covered = Set<Int>()
    for (offset, width) in widths {
      for byte in offset..<offset + width {
        XCTAssertTrue(covered.insert(byte).inserted, "byte 0x\(hex(byte, width: 2)) is in two registers")
        XCTAssertLessThan(byte, PCIConfigRegister.headerSize)
      }
    }
  }

  func testExtendedCapabilityHeaderSplitsIDVersionAndNext() {
    // SR-IOV, version 1, next at 0x1b8: how an Intel 82576 PF lays out its chain.
    let header: UInt32 = 0x1B81_0010
    XCTAssertEqual(ExtendedCapabilityHeader.id(header), ExtendedCapabilityID.sriov.rawValue)
    XCTAssertEqual(ExtendedCapabilityHeader.next(header), 0x1B8)
    // The reserved low bits of the next pointer are dropped; the version nibble never leaks in.
    XCTAssertEqual(ExtendedCapabilityHeader.next(0xFFFF_0001), 0xFFC)
    XCTAssertEqual(ExtendedCapabilityHeader.next(0x000F_0001), 0)
  }

  func testCommandAndStatusBitsMatchTheSpecification() {
    XCTAssertEqual(PCICommand([.ioSpace, .memorySpace, .busMaster]).rawValue, 0x0007)
    XCTAssertEqual(PCICommand.interruptDisable.rawValue, 0x0400)
    XCTAssertEqual(PCIStatus.capabilitiesList.rawValue, 0x0010)
    XCTAssertEqual(0x81 & PCIHeaderType.layoutMask, PCIHeaderType.bridge)
    XCTAssertNotEqual(0x81 & PCIHeaderType.multiFunction, 0)
  }
}
