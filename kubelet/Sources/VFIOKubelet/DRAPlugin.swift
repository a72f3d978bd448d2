import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import KubeletAPI
import Logging
import ServiceLifecycle
import SwiftProtobuf

typealias DRAv1 = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin
typealias DRAv1beta1 = K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_DRAPlugin

/// Where the kubelet looks for plugins, below its root directory (`/var/lib/kubelet`).
public struct KubeletPaths: Sendable {
  public let directory: String
  public init(directory: String = "/var/lib/kubelet") { self.directory = directory }

  /// The plugin watcher's directory: a DRA plugin's registration socket goes here.
  public var pluginsRegistry: String { directory + "/plugins_registry" }
  public func registrationSocket(driver: String) -> String { pluginsRegistry + "/\(driver)-reg.sock" }
  /// The plugin's data directory: its DRA socket and its claims' device metadata.
  public func pluginDirectory(driver: String) -> String { directory + "/plugins/\(driver)" }
  public func draSocket(driver: String) -> String { pluginDirectory(driver: driver) + "/dra.sock" }
  /// The device plugin directory: the kubelet's own socket and the plugins' sockets.
  public var devicePlugins: String { directory + "/device-plugins" }
  public var kubeletSocket: String { devicePlugins + "/kubelet.sock" }
}

/// The DRA kubelet plugin: `Registration` on `plugins_registry/<driver>-reg.sock` and
/// `DRAPlugin` (v1 and v1beta1) on `plugins/<driver>/dra.sock`.
public struct DRAPlugin: Service {
  public let driver: String
  public let paths: KubeletPaths
  public let preparer: ClaimPreparer
  public let claims: any ClaimSource
  /// The devices' health for the kubelet's stream; nil: the health service is not offered.
  public let health: HealthBoard?
  let logger: Logger

  /// The gRPC service names the kubelet picks from, newest first (the kubelet takes the first
  /// DRA service it knows, and the newest health service it knows).
  public static let supportedVersions = ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
  public static let healthVersions = ["v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth"]

  public init(
    driver: String, paths: KubeletPaths, preparer: ClaimPreparer, claims: any ClaimSource, health: HealthBoard? = nil,
    logger: Logger
  ) {
    self.driver = driver
    self.paths = paths
    self.preparer = preparer
    self.claims = claims
    self.health = health
    self.logger = logger
  }

  /// `Service`'s entry point: the plugin in a `ServiceGroup` with the slice controller.
  public func run() async throws { try await run(onListening: {}) }

  public var pluginInfo: Pluginregistration_PluginInfo {
    var info = Pluginregistration_PluginInfo()
    info.type = "DRAPlugin"
    info.name = driver
    info.endpoint = paths.draSocket(driver: driver)
    info.supportedVersions = Self.supportedVersions + (health == nil ? [] : Self.healthVersions)
    return info
  }

  /// Serves until cancelled or, in a `ServiceGroup`, until a graceful shutdown (SIGTERM): the
  /// DRA socket first, then the registration socket, so the kubelet never finds a plugin
  /// whose endpoint is not listening yet. At a graceful shutdown the registration goes first
  /// (the kubelet stops calling), the DRA server answers the calls in flight (a prepare
  /// finishes or rolls back whole, as it would have), and both socket files are removed.
  public func run(onListening: @Sendable () async -> Void = {}) async throws {
    var services: [any RegistrableRPCService] = [V1Service(plugin: self), V1beta1Service(plugin: self)]
    if let health { services += [HealthV1Service(board: health), HealthV1alpha1Service(board: health)] }
    let dra = try UnixServer(path: paths.draSocket(driver: driver), services: services)
    let registration = try UnixServer(
      path: paths.registrationSocket(driver: driver),
      services: [RegistrationService(info: pluginInfo, logger: logger)])
    defer {
      registration.removeSocket()
      dra.removeSocket()
    }
    try await withGracefulShutdownHandler {
      try await withThrowingDiscardingTaskGroup { group in
        group.addTask { try await dra.serve() }
        try await dra.listening()
        group.addTask { try await registration.serve() }
        try await registration.listening()
        logger.info("DRA plugin \(driver) listening on \(paths.draSocket(driver: driver))")
        await onListening()
      }
    } onGracefulShutdown: {
      logger.info("shutting down: no new registrations, answering the calls in flight")
      registration.stop()
      health?.close()
      dra.stop()
    }
    logger.info("DRA plugin \(driver) stopped")
  }

