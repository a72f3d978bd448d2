import CVFIO
import SystemPackage

/// An iommufd context (/dev/iommu): the owner of IO address spaces that device cdevs bind to.
public final class IOMMUFD: @unchecked Sendable {
  let handle: OwnedFD
  public var kernel: any KernelInterface { handle.kernel }
  /// The descriptor devices are bound to (VFIO_DEVICE_BIND_IOMMUFD).
  public var fileDescriptor: Int32 { handle.fd }

  public init(path: String = "/dev/iommu", kernel: any KernelInterface = LinuxKernel())
    throws(VFIOError)
  {
    handle = try OwnedFD.open(path, kernel: kernel)
  }

  init(handle: OwnedFD) { self.handle = handle }

  /// IOMMU_IOAS_ALLOC.
  public func allocateIOAS() throws(VFIOError) -> IOAS {
    var request = cvfio_iommu_ioas_alloc()
    request.size = UInt32(MemoryLayout<cvfio_iommu_ioas_alloc>.size)
    try handle.ioctl(.iommuIOASAlloc, &request)
    return IOAS(iommufd: self, id: request.out_ioas_id)
  }

  /// IOMMU_OPTION(RLIMIT_MODE): account pinned memory per process (true) instead of per user.
  /// Needs CAP_SYS_RESOURCE, and the kernel accepts it only while this iommufd holds no
  /// objects: call it before `allocateIOAS` or binding a device.
  public func setProcessBasedMemlockAccounting(_ perProcess: Bool) throws(VFIOError) {
    var option = cvfio_iommu_option()
    option.size = UInt32(MemoryLayout<cvfio_iommu_option>.size)
    option.option_id = UInt32(CVFIO_IOMMU_OPTION_RLIMIT_MODE)
    option.op = UInt16(CVFIO_IOMMU_OPTION_OP_SET)
    option.val64 = perProcess ? 1 : 0
    try handle.check(
      handle.rawIoctl(.iommuOption, &option), .iommuOption,
      hint:
        "the accounting mode can only change before any IOAS or device is attached to this iommufd; set it right after opening /dev/iommu"
    )
  }

  /// IOMMU_OPTION(RLIMIT_MODE) read back: true when accounting is per process.
  public func processBasedMemlockAccounting() throws(VFIOError) -> Bool {
    var option = cvfio_iommu_option()
    option.size = UInt32(MemoryLayout<cvfio_iommu_option>.size)
    option.option_id = UInt32(CVFIO_IOMMU_OPTION_RLIMIT_MODE)
    option.op = UInt16(CVFIO_IOMMU_OPTION_OP_GET)
    try handle.ioctl(.iommuOption, &option)
    return option.val64 == 1
  }

  /// IOMMU_DESTROY of any object id.
  public func destroy(_ id: UInt32) throws(VFIOError) {
    var request = cvfio_iommu_destroy(size: UInt32(MemoryLayout<cvfio_iommu_destroy>.size), id: id)
    try handle.ioctl(.iommuDestroy, &request)
  }
}

/// An IO address space inside an iommufd. Its kernel object lives as long as the iommufd;
/// this value holds the iommufd so the descriptor stays open while it is used.
public final class IOAS: DMAMapper, RawDMAMapper, @unchecked Sendable {
  public let iommufd: IOMMUFD
  public let id: UInt32
  /// The iommufd's descriptor, one hop closer for the DMA hot path.
  let handle: OwnedFD
  // Request numbers of the DMA hot path, read once (see OwnedFD.rawIoctl).
  let mapNumber = IoctlRequest.iommuIOASMap.number
  let unmapNumber = IoctlRequest.iommuIOASUnmap.number

  init(iommufd: IOMMUFD, id: UInt32) {
    self.iommufd = iommufd
    self.id = id
    self.handle = iommufd.handle
  }

