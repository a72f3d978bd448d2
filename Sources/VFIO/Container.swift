import CVFIO
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// An IOMMU model a legacy container can be set to (VFIO_SET_IOMMU).
public enum IOMMUType: UInt, Sendable, CaseIterable, CustomStringConvertible {
  case type1 = 1
  case spaprTCE = 2
  case type1v2 = 3
  case spaprTCEv2 = 7
  case noIOMMU = 8

  /// In order of preference when the library picks.
  static let preference: [IOMMUType] = [.type1v2, .spaprTCEv2, .type1, .spaprTCE]

  public var description: String {
    switch self {
    case .type1: "type1"
    case .spaprTCE: "sPAPR TCE"
    case .type1v2: "type1v2"
    case .spaprTCEv2: "sPAPR TCE v2"
    case .noIOMMU: "no-IOMMU"
    }
  }

  var isSPAPR: Bool { self == .spaprTCE || self == .spaprTCEv2 }
}

/// Extensions VFIO_CHECK_EXTENSION can ask about.
public enum ContainerExtension: UInt, Sendable, CaseIterable {
  case type1 = 1
  case spaprTCE = 2
  case type1v2 = 3
  case dmaCacheCoherent = 4
  case eeh = 5
  case type1Nesting = 6
  case spaprTCEv2 = 7
  case noIOMMU = 8
  case unmapAll = 9
  case updateVaddr = 10
}

/// A legacy VFIO container (/dev/vfio/vfio): one IOMMU address space shared by the groups
/// attached to it.
public final class Container: DMAMapper, RawDMAMapper, @unchecked Sendable {
  let handle: OwnedFD
  public var kernel: any KernelInterface { handle.kernel }
  /// The IOMMU model once set (after the first group is attached).
  public private(set) var iommuType: IOMMUType?
  /// Number of groups attached, so SET_IOMMU runs once.
  var groupCount = 0
  // Request numbers of the DMA hot path, read once (see OwnedFD.rawIoctl).
  let mapNumber = IoctlRequest.iommuMapDMA.number
  let unmapNumber = IoctlRequest.iommuUnmapDMA.number

  /// Opens the container and checks the API version.
  public convenience init(path: String = "/dev/vfio/vfio", kernel: any KernelInterface = LinuxKernel())
    throws(VFIOError)
  {
    try self.init(handle: OwnedFD.open(path, kernel: kernel))
  }

  /// Takes over an open container descriptor after checking the API version.
  init(handle: OwnedFD) throws(VFIOError) {
    self.handle = handle
    let version = try handle.ioctl(.getAPIVersion)
    guard version == VFIO_API_VERSION else {
      throw VFIOError(
        .unsupported, operation: IoctlRequest.getAPIVersion.name, path: handle.path,
        message: "kernel VFIO API version \(version), this library speaks \(VFIO_API_VERSION)")
    }
  }

  /// Records the IOMMU model another process set, after the kernel confirms the container is
  /// configured (type1 answers VFIO_IOMMU_GET_INFO only then; sPAPR its own info call).
  func adopt(iommu type: IOMMUType) throws(VFIOError) {
    iommuType = type
    switch type {
    case .spaprTCE, .spaprTCEv2: _ = try spaprInfo()
    default: _ = try type1Info()
    }
  }

  /// The container's descriptor, for callers that pass it on (e.g. to KVM).
  public var fileDescriptor: Int32 { handle.fd }

  /// VFIO_CHECK_EXTENSION; false when the kernel says no or the call fails.
  public func supports(_ ext: ContainerExtension) -> Bool {
    handle.kernel.ioctl(handle.fd, .checkExtension, value: ext.rawValue) > 0
  }

  /// The best IOMMU model this kernel offers, or nil.
  public func preferredIOMMUType() -> IOMMUType? {
    IOMMUType.preference.first { supports(ContainerExtension(rawValue: $0.rawValue)!) }
  }

  /// VFIO_SET_IOMMU. Valid once a group is attached; the library calls it from `Group.attach`.
  public func setIOMMU(_ type: IOMMUType) throws(VFIOError) {
    try handle.ioctl(.setIOMMU, value: type.rawValue)
    iommuType = type
  }

  /// Counts an attached group and sets the IOMMU model for the first one. On failure the
  /// count is still taken; the caller undoes it with `groupDetached`.
  func groupAttached(requested: IOMMUType?) throws(VFIOError) {
    groupCount += 1
    guard iommuType == nil else { return }
    guard let type = requested ?? preferredIOMMUType() else {
      throw VFIOError(
        .unsupported, operation: IoctlRequest.checkExtension.name, path: handle.path,
        message: "no IOMMU backend (type1v2, type1, sPAPR TCE) is available",
        hint:
          "load vfio_iommu_type1 (`modprobe vfio_iommu_type1`) and boot with the IOMMU enabled (intel_iommu=on or amd_iommu=on)"
      )
    }
    try setIOMMU(type)
  }

