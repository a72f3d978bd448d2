/// Offsets of the configuration header registers (PCI Local Bus 3.0 §6.1, PCIe Base §7.5.1):
/// the fields every header has, then those of a type 0 (endpoint) or type 1 (bridge) header.
public enum PCIConfigRegister {
  public static let vendorID = 0x00
  public static let deviceID = 0x02
  public static let command = 0x04
  public static let status = 0x06
  public static let revisionID = 0x08
  /// Three bytes: programming interface at 0x09, subclass at 0x0A, base class at 0x0B.
  public static let classCode = 0x09
  public static let headerType = 0x0E
  /// Type 0 has six base address registers, type 1 two; each is 4 bytes.
  public static let baseAddress0 = 0x10
  /// Type 1: the bus directly behind the bridge.
  public static let secondaryBusNumber = 0x19
  /// Type 1: the highest bus number behind the bridge.
  public static let subordinateBusNumber = 0x1A
  /// Type 2 (CardBus): the capabilities pointer sits here instead of at 0x34.
  public static let cardBusCapabilitiesPointer = 0x14
  /// Type 0.
  public static let subsystemVendorID = 0x2C
  /// Type 0.
  public static let subsystemID = 0x2E
  /// Types 0 and 1: the offset of the first standard capability.
  public static let capabilitiesPointer = 0x34
  public static let interruptLine = 0x3C
  /// 0 none, 1 INTA … 4 INTD.
  public static let interruptPin = 0x3D
  /// The header's size; standard capabilities live between here and `extendedCapabilities`.
  public static let headerSize = 0x40
  /// PCIe only: where the extended capability chain starts.
  public static let extendedCapabilities = 0x100

  /// The offset of base address register `index` (0...5).
  public static func baseAddress(_ index: Int) -> Int {
    precondition((0..<6).contains(index), "a header has at most six base address registers")
    return baseAddress0 + 4 * index
  }
}

/// Bits of the Command register.
public struct PCICommand: OptionSet, Sendable, Hashable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  public static let ioSpace = PCICommand(rawValue: 1 << 0)
  public static let memorySpace = PCICommand(rawValue: 1 << 1)
  /// The device may initiate DMA (and MSI writes, which are DMA).
  public static let busMaster = PCICommand(rawValue: 1 << 2)
  /// PCI 2.3: the function may not assert INTx.
  public static let interruptDisable = PCICommand(rawValue: 1 << 10)
}

/// Bits of the Status register.
public struct PCIStatus: OptionSet, Sendable, Hashable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  /// The function implements a standard capability list at the capabilities pointer.
  public static let capabilitiesList = PCIStatus(rawValue: 1 << 4)
}

/// The Header Type register: the layout of the rest of the header in bits 0–6, and bit 7.
public enum PCIHeaderType {
  public static let layoutMask: UInt8 = 0x7F
  /// Set when the device implements functions other than 0.
  public static let multiFunction: UInt8 = 0x80
  public static let endpoint: UInt8 = 0
  public static let bridge: UInt8 = 1
  public static let cardBusBridge: UInt8 = 2
}
