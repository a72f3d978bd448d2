import Foundation
import PCI
import Synchronization
import VFIOHost
import VFIOPolicy
import VFIOTestSupport
import XCTest

#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif

@testable import VFIOKubelet

/// The calls `APIServerSlices` makes, judged by an API server in memory that answers as the
/// real one documents: server-side apply (PATCH, `application/apply-patch+yaml`, a field
/// manager) creates or updates, strict decoding refuses a field the version does not have,
/// validation (`ResourceSliceRules`, read from `pkg/apis/resource/validation`) answers 422,
/// the immutable fields stay, the list honours the `spec.nodeName` and `spec.driver` field
/// selectors, a version the server does not serve is a 404. No kubelet or API server runs
/// here; the guests check the same slices as files.
final class SliceAPITests: XCTestCase {
  let driver = "vfio.swift-vfio.io"
  let node = "node-1.example.com"

  func device(_ group: Int, functions: [String]) -> PublishedDevice {
    PublishedDevice(
      group: IOMMUGroupID(group), functions: functions.map { try! PCIAddress(parsing: $0) }, verdict: .assignable,
      vendorID: 0x8086, deviceID: 0x10ca, classCode: 0x020000, resetMethod: "flr", pcieRoot: "pci0000:00", numaNode: 0,
      sriovRole: nil, physicalFunction: nil, onVFIO: true)
  }

  func publisher(_ server: SliceAPIServer) -> APIServerSlices {
    APIServerSlices(
      api: APIServer(server: URL(string: "https://10.0.0.1:6443")!, token: "t0ken", transport: server.transport),
      driver: driver, nodeName: node)
  }

  /// What an API server error `call` ended with says; a test failure (and "") when it did not
  /// fail, or failed otherwise.
  func apiServerError(_ unexpected: String, _ call: () async throws -> Void) async -> String {
    do {
      try await call()
      XCTFail(unexpected)
    } catch {
      if case .apiServer(let why) = error as? KubeletError { return why }
      XCTFail("\(error)")
    }
    return ""
  }

  func foreign(_ name: String, node: String, driver: String) -> ResourceSlice {
    var slice = SliceBuilder(driver: driver, nodeName: node).slices(devices: [device(1, functions: ["0000:01:00.0"])])[0]
    slice.metadata.name = name
    return slice
  }

  func testPublishAppliesEachSliceAndDeletesOnlyThisNodesStaleOnes() async throws {
    let server = SliceAPIServer()
    let stale = foreign("\(node)-\(driver)-9", node: node, driver: driver)
    let otherNode = foreign("node-2-\(driver)-0", node: "node-2", driver: driver)
    let otherDriver = foreign("\(node)-gpu.example.com-0", node: node, driver: "gpu.example.com")
    server.preload([stale, otherNode, otherDriver])
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-vtd"), allowNoReset: true)
    let slices = SliceBuilder(driver: driver, nodeName: node, generation: 3).slices(catalog)
    XCTAssertFalse(slices.isEmpty)

    try await publisher(server).publish(slices)

    let calls = server.calls
    let applies = calls.filter { $0.method == "PATCH" }
    XCTAssertEqual(applies.map(\.path), slices.map { "/apis/resource.k8s.io/v1/resourceslices/\($0.metadata.name)" })
    for call in applies {
      XCTAssertEqual(call.query, ["fieldManager": "swift-vfio", "force": "true"])
      XCTAssertEqual(call.contentType, "application/apply-patch+yaml")
    }
    XCTAssertTrue(calls.allSatisfy { $0.authorization == "Bearer t0ken" })
    let list = try XCTUnwrap(calls.first { $0.method == "GET" })
    XCTAssertEqual(list.query, ["fieldSelector": "spec.nodeName=\(node),spec.driver=\(driver)"])
    XCTAssertEqual(calls.filter { $0.method == "DELETE" }.map(\.path), ["/apis/resource.k8s.io/v1/resourceslices/\(stale.metadata.name)"])
    XCTAssertEqual(server.stored, Dictionary(uniqueKeysWithValues: (slices + [otherNode, otherDriver]).map { ($0.metadata.name, $0) }))
    let generation = try await publisher(server).publishedGeneration()
    XCTAssertEqual(generation, 3)
  }