  func groupDetached() {
    groupCount -= 1
    // The kernel drops the IOMMU model when the last group leaves.
    if groupCount == 0 { iommuType = nil }
  }

  // MARK: type1

  /// VFIO_IOMMU_GET_INFO with its capability chain (type1 only).
  public func type1Info() throws(VFIOError) -> Type1Info {
    let fixed = MemoryLayout<vfio_iommu_type1_info>.size
    var buffer = [UInt8](repeating: 0, count: fixed)
    buffer.store(UInt32(fixed), at: 0)
    try handle.ioctl(.iommuGetInfo, bytes: &buffer)
    let argsz = Int(buffer.load(UInt32.self, at: 0))
    // The kernel reports the size the capabilities need; ask again with that much room.
    if argsz > fixed {
      guard argsz <= 1 << 20 else {
        throw CapabilityChain.malformed("VFIO_IOMMU_GET_INFO asks for \(argsz) bytes")
      }
      buffer = [UInt8](repeating: 0, count: argsz)
      buffer.store(UInt32(argsz), at: 0)
      try handle.ioctl(.iommuGetInfo, bytes: &buffer)
    }
    return try Type1Info.decode(buffer)
  }

  public func iovaLayout() throws(VFIOError) -> IOVALayout {
    if let type = iommuType, type.isSPAPR {
      let info = try spaprInfo()
      let window = IOVARange(
        start: UInt64(info.dma32WindowStart),
        last: UInt64(info.dma32WindowStart) + UInt64(info.dma32WindowSize) - 1)
      return IOVALayout(ranges: [window] + spaprWindows, pageSizes: 4096)
    }
    let info = try type1Info()
    // Kernels before 5.4 do not report ranges; assume the whole space the page tables cover.
    let ranges = info.iovaRanges ?? [IOVARange(start: 0, last: UInt64.max)]
    return IOVALayout(ranges: ranges, pageSizes: info.pageSizes, dmaAvailable: info.dmaAvailable)
  }

  public func map(_ mapping: DMAMapping) throws(VFIOError) { try checkedMap(mapping) }

  public func unmap(_ mapping: DMAMapping) throws(VFIOError) { try checkedUnmap(mapping) }

  var mapRequest: IoctlRequest { .iommuMapDMA }
  var unmapRequest: IoctlRequest { .iommuUnmapDMA }
  var errorPath: String { handle.path }
  var errorKernel: any KernelInterface { handle.kernel }

