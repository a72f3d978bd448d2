import Foundation
import GRPCCore
import KubeletAPI
import Synchronization

/// The devices' health as the slice controller last judged it, for the kubelet's health
/// stream (KEP-4680): every device of the pool, with a version that counts each change.
public final class HealthBoard: Sendable {
  public let pool: String
  private struct State {
    var devices: [(name: String, health: DeviceHealth)] = []
    var version = 0
    var known = false
    var closed = false
  }
  private let state = Mutex(State())

  public init(pool: String) { self.pool = pool }

  /// From the controller, after each read of the node.
  public func update(_ snapshot: NodeSnapshot) {
    let devices = snapshot.devices.map { ($0.name, snapshot.health[$0.name] ?? .unknown("not judged")) }
    state.withLock { state in
      let same =
        state.known && state.devices.count == devices.count
        && zip(state.devices, devices).allSatisfy { $0.name == $1.0 && $0.health == $1.1 }
      guard !same else { return }
      state.devices = devices
      state.version += 1
      state.known = true
    }
  }

  public var version: Int { state.withLock { $0.version } }

  /// Ends every stream (a graceful shutdown waits for the calls in flight, and a stream
  /// would otherwise never end); the kubelet treats the devices as Unknown until it is back.
  public func close() { state.withLock { $0.closed = true } }
  var isClosed: Bool { state.withLock { $0.closed } }

  /// The report the kubelet gets: every device, stamped now. Nothing until the first read.
  public func report(now: Date = Date()) -> V1_NodeWatchResourcesResponse? {
    state.withLock { state -> V1_NodeWatchResourcesResponse? in
      guard state.known else { return nil }
      var response = V1_NodeWatchResourcesResponse()
      response.devices = state.devices.map { name, health in
        var entry = V1_DeviceHealth()
        entry.device.poolName = pool
        entry.device.deviceName = name
        entry.health =
          switch health.state {
          case .healthy: .healthy
          case .unhealthy: .unhealthy
          case .unknown: .unknown
          }
        entry.lastUpdatedTime = Int64(now.timeIntervalSince1970)
        entry.healthCheckTimeoutSeconds = Int64(HealthBoard.timeout)
        entry.message = String(health.description.prefix(1024))
        return entry
      }
      return response
    }
  }

  /// How long the kubelet may trust a report; the stream sends one at least every `resend`.
  static let timeout = 30.0
  static let resend = 10.0

  /// Writes a report now, then on every change and at least every `resend` seconds, until
  /// the kubelet goes (or the plugin shuts down). Checks for a change five times a second:
  /// a counter read, nothing else.
  func stream(_ write: (V1_NodeWatchResourcesResponse) async throws -> Void) async throws {
    var sentVersion = -1
    var sentAt = Date.distantPast
    while !Task.isCancelled && !isClosed {
      let current = version
      if current != sentVersion || Date().timeIntervalSince(sentAt) >= Self.resend, let report = report() {
        try await write(report)
        sentVersion = current
        sentAt = Date()
      }
      try await Task.sleep(for: .milliseconds(200))
    }
  }
}

/// `v1.DRAResourceHealth`.
struct HealthV1Service: V1_DRAResourceHealth.SimpleServiceProtocol {
  let board: HealthBoard

  func nodeWatchResources(
    request: V1_NodeWatchResourcesRequest, response: RPCWriter<V1_NodeWatchResourcesResponse>, context: ServerContext
  ) async throws {
    try await board.stream { try await response.write($0) }
  }
}

/// `v1alpha1.DRAResourceHealth` (Kubernetes 1.34 and 1.35): the same messages, field for field.
struct HealthV1alpha1Service: V1alpha1_DRAResourceHealth.SimpleServiceProtocol {
  let board: HealthBoard

  func nodeWatchResources(
    request: V1alpha1_NodeWatchResourcesRequest, response: RPCWriter<V1alpha1_NodeWatchResourcesResponse>,
    context: ServerContext
  ) async throws {
    try await board.stream { try await response.write(try twin($0)) }
  }
}