  func testEveryFixtureGoesThroughBothVersionsAsTheAPIServerTakesIt() async throws {
    var pools: [(String, [ResourceSlice])] = []
    for fixture in KubeletPluginTests.fixtures {
      let catalog = DeviceCatalog(inventory: try Fixtures.inventory(fixture), allowNoReset: true)
      let builder = SliceBuilder(driver: driver, nodeName: node, generation: 2)
      pools.append((fixture, builder.slices(catalog)))
      let gone = Dictionary(uniqueKeysWithValues: catalog.published.map { ($0.name, DeviceHealth.unhealthy(.gone, "t")) })
      pools.append((fixture + " (all gone)", builder.slices(catalog, health: gone)))
    }
    // 300 groups of eight functions behind bridges, a third of them tainted: several slices,
    // and none of them with a string attribute over 64 bytes.
    let many = (0..<300).map { group in device(group, functions: (0..<8).map { String(format: "%04x:%02x:%02x.0", group / 200, group % 200 + 1, $0) }) }
    let tainted = Dictionary(uniqueKeysWithValues: many.filter { $0.group.rawValue % 3 == 0 }.map { ($0.name, DeviceHealth.unhealthy(.fatalError, "AER")) })
    pools.append(("300 groups of 8", SliceBuilder(driver: driver, nodeName: node).slices(devices: many, health: tainted)))
    XCTAssertGreaterThan(pools.last!.1.count, 3)

    for (name, slices) in pools {
      for servesV1 in [true, false] {
        let server = SliceAPIServer(servesV1: servesV1)
        let publisher = publisher(server)
        do { try await publisher.publish(slices) } catch { XCTFail("\(name), v1 \(servesV1): \(error)"); continue }
        XCTAssertEqual(server.stored, Dictionary(uniqueKeysWithValues: slices.map { ($0.metadata.name, $0) }), name)
        let version = await publisher.version
        XCTAssertEqual(version, servesV1 ? "v1" : "v1beta1", name)
      }
    }
  }

  func testAnAPIServerWithoutV1IsAskedOnceThenGetsV1beta1() async throws {
    let server = SliceAPIServer(servesV1: false)
    let publisher = publisher(server)
    let slices = SliceBuilder(driver: driver, nodeName: node).slices(
      devices: [device(1, functions: ["0000:01:00.0"]), device(2, functions: ["0000:02:00.0"])],
      health: ["group-2": .unhealthy(.hostDriver, "e1000")])
    try await publisher.publish(slices)
    try await publisher.publish(slices)
    let paths = server.calls.map { "\($0.method) \($0.path)" }
    XCTAssertEqual(paths.filter { $0.contains("/v1/") || $0.hasSuffix("/v1") }, [
      "PATCH /apis/resource.k8s.io/v1/resourceslices/\(slices[0].metadata.name)", "GET /apis/resource.k8s.io/v1",
    ])
    XCTAssertEqual(paths.filter { $0.hasPrefix("PATCH /apis/resource.k8s.io/v1beta1/") }.count, 2)
    // The taint went under basic, where v1beta1 keeps it; strict decoding saw nothing else.
    XCTAssertEqual(server.stored[slices[0].metadata.name]?.spec.devices?.last?.taints?.first?.effect, .noSchedule)
  }

