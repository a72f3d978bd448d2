import CVFIO

/// What VFIO_IOMMU_SPAPR_TCE_GET_INFO reports: the default 32-bit DMA window and, with DDW,
/// what dynamic windows may be created.
public struct SPAPRTCEInfo: Sendable, Equatable {
  public var flags: UInt32
  public var dma32WindowStart: UInt32
  public var dma32WindowSize: UInt32
  /// Dynamic DMA windows (present when `flags` has VFIO_IOMMU_SPAPR_INFO_DDW).
  public var ddw: DDW?

  public struct DDW: Sendable, Equatable {
    /// Bitmap of supported IOMMU page sizes.
    public var pageSizes: UInt64
    public var maxDynamicWindows: UInt32
    public var levels: UInt32
  }
}

/// Extended error handling operations on a partitionable endpoint (VFIO_EEH_PE_OP).
public enum EEHOperation: Sendable, Equatable {
  case disable
  case enable
  case unfreezeIO
  case unfreezeDMA
  case getState
  case resetDeactivate
  case resetHot
  case resetFundamental
  case configure
  case injectError(type: UInt32, function: UInt32, address: UInt64, mask: UInt64)

  var code: UInt32 {
    switch self {
    case .disable: 0
    case .enable: 1
    case .unfreezeIO: 2
    case .unfreezeDMA: 3
    case .getState: 4
    case .resetDeactivate: 5
    case .resetHot: 6
    case .resetFundamental: 7
    case .configure: 8
    case .injectError: 9
    }
  }
}

/// Encoders and decoders for the sPAPR TCE structures. Pure, so the exact bytes are tested.
public enum SPAPRCodec {
  /// `struct vfio_iommu_spapr_tce_info` with argsz set.
  public static func getInfoRequest() -> [UInt8] {
    var info = vfio_iommu_spapr_tce_info()
    info.argsz = UInt32(MemoryLayout<vfio_iommu_spapr_tce_info>.size)
    return bytes(of: info)
  }

  public static func decodeInfo(_ bytes: [UInt8]) -> SPAPRTCEInfo {
    let info = decode(vfio_iommu_spapr_tce_info.self, from: bytes)
    let hasDDW = info.flags & UInt32(VFIO_IOMMU_SPAPR_INFO_DDW) != 0
    return SPAPRTCEInfo(
      flags: info.flags, dma32WindowStart: info.dma32_window_start,
      dma32WindowSize: info.dma32_window_size,
      ddw: hasDDW
        ? .init(
          pageSizes: info.ddw.pgsizes, maxDynamicWindows: info.ddw.max_dynamic_windows_supported,
          levels: info.ddw.levels) : nil)
  }

  /// `struct vfio_iommu_spapr_register_memory` (also used to unregister).
  public static func registerMemory(vaddr: UInt64, length: UInt64) -> [UInt8] {
    var r = vfio_iommu_spapr_register_memory()
    r.argsz = UInt32(MemoryLayout<vfio_iommu_spapr_register_memory>.size)
    r.vaddr = vaddr
    r.size = length
    return bytes(of: r)
  }

  /// `struct vfio_iommu_spapr_tce_create`.
  public static func createWindow(pageShift: UInt32, windowSize: UInt64, levels: UInt32) -> [UInt8] {
    var c = vfio_iommu_spapr_tce_create()
    c.argsz = UInt32(MemoryLayout<vfio_iommu_spapr_tce_create>.size)
    c.page_shift = pageShift
    c.window_size = windowSize
    c.levels = levels
    return bytes(of: c)
  }

  /// The bus address the kernel placed a created window at (`start_addr`, filled on return).
  public static func decodeCreatedWindowStart(_ bytes: [UInt8]) -> UInt64 {
    decode(vfio_iommu_spapr_tce_create.self, from: bytes).start_addr
  }

  /// `struct vfio_iommu_spapr_tce_remove`.
  public static func removeWindow(start: UInt64) -> [UInt8] {
    var r = vfio_iommu_spapr_tce_remove()
    r.argsz = UInt32(MemoryLayout<vfio_iommu_spapr_tce_remove>.size)
    r.start_addr = start
    return bytes(of: r)
  }

  /// `struct vfio_eeh_pe_op`. argsz covers the error-injection union only when it is used,
  /// as kernels before 4.x know only the first 12 bytes.
  public static func eehOp(_ op: EEHOperation) -> [UInt8] {
    var o = vfio_eeh_pe_op()
    o.op = op.code
    if case .injectError(let type, let function, let address, let mask) = op {
      o.argsz = UInt32(MemoryLayout<vfio_eeh_pe_op>.size)
      o.err.type = type
      o.err.func = function
      o.err.addr = address
      o.err.mask = mask
    } else {
      o.argsz = 12
    }
    return bytes(of: o)
  }
}
