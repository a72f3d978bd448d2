import CVFIO
import PCI

/// The fixed VFIO-PCI region indexes.
public enum PCIRegion {
  public static func bar(_ n: Int) -> Int { n }
  public static let rom = Int(VFIO_PCI_ROM_REGION_INDEX)
  public static let config = Int(VFIO_PCI_CONFIG_REGION_INDEX)
  public static let vga = Int(VFIO_PCI_VGA_REGION_INDEX)
}

/// VFIO_DEVICE_GET_REGION_INFO: where a region lives in the device fd and what it allows.
public struct RegionInfo: Sendable, Equatable {
  public var index: Int
  public var flags: UInt32
  public var size: UInt64
  /// The region's offset within the device file descriptor.
  public var offset: UInt64
  public var capabilities: [RegionCapability]

  public var isReadable: Bool { flags & UInt32(VFIO_REGION_INFO_FLAG_READ) != 0 }
  public var isWritable: Bool { flags & UInt32(VFIO_REGION_INFO_FLAG_WRITE) != 0 }
  public var isMappable: Bool { flags & UInt32(VFIO_REGION_INFO_FLAG_MMAP) != 0 }

  /// The areas that may be mmap'd: the sparse list if the kernel gave one, else the whole
  /// region when it is mappable.
  public var mappableAreas: [SparseMmapArea] {
    for case .sparseMmap(let areas) in capabilities { return areas }
    return isMappable && size > 0 ? [SparseMmapArea(offset: 0, size: size)] : []
  }

  public var isMSIXMappable: Bool { capabilities.contains(.msixMappable) }

  func allowsMapping(offset: UInt64, length: UInt64) -> Bool {
    length > 0
      && mappableAreas.contains { area in
        offset >= area.offset && offset - area.offset <= area.size
          && area.size - (offset - area.offset) >= length
      }
  }

  /// Decodes a `vfio_region_info` buffer and its capability chain.
  public static func decode(_ buffer: [UInt8]) throws(VFIOError) -> RegionInfo {
    let fixed = MemoryLayout<vfio_region_info>.size
    guard buffer.count >= fixed else {
      throw CapabilityChain.malformed(
        "region info of \(buffer.count) bytes is shorter than \(fixed)")
    }
    let flags: UInt32 = buffer.load(at: 4)
    var caps: [RegionCapability] = []
    if flags & UInt32(VFIO_REGION_INFO_FLAG_CAPS) != 0 {
      let chain = try CapabilityChain.parse(
        buffer, firstOffset: buffer.load(at: 12), fixedSize: fixed)
      caps = try RegionCapability.decode(chain)
    }
    return RegionInfo(
      index: Int(buffer.load(UInt32.self, at: 8)), flags: flags, size: buffer.load(at: 16),
      offset: buffer.load(at: 24), capabilities: caps)
  }
}

/// A device a bus reset would affect (`struct vfio_pci_dependent_device`).
public struct DependentDevice: Sendable, Equatable, CustomStringConvertible {
  /// The IOMMU group, or for cdev devices the iommufd device id (see `HotResetInfo.byDeviceID`).
  public var groupOrDeviceID: UInt32
  public var segment: UInt16
  public var bus: UInt8
  public var devfn: UInt8

  public var address: PCIAddress {
    PCIAddress(domain: UInt32(segment), bus: bus, device: devfn >> 3, function: devfn & 7)
  }

  public var description: String { "\(address) (group \(groupOrDeviceID))" }
}

/// What VFIO_DEVICE_GET_PCI_HOT_RESET_INFO reports.
public struct HotResetInfo: Sendable, Equatable {
  public var flags: UInt32
  public var devices: [DependentDevice]
  /// Entries carry iommufd device ids, not group numbers (cdev devices, 6.6+).
  public var byDeviceID: Bool { flags & UInt32(CVFIO_PCI_HOT_RESET_FLAG_DEV_ID) != 0 }
  /// With device ids: every affected device is owned by this iommufd.
  public var allOwned: Bool { flags & UInt32(CVFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED) != 0 }
  /// The distinct groups whose descriptors a legacy hot reset must pass.
  public var groups: [UInt32] {
    byDeviceID ? [] : Array(Set(devices.map(\.groupOrDeviceID))).sorted()
  }
}

/// Encoders and decoders for the hot reset structures with their trailing arrays.
public enum HotResetCodec {
  static let header = 12
  static let entry = 8

  /// `struct vfio_pci_hot_reset_info` with room for `capacity` devices.
  public static func infoRequest(capacity: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: header + capacity * entry)
    bytes.store(UInt32(bytes.count), at: 0)
    return bytes
  }

  public static func decodeInfo(_ bytes: [UInt8]) throws(VFIOError) -> HotResetInfo {
    guard bytes.count >= header else {
      throw CapabilityChain.malformed("hot reset info of \(bytes.count) bytes")
    }
    let count = Int(bytes.load(UInt32.self, at: 8))
    guard count <= (bytes.count - header) / entry else {
      throw CapabilityChain.malformed(
        "hot reset info lists \(count) devices but holds \((bytes.count - header) / entry)")
    }
    let devices = (0..<count).map { i in
      let at = header + i * entry
      return DependentDevice(
        groupOrDeviceID: bytes.load(at: at), segment: bytes.load(at: at + 4),
        bus: bytes[at + 6], devfn: bytes[at + 7])
    }
    return HotResetInfo(flags: bytes.load(at: 4), devices: devices)
  }

  /// `struct vfio_pci_hot_reset` with its trailing group fd array.
  public static func resetRequest(groupFDs: [Int32]) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: header + 4 * groupFDs.count)
    bytes.store(UInt32(bytes.count), at: 0)
    bytes.store(UInt32(groupFDs.count), at: 8)
    for (i, fd) in groupFDs.enumerated() { bytes.store(fd, at: header + 4 * i) }
    return bytes
  }
}
