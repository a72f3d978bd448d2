import PCI

/// A PCI function as the host kernel presents it in sysfs.
public struct PCIDevice: Sendable {
  public let address: PCIAddress
  /// Canonical sysfs directory, e.g. `/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0`.
  public let sysfsPath: String
  public internal(set) var vendorID: UInt16
  public internal(set) var deviceID: UInt16
  public let subsystemVendorID: UInt16?
  public let subsystemID: UInt16?
  /// Base class, subclass and programming interface, as `0x020000`.
  public let classCode: UInt32
  public let revision: UInt8
  public let headerType: UInt8
  public let isMultifunction: Bool
  /// The bound driver's name, nil when unbound.
  public let driver: String?
  /// `driver_override`, nil when unset (the kernel prints "(null)").
  public let driverOverride: String?
  public let iommuGroup: IOMMUGroupID?
  public let numaNode: Int?
  /// Upstream PCI bridges from the nearest to the root port, taken from the sysfs path.
  public let upstreamBridges: [PCIAddress]
  public let bars: [BAR]
  /// Parsed config space; nil when it could not be read (see `configError`).
  public let config: ConfigSpace?
  public let configError: String?
  /// The kernel's `reset_method` in its order of preference; nil when the kernel has no such
  /// attribute (before 5.15), empty when the kernel knows no way to reset the function.
  public internal(set) var kernelResetMethods: [ResetMethod]?
  public let sriov: SRIOVState?
  /// For a virtual function, its physical function.
  public let physicalFunction: PCIAddress?
  public let interrupt: LegacyInterrupt
  /// `boot_vga`: this is the VGA device the firmware used to boot.
  public let bootVGA: Bool
  /// What was wrong in this function's sysfs and was skipped rather than trusted
  /// ("resource line 3 is not start ≤ end; BAR ignored").
  public internal(set) var warnings: [String] = []

  public var baseClass: UInt8 { UInt8(classCode >> 16) }
  public var subclass: UInt8 { UInt8((classCode >> 8) & 0xFF) }

  /// Header type 1 or 2: forwards a bus; never assigned itself.
  public var isBridge: Bool { headerType == 1 || headerType == 2 }
  /// Host bridges and ISA/LPC bridges: header type 0, but the platform's, never a guest's.
  public var isPlatformBridge: Bool { baseClass == 0x06 && !isBridge }
  /// A function that does work of its own and can be given to a user.
  public var isEndpoint: Bool { !isBridge && !isPlatformBridge }
  /// What kind of function this is for assignment: endpoint, bridge or platform bridge.
  public var kind: PCIFunctionKind { isBridge ? .bridge : isPlatformBridge ? .platform : .endpoint }
  public var isVirtualFunction: Bool { physicalFunction != nil }
  /// A conventional PCI function: it has no PCI Express capability (when config was readable).
  public var isConventionalPCI: Bool? {
    guard let config, config.standardChainComplete else { return nil }
    return config.express == nil
  }
  /// Drivers whose binding leaves DMA to someone else, so the group stays viable for VFIO.
  public var driverKeepsGroupViable: Bool {
    guard let driver else { return true }
    return PCIDevice.isVFIODriver(driver) || driver == "pci-stub" || driver == "pcieport"
  }

  /// vfio-pci and its vendor variants (mlx5_vfio_pci, hisi_acc_vfio_pci, …).
  public static func isVFIODriver(_ name: String) -> Bool {
    name == "vfio-pci" || name.hasSuffix("_vfio_pci") || name.hasSuffix("-vfio-pci")
  }
}

/// What a function is to device assignment.
public enum PCIFunctionKind: String, Sendable, Codable {
  /// Does work of its own: bound to vfio-pci and given to the user.
  case endpoint
  /// A PCI bridge: stays with the host (pcieport or no driver) and remains in its group.
  case bridge
  /// A host or ISA bridge: part of the platform.
  case platform
}

/// A way the kernel can reset a function, as named in sysfs `reset_method`.
public struct ResetMethod: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
  public let rawValue: String
  public init(rawValue: String) { self.rawValue = rawValue }
  public var description: String { rawValue }

  public static let deviceSpecific = ResetMethod(rawValue: "device_specific")
  public static let acpi = ResetMethod(rawValue: "acpi")
  /// PCIe Function Level Reset.
  public static let flr = ResetMethod(rawValue: "flr")
  /// Conventional PCI Advanced Features FLR.
  public static let afFLR = ResetMethod(rawValue: "af_flr")
  /// D3hot→D0 power-management transition.
  public static let pm = ResetMethod(rawValue: "pm")
  /// Secondary bus reset at the parent bridge: hits every function on the bus.
  public static let bus = ResetMethod(rawValue: "bus")
  public static let cxlBus = ResetMethod(rawValue: "cxl_bus")

  /// Resets that reach beyond the function itself.
  public var affectsOtherFunctions: Bool { self == .bus || self == .cxlBus }
}

/// SR-IOV state of a physical function, from its sysfs `sriov_*` attributes.
public struct SRIOVState: Sendable, Equatable, Codable {
  public let totalVFs: Int
  public let numVFs: Int
  public let virtualFunctions: [PCIAddress]
  public let driversAutoprobe: Bool?
  public let vfDeviceID: UInt16?
}

/// INTx wiring of a function.
public struct LegacyInterrupt: Sendable, Equatable {
  /// 0 none, 1 INTA … 4 INTD.
  public let pin: UInt8
  /// The Linux IRQ number from sysfs `irq` (an MSI vector once MSI is on).
  public let irq: Int?
  /// Whether the function can mask its INTx (PCI 2.3 Interrupt Disable), which VFIO needs to
  /// share a line with other devices.
  public let masking: INTxMasking

  public var pinName: String? { pin >= 1 && pin <= 4 ? "INT" + String(UnicodeScalar(UInt8(0x40) + pin)) : nil }
}

public enum INTxMasking: String, Sendable, Codable {
  /// PCI Express requires the Interrupt Disable bit.
  case required
  /// Conventional PCI: the kernel tests it by toggling the bit when vfio-pci binds.
  case untested
  case noPin = "no-pin"
}
