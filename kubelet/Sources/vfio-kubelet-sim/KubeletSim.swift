import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import KubeletAPI
import SwiftProtobuf

/// Plays the kubelet against swift-vfio's plugins over their real Unix sockets, for the
/// integration tests: each subcommand makes the calls the kubelet would and prints the
/// answers as protobuf JSON, one line per message.
@main
struct KubeletSim: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vfio-kubelet-sim",
    abstract: "Play the kubelet against a DRA plugin or a device plugin over Unix sockets.",
    subcommands: [Info.self, Prepare.self, Unprepare.self, Health.self, DevicePluginKubelet.self])
}

func unixTransport(_ path: String) throws -> HTTP2ClientTransport.Posix {
  try .http2NIOPosix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)
}

func emit(_ message: some SwiftProtobuf.Message) throws { print(try message.jsonString()) }

/// The plugin watcher's handshake: GetInfo, then NotifyRegistrationStatus(registered).
struct Info: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "GetInfo and NotifyRegistrationStatus on a registration socket.")
  @Option(help: "The plugin's registration socket (plugins_registry/<driver>-reg.sock).")
  var socket: String

  func run() async throws {
    try await withGRPCClient(transport: try unixTransport(socket)) { client in
      let registration = Pluginregistration_Registration.Client(wrapping: client)
      let info = try await registration.getInfo(Pluginregistration_InfoRequest())
      try emit(info)
      var status = Pluginregistration_RegistrationStatus()
      status.pluginRegistered = true
      _ = try await registration.notifyRegistrationStatus(status)
    }
  }
}

/// The claim a prepare or unprepare names.
struct ClaimOptions: ParsableArguments {
  @Option(help: "The plugin's DRA socket (plugins/<driver>/dra.sock).")
  var socket: String
  @Option var uid: String
  @Option var name: String = "claim"
  @Option var namespace: String = "default"
  @Flag(help: "Call the v1beta1 service instead of v1.")
  var v1beta1 = false

  var claim: K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim {
    var claim = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim()
    claim.uid = uid
    claim.name = name
    claim.namespace = namespace
    return claim
  }
}

struct Prepare: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "NodePrepareResources for one claim.")
  @OptionGroup var options: ClaimOptions

  func run() async throws {
    var request = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest()
    request.claims = [options.claim]
    try await withGRPCClient(transport: try unixTransport(options.socket)) { client in
      if options.v1beta1 {
        let response = try await K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_DRAPlugin.Client(wrapping: client)
          .nodePrepareResources(try twin(request) as K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodePrepareResourcesRequest)
        try emit(response)
      } else {
        try emit(
          try await K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin.Client(wrapping: client).nodePrepareResources(request))
      }
    }
  }
}

struct Unprepare: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "NodeUnprepareResources for one claim.")
  @OptionGroup var options: ClaimOptions

  func run() async throws {
    var request = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourcesRequest()
    request.claims = [options.claim]
    try await withGRPCClient(transport: try unixTransport(options.socket)) { client in
      if options.v1beta1 {
        let response = try await K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_DRAPlugin.Client(wrapping: client)
          .nodeUnprepareResources(
            try twin(request) as K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodeUnprepareResourcesRequest)
        try emit(response)
      } else {
        try emit(
          try await K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin.Client(wrapping: client).nodeUnprepareResources(request))
      }
    }
  }
}

