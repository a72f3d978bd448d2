import SystemPackage

/// The kernel's two DMA mapping interfaces, a type1 `Container` and an iommufd `IOAS`: each
/// issues its own ioctl, and they share how results are checked and failures explained.
/// `mapRaw`/`unmapRaw` return the raw result so `DMASpace` can call them on its hot path
/// without building an error.
protocol RawDMAMapper: AnyObject {
  func mapRaw(_ mapping: DMAMapping) -> Int32
  func unmapRaw(_ mapping: DMAMapping, unmapped: inout UInt64) -> Int32
  var mapRequest: IoctlRequest { get }
  var unmapRequest: IoctlRequest { get }
  var errorPath: String { get }
  var errorKernel: any KernelInterface { get }
}

extension RawDMAMapper {
  func checkedMap(_ mapping: DMAMapping) throws(VFIOError) {
    let rc = mapRaw(mapping)
    guard rc >= 0 else { throw mapError(rc, mapping) }
  }

  func checkedUnmap(_ mapping: DMAMapping) throws(VFIOError) {
    var unmapped: UInt64 = 0
    let rc = unmapRaw(mapping, unmapped: &unmapped)
    guard rc >= 0, unmapped == mapping.length else {
      throw unmapError(rc, unmapped: unmapped, mapping)
    }
  }

  /// The error for a failed `mapRaw`.
  @inline(never)
  func mapError(_ rc: Int32, _ mapping: DMAMapping) -> VFIOError {
    mapFailure(
      Errno(rawValue: -rc), request: mapRequest, path: errorPath, mapping: mapping, kernel: errorKernel)
  }

  /// The error for an `unmapRaw` that failed or unmapped a different length.
  @inline(never)
  func unmapError(_ rc: Int32, unmapped: UInt64, _ mapping: DMAMapping) -> VFIOError {
    if rc < 0 {
      return .syscall(Errno(rawValue: -rc), operation: unmapRequest.name, path: errorPath)
    }
    return VFIOError(
      .shortTransfer, operation: unmapRequest.name, path: errorPath,
      message: "unmapped \(unmapped) of \(mapping.length) bytes at iova 0x\(String(mapping.iova, radix: 16))")
  }
}
