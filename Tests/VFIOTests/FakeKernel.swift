import SystemPackage

@testable import VFIO

/// A recording stand-in for the kernel: every call is logged in order, ioctls answer from
/// per-request handlers that fill the caller's buffer like the kernel would.
final class FakeKernel: KernelInterface, @unchecked Sendable {
  typealias Handler = (_ fd: Int32, _ arg: UnsafeMutableRawPointer?, _ value: UInt) -> Int32

  /// One call as the test sees it, e.g. "open /dev/vfio/vfio", "ioctl 3 VFIO_GET_API_VERSION".
  var log: [String] = []
  /// Input bytes of each pointer ioctl, in call order.
  var ioctlInputs: [(name: String, bytes: [UInt8])] = []
  var handlers: [String: Handler] = [:]
  /// Paths that open fails on, with the errno.
  var openErrors: [String: Errno] = [:]
  var links: [String: String] = [:]
  var directories: [String: [String]] = [:]
  var files: [String: String] = [:]
  var memlock: UInt64? = 64 * 1024
  var closed: [Int32] = []
  var paths: [Int32: String] = [:]
  var nextFD: Int32 = 3
  var mmaps: [(length: Int, flags: Int32, fd: Int32, offset: UInt64)] = []

  /// The log without reads and closes, for sequence assertions.
  var ioctlLog: [String] { log.filter { $0.hasPrefix("ioctl") || $0.hasPrefix("open") } }

  func on(_ request: IoctlRequest, _ handler: @escaping Handler) {
    handlers[request.name] = handler
  }

  /// Answers `request` with success and no data.
  func succeed(_ requests: IoctlRequest...) {
    for r in requests { handlers[r.name] = { _, _, _ in 0 } }
  }

  func open(_ path: String, flags: Int32) -> Int32 {
    log.append("open \(path)")
    if let e = openErrors[path] { return -e.rawValue }
    defer { nextFD += 1 }
    paths[nextFD] = path
    return nextFD
  }

  func close(_ fd: Int32) {
    log.append("close \(fd)")
    closed.append(fd)
  }

  func ioctl(_ fd: Int32, _ request: IoctlRequest, _ argument: UnsafeMutableRawPointer?) -> Int32 {
    log.append("ioctl \(fd) \(request.name)")
    if let argument {
      ioctlInputs.append((request.name, Self.inputBytes(request, argument)))
    }
    guard let handler = handlers[request.name] else {
      return -Errno.inappropriateIOCTLForDevice.rawValue
    }
    return handler(fd, argument, 0)
  }

  func ioctl(_ fd: Int32, _ request: IoctlRequest, value: UInt) -> Int32 {
    log.append("ioctl \(fd) \(request.name) \(value)")
    guard let handler = handlers[request.name] else {
      return -Errno.inappropriateIOCTLForDevice.rawValue
    }
    return handler(fd, nil, value)
  }

  /// What the caller passed: the first argsz/size bytes, the int of SET_CONTAINER, or the
  /// name string of GET_DEVICE_FD.
  static func inputBytes(_ request: IoctlRequest, _ p: UnsafeMutableRawPointer) -> [UInt8] {
    switch request {
    case .groupSetContainer:
      return Array(UnsafeRawBufferPointer(start: p, count: 4))
    case .groupGetDeviceFD:
      let s = p.assumingMemoryBound(to: CChar.self)
      var n = 0
      while s[n] != 0 { n += 1 }
      return Array(UnsafeRawBufferPointer(start: p, count: n))
    default:
      let size = Int(p.load(as: UInt32.self))
      return Array(UnsafeRawBufferPointer(start: p, count: min(size, 4096)))
    }
  }

  var registers: [UInt64: [UInt8]] = [:]

  func pread(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) -> Int {
    log.append("pread \(fd) 0x\(String(offset, radix: 16)) \(buffer.count)")
    let bytes = registers[offset] ?? []
    for i in 0..<buffer.count { buffer[i] = i < bytes.count ? bytes[i] : 0 }
    return buffer.count
  }

  func pwrite(_ fd: Int32, from buffer: UnsafeRawBufferPointer, offset: UInt64) -> Int {
    log.append("pwrite \(fd) 0x\(String(offset, radix: 16)) \(Array(buffer))")
    registers[offset] = Array(buffer)
    return buffer.count
  }

  func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    log.append("read \(fd)")
    return -Int(Errno.resourceTemporarilyUnavailable.rawValue)
  }

  func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> Int {
    log.append("write \(fd)")
    return buffer.count
  }

  func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: UInt64) -> Result<
    UnsafeMutableRawPointer, Errno
  > {
    log.append("mmap \(fd) 0x\(String(offset, radix: 16)) \(length)")
    mmaps.append((length, flags, fd, offset))
    return .success(UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096))
  }

  func munmap(_ address: UnsafeMutableRawPointer, length: Int) {
    log.append("munmap \(length)")
    address.deallocate()
  }

  func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: Int32) -> Int32 { 0 }

  func eventfd(initialValue: UInt32, flags: Int32) -> Int32 {
    log.append("eventfd")
    defer { nextFD += 1 }
    return nextFD
  }

  func pollReadable(_ fd: Int32, timeoutMilliseconds: Int32) -> Int32 { 0 }
  func readLink(_ path: String) -> String? { links[path] }
  func readFile(_ path: String) -> String? { files[path] }
  func listDirectory(_ path: String) -> [String]? { directories[path] }
  func memlockLimit() -> UInt64? { memlock }
}

/// Typed access to an ioctl argument inside a handler.
func withArgument<T>(_ p: UnsafeMutableRawPointer?, as: T.Type, _ body: (inout T) -> Void) {
  let typed = p!.assumingMemoryBound(to: T.self)
  body(&typed.pointee)
}

extension Array where Element == UInt8 {
  func u32(_ at: Int) -> UInt32 { load(UInt32.self, at: at) }
  func u64(_ at: Int) -> UInt64 { load(UInt64.self, at: at) }
}

/// Little helpers to build expected byte strings by hand.
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