/// The kubelet's health watch (KEP-4680): NodeWatchResources on the DRA socket, printing each
/// report, until one gives `device` the `state` asked for (or after the first report).
struct Health: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "NodeWatchResources (DRAResourceHealth v1, or v1alpha1) until a device has a state.")
  @Option(help: "The plugin's DRA socket (plugins/<driver>/dra.sock).")
  var socket: String
  @Option(help: "Wait for this device (group-N) …")
  var device: String?
  @Option(help: "… to be HEALTHY, UNHEALTHY or UNKNOWN.")
  var state: String = "HEALTHY"
  @Option(help: "Seconds to wait.")
  var timeout: Double = 30
  @Flag(help: "Call v1alpha1.DRAResourceHealth instead of v1.")
  var v1alpha1 = false

  func run() async throws {
    let started = ContinuousClock.now
    try await withThrowingTaskGroup { group in
      group.addTask {
        try await withGRPCClient(transport: try unixTransport(socket)) { client in
          if v1alpha1 {
            try await V1alpha1_DRAResourceHealth.Client(wrapping: client).nodeWatchResources(
              V1alpha1_NodeWatchResourcesRequest()
            ) { response in
              for try await message in response.messages {
                try emit(message)
                let v1: V1_NodeWatchResourcesResponse = try twin(message)
                if done(v1) { return }
              }
            }
          } else {
            try await V1_DRAResourceHealth.Client(wrapping: client).nodeWatchResources(V1_NodeWatchResourcesRequest()) {
              response in
              for try await message in response.messages {
                try emit(message)
                if done(message) { return }
              }
            }
          }
        }
        let waited = ContinuousClock.now - started
        print("after \(waited.components.seconds * 1000 + waited.components.attoseconds / 1_000_000_000_000_000) ms")
      }
      group.addTask {
        try await Task.sleep(for: .seconds(timeout))
        throw ValidationError("\(device ?? "no report"): not \(state) within \(timeout) s")
      }
      try await group.next()
      group.cancelAll()
    }
  }

  func done(_ message: V1_NodeWatchResourcesResponse) -> Bool {
    guard let device else { return true }
    let wanted = ["UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2][state.uppercased()]
    return message.devices.contains { $0.device.deviceName == device && $0.health.rawValue == wanted }
  }
}

/// The kubelet's side of the device plugin API: serves Registration on `kubelet.sock`, and
/// for each plugin that registers asks for its options, its first device list and an
/// allocation. With `--restarts N` it then acts out a kubelet restart N times (every socket in
/// the directory removed, `kubelet.sock` made anew) and waits for the plugin to register again.
struct DevicePluginKubelet: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "device-plugin-kubelet", abstract: "Play the kubelet's side of the device plugin API.")
  @Option(help: "The device plugin directory (<kubelet-dir>/device-plugins).")
  var dir: String
  @Option(help: "Device IDs to Allocate after the first ListAndWatch answer.")
  var allocate: [String] = []
  @Option var restarts: Int = 0
  @Option(help: "Seconds to wait for each registration.")
  var timeout: Double = 30

  func run() async throws {
    for round in 0...restarts {
      if round > 0 {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasSuffix(".sock") {
          unlink(dir + "/" + name)
        }
      }
      let (registrations, continuation) = AsyncStream.makeStream(of: V1beta1_RegisterRequest.self)
      let path = dir + "/kubelet.sock"
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      unlink(path)
      let transport = HTTP2ServerTransport.Posix(address: .unixDomainSocket(path: path), transportSecurity: .plaintext)
      let server = GRPCServer(transport: transport, services: [KubeletRegistration(registered: continuation)])
      try await withThrowingTaskGroup { group in
        group.addTask { try await server.serve() }
        group.addTask {
          try await Task.sleep(for: .seconds(timeout))
          throw ValidationError("no plugin registered within \(timeout) s")
        }
        var iterator = registrations.makeAsyncIterator()
        guard let request = await iterator.next() else { return }
        try emit(request)
        try await talk(to: dir + "/" + request.endpoint)
        group.cancelAll()
      }
    }
  }

  func talk(to socket: String) async throws {
    try await withGRPCClient(transport: try unixTransport(socket)) { client in
      let plugin = V1beta1_DevicePlugin.Client(wrapping: client)
      try emit(try await plugin.getDevicePluginOptions(V1beta1_Empty()))
      try await plugin.listAndWatch(V1beta1_Empty()) { response in
        for try await message in response.messages {
          try emit(message)
          break
        }
      }
      guard !allocate.isEmpty else { return }
      var preferred = V1beta1_PreferredAllocationRequest()
      var container = V1beta1_ContainerPreferredAllocationRequest()
      container.availableDeviceIds = allocate
      container.allocationSize = Int32(allocate.count)
      preferred.containerRequests = [container]
      try emit(try await plugin.getPreferredAllocation(preferred))
      var request = V1beta1_AllocateRequest()
      var ids = V1beta1_ContainerAllocateRequest()
      ids.devicesIds = allocate
      request.containerRequests = [ids]
      try emit(try await plugin.allocate(request))
    }
  }
}

struct KubeletRegistration: V1beta1_Registration.SimpleServiceProtocol {
  let registered: AsyncStream<V1beta1_RegisterRequest>.Continuation

  func register(request: V1beta1_RegisterRequest, context: ServerContext) async throws -> V1beta1_Empty {
    registered.yield(request)
    return V1beta1_Empty()
  }
}