  func testWhatTheServerRefusesIsAnErrorAndNothingIsDeleted() async throws {
    let server = SliceAPIServer()
    let stale = foreign("\(node)-\(driver)-9", node: node, driver: driver)
    server.preload([stale])
    var slices = SliceBuilder(driver: driver, nodeName: node).slices(devices: [device(1, functions: ["0000:01:00.0"])])
    // What the driver never sends: a string over 64 bytes, and a list (metadata only) in a slice.
    slices[0].spec.devices![0].attributes["functions"] = .string(String(repeating: "0000:01:00.0,", count: 6))
    var why = await apiServerError("a slice the API server refuses was published") { try await publisher(server).publish(slices) }
    XCTAssertTrue(why.contains("HTTP 422") && why.contains("attributes[functions]"), why)
    slices[0].spec.devices![0].attributes["functions"] = ResourceSlice.Attribute(strings: ["0000:01:00.0"])
    why = await apiServerError("an unknown field was taken") { try await publisher(server).publish(slices) }
    XCTAssertTrue(why.contains("HTTP 400") && why.contains("unknown field"), why)
    // v1 is served: a refusal is not a reason to fall back, and the stale slice stays.
    XCTAssertFalse(server.calls.contains { $0.path.contains("v1beta1") })
    XCTAssertEqual(server.calls.filter { $0.method == "DELETE" }.count, 0)
    XCTAssertEqual(Array(server.stored.keys), [stale.metadata.name])
  }

  func testAnImmutableFieldIsNotChangedBehindTheServersBack() async throws {
    let server = SliceAPIServer()
    let slices = SliceBuilder(driver: driver, nodeName: node).slices(devices: [device(1, functions: ["0000:01:00.0"])])
    var moved = slices[0]
    moved.spec.nodeName = "node-2"
    server.preload([moved])
    let why = await apiServerError("a slice moved to another node") { try await publisher(server).publish(slices) }
    XCTAssertTrue(why.contains("HTTP 422") && why.contains("field is immutable"), why)
  }

  func testAStaleSliceSomebodyElseDeletedIsWhatWasWanted() async throws {
    let server = SliceAPIServer()
    let stale = foreign("\(node)-\(driver)-9", node: node, driver: driver)
    server.preload([stale])
    server.deleteBeforeUs = [stale.metadata.name]
    let slices = SliceBuilder(driver: driver, nodeName: node).slices(devices: [device(1, functions: ["0000:01:00.0"])])
    try await publisher(server).publish(slices)
    XCTAssertEqual(Array(server.stored.keys), slices.map(\.metadata.name))
  }

  func testEveryBodyIsTheSameDocumentWithItsNamesSorted() throws {
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-sriov"), allowNoReset: true)
    let slices = SliceBuilder(driver: driver, nodeName: node).slices(
      catalog, health: ["group-5": .unhealthy(.hostDriver, "nvme")])
    for slice in slices {
      for body in [try sliceJSON(slice), try sliceJSON(V1beta1Slice(slice))] {
        // Attribute and counter names sorted: one document however Swift hashes this process.
        for device in slice.spec.devices ?? [] {
          let names = device.attributes.keys.sorted().map { "\"\($0)\"" }
          let at = names.compactMap { name in body.range(of: "\"name\": \"\(device.name)\"").flatMap { body.range(of: name, range: $0.upperBound..<body.endIndex)?.lowerBound } }
          XCTAssertEqual(at, at.sorted(), device.name)
          XCTAssertEqual(at.count, names.count)
        }
      }
      XCTAssertEqual(try JSONDecoder().decode(ResourceSlice.self, from: Data(try sliceJSON(slice).utf8)), slice)
    }
  }

  func testNamesMadeFromNodesAndAddressesAreDNSNames() {
    XCTAssertEqual(dnsLabel("sriov-0000:01:00.0"), "sriov-0000-01-00-0")
    XCTAssertEqual(dnsName("Node_1.Example.COM-vfio.swift-vfio.io"), "node-1.example.com-vfio.swift-vfio.io")
    for text in ["--Ünïcode--x--", ".a.", "", "ß", String(repeating: "Ab9.", count: 100)] {
      let label = dnsLabel(text), name = dnsName(text)
      XCTAssertTrue(label.isEmpty || ResourceSliceRules.isDNSLabel(label), "\(text) -> \(label)")
      XCTAssertTrue(name.isEmpty || ResourceSliceRules.isDNSSubdomain(name), "\(text) -> \(name)")
      XCTAssertLessThanOrEqual(label.utf8.count, 63)
      XCTAssertLessThanOrEqual(name.utf8.count, 240)
    }
  }

