import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// A TCP connection on loopback to a listener that never accepts, lingering `seconds` with its
/// send queue full: closing its last descriptor blocks that long (what a hostile client hands a
/// daemon over SCM_RIGHTS to freeze it). Returns the socket and the listener, or nil.
public func lingeringTCPSocket(seconds: Int32 = 30) -> (socket: Int32, listener: Int32)? {
  let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  guard listener >= 0 else { return nil }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  var size = socklen_t(MemoryLayout<sockaddr_in>.size)
  let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, size) } }
  _ = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &size) }
  }
  guard bound == 0, listen(listener, 1) == 0 else {
    close(listener)
    return nil
  }
  let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  let connected = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
  }
  guard connected == 0 else {
    close(client)
    close(listener)
    return nil
  }
  var linger = Glibc.linger(l_onoff: 1, l_linger: seconds)
  setsockopt(client, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
  _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
  let chunk = [UInt8](repeating: 0x55, count: 65536)
  while chunk.withUnsafeBytes({ send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) > 0 {}
  return (client, listener)
}
