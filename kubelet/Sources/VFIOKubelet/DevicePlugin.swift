import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import KubeletAPI
import Logging
import VFIOHost

/// The classic (v1beta1) device plugin: serves `DevicePlugin` on
/// `device-plugins/<name>.sock`, registers it on the kubelet's `kubelet.sock`, and does both
/// again whenever the kubelet restarts (it removes every plugin socket and makes its own anew).
public struct DevicePlugin: Sendable {
  public let resourceName: String
  public let paths: KubeletPaths
  /// What may be published: the host as its init sees it, less what the ledger gives away.
  public let catalog: NodeCatalog
  public var sysfs: Sysfs { catalog.sysfs }
  /// How often groups are read again (ListAndWatch) and the kubelet's socket is checked.
  public let pollInterval: Double
  let logger: Logger

  public init(resourceName: String, paths: KubeletPaths, catalog: NodeCatalog, pollInterval: Double = 5, logger: Logger) {
    self.resourceName = resourceName
    self.paths = paths
    self.catalog = catalog
    self.pollInterval = pollInterval
    self.logger = logger
  }

  /// `vfio.swift-vfio.io/pci` → `vfio.swift-vfio.io_pci.sock`.
  public var socketName: String { resourceName.replacingOccurrences(of: "/", with: "_") + ".sock" }
  public var socketPath: String { paths.devicePlugins + "/" + socketName }

  /// The groups as they are now; a host that cannot be read publishes nothing.
  public func core() -> DevicePluginCore {
    let devices: DeviceCatalog
    do {
      devices = try catalog.read()
    } catch {
      logger.error("publishing nothing: \(error)")
      devices = .empty
    }
    return DevicePluginCore(resourceName: resourceName, catalog: devices)
  }

  /// Serves and registers until cancelled; `onRegistered` is called after each registration.
  public func run(onRegistered: @Sendable () async -> Void = {}) async throws {
    while !Task.isCancelled {
      let kubelet = try await waitForKubelet()
      let server = try UnixServer(path: socketPath, services: [DevicePluginService(plugin: self)])
      try await withThrowingTaskGroup { group in
        group.addTask { try await server.serve() }
        try await server.listening()
        try await registerRetrying()
        logger.info("registered \(resourceName) with the kubelet (\(socketName))")
        await onRegistered()
        // A kubelet that restarted removed our socket and made kubelet.sock anew.
        while !Task.isCancelled, FileManager.default.fileExists(atPath: socketPath),
          fileIdentity(paths.kubeletSocket) == kubelet
        {
          try await Task.sleep(for: .seconds(pollInterval))
        }
        // Cancelling, not a graceful shutdown: ListAndWatch streams never end by themselves.
        group.cancelAll()
      }
      logger.info("the kubelet restarted: serving and registering again")
    }
  }

  func waitForKubelet() async throws -> FileIdentity {
    while true {
      if let identity = fileIdentity(paths.kubeletSocket) { return identity }
      try await Task.sleep(for: .seconds(pollInterval))
    }
  }

  /// A kubelet that is starting may have made its socket before it listens on it.
  func registerRetrying(attempts: Int = 50) async throws {
    for attempt in 1...attempts {
      do { return try await register() } catch {
        if attempt == attempts { throw error }
        logger.info("registering with the kubelet: \(error); trying again")
        try await Task.sleep(for: .seconds(min(pollInterval, 1) * 2))
      }
    }
  }

  func register() async throws {
    var request = V1beta1_RegisterRequest()
    request.version = "v1beta1"
    request.endpoint = socketName
    request.resourceName = resourceName
    request.options.getPreferredAllocationAvailable = true
    try await withGRPCClient(
      transport: .http2NIOPosix(target: .unixDomainSocket(path: paths.kubeletSocket), transportSecurity: .plaintext)
    ) { client in
      _ = try await V1beta1_Registration.Client(wrapping: client).register(request)
    }
  }
}

struct DevicePluginService: V1beta1_DevicePlugin.SimpleServiceProtocol {
  let plugin: DevicePlugin

  func getDevicePluginOptions(request: V1beta1_Empty, context: ServerContext) async throws
    -> V1beta1_DevicePluginOptions
  {
    var options = V1beta1_DevicePluginOptions()
    options.getPreferredAllocationAvailable = true
    return options
  }

  /// The devices now, then again each time a group comes, goes or changes health.
  func listAndWatch(request: V1beta1_Empty, response: RPCWriter<V1beta1_ListAndWatchResponse>, context: ServerContext)
    async throws
  {
    var last: [V1beta1_Device]?
    while !Task.isCancelled {
      let devices = plugin.core().devices
      if devices != last {
        var message = V1beta1_ListAndWatchResponse()
        message.devices = devices
        try await response.write(message)
        last = devices
      }
      try await Task.sleep(for: .seconds(plugin.pollInterval))
    }
  }

  func getPreferredAllocation(request: V1beta1_PreferredAllocationRequest, context: ServerContext) async throws
    -> V1beta1_PreferredAllocationResponse
  { plugin.core().preferredAllocation(request) }

  func allocate(request: V1beta1_AllocateRequest, context: ServerContext) async throws -> V1beta1_AllocateResponse {
    do { return try plugin.core().allocate(request) } catch {
      throw RPCError(code: .invalidArgument, message: error.description)
    }
  }

  func preStartContainer(request: V1beta1_PreStartContainerRequest, context: ServerContext) async throws
    -> V1beta1_PreStartContainerResponse
  { V1beta1_PreStartContainerResponse() }
}

/// Inode and change time: a socket made anew differs in both.
struct FileIdentity: Equatable, Sendable {
  let inode: UInt64
  let changed: Int
  let changedNanoseconds: Int
}

func fileIdentity(_ path: String) -> FileIdentity? {
  var info = stat()
  guard stat(path, &info) == 0 else { return nil }
  return FileIdentity(
    inode: UInt64(info.st_ino), changed: info.st_ctim.tv_sec, changedNanoseconds: info.st_ctim.tv_nsec)
}