  func testAnUnreachableServerIsAnErrorThatNamesTheCall() async throws {
    let api = APIServer(server: URL(string: "https://10.0.0.1:6443")!, token: nil) { _ in throw URLError(.cannotConnectToHost) }
    let why = await apiServerError("no error") {
      _ = try await APIServerSlices(api: api, driver: driver, nodeName: node).publishedGeneration()
    }
    XCTAssertTrue(why.hasPrefix("GET https://10.0.0.1:6443/apis/resource.k8s.io/v1/resourceslices?fieldSelector="), why)
  }
}

/// An API server in memory for ResourceSlices, in `resource.k8s.io/v1` and `v1beta1` (or
/// `v1beta1` only, as before 1.34). It keeps what it accepted as v1 slices.
final class SliceAPIServer: Sendable {
  struct Call: Equatable, Sendable {
    let method: String
    let path: String
    let query: [String: String]
    let contentType: String?
    let authorization: String?
  }

  private struct State {
    var calls: [Call] = []
    var stored: [String: ResourceSlice] = [:]
    var deleteBeforeUs: Set<String> = []
  }

  let servesV1: Bool
  private let state = Mutex(State())

  init(servesV1: Bool = true) { self.servesV1 = servesV1 }

  var calls: [Call] { state.withLock { $0.calls } }
  var stored: [String: ResourceSlice] { state.withLock { $0.stored } }
  /// Slices another writer deletes between our list and our delete.
  var deleteBeforeUs: Set<String> {
    get { state.withLock { $0.deleteBeforeUs } }
    set { state.withLock { $0.deleteBeforeUs = newValue } }
  }

  /// With SWIFT_VFIO_SLICE_DUMP=DIR, every slice accepted is also written to DIR/VERSION/, for
  /// scripts/check-slice-schemas to validate against the published OpenAPI schema.
  static let dumpDirectory = ProcessInfo.processInfo.environment["SWIFT_VFIO_SLICE_DUMP"]

  static func keep(_ body: Data, version: String) {
    guard let dumpDirectory else { return }
    let directory = dumpDirectory + "/" + version
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    FileManager.default.createFile(atPath: directory + "/" + UUID().uuidString + ".json", contents: body)
  }

  func preload(_ slices: [ResourceSlice]) {
    state.withLock { state in for slice in slices { state.stored[slice.metadata.name] = slice } }
  }

  var transport: APIServer.Transport { { [self] request in handle(request) } }

  private func status(_ code: Int, _ reason: String, _ message: String) -> (body: Data, status: Int) {
    let body = try! JSONSerialization.data(withJSONObject: [
      "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message,
    ])
    return (body, code)
  }

