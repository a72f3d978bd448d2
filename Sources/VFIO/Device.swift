import CVFIO
import PCI
import Synchronization
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// VFIO_DEVICE_GET_INFO.
public struct DeviceInfo: Sendable, Equatable {
  public var flags: UInt32
  public var regionCount: Int
  public var irqCount: Int

  public var isPCI: Bool { flags & UInt32(VFIO_DEVICE_FLAGS_PCI) != 0 }
  /// The device has a function reset VFIO_DEVICE_RESET can use.
  public var supportsReset: Bool { flags & UInt32(VFIO_DEVICE_FLAGS_RESET) != 0 }
}

/// A VFIO device file descriptor, opened through a group (legacy) or its cdev (iommufd);
/// the same API either way.
public final class Device: @unchecked Sendable {
  /// How the device's DMA is owned, which also decides what proves ownership for a hot reset.
  public enum Binding: @unchecked Sendable {
    case group(Group)
    case iommufd(IOMMUFD, deviceID: UInt32, ioas: IOAS?)
  }

  /// The PCI address (or cdev path for devices opened by path).
  public let name: String
  public let binding: Binding
  public let info: DeviceInfo
  let handle: OwnedFD
  let cachedConfigRegion = Mutex<RegionInfo?>(nil)

  public var kernel: any KernelInterface { handle.kernel }
  public var fileDescriptor: Int32 { handle.fd }

  init(handle: OwnedFD, name: String, binding: Binding) throws(VFIOError) {
    self.handle = handle
    self.name = name
    self.binding = binding
    var info = vfio_device_info()
    info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
    try handle.ioctl(.deviceGetInfo, &info)
    self.info = DeviceInfo(
      flags: info.flags, regionCount: Int(info.num_regions), irqCount: Int(info.num_irqs))
  }

  /// Opens a device cdev (/dev/vfio/devices/vfioN), binds it to `iommufd` and, when `ioas` is
  /// given, attaches it to that address space.
  public static func open(
    cdev path: String, iommufd: IOMMUFD, ioas: IOAS?, name: String? = nil
  ) throws(VFIOError) -> Device {
    try bind(OwnedFD.open(path, kernel: iommufd.kernel), name: name ?? path, iommufd: iommufd, ioas: ioas)
  }

  /// VFIO_DEVICE_BIND_IOMMUFD (and attach to `ioas`) of a fresh cdev descriptor.
  static func bind(_ handle: OwnedFD, name: String, iommufd: IOMMUFD, ioas: IOAS?) throws(VFIOError) -> Device {
    var bind = cvfio_device_bind_iommufd()
    bind.argsz = UInt32(MemoryLayout<cvfio_device_bind_iommufd>.size)
    bind.iommufd = iommufd.fileDescriptor
    try handle.ioctl(.deviceBindIOMMUFD, &bind)
    if let ioas {
      var attach = cvfio_device_attach_iommufd_pt()
      attach.argsz = UInt32(MemoryLayout<cvfio_device_attach_iommufd_pt>.size)
      attach.pt_id = ioas.id
      try handle.ioctl(.deviceAttachIOMMUFDPT, &attach)
    }
    return try Device(
      handle: handle, name: name, binding: .iommufd(iommufd, deviceID: bind.out_devid, ioas: ioas))
  }

  /// The cdev of a PCI device, from /sys/bus/pci/devices/BDF/vfio-dev/vfioN.
  public static func cdevPath(
    ofDevice address: PCIAddress, kernel: any KernelInterface = LinuxKernel(),
    sysfsRoot: String = "/sys"
  ) -> String? {
    guard let names = kernel.listDirectory("\(sysfsRoot)/bus/pci/devices/\(address)/vfio-dev"),
      let node = names.first(where: { $0.hasPrefix("vfio") })
    else { return nil }
    return "/dev/vfio/devices/\(node)"
  }

  // MARK: Regions

  /// VFIO_DEVICE_GET_REGION_INFO with its capability chain.
  public func regionInfo(_ index: Int) throws(VFIOError) -> RegionInfo {
    let fixed = MemoryLayout<vfio_region_info>.size
    var buffer = [UInt8](repeating: 0, count: fixed)
    buffer.store(UInt32(fixed), at: 0)
    buffer.store(UInt32(index), at: 8)
    try handle.ioctl(.deviceGetRegionInfo, bytes: &buffer)
    let argsz = Int(buffer.load(UInt32.self, at: 0))
    if argsz > fixed {
      guard argsz <= 1 << 20 else {
        throw CapabilityChain.malformed("VFIO_DEVICE_GET_REGION_INFO asks for \(argsz) bytes")
      }
      buffer = [UInt8](repeating: 0, count: argsz)
      buffer.store(UInt32(argsz), at: 0)
      buffer.store(UInt32(index), at: 8)
      try handle.ioctl(.deviceGetRegionInfo, bytes: &buffer)
    }
    return try RegionInfo.decode(buffer)
  }

