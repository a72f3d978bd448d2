import CVFIO

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A descriptor closed exactly once, when the last reference goes.
public final class Descriptor: @unchecked Sendable {
  public let fd: Int32
  public init(_ fd: Int32) { self.fd = fd }
  deinit { close(fd) }
}

/// Who is at the other end of a Unix socket, from the kernel (SO_PEERCRED), never from the
/// peer's own words.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
  public let pid: Int
  public let uid: Int
  public let gid: Int

  public init(pid: Int, uid: Int, gid: Int) {
    self.pid = pid
    self.uid = uid
    self.gid = gid
  }

  public static func of(_ socket: Int32) -> PeerCredentials? {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    guard cvfio_peer_credentials(socket, &pid, &uid, &gid) == 0 else { return nil }
    return PeerCredentials(pid: Int(pid), uid: Int(uid), gid: Int(gid))
  }

  public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// The socket calls both ends make, with -errno turned into `SocketError`.
public enum UnixSocket {
  public static let maximumDescriptors = 16

  /// Thousands of connections need thousands of descriptors: the soft RLIMIT_NOFILE up to the hard one.
  public static func raiseDescriptorLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
  }

  public static func listen(path: String, backlog: Int32 = 1024, replace: Bool = true) throws(SocketError) -> Int32 {
    let fd = cvfio_unix_listen(path, backlog, 1, replace ? 1 : 0)
    guard fd >= 0 else { throw SocketError("listen on \(path)", errno: -fd) }
    return fd
  }

  public static func connect(path: String) throws(SocketError) -> Int32 {
    let fd = cvfio_unix_connect(path)
    guard fd >= 0 else { throw SocketError("connect to \(path)", errno: -fd) }
    return fd
  }

  /// Sends all of `bytes`, the descriptors with the first part. A stream socket may take a
  /// message in pieces; only the first piece carries SCM_RIGHTS, as the receiver expects.
  public static func sendAll(_ socket: Int32, _ bytes: [UInt8], descriptors: [Int32] = []) throws(SocketError) {
    var offset = 0
    var fds = descriptors
    while offset < bytes.count {
      let sent = bytes.withUnsafeBytes { raw in
        fds.withUnsafeBufferPointer { cvfio_send_with_fds(socket, raw.baseAddress! + offset, UInt(raw.count - offset), $0.baseAddress, Int32($0.count)) }
      }
      if sent == -Int(EINTR) { continue }
      guard sent > 0 else { throw SocketError("send", errno: Int32(-sent)) }
      offset += sent
      fds = []
    }
  }

  /// One recvmsg: bytes read (0 at end of stream) and the descriptors that came with them.
  public static func receive(_ socket: Int32, into buffer: inout [UInt8], maxDescriptors: Int)
    throws(SocketError) -> (count: Int, descriptors: [Int32], truncated: Bool)
  {
    var fds = [Int32](repeating: -1, count: maximumDescriptors)
    var received: Int32 = 0
    var truncated: Int32 = 0
    let limit = Int32(min(maxDescriptors, maximumDescriptors))
    let got = buffer.withUnsafeMutableBytes { raw in
      fds.withUnsafeMutableBufferPointer {
        cvfio_receive_with_fds(socket, raw.baseAddress, UInt(raw.count), $0.baseAddress, limit, &received, &truncated)
      }
    }
    guard got >= 0 else { throw SocketError("receive", errno: Int32(-got)) }
    return (got, Array(fds.prefix(Int(received))), truncated != 0)
  }
}

public struct SocketError: Error, Sendable, Equatable, CustomStringConvertible {
  public let operation: String
  public let errno: Int32

  public init(_ operation: String, errno: Int32) {
    self.operation = operation
    self.errno = errno
  }

  public var wouldBlock: Bool { errno == EAGAIN || errno == EWOULDBLOCK }
  public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}