  func handle(_ request: URLRequest) -> (body: Data, status: Int) {
    guard let url = request.url, let components = URLComponents(url: url, resolvingAgainstBaseURL: false) else {
      return status(400, "BadRequest", "no URL")
    }
    let method = request.httpMethod ?? "GET"
    let query = Dictionary((components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
    let call = Call(
      method: method, path: components.path, query: query, contentType: request.value(forHTTPHeaderField: "Content-Type"),
      authorization: request.value(forHTTPHeaderField: "Authorization"))
    state.withLock { $0.calls.append(call) }
    guard call.authorization == "Bearer t0ken" || call.authorization == nil else { return status(401, "Unauthorized", "") }

    let parts = components.path.split(separator: "/").map(String.init)
    guard parts.count >= 3, parts[0] == "apis", parts[1] == "resource.k8s.io" else { return status(404, "NotFound", "") }
    let version = parts[2]
    guard version == "v1beta1" || (version == "v1" && servesV1) else {
      return status(404, "NotFound", "the server could not find the requested resource")
    }
    if parts.count == 3 { return method == "GET" ? (Data("{\"kind\":\"APIResourceList\"}".utf8), 200) : status(405, "MethodNotAllowed", "") }
    guard parts[3] == "resourceslices", parts.count <= 5 else { return status(404, "NotFound", "") }
    let name = parts.count == 5 ? parts[4] : nil
    switch (method, name) {
    case ("GET", nil): return list(version: version, fieldSelector: query["fieldSelector"])
    case ("PATCH", let name?): return apply(name: name, version: version, call: call, body: request.httpBody ?? Data())
    case ("DELETE", let name?):
      return state.withLock { state in
        if state.deleteBeforeUs.remove(name) != nil { state.stored[name] = nil }
        guard state.stored.removeValue(forKey: name) != nil else {
          return status(404, "NotFound", "resourceslices \"\(name)\" not found")
        }
        return (Data("{\"kind\":\"Status\",\"status\":\"Success\"}".utf8), 200)
      }
    default: return status(405, "MethodNotAllowed", "\(method) \(components.path)")
    }
  }

  /// ResourceSlices are selectable by `spec.nodeName` and `spec.driver` (and every object by
  /// `metadata.name`); any other field is a 400.
  private func list(version: String, fieldSelector: String?) -> (body: Data, status: Int) {
    var wanted: [String: String] = [:]
    for term in (fieldSelector ?? "").split(separator: ",") {
      let pair = term.split(separator: "=", maxSplits: 1).map(String.init)
      guard pair.count == 2, ["spec.nodeName", "spec.driver", "metadata.name"].contains(pair[0]) else {
        return status(400, "BadRequest", "field label not supported: \(term)")
      }
      wanted[pair[0]] = pair[1]
    }
    let items = stored.values.filter { slice in
      wanted.allSatisfy { key, value in
        switch key {
        case "spec.nodeName": slice.spec.nodeName == value
        case "spec.driver": slice.spec.driver == value
        default: slice.metadata.name == value
        }
      }
    }.sorted { $0.metadata.name < $1.metadata.name }
    let encoded = items.map { (try? version == "v1" ? sliceJSON($0) : sliceJSON(V1beta1Slice($0))) ?? "{}" }
    let body = "{\"apiVersion\":\"resource.k8s.io/\(version)\",\"kind\":\"ResourceSliceList\",\"items\":[\(encoded.joined(separator: ","))]}"
    return (Data(body.utf8), 200)
  }

  private func apply(name: String, version: String, call: Call, body: Data) -> (body: Data, status: Int) {
    guard call.contentType == "application/apply-patch+yaml" else {
      return status(415, "UnsupportedMediaType", "the body of the request was in an unknown format")
    }
    guard let manager = call.query["fieldManager"], !manager.isEmpty else {
      return status(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
    }
    guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
      return status(400, "BadRequest", "error decoding YAML")
    }
    guard object["apiVersion"] as? String == "resource.k8s.io/\(version)", object["kind"] as? String == "ResourceSlice" else {
      return status(400, "BadRequest", "apiVersion and kind must be resource.k8s.io/\(version), ResourceSlice")
    }
    guard (object["metadata"] as? [String: Any])?["name"] as? String == name else {
      return status(400, "BadRequest", "the name of the object does not match the name on the URL")
    }
    let unknown = SliceSchema.unknownFields(object, version == "v1" ? SliceSchema.v1 : SliceSchema.v1beta1)
    guard unknown.isEmpty else {
      return status(400, "BadRequest", "strict decoding error: " + unknown.map { "unknown field \"\($0)\"" }.joined(separator: ", "))
    }
    // v1beta1 keeps a device's fields under basic: lift them to v1's place.
    var lifted = object
    lifted["apiVersion"] = "resource.k8s.io/v1"
    if version == "v1beta1", var spec = object["spec"] as? [String: Any], let devices = spec["devices"] as? [[String: Any]] {
      spec["devices"] = devices.map { device in (device["basic"] as? [String: Any] ?? [:]).merging(["name": device["name"] ?? ""]) { $1 } }
      lifted["spec"] = spec
    }
    guard let data = try? JSONSerialization.data(withJSONObject: lifted),
      let slice = try? JSONDecoder().decode(ResourceSlice.self, from: data)
    else { return status(400, "BadRequest", "not a ResourceSlice") }
    let violations = ResourceSliceRules.violations(slice)
    guard violations.isEmpty else {
      return status(422, "Invalid", "ResourceSlice.resource.k8s.io \"\(name)\" is invalid: " + violations.map(\.description).joined(separator: "; "))
    }
    return state.withLock { state in
      if let old = state.stored[name] {
        for (field, same) in [
          ("spec.driver", old.spec.driver == slice.spec.driver), ("spec.nodeName", old.spec.nodeName == slice.spec.nodeName),
          ("spec.pool.name", old.spec.pool.name == slice.spec.pool.name),
        ] where !same {
          return status(422, "Invalid", "ResourceSlice.resource.k8s.io \"\(name)\" is invalid: \(field): Invalid value: field is immutable")
        }
      }
      let created = state.stored[name] == nil
      state.stored[name] = slice
      Self.keep(body, version: version)
      return (body, created ? 201 : 200)
    }
  }
}

/// The fields of the ResourceSlice types the driver may send (the published OpenAPI of
/// `resource.k8s.io` v1 and v1beta1, as far as a node-local pool goes): strict decoding
/// refuses any other.
enum SliceSchema {
  indirect enum Field: Sendable {
    case scalar
    case object([String: Field])
    case map(Field)
    case list(Field)
  }

  static let attribute = Field.object(["int": .scalar, "bool": .scalar, "string": .scalar, "version": .scalar])
  static let counters = Field.map(.object(["value": .scalar]))
  static let taint = Field.object(["key": .scalar, "value": .scalar, "effect": .scalar, "timeAdded": .scalar])
  static let deviceFields: [String: Field] = [
    "attributes": .map(attribute), "capacity": .map(.object(["value": .scalar, "requestPolicy": .scalar])),
    "consumesCounters": .list(.object(["counterSet": .scalar, "counters": counters])), "taints": .list(taint),
    "nodeName": .scalar, "nodeSelector": .scalar, "allNodes": .scalar, "bindsToNode": .scalar,
    "bindingConditions": .list(.scalar), "bindingFailureConditions": .list(.scalar), "allowMultipleAllocations": .scalar,
  ]

  static func slice(device: Field) -> Field {
    .object([
      "apiVersion": .scalar, "kind": .scalar,
      "metadata": .object(["name": .scalar, "labels": .map(.scalar), "annotations": .map(.scalar), "ownerReferences": .scalar]),
      "spec": .object([
        "driver": .scalar, "nodeName": .scalar, "nodeSelector": .scalar, "allNodes": .scalar,
        "perDeviceNodeSelection": .scalar,
        "pool": .object(["name": .scalar, "generation": .scalar, "resourceSliceCount": .scalar]),
        "devices": .list(device), "sharedCounters": .list(.object(["name": .scalar, "counters": counters])),
      ]),
    ])
  }

  static let v1 = slice(device: .object(deviceFields.merging(["name": .scalar]) { $1 }))
  static let v1beta1 = slice(device: .object(["name": .scalar, "basic": .object(deviceFields)]))

  /// The paths of the fields `value` has that `field` does not.
  static func unknownFields(_ value: Any, _ field: Field, at path: String = "") -> [String] {
    switch field {
    case .scalar: return []
    case .object(let fields):
      guard let object = value as? [String: Any] else { return [path] }
      return object.keys.sorted().flatMap { key in
        let inner = path.isEmpty ? key : path + "." + key
        guard let known = fields[key] else { return [inner] }
        return unknownFields(object[key]!, known, at: inner)
      }
    case .map(let inner):
      guard let object = value as? [String: Any] else { return [path] }
      return object.keys.sorted().flatMap { unknownFields(object[$0]!, inner, at: path + "[" + $0 + "]") }
    case .list(let inner):
      guard let list = value as? [Any] else { return [path] }
      return list.enumerated().flatMap { unknownFields($1, inner, at: path + "[\($0)]") }
    }
  }
}
