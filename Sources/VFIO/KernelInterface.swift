import CVFIO
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The one seam between this library and the kernel: every system call the library makes goes
/// through a value of this type, so tests run the production code against a recording fake.
///
/// Methods mirror the C calls and report failure the way the C shim does: a negative errno.
public protocol KernelInterface: Sendable {
  /// open(2); returns the descriptor or -errno.
  func open(_ path: String, flags: Int32) -> Int32
  /// close(2). Errors are ignored: after close the descriptor is gone either way.
  func close(_ fd: Int32)
  /// ioctl(2) with a pointer argument; returns the result or -errno.
  func ioctl(_ fd: Int32, _ request: IoctlRequest, _ argument: UnsafeMutableRawPointer?) -> Int32
  /// ioctl(2) with an integer argument; returns the result or -errno.
  func ioctl(_ fd: Int32, _ request: IoctlRequest, value: UInt) -> Int32
  /// pread(2); returns the byte count or -errno.
  func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) -> Int
  /// pwrite(2); returns the byte count or -errno.
  func pwrite(_ fd: Int32, from buffer: UnsafeRawBufferPointer, offset: UInt64) -> Int
  /// read(2); returns the byte count or -errno.
  func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int
  /// write(2); returns the byte count or -errno.
  func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> Int
  /// mmap(2); returns the address or -errno.
  func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: UInt64) -> Result<
    UnsafeMutableRawPointer, Errno
  >
  /// munmap(2).
  func munmap(_ address: UnsafeMutableRawPointer, length: Int)
  /// madvise(2); returns 0 or -errno.
  func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Int32
  /// eventfd(2); returns the descriptor or -errno.
  func eventfd(initialValue: UInt32, flags: Int32) -> Int32
  /// poll(2) for readability of one descriptor; returns 1 when readable, 0 on timeout, or -errno.
  func pollReadable(_ fd: Int32, timeoutMilliseconds: Int32) -> Int32
  /// readlink(2) of a sysfs path, or nil.
  func readLink(_ path: String) -> String?
  /// Contents of a small (sysfs) file, or nil.
  func readFile(_ path: String) -> String?
  /// Names in a directory (without `.` and `..`), or nil.
  func listDirectory(_ path: String) -> [String]?
  /// The soft RLIMIT_MEMLOCK in bytes (nil when unlimited or unknown), for error messages.
  func memlockLimit() -> UInt64?
}

/// The real Linux kernel.
public struct LinuxKernel: KernelInterface {
  public init() {}

  public func open(_ path: String, flags: Int32) -> Int32 {
    let fd = Glibc.open(path, flags | O_CLOEXEC)
    return fd < 0 ? -errno : fd
  }

  public func close(_ fd: Int32) { _ = Glibc.close(fd) }

  public func ioctl(_ fd: Int32, _ request: IoctlRequest, _ argument: UnsafeMutableRawPointer?)
    -> Int32
  {
    cvfio_ioctl(fd, request.number, argument)
  }

  public func ioctl(_ fd: Int32, _ request: IoctlRequest, value: UInt) -> Int32 {
    cvfio_ioctl_int(fd, request.number, value)
  }