  /// VFIO_IOMMU_MAP_DMA, returning the raw result (-errno on failure) without building an error,
  /// so `DMASpace` can call it through an unretained reference on its hot path.
  @inline(__always)
  func mapRaw(_ mapping: DMAMapping) -> Int32 {
    var request = vfio_iommu_type1_dma_map()
    request.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size)
    request.flags =
      (mapping.access.contains(.read) ? UInt32(VFIO_DMA_MAP_FLAG_READ) : 0)
      | (mapping.access.contains(.write) ? UInt32(VFIO_DMA_MAP_FLAG_WRITE) : 0)
    request.vaddr = mapping.vaddr
    request.iova = mapping.iova
    request.size = mapping.length
    return handle.rawIoctl(mapNumber, name: .iommuMapDMA, &request)
  }

  /// VFIO_IOMMU_UNMAP_DMA, returning the raw result and, in `unmapped`, how many bytes the
  /// kernel says it unmapped; the caller must check both (`unmapError` names the failure).
  @inline(__always)
  func unmapRaw(_ mapping: DMAMapping, unmapped: inout UInt64) -> Int32 {
    var request = vfio_iommu_type1_dma_unmap()
    request.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
    request.iova = mapping.iova
    request.size = mapping.length
    let rc = handle.rawIoctl(unmapNumber, name: .iommuUnmapDMA, &request)
    unmapped = request.size
    return rc
  }

  // MARK: sPAPR TCE

  /// DMA windows created with `spaprCreateWindow`, beyond the default 32-bit one.
  public private(set) var spaprWindows: [IOVARange] = []

  /// VFIO_IOMMU_SPAPR_TCE_GET_INFO.
  public func spaprInfo() throws(VFIOError) -> SPAPRTCEInfo {
    var bytes = SPAPRCodec.getInfoRequest()
    try handle.ioctl(.spaprTCEGetInfo, bytes: &bytes)
    return SPAPRCodec.decodeInfo(bytes)
  }

  /// VFIO_IOMMU_SPAPR_REGISTER_MEMORY: pre-registers (pins) memory for v2 DMA mappings.
  public func spaprRegisterMemory(vaddr: UInt64, length: UInt64) throws(VFIOError) {
    var bytes = SPAPRCodec.registerMemory(vaddr: vaddr, length: length)
    let rc = handle.rawIoctl(.spaprRegisterMemory, bytes: &bytes)
    guard rc >= 0 else {
      throw mapFailure(
        Errno(rawValue: -rc), request: .spaprRegisterMemory, path: handle.path,
        mapping: DMAMapping(vaddr: vaddr, iova: 0, length: length), kernel: handle.kernel)
    }
  }

  /// VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY.
  public func spaprUnregisterMemory(vaddr: UInt64, length: UInt64) throws(VFIOError) {
    var bytes = SPAPRCodec.registerMemory(vaddr: vaddr, length: length)
    try handle.ioctl(.spaprUnregisterMemory, bytes: &bytes)
  }

  /// VFIO_IOMMU_SPAPR_TCE_CREATE: a dynamic DMA window; returns its bus address.
  @discardableResult
  public func spaprCreateWindow(pageShift: UInt32, windowSize: UInt64, levels: UInt32 = 1)
    throws(VFIOError) -> UInt64
  {
    var bytes = SPAPRCodec.createWindow(
      pageShift: pageShift, windowSize: windowSize, levels: levels)
    try handle.ioctl(.spaprTCECreate, bytes: &bytes)
    let start = SPAPRCodec.decodeCreatedWindowStart(bytes)
    spaprWindows.append(IOVARange(start: start, last: start + windowSize - 1))
    return start
  }

  /// VFIO_IOMMU_SPAPR_TCE_REMOVE.
  public func spaprRemoveWindow(start: UInt64) throws(VFIOError) {
    var bytes = SPAPRCodec.removeWindow(start: start)
    try handle.ioctl(.spaprTCERemove, bytes: &bytes)
    spaprWindows.removeAll { $0.start == start }
  }

  /// VFIO_IOMMU_ENABLE (sPAPR TCE v1 requires it before mapping).
  public func enable() throws(VFIOError) { try handle.ioctl(.iommuEnable) }

  /// VFIO_IOMMU_DISABLE.
  public func disable() throws(VFIOError) { try handle.ioctl(.iommuDisable) }

  /// VFIO_EEH_PE_OP on the container's partitionable endpoint; returns the kernel's result
  /// (the PE state for `.getState`).
  @discardableResult
  public func eeh(_ op: EEHOperation) throws(VFIOError) -> Int32 {
    var bytes = SPAPRCodec.eehOp(op)
    return try handle.ioctl(.eehPEOp, bytes: &bytes)
  }
}

/// What VFIO_IOMMU_GET_INFO reports for a type1 container.
public struct Type1Info: Sendable, Equatable {
  public var flags: UInt32
  /// Supported IOMMU page sizes as a bitmap.
  public var pageSizes: UInt64
  public var capabilities: [IOMMUCapability]

  public var iovaRanges: [IOVARange]? {
    for case .iovaRanges(let r) in capabilities { return r }
    return nil
  }

  public var dmaAvailable: UInt32? {
    for case .dmaAvailable(let n) in capabilities { return n }
    return nil
  }

  /// Decodes a `vfio_iommu_type1_info` buffer and its capability chain.
  public static func decode(_ buffer: [UInt8]) throws(VFIOError) -> Type1Info {
    let fixed = MemoryLayout<vfio_iommu_type1_info>.size
    guard buffer.count >= fixed else {
      throw CapabilityChain.malformed(
        "VFIO_IOMMU_GET_INFO returned \(buffer.count) bytes, fewer than \(fixed)")
    }
    let flags: UInt32 = buffer.load(at: 4)
    let pageSizes: UInt64 = buffer.load(at: 8)
    var caps: [IOMMUCapability] = []
    if flags & UInt32(VFIO_IOMMU_INFO_CAPS) != 0 {
      let chain = try CapabilityChain.parse(
        buffer, firstOffset: buffer.load(at: 16), fixedSize: fixed)
      caps = try IOMMUCapability.decode(chain)
    }
    let hasPageSizes = flags & UInt32(VFIO_IOMMU_INFO_PGSIZES) != 0
    return Type1Info(flags: flags, pageSizes: hasPageSizes ? pageSizes : 0, capabilities: caps)
  }
}
