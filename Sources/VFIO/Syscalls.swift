import CVFIO
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A descriptor this library opened; closed exactly once, in deinit, and nothing else there.
final class OwnedFD: @unchecked Sendable {
  let kernel: any KernelInterface
  let fd: Int32
  let path: String
  /// The kernel is the real one: ioctls may call the C shim directly instead of going through
  /// the existential (a witness-table call and a projection per ioctl, which under emulation
  /// is a measurable share of a 4 KiB DMA map). Fakes still see every call.
  let isLinux: Bool

  init(kernel: any KernelInterface, fd: Int32, path: String) {
    self.kernel = kernel
    self.fd = fd
    self.path = path
    self.isLinux = kernel is LinuxKernel
  }

  deinit { kernel.close(fd) }

  /// open(2) with errors turned into `VFIOError`.
  static func open(
    _ path: String, kernel: any KernelInterface, flags: Int32 = O_RDWR, hint: String? = nil
  ) throws(VFIOError) -> OwnedFD {
    let fd = kernel.open(path, flags: flags)
    guard fd >= 0 else {
      throw .syscall(Errno(rawValue: -fd), operation: "open", path: path, hint: hint)
    }
    return OwnedFD(kernel: kernel, fd: fd, path: path)
  }

  /// ioctl(2) on a struct; returns the raw result or -errno without throwing.
  @inline(__always)
  func rawIoctl<T>(_ request: IoctlRequest, _ value: inout T) -> Int32 {
    rawIoctl(request.number, name: request, &value)
  }

  /// The same with the request number at hand (hot paths keep it in a stored property, so
  /// they do not touch the lazily initialised `IoctlRequest` statics on every call).
  @inline(__always)
  func rawIoctl<T>(_ number: UInt, name request: @autoclosure () -> IoctlRequest, _ value: inout T)
    -> Int32
  {
    withUnsafeMutableBytes(of: &value) {
      isLinux
        ? cvfio_ioctl(fd, number, $0.baseAddress) : kernel.ioctl(fd, request(), $0.baseAddress)
    }
  }

  /// ioctl(2) on a byte buffer (a struct with a trailing array); raw result or -errno.
  func rawIoctl(_ request: IoctlRequest, bytes: inout [UInt8]) -> Int32 {
    bytes.withUnsafeMutableBytes { kernel.ioctl(fd, request, $0.baseAddress) }
  }

  /// Throws the `VFIOError` for a raw result, or returns it when non-negative.
  @discardableResult
  func check(_ rc: Int32, _ request: IoctlRequest, hint: String? = nil) throws(VFIOError) -> Int32 {
    guard rc >= 0 else {
      throw .syscall(Errno(rawValue: -rc), operation: request.name, path: path, hint: hint)
    }
    return rc
  }

  @discardableResult
  func ioctl<T>(_ request: IoctlRequest, _ value: inout T) throws(VFIOError) -> Int32 {
    try check(rawIoctl(request, &value), request)
  }

  @discardableResult
  func ioctl(_ request: IoctlRequest, bytes: inout [UInt8]) throws(VFIOError) -> Int32 {
    try check(rawIoctl(request, bytes: &bytes), request)
  }

  @discardableResult
  func ioctl(_ request: IoctlRequest, value: UInt) throws(VFIOError) -> Int32 {
    try check(kernel.ioctl(fd, request, value: value), request)
  }

  @discardableResult
  func ioctl(_ request: IoctlRequest) throws(VFIOError) -> Int32 {
    try check(kernel.ioctl(fd, request, nil), request)
  }
}

/// Native-endian loads and stores on kernel byte buffers, bounds-checked by the caller.
extension Array where Element == UInt8 {
  func load<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
    withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
  }

  mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
    withUnsafeMutableBytes { $0.storeBytes(of: value, toByteOffset: offset, as: T.self) }
  }
}

/// The raw bytes of a C struct.
func bytes<T>(of value: T) -> [UInt8] {
  withUnsafeBytes(of: value) { Array($0) }
}

/// A C struct decoded from the head of a byte buffer that holds at least its size.
func decode<T: BitwiseCopyable>(_: T.Type, from bytes: [UInt8]) -> T {
  precondition(bytes.count >= MemoryLayout<T>.size)
  return bytes.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
}