  /// Reads a `T` at `offset` within a region (pread at the region's file offset).
  public func read<T: FixedWidthInteger>(
    _: T.Type = T.self, region: RegionInfo, offset: UInt64
  ) throws(VFIOError) -> T {
    try checkBounds(region, offset, MemoryLayout<T>.size)
    var value = T.zero
    let n = withUnsafeMutableBytes(of: &value) {
      kernel.pread(handle.fd, into: $0, offset: region.offset + offset)
    }
    try checkTransfer(n, MemoryLayout<T>.size, "pread", region, offset)
    return value
  }

  /// Writes `value` at `offset` within a region (pwrite at the region's file offset).
  public func write<T: FixedWidthInteger>(_ value: T, region: RegionInfo, offset: UInt64)
    throws(VFIOError)
  {
    try checkBounds(region, offset, MemoryLayout<T>.size)
    let n = withUnsafeBytes(of: value) {
      kernel.pwrite(handle.fd, from: $0, offset: region.offset + offset)
    }
    try checkTransfer(n, MemoryLayout<T>.size, "pwrite", region, offset)
  }

  /// Reads `count` bytes at `offset` within a region.
  public func readBytes(region: RegionInfo, offset: UInt64, count: Int) throws(VFIOError) -> [UInt8] {
    try checkBounds(region, offset, count)
    var bytes = [UInt8](repeating: 0, count: count)
    let n = bytes.withUnsafeMutableBytes {
      kernel.pread(handle.fd, into: $0, offset: region.offset + offset)
    }
    try checkTransfer(n, count, "pread", region, offset)
    return bytes
  }

  func checkBounds(_ region: RegionInfo, _ offset: UInt64, _ size: Int) throws(VFIOError) {
    guard offset <= region.size, region.size - offset >= UInt64(size) else {
      throw VFIOError(
        .invalidArgument, operation: "region access", path: handle.path,
        message:
          "\(size) bytes at 0x\(String(offset, radix: 16)) fall outside region \(region.index) (0x\(String(region.size, radix: 16)) bytes)"
      )
    }
  }

  func checkTransfer(_ n: Int, _ want: Int, _ op: String, _ region: RegionInfo, _ offset: UInt64)
    throws(VFIOError)
  {
    if n < 0 {
      throw VFIOError.syscall(
        Errno(rawValue: Int32(-n)), operation: op, path: handle.path,
        message:
          "region \(region.index) offset 0x\(String(offset, radix: 16)): \(Errno(rawValue: Int32(-n)))"
      )
    }
    guard n == want else {
      throw VFIOError(
        .shortTransfer, operation: op, path: handle.path,
        message:
          "\(n) of \(want) bytes at region \(region.index) offset 0x\(String(offset, radix: 16))")
    }
  }

  /// mmaps a mappable region (or one of its sparse areas) into this process.
  public func mapRegion(_ region: RegionInfo, offset: UInt64 = 0, length: UInt64? = nil)
    throws(VFIOError) -> MappedRegion
  {
    guard region.isMappable else {
      throw VFIOError(
        .unsupported, operation: "mmap", path: handle.path,
        message: "region \(region.index) is not mappable",
        hint: "use read/write (pread/pwrite) instead")
    }
    let length = length ?? (region.size - offset)
    guard region.allowsMapping(offset: offset, length: length) else {
      throw VFIOError(
        .invalidArgument, operation: "mmap", path: handle.path,
        message:
          "0x\(String(offset, radix: 16))+0x\(String(length, radix: 16)) is not inside a mappable area of region \(region.index)",
        hint: "map one of the region's sparse areas")
    }
    var protection: Int32 = 0
    if region.flags & UInt32(VFIO_REGION_INFO_FLAG_READ) != 0 { protection |= PROT_READ }
    if region.flags & UInt32(VFIO_REGION_INFO_FLAG_WRITE) != 0 { protection |= PROT_WRITE }
    switch kernel.mmap(
      length: Int(length), protection: protection, flags: MAP_SHARED, fd: handle.fd,
      offset: region.offset + offset)
    {
    case .success(let address):
      return MappedRegion(device: self, address: address, length: Int(length))
    case .failure(let errno):
      throw VFIOError.syscall(errno, operation: "mmap", path: handle.path)
    }
  }