  public func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) -> Int {
    let n = Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(Int64(bitPattern: offset)))
    return n < 0 ? -Int(errno) : n
  }

  public func pwrite(_ fd: Int32, from buffer: UnsafeRawBufferPointer, offset: UInt64) -> Int {
    let n = Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(Int64(bitPattern: offset)))
    return n < 0 ? -Int(errno) : n
  }

  public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
    return n < 0 ? -Int(errno) : n
  }

  public func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> Int {
    let n = Glibc.write(fd, buffer.baseAddress, buffer.count)
    return n < 0 ? -Int(errno) : n
  }

  public func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: UInt64)
    -> Result<UnsafeMutableRawPointer, Errno>
  {
    let p = Glibc.mmap(nil, length, protection, flags, fd, off_t(Int64(bitPattern: offset)))
    guard let p, p != MAP_FAILED else { return .failure(Errno(rawValue: errno)) }
    return .success(p)
  }

  public func munmap(_ address: UnsafeMutableRawPointer, length: Int) {
    _ = Glibc.munmap(address, length)
  }

  public func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Int32 {
    Glibc.madvise(address, length, advice) < 0 ? -errno : 0
  }

  public func eventfd(initialValue: UInt32, flags: Int32) -> Int32 {
    cvfio_eventfd(initialValue, flags)
  }

  public func pollReadable(_ fd: Int32, timeoutMilliseconds: Int32) -> Int32 {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    while true {
      let rc = Glibc.poll(&p, 1, timeoutMilliseconds)
      if rc < 0 && errno == EINTR { continue }
      return rc < 0 ? -errno : rc
    }
  }

  public func readLink(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = Glibc.readlink(path, &buffer, buffer.count - 1)
    guard n >= 0 else { return nil }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  public func readFile(_ path: String) -> String? {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { _ = Glibc.close(fd) }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
      if n < 0 && errno == EINTR { continue }
      guard n > 0 else { break }
      result += chunk[0..<n]
    }
    return String(decoding: result, as: UTF8.self)
  }

  public func listDirectory(_ path: String) -> [String]? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
      }
      if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
  }

  public func memlockLimit() -> UInt64? {
    let limit = cvfio_memlock_limit()
    return limit == UInt64.max ? nil : limit
  }
}

/// Passes every call to another kernel and counts the ioctls by request name, so a benchmark
/// or test can state how many system calls an operation really costs.
public struct IoctlCountingKernel: KernelInterface {
  /// Counts by request name; a class so copies of the kernel value share it.
  public final class Counts: @unchecked Sendable {
    public private(set) var byRequest: [String: Int] = [:]
    public var total: Int { byRequest.values.reduce(0, +) }
    public init() {}
    public func reset() { byRequest = [:] }
    func add(_ request: IoctlRequest) { byRequest[request.name, default: 0] += 1 }
  }

  public let base: any KernelInterface
  public let counts: Counts

  public init(_ base: any KernelInterface = LinuxKernel(), counts: Counts = Counts()) {
    self.base = base
    self.counts = counts
  }

  public func open(_ path: String, flags: Int32) -> Int32 { base.open(path, flags: flags) }
  public func close(_ fd: Int32) { base.close(fd) }
  public func ioctl(_ fd: Int32, _ request: IoctlRequest, _ argument: UnsafeMutableRawPointer?)
    -> Int32
  {
    counts.add(request)
    return base.ioctl(fd, request, argument)
  }
  public func ioctl(_ fd: Int32, _ request: IoctlRequest, value: UInt) -> Int32 {
    counts.add(request)
    return base.ioctl(fd, request, value: value)
  }
  public func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) -> Int {
    base.pread(fd, into: buffer, offset: offset)
  }
  public func pwrite(_ fd: Int32, from buffer: UnsafeRawBufferPointer, offset: UInt64) -> Int {
    base.pwrite(fd, from: buffer, offset: offset)
  }
  public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    base.read(fd, into: buffer)
  }
  public func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> Int {
    base.write(fd, from: buffer)
  }
  public func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: UInt64)
    -> Result<UnsafeMutableRawPointer, Errno>
  {
    base.mmap(length: length, protection: protection, flags: flags, fd: fd, offset: offset)
  }
  public func munmap(_ address: UnsafeMutableRawPointer, length: Int) {
    base.munmap(address, length: length)
  }
  public func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Int32 {
    base.madvise(address, length: length, advice: advice)
  }
  public func eventfd(initialValue: UInt32, flags: Int32) -> Int32 {
    base.eventfd(initialValue: initialValue, flags: flags)
  }
  public func pollReadable(_ fd: Int32, timeoutMilliseconds: Int32) -> Int32 {
    base.pollReadable(fd, timeoutMilliseconds: timeoutMilliseconds)
  }
  public func readLink(_ path: String) -> String? { base.readLink(path) }
  public func readFile(_ path: String) -> String? { base.readFile(path) }
  public func listDirectory(_ path: String) -> [String]? { base.listDirectory(path) }
  public func memlockLimit() -> UInt64? { base.memlockLimit() }
}