  /// One claim of NodePrepareResources: its devices, or the error the kubelet shows.
  func prepareClaim(_ claim: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim) async
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourceResponse
  {
    var answer = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourceResponse()
    let reference = ClaimReference(namespace: claim.namespace, uid: claim.uid, name: claim.name)
    let preparer = self.preparer
    do {
      // A prepared claim is answered from its checkpoint, without asking for the allocation.
      let devices: [PreparedDevice]
      if let done = try preparer.checkpoint(claim.uid), !done.isPending {
        devices = done.devices
      } else {
        let allocation = try await claims.allocation(of: reference, driver: driver)
        devices = try await onHostThread { () throws(KubeletError) in try preparer.prepare(reference, allocation) }
      }
      answer.devices = devices.map { prepared in
        var device = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Device()
        device.requestNames = prepared.requestNames
        device.poolName = prepared.pool
        device.deviceName = prepared.device
        device.cdiDeviceIds = prepared.cdiDeviceIDs
        return device
      }
    } catch {
      logger.error("prepare \(reference): \(error)")
      answer.error = error.description
    }
    return answer
  }

  func unprepareClaim(_ claim: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim) async
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourceResponse
  {
    var answer = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourceResponse()
    let reference = ClaimReference(namespace: claim.namespace, uid: claim.uid, name: claim.name)
    let preparer = self.preparer
    do { try await onHostThread { () throws(KubeletError) in try preparer.unprepare(reference) } } catch {
      logger.error("unprepare \(reference): \(error)")
      answer.error = error.description
    }
    return answer
  }

  /// The claims of one call at once: the gate serialises those that share a group.
  func prepare(_ request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest) async
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse
  {
    var response = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse()
    response.claims = await eachClaim(request.claims) { await prepareClaim($0) }
    return response
  }

  func unprepare(_ request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesRequest) async
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesResponse
  {
    var response = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesResponse()
    response.claims = await eachClaim(request.claims) { await unprepareClaim($0) }
    return response
  }

  /// `answer` for every claim concurrently, keyed by claim UID as the responses are.
  private func eachClaim<Answer: Sendable>(
    _ claims: [K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim],
    _ answer: @escaping @Sendable (K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim) async -> Answer
  ) async -> [String: Answer] {
    await withTaskGroup(of: (String, Answer).self) { group in
      for claim in claims { group.addTask { (claim.uid, await answer(claim)) } }
      var answers: [String: Answer] = [:]
      for await (uid, one) in group { answers[uid] = one }
      return answers
    }
  }
}

struct V1Service: DRAv1.SimpleServiceProtocol {
  let plugin: DRAPlugin

  func nodePrepareResources(request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest, context: ServerContext)
    async throws -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse
  { await plugin.prepare(request) }

  func nodeUnprepareResources(
    request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesRequest, context: ServerContext
  ) async throws -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesResponse { await plugin.unprepare(request) }
}

/// v1beta1 has the same messages under another package (the same field numbers): served by
/// re-reading each message as its v1 twin.
struct V1beta1Service: DRAv1beta1.SimpleServiceProtocol {
  let plugin: DRAPlugin

  func nodePrepareResources(
    request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodePrepareResourcesRequest, context: ServerContext
  ) async throws -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodePrepareResourcesResponse {
    try twin(await plugin.prepare(try twin(request)))
  }

  func nodeUnprepareResources(
    request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodeUnprepareResourcesRequest, context: ServerContext
  ) async throws -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodeUnprepareResourcesResponse {
    try twin(await plugin.unprepare(try twin(request)))
  }
}

struct RegistrationService: Pluginregistration_Registration.SimpleServiceProtocol {
  let info: Pluginregistration_PluginInfo
  let logger: Logger

  func getInfo(request: Pluginregistration_InfoRequest, context: ServerContext) async throws
    -> Pluginregistration_PluginInfo
  { info }

  func notifyRegistrationStatus(request: Pluginregistration_RegistrationStatus, context: ServerContext) async throws
    -> Pluginregistration_RegistrationStatusResponse
  {
    if request.pluginRegistered {
      logger.info("registered with the kubelet as \(info.name)")
    } else {
      logger.error("the kubelet refused the registration of \(info.name): \(request.error)")
    }
    return Pluginregistration_RegistrationStatusResponse()
  }
}
