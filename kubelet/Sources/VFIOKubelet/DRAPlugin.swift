import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import KubeletAPI
import Logging
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
  public func draSocket(driver: String) -> String { directory + "/plugins/\(driver)/dra.sock" }
  /// The device plugin directory: the kubelet's own socket and the plugins' sockets.
  public var devicePlugins: String { directory + "/device-plugins" }
  public var kubeletSocket: String { devicePlugins + "/kubelet.sock" }
}

/// The DRA kubelet plugin: `Registration` on `plugins_registry/<driver>-reg.sock` and
/// `DRAPlugin` (v1 and v1beta1) on `plugins/<driver>/dra.sock`.
public struct DRAPlugin: Sendable {
  public let driver: String
  public let paths: KubeletPaths
  public let preparer: ClaimPreparer
  public let claims: any ClaimSource
  let logger: Logger

  /// The gRPC service names the kubelet picks from, newest first.
  public static let supportedVersions = ["v1.DRAPlugin", "v1beta1.DRAPlugin"]

  public init(driver: String, paths: KubeletPaths, preparer: ClaimPreparer, claims: any ClaimSource, logger: Logger) {
    self.driver = driver
    self.paths = paths
    self.preparer = preparer
    self.claims = claims
    self.logger = logger
  }

  public var pluginInfo: Pluginregistration_PluginInfo {
    var info = Pluginregistration_PluginInfo()
    info.type = "DRAPlugin"
    info.name = driver
    info.endpoint = paths.draSocket(driver: driver)
    info.supportedVersions = Self.supportedVersions
    return info
  }

  /// Serves until cancelled: the DRA socket first, then the registration socket, so the
  /// kubelet never finds a plugin whose endpoint is not listening yet.
  public func run(onListening: @Sendable () async -> Void = {}) async throws {
    let dra = try UnixServer(
      path: paths.draSocket(driver: driver), services: [V1Service(plugin: self), V1beta1Service(plugin: self)])
    let registration = try UnixServer(
      path: paths.registrationSocket(driver: driver),
      services: [RegistrationService(info: pluginInfo, logger: logger)])
    try await withThrowingDiscardingTaskGroup { group in
      group.addTask { try await dra.serve() }
      try await dra.listening()
      group.addTask { try await registration.serve() }
      try await registration.listening()
      logger.info("DRA plugin \(driver) listening on \(paths.draSocket(driver: driver))")
      await onListening()
    }
  }

  /// One claim of NodePrepareResources: its devices, or the error the kubelet shows.
  func prepareClaim(_ claim: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim) async
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourceResponse
  {
    var answer = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourceResponse()
    let reference = ClaimReference(namespace: claim.namespace, uid: claim.uid, name: claim.name)
    do {
      // A prepared claim is answered from its checkpoint, without asking for the allocation.
      let devices: [PreparedDevice]
      if let done = try preparer.checkpoint(claim.uid), !done.isPending {
        devices = done.devices
      } else {
        devices = try preparer.prepare(reference, try await claims.allocation(of: reference, driver: driver))
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

  func unprepareClaim(_ claim: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim)
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourceResponse
  {
    var answer = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourceResponse()
    let reference = ClaimReference(namespace: claim.namespace, uid: claim.uid, name: claim.name)
    do { try preparer.unprepare(reference) } catch {
      logger.error("unprepare \(reference): \(error)")
      answer.error = error.description
    }
    return answer
  }

  func prepare(_ request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest) async
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse
  {
    var response = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse()
    for claim in request.claims { response.claims[claim.uid] = await prepareClaim(claim) }
    return response
  }

  func unprepare(_ request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesRequest)
    -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesResponse
  {
    var response = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesResponse()
    for claim in request.claims { response.claims[claim.uid] = unprepareClaim(claim) }
    return response
  }
}

struct V1Service: DRAv1.SimpleServiceProtocol {
  let plugin: DRAPlugin

  func nodePrepareResources(request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest, context: ServerContext)
    async throws -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse
  { await plugin.prepare(request) }

  func nodeUnprepareResources(
    request: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesRequest, context: ServerContext
  ) async throws -> K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesResponse { plugin.unprepare(request) }
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
    try twin(plugin.unprepare(try twin(request)))
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
