import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix

/// A gRPC server on a Unix socket. A socket file left by a plugin that died is removed
/// first (binding fails on an existing path); the directory is made if missing.
struct UnixServer: Sendable {
  let path: String
  let transport: HTTP2ServerTransport.Posix
  let server: GRPCServer<HTTP2ServerTransport.Posix>

  init(path: String, services: [any RegistrableRPCService]) throws(KubeletError) {
    self.path = path
    let directory = (path as NSString).deletingLastPathComponent
    do { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
      throw .socket(path: path, "cannot make \(directory): \(error.localizedDescription)")
    }
    if unlink(path) != 0 && errno != ENOENT {
      throw .socket(path: path, "cannot remove the old socket: \(String(cString: strerror(errno)))")
    }
    transport = .http2NIOPosix(address: .unixDomainSocket(path: path), transportSecurity: .plaintext)
    server = GRPCServer(transport: transport, services: services)
  }

  func serve() async throws { try await server.serve() }

  /// Returns once the socket accepts connections.
  func listening() async throws { _ = try await transport.listeningAddress }

  func stop() { server.beginGracefulShutdown() }

  /// The socket file, once the server is done (the kubelet's watcher sees the plugin go).
  func removeSocket() { unlink(path) }
}