  // MARK: Reset

  /// VFIO_DEVICE_RESET (function-level: FLR, PM or a bus reset the device has to itself).
  public func reset() throws(VFIOError) {
    let rc = kernel.ioctl(handle.fd, .deviceReset, nil)
    guard rc < 0 else { return }
    // vfio-pci answers EINVAL when the device has no reset method of its own (edu) or its
    // only one would hit other devices; say where to look and what to use instead.
    let why =
      info.supportsReset
      ? "the kernel could not reset \(name) on its own (its reset method may need the whole bus)"
      : "\(name) has no function-level reset (VFIO_DEVICE_FLAGS_RESET is clear; see reset_method in sysfs)"
    try handle.check(
      rc, .deviceReset,
      hint: rc == -Errno.invalidArgument.rawValue
        ? "\(why); try a hot reset of its bus (Device.hotReset with every affected device owned)"
        : nil)
  }

  /// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the devices a bus reset of this device would hit.
  /// Asks with room for none first; the kernel answers ENOSPC with the count.
  public func hotResetInfo() throws(VFIOError) -> HotResetInfo {
    var buffer = HotResetCodec.infoRequest(capacity: 0)
    let rc = handle.rawIoctl(.deviceGetPCIHotResetInfo, bytes: &buffer)
    if rc == -Errno.noSpace.rawValue {
      let count = Int(buffer.load(UInt32.self, at: 8))
      guard count <= 4096 else {
        throw CapabilityChain.malformed("hot reset info claims \(count) devices")
      }
      buffer = HotResetCodec.infoRequest(capacity: count)
      try handle.ioctl(.deviceGetPCIHotResetInfo, bytes: &buffer)
    } else {
      try handle.check(
        rc, .deviceGetPCIHotResetInfo,
        hint: "the device has no bus reset (it is alone on a root bus or its slot cannot be reset)")
    }
    return try HotResetCodec.decodeInfo(buffer)
  }

  /// VFIO_DEVICE_PCI_HOT_RESET. Legacy devices prove ownership of every affected device with
  /// the descriptors of all their groups (this device's own group is added); a cdev device
  /// passes an empty list and the kernel checks its iommufd instead.
  public func hotReset(groups: [Group] = []) throws(VFIOError) {
    var fds: [Int32]
    switch binding {
    case .group(let own):
      fds = groups.map(\.fileDescriptor)
      if !groups.contains(where: { $0 === own }) { fds.insert(own.fileDescriptor, at: 0) }
    case .iommufd:
      fds = []
    }
    var buffer = HotResetCodec.resetRequest(groupFDs: fds)
    try handle.ioctl(.devicePCIHotReset, bytes: &buffer)
    withExtendedLifetime(groups) {}
  }
}

/// mmap'd device memory, unmapped in deinit. Holds the device so its fd outlives the mapping.
public final class MappedRegion: @unchecked Sendable {
  public let device: Device
  public let address: UnsafeMutableRawPointer
  public let length: Int

  init(device: Device, address: UnsafeMutableRawPointer, length: Int) {
    self.device = device
    self.address = address
    self.length = length
  }

  deinit { device.kernel.munmap(address, length: length) }

  /// A single load of `T` (device registers want one access of the right width).
  public func load<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
    precondition(
      offset >= 0 && offset + MemoryLayout<T>.size <= length && offset % MemoryLayout<T>.size == 0)
    let p = address + offset
    switch MemoryLayout<T>.size {
    case 1: return T(truncatingIfNeeded: cvfio_mmio_read8(p))
    case 2: return T(truncatingIfNeeded: cvfio_mmio_read16(p))
    case 4: return T(truncatingIfNeeded: cvfio_mmio_read32(p))
    default: return T(truncatingIfNeeded: cvfio_mmio_read64(p))
    }
  }

  /// A single store of `T`.
  public func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
    precondition(
      offset >= 0 && offset + MemoryLayout<T>.size <= length && offset % MemoryLayout<T>.size == 0)
    let p = address + offset
    switch MemoryLayout<T>.size {
    case 1: cvfio_mmio_write8(p, UInt8(truncatingIfNeeded: value))
    case 2: cvfio_mmio_write16(p, UInt16(truncatingIfNeeded: value))
    case 4: cvfio_mmio_write32(p, UInt32(truncatingIfNeeded: value))
    default: cvfio_mmio_write64(p, UInt64(truncatingIfNeeded: value))
    }
  }
}