  /// IOMMU_IOAS_IOVA_RANGES: asks for the count first, then for the ranges (EMSGSIZE dance).
  public func iovaRanges() throws(VFIOError) -> (ranges: [IOVARange], alignment: UInt64) {
    let handle = iommufd.handle
    var capacity = 4
    for _ in 0..<4 {
      var ranges = [cvfio_iommu_iova_range](repeating: .init(), count: capacity)
      var request = cvfio_iommu_ioas_iova_ranges()
      request.size = UInt32(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.size)
      request.ioas_id = id
      request.num_iovas = UInt32(capacity)
      let rc = ranges.withUnsafeMutableBytes { raw in
        request.allowed_iovas = UInt64(UInt(bitPattern: raw.baseAddress))
        return handle.rawIoctl(.iommuIOASIOVARanges, &request)
      }
      if rc == -Errno.messageTooLong.rawValue {
        capacity = Int(request.num_iovas)
        continue
      }
      try handle.check(rc, .iommuIOASIOVARanges)
      let count = min(Int(request.num_iovas), capacity)
      return (
        ranges[0..<count].map { IOVARange(start: $0.start, last: $0.last) },
        max(request.out_iova_alignment, 1)
      )
    }
    throw VFIOError(
      .syscall, operation: IoctlRequest.iommuIOASIOVARanges.name, path: handle.path,
      message: "the number of IOVA ranges kept changing")
  }

  public func iovaLayout() throws(VFIOError) -> IOVALayout {
    let (ranges, alignment) = try iovaRanges()
    // iommufd states one alignment instead of a page-size bitmap; the bit is the same thing.
    let align = max(alignment, 1).nextPowerOfTwo
    return IOVALayout(ranges: ranges, pageSizes: align)
  }

  public func map(_ mapping: DMAMapping) throws(VFIOError) { try checkedMap(mapping) }

  public func unmap(_ mapping: DMAMapping) throws(VFIOError) { try checkedUnmap(mapping) }

  var mapRequest: IoctlRequest { .iommuIOASMap }
  var unmapRequest: IoctlRequest { .iommuIOASUnmap }
  var errorPath: String { handle.path }
  var errorKernel: any KernelInterface { iommufd.kernel }

  /// IOMMU_IOAS_MAP, returning the raw result (-errno on failure) without building an error,
  /// so `DMASpace` can call it through an unretained reference on its hot path.
  @inline(__always)
  func mapRaw(_ mapping: DMAMapping) -> Int32 {
    var request = cvfio_iommu_ioas_map()
    request.size = UInt32(MemoryLayout<cvfio_iommu_ioas_map>.size)
    request.flags =
      UInt32(CVFIO_IOMMU_IOAS_MAP_FIXED_IOVA)
      | (mapping.access.contains(.read) ? UInt32(CVFIO_IOMMU_IOAS_MAP_READABLE) : 0)
      | (mapping.access.contains(.write) ? UInt32(CVFIO_IOMMU_IOAS_MAP_WRITEABLE) : 0)
    request.ioas_id = id
    request.user_va = mapping.vaddr
    request.length = mapping.length
    request.iova = mapping.iova
    return handle.rawIoctl(mapNumber, name: .iommuIOASMap, &request)
  }

  /// IOMMU_IOAS_UNMAP, returning the raw result and, in `unmapped`, how many bytes the kernel
  /// says it unmapped; the caller must check both (`unmapError` names the failure).
  @inline(__always)
  func unmapRaw(_ mapping: DMAMapping, unmapped: inout UInt64) -> Int32 {
    var request = cvfio_iommu_ioas_unmap()
    request.size = UInt32(MemoryLayout<cvfio_iommu_ioas_unmap>.size)
    request.ioas_id = id
    request.iova = mapping.iova
    request.length = mapping.length
    let rc = handle.rawIoctl(unmapNumber, name: .iommuIOASUnmap, &request)
    unmapped = request.length
    return rc
  }
}

extension UInt64 {
  var nextPowerOfTwo: UInt64 {
    self <= 1 ? 1 : 1 << (64 - (self - 1).leadingZeroBitCount)
  }
}
