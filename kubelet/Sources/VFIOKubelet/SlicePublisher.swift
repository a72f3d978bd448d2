import Foundation
import JSONStream

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

/// Where a node's ResourceSlices go. `publish` makes the pool exactly the slices given:
/// each created or updated, every other slice of this driver on this node deleted.
public protocol SlicePublisher: Sendable {
  /// The highest pool generation published now (0: none), so a restarted plugin goes on
  /// counting up and the scheduler never takes its slices for older ones.
  func publishedGeneration() async throws(KubeletError) -> Int
  func publish(_ slices: [ResourceSlice]) async throws(KubeletError)
}

/// Slices as files `<name>.json` in a directory: for nodes run without an API server, and
/// for the tests, which watch the directory as the scheduler would watch the API.
public struct SliceDirectory: SlicePublisher {
  public let path: String
  public init(path: String) { self.path = path }

  public func publishedGeneration() async throws(KubeletError) -> Int {
    current().map(\.spec.pool.generation).max() ?? 0
  }

  public func publish(_ slices: [ResourceSlice]) async throws(KubeletError) {
    let keep = Set(slices.map { $0.metadata.name + ".json" })
    for slice in slices {
      try writeAtomically(try sliceJSON(slice), to: path + "/" + slice.metadata.name + ".json") {
        .apiServer("slice file \($0): \($1)")
      }
    }
    for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
    where name.hasSuffix(".json") && !keep.contains(name) {
      try removeIfPresent(path + "/" + name) { .apiServer("slice file \($0): \($1)") }
    }
  }

  func current() -> [ResourceSlice] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".json") }.compactMap {
      FileManager.default.contents(atPath: path + "/" + $0).flatMap { try? JSONDecoder().decode(ResourceSlice.self, from: $0) }
    }
  }
}

/// Slices through the API server: server-side apply of each, then a delete of the node's
/// other slices of this driver (listed by field selector). `resource.k8s.io/v1` first; an API
/// server that does not serve it (before 1.34) gets `v1beta1`, whose devices nest under `basic`.
public actor APIServerSlices: SlicePublisher {
  public let api: APIServer
  public let driver: String
  public let nodeName: String
  /// The version that answered last; v1 until the API server says it has none.
  public private(set) var version = "v1"

  public init(api: APIServer, driver: String, nodeName: String) {
    self.api = api
    self.driver = driver
    self.nodeName = nodeName
  }

  var collection: String { "/apis/resource.k8s.io/\(version)/resourceslices" }

  public func publishedGeneration() async throws(KubeletError) -> Int {
    try await existing().map(\.generation).max() ?? 0
  }

  public func publish(_ slices: [ResourceSlice]) async throws(KubeletError) {
    for slice in slices { try await apply(slice) }
    let keep = Set(slices.map(\.metadata.name))
    for stale in try await existing() where !keep.contains(stale.name) {
      do { _ = try await api.send(api.request(collection + "/" + stale.name, method: "DELETE")) } catch {
        // Gone already (another writer, the kubelet's wipe): what was wanted.
        guard case .apiServer(let why) = error, why.contains("HTTP 404") else { throw error }
      }
    }
  }

  /// The server-side apply of one slice in the version in use.
  public func applyRequest(_ slice: ResourceSlice) throws(KubeletError) -> URLRequest {
    let body = version == "v1" ? try sliceJSON(slice) : try sliceJSON(V1beta1Slice(slice))
    var request = api.request(
      collection + "/" + slice.metadata.name, method: "PATCH", body: Data(body.utf8),
      contentType: "application/apply-patch+yaml")
    request.url = request.url.flatMap { url in
      var components = URLComponents(url: url, resolvingAgainstBaseURL: false)
      components?.queryItems = [
        URLQueryItem(name: "fieldManager", value: "swift-vfio"), URLQueryItem(name: "force", value: "true"),
      ]
      return components?.url
    }
    return request
  }

  /// Applies one slice, and falls back to v1beta1 once when the API server has no v1 of the
  /// group (a 404 for the slice, and for the group version itself).
  private func apply(_ slice: ResourceSlice) async throws(KubeletError) {
    do { _ = try await api.send(try applyRequest(slice)) } catch {
      guard version == "v1", case .apiServer(let why) = error, why.contains("HTTP 404"),
        (try? await api.send(api.request("/apis/resource.k8s.io/v1"))) == nil
      else { throw error }
      version = "v1beta1"
      _ = try await api.send(try applyRequest(slice))
    }
  }

  struct Listed: Decodable {
    struct Item: Decodable {
      struct Meta: Decodable { let name: String }
      struct Spec: Decodable {
        struct Pool: Decodable { let generation: Int? }
        let pool: Pool?
      }
      let metadata: Meta
      let spec: Spec?
    }
    let items: [Item]?
  }

  func existing() async throws(KubeletError) -> [(name: String, generation: Int)] {
    var components = URLComponents()
    components.path = collection
    components.queryItems = [URLQueryItem(name: "fieldSelector", value: "spec.nodeName=\(nodeName),spec.driver=\(driver)")]
    var request = api.request(collection)
    request.url = components.url(relativeTo: api.server)?.absoluteURL
    let data = try await api.send(request)
    guard let listed = try? JSONDecoder().decode(Listed.self, from: data) else {
      throw .apiServer("GET \(collection): not a ResourceSliceList")
    }
    return (listed.items ?? []).map { ($0.metadata.name, $0.spec?.pool?.generation ?? 0) }
  }
}

/// A slice as `resource.k8s.io/v1beta1` has it: each device's fields under `basic`.
struct V1beta1Slice: Encodable {
  let apiVersion = "resource.k8s.io/v1beta1"
  let kind = "ResourceSlice"
  let metadata: ResourceSlice.Metadata
  let spec: Spec

  struct Spec: Encodable {
    let driver: String
    let nodeName: String
    let pool: ResourceSlice.Pool
    let devices: [Device]?
    let sharedCounters: [ResourceSlice.CounterSet]?
  }

  struct Device: Encodable {
    let name: String
    let basic: Basic
  }

  struct Basic: Encodable {
    let attributes: [String: ResourceSlice.Attribute]
    let consumesCounters: [ResourceSlice.CounterConsumption]?
    let taints: [ResourceSlice.Taint]?

    enum CodingKeys: String, CodingKey { case attributes, consumesCounters, taints }

    func encode(to encoder: any Encoder) throws {
      var container = encoder.container(keyedBy: CodingKeys.self)
      try container.encodeSorted(attributes, forKey: .attributes)
      try container.encodeIfPresent(consumesCounters, forKey: .consumesCounters)
      try container.encodeIfPresent(taints, forKey: .taints)
    }
  }

  init(_ slice: ResourceSlice) {
    metadata = slice.metadata
    spec = Spec(
      driver: slice.spec.driver, nodeName: slice.spec.nodeName, pool: slice.spec.pool,
      devices: slice.spec.devices?.map {
        Device(
          name: $0.name, basic: Basic(attributes: $0.attributes, consumesCounters: $0.consumesCounters, taints: $0.taints))
      }, sharedCounters: slice.spec.sharedCounters)
  }
}
