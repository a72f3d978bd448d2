/// Capability IDs of the standard chain in the first 256 bytes (PCI Code and ID Assignment §2).
public enum StandardCapabilityID: UInt16, Sendable {
  case powerManagement = 0x01
  case msi = 0x05
  case vendorSpecific = 0x09
  case bridgeSubsystem = 0x0D
  case pciExpress = 0x10
  case msix = 0x11
  case advancedFeatures = 0x13
}

/// Capability IDs of the PCIe extended chain from 0x100 (PCI Code and ID Assignment §3).
public enum ExtendedCapabilityID: UInt16, Sendable {
  case aer = 0x0001
  case acs = 0x000D
  case ari = 0x000E
  case ats = 0x000F
  case sriov = 0x0010
  case resizableBAR = 0x0015
  case pasid = 0x001B
}

/// A standard capability's first two bytes: its ID, then the offset of the next one.
public enum StandardCapabilityHeader {
  public static let id = 0x00
  public static let next = 0x01
  /// The low two bits of a capability pointer are reserved.
  public static let pointerMask: UInt8 = 0xFC
}

/// An extended capability's 32-bit header: ID in bits 0–15, version 16–19, next offset 20–31.
public enum ExtendedCapabilityHeader {
  public static func id(_ header: UInt32) -> UInt16 { UInt16(truncatingIfNeeded: header) }
  /// The next capability's offset, its reserved low two bits cleared; 0 ends the chain.
  public static func next(_ header: UInt32) -> Int { Int(header >> 20) & 0xFFC }
}

/// Registers of the Power Management capability, as offsets from it (PCI PM 1.2 §3.2).
public enum PowerManagementRegister {
  /// PMC, Power Management Capabilities.
  public static let capabilities = 0x02
  /// PMCSR, Power Management Control/Status.
  public static let controlStatus = 0x04
  public static let length = 8
  /// PMC: the function supports D1.
  public static let d1Support: UInt16 = 1 << 9
  /// PMC: the function supports D2.
  public static let d2Support: UInt16 = 1 << 10
  /// PMCSR: the current power state, 0 (D0) to 3 (D3hot).
  public static let powerStateMask: UInt16 = 0x3
  /// PMCSR: a D3hot→D0 transition does not reset the function.
  public static let noSoftReset: UInt16 = 1 << 3
}

/// Registers of the PCI Express capability, as offsets from it (PCIe Base §7.5.3).
public enum PCIExpressRegister {
  /// PCI Express Capabilities: version in bits 0–3, device/port type in bits 4–7.
  public static let capabilities = 0x02
  public static let deviceCapabilities = 0x04
  public static let deviceControl = 0x08
  public static let deviceStatus = 0x0A
  public static let versionMask: UInt16 = 0xF
  public static let portTypeShift = 4
  public static let portTypeMask: UInt16 = 0xF
  /// Device Capabilities: Function Level Reset supported.
  public static let functionLevelResetCapable: UInt32 = 1 << 28
}

/// Registers of conventional PCI's Advanced Features capability, as offsets from it (ECN 2006).
public enum AdvancedFeaturesRegister {
  /// One byte.
  public static let capabilities = 0x03
  public static let length = 6
  public static let transactionsPendingCapable: UInt8 = 1 << 0
  public static let functionLevelResetCapable: UInt8 = 1 << 1
}

/// Registers of the MSI capability, as offsets from it (PCI Local Bus 3.0 §6.8.1).
public enum MSIRegister {
  public static let messageControl = 0x02
  public static let enable: UInt16 = 1 << 0
  /// log2 of the vectors the function asks for, a 3-bit field.
  public static let multipleMessageCapableShift = 1
  /// log2 of the vectors software granted, a 3-bit field.
  public static let multipleMessageEnableShift = 4
  public static let multipleMessageMask: UInt16 = 0x7
  public static let address64Bit: UInt16 = 1 << 7
  public static let perVectorMasking: UInt16 = 1 << 8
}

/// Registers of the MSI-X capability, as offsets from it (PCI Local Bus 3.0 §6.8.2).
public enum MSIXRegister {
  public static let messageControl = 0x02
  /// Table offset in bits 3–31, the BAR holding it (BIR) in bits 0–2.
  public static let table = 0x04
  /// Pending Bit Array offset and BIR, laid out as `table`.
  public static let pendingBitArray = 0x08
  public static let length = 12
  /// Message Control: the table size minus one.
  public static let tableSizeMask: UInt16 = 0x7FF
  public static let enable: UInt16 = 1 << 15
  public static let barIndicatorMask: UInt32 = 0x7
}

/// Registers of the Access Control Services extended capability, as offsets from it (PCIe Base
/// §7.7.11).
public enum ACSRegister {
  public static let capability = 0x04
  public static let control = 0x06
  /// Without the optional Egress Control Vector.
  public static let length = 8
}

/// Registers of the SR-IOV extended capability, as offsets from it (PCIe Base §9.3.3).
public enum SRIOVRegister {
  public static let control = 0x08
  public static let initialVFs = 0x0C
  public static let totalVFs = 0x0E
  public static let numVFs = 0x10
  public static let firstVFOffset = 0x14
  public static let vfStride = 0x16
  public static let vfDeviceID = 0x1A
  public static let length = 0x40
  /// SR-IOV Control: VF Enable.
  public static let vfEnable: UInt16 = 1 << 0
}
