import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2Posix
import KubeletAPI
import Logging
import ManPageCheck
import PCI
import VFIOHost
import VFIOKubeletCommands
import VFIOManagerTestCase
import VFIOManagerTestSupport
import VFIOPolicy
import VFIOTestSupport
import XCTest

@testable import VFIOKubelet
@testable import VFIOManager

/// Slices and CDI specs from every captured tree, the DRA prepare/unprepare against the
/// simulated PCI core, and both plugins over real Unix sockets with a test kubelet.
final class KubeletPluginTests: ManagerTestCase {
  func testTheManPageNamesEveryCommandAndOption() throws {
    let page = try XCTUnwrap(Sysfs().readBytes(Fixtures.directory + "/../../docs/vfio-kubelet-plugin.1", limit: 1 << 20))
    XCTAssertEqual(manPageGaps(String(decoding: page, as: UTF8.self), KubeletPlugin.self), [], "run scripts/man")
  }

  static let fixtures = FileTree.entries(Fixtures.directory).filter(\.isDirectory).map(\.name).sorted()
  let driver = "vfio.swift-vfio.io"

  // MARK: slices and CDI specs

  func testEveryFixturePublishesOneDevicePerAssignableGroup() throws {
    XCTAssertGreaterThanOrEqual(Self.fixtures.count, 7)
    for fixture in Self.fixtures {
      let inventory = try Fixtures.inventory(fixture)
      let assessor = Assessor(inventory: inventory)
      let slices = SliceBuilder(driver: driver, nodeName: "node1").slices(DeviceCatalog(inventory: inventory))
      let devices = slices.flatMap { $0.spec.devices ?? [] }
      XCTAssertEqual(Set(slices.map(\.spec.pool.resourceSliceCount)), [slices.count], fixture)
      XCTAssertEqual(ResourceSliceRules.violations(pool: slices), [], fixture)
      let expected = inventory.groups.filter { assessor.assess(group: $0.id).verdict != .notAssignable }.map(\.id)
      XCTAssertEqual(devices.map(\.name), expected.map { "group-\($0)" }, fixture)
      for device in devices {
        let group = try XCTUnwrap(device.attributes["iommuGroup"]?.int)
        let endpoints = try XCTUnwrap(inventory.group(IOMMUGroupID(group))).devices.compactMap(inventory.device).filter(\.isEndpoint)
        // The whole group, companions included; never a bridge, never a device the host uses.
        let functions = endpoints.map(\.address.description).joined(separator: ",")
        // Up to 64 bytes (five functions) in the slice; a larger group is told by its count.
        XCTAssertEqual(device.attributes["functions"]?.string, functions.utf8.count <= 64 ? functions : nil)
        XCTAssertEqual(device.attributes["functionCount"]?.int, endpoints.count)
        XCTAssertEqual(device.attributes["resource.kubernetes.io/pciBusID"]?.string, endpoints[0].address.description)
        XCTAssertTrue(endpoints.allSatisfy { inventory.uses(of: $0.address).allSatisfy { !$0.active } }, fixture)
        if let numa = device.attributes["resource.kubernetes.io/numaNode"] {
          XCTAssertGreaterThanOrEqual(try XCTUnwrap(numa.int), 0)
        }
        XCTAssertLessThanOrEqual(device.attributes.count, 32, "the API allows 32 attributes")
        for (name, value) in device.attributes {
          XCTAssertEqual(
            [value.int != nil, value.string != nil, value.bool != nil, value.version != nil].filter { $0 }.count, 1,
            name)
          XCTAssertLessThanOrEqual(name.split(separator: "/").last?.count ?? 0, 32, name)
        }
      }
    }
  }

  func testQ35VTDSlicesNameTheBridgeGroupAsOneDevice() throws {
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-vtd"))
    XCTAssertEqual(catalog.published.map(\.name), ["group-2", "group-4", "group-5", "group-6", "group-10"])
    let bridged = try XCTUnwrap(catalog.device(named: "group-4"))
    XCTAssertEqual(bridged.busIDs, "0000:01:01.0,0000:01:02.0")
    XCTAssertEqual(bridged.pcieRoot, "pci0000:00")
    XCTAssertNil(bridged.numaNode, "the capture says -1: not published")
    let slice = try XCTUnwrap(SliceBuilder(driver: driver, nodeName: "Node_1").slices(catalog).first)
    XCTAssertEqual(slice.metadata.name, "node-1-vfio.swift-vfio.io")
    XCTAssertEqual(slice.apiVersion, "resource.k8s.io/v1")
    let devices = try XCTUnwrap(slice.spec.devices)
    XCTAssertNil(devices[1].attributes["resource.kubernetes.io/numaNode"])
    XCTAssertEqual(devices[1].attributes["resetMethod"]?.string, "bus")
    // The edu device has no reset: published only when asked for.
    XCTAssertNil(catalog.device(named: "group-3"))
    let lenient = DeviceCatalog(inventory: try Fixtures.inventory("q35-vtd"), allowNoReset: true)
    XCTAssertEqual(lenient.device(named: "group-3")?.verdict, .conditional)
  }

  func testSlicesSplitAt128Devices() {
    let many = (0..<300).map { number in
      PublishedDevice(
        group: IOMMUGroupID(number), functions: [try! PCIAddress(parsing: "0000:01:00.0")], verdict: .assignable, vendorID: 1,
        deviceID: 2, classCode: 3, resetMethod: nil, pcieRoot: nil, numaNode: nil, sriovRole: nil,
        physicalFunction: nil, onVFIO: true)
    }
    let slices = SliceBuilder(driver: driver, nodeName: "n").slices(DeviceCatalog(devices: [], published: many))
    XCTAssertEqual(slices.map { $0.spec.devices?.count }, [128, 128, 44])
    XCTAssertEqual(ResourceSliceRules.violations(pool: slices), [])
    // Tainted devices: 64 to a slice.
    let unhealthy = Dictionary(uniqueKeysWithValues: many.map { ($0.name, DeviceHealth.unhealthy(.hostDriver, "x")) })
    let tainted = SliceBuilder(driver: driver, nodeName: "n").slices(devices: many, health: unhealthy)
    XCTAssertEqual(tainted.map { $0.spec.devices?.count }, [64, 64, 64, 64, 44])
    XCTAssertEqual(ResourceSliceRules.violations(pool: tainted), [])
    XCTAssertEqual(
      slices.map(\.metadata.name), ["n-vfio.swift-vfio.io-0", "n-vfio.swift-vfio.io-1", "n-vfio.swift-vfio.io-2"])
  }

  func testCDISpecsFromEveryFixtureKeepToCDI050() throws {
    for fixture in Self.fixtures {
      let inventory = try Fixtures.inventory(fixture)
      let catalog = DeviceCatalog(inventory: inventory)
      let writer = CDIWriter(
        directory: "/unused", kind: "vfio.swift-vfio.io/pci", resourceName: driver, interface: .legacy,
        sysfs: Fixtures.sysfs(fixture))
      let spec = writer.spec(claimUID: "0c6f8f0e-1b2c-4d3e-8f90-123456789abc", devices: catalog.published)
      XCTAssertEqual(spec.cdiVersion, "0.5.0")
      for (device, published) in zip(spec.devices, catalog.published) {
        XCTAssertEqual(device.name, "0c6f8f0e-1b2c-4d3e-8f90-123456789abc-\(published.name)")
        XCTAssertEqual(
          device.containerEdits.deviceNodes?.map(\.path), ["/dev/vfio/vfio", "/dev/vfio/\(published.group)"])
        XCTAssertEqual(device.containerEdits.env, ["PCI_RESOURCE_VFIO_SWIFT-VFIO_IO=\(published.busIDs)"])
        XCTAssertEqual(spec.qualifiedName(device), "vfio.swift-vfio.io/pci=\(device.name)")
      }
      // Only the fields podman 4.3's CDI library (0.5) knows.
      let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(sortedJSON(spec).utf8)) as? [String: Any])
      XCTAssertEqual(Set(json.keys), ["cdiVersion", "kind", "devices"], fixture)
      for device in json["devices"] as? [[String: Any]] ?? [] {
        XCTAssertEqual(Set(device.keys), ["name", "containerEdits"])
        let edits = try XCTUnwrap(device["containerEdits"] as? [String: Any])
        XCTAssertEqual(Set(edits.keys), ["env", "deviceNodes"])
        for node in edits["deviceNodes"] as? [[String: Any]] ?? [] { XCTAssertEqual(Set(node.keys), ["path"]) }
      }
    }
  }

  func testIOMMUFDSpecNamesTheCdevsBesideTheLegacyNodes() throws {
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-iommufd"))
    let writer = CDIWriter(
      directory: "/unused", kind: "k/c", resourceName: "r", interface: .iommufd, sysfs: Fixtures.sysfs("q35-iommufd"))
    // KubeVirt's VEP 266: /dev/vfio/vfio, /dev/vfio/N, /dev/iommu and each function's cdev.
    for device in catalog.published {
      let nodes = writer.nodes(device)
      XCTAssertEqual(Array(nodes.prefix(2)), ["/dev/vfio/vfio", "/dev/vfio/\(device.group)"])
      if device.onVFIO {
        XCTAssertEqual(nodes.dropFirst(2).first, "/dev/iommu", "\(nodes)")
        XCTAssertEqual(nodes.filter { $0.hasPrefix("/dev/vfio/devices/vfio") }.count, device.functions.count, "\(nodes)")
      }
    }
    XCTAssertTrue(catalog.published.contains(where: \.onVFIO))
  }

  func testIOMMUFDOnAKernelWithoutCdevsAnswersLegacyOnly() throws {
    // q35-vtd is Debian's 6.1: no CONFIG_VFIO_DEVICE_CDEV, no /dev/iommu.
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-vtd"))
    let writer = CDIWriter(
      directory: "/unused", kind: "k/c", resourceName: "r", interface: .iommufd, sysfs: Fixtures.sysfs("q35-vtd"))
    for device in catalog.published {
      XCTAssertEqual(writer.nodes(device), ["/dev/vfio/vfio", "/dev/vfio/\(device.group)"])
      XCTAssertNil(writer.iommufdNodes(device))
    }
  }

  // MARK: prepare and unprepare through the assignment manager

  /// A ResourceClaim allocated `devices`; `parameters` as the DeviceClass's config (`FromClass`),
  /// or the claim's own with `source: "FromClaim"`.
  func claimJSON(_ devices: [String], parameters: String? = nil, source: String = "FromClass") -> Data {
    let results = devices.map { #"{"request":"vfio","driver":"\#(driver)","pool":"node1","device":"\#($0)"}"# }
    let config =
      parameters.map {
        #","config":[{"source":"\#(source)","requests":["vfio"],"opaque":{"driver":"\#(driver)","parameters":\#($0)}}]"#
      } ?? ""
    return Data(
      #"{"metadata":{"name":"c","uid":"u1"},"status":{"allocation":{"devices":{"results":[\#(results.joined(separator: ","))]\#(config)}}}}"#
        .utf8)
  }

  let claim = ClaimReference(namespace: "default", uid: "u1", name: "c")

  func testPrepareDetachesTheWholeGroupAndUnprepareGivesItBack() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let dra = preparer(cdi: scratch)
    let allocation = try ClaimAllocation.parse(claimJSON(["group-2"]), driver: driver, claim: "u1")
    let explained = try XCTUnwrap(Assessor(inventory: Fixtures.inventory("q35-vtd")).assess(group: 2).plan)
    let devices = try dra.prepare(claim, allocation)
    XCTAssertEqual(
      devices,
      [
        PreparedDevice(
          requestNames: ["vfio"], pool: "node1", device: "group-2", cdiDeviceIDs: ["vfio.swift-vfio.io/pci=u1-group-2"])
      ])
    // The plan explain prints, nothing else.
    XCTAssertEqual(kernel.writes.count, explained.detach.count)
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "vfio-pci")
    let specPath = scratch.path + "/cdi/swift-vfio-u1.json"
    let spec = try JSONDecoder().decode(
      CDISpec.self, from: try XCTUnwrap(FileManager.default.contents(atPath: specPath)))
    XCTAssertEqual(spec.devices.first?.containerEdits.deviceNodes?.map(\.path), ["/dev/vfio/vfio", "/dev/vfio/2"])
    XCTAssertEqual(spec.devices.first?.containerEdits.env, ["PCI_RESOURCE_VFIO_SWIFT-VFIO_IO=0000:00:02.0"])

    // Idempotent: the same answer, nothing written again.
    let writes = kernel.writes.count
    XCTAssertEqual(try dra.prepare(claim, allocation), devices)
    XCTAssertEqual(kernel.writes.count, writes)
    XCTAssertEqual(try dra.preparedClaims(), [claim])

    try dra.unprepare(claim)
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))
    XCTAssertFalse(FileManager.default.fileExists(atPath: specPath))
    let afterUnprepare = kernel.writes.count
    try dra.unprepare(claim)
    XCTAssertEqual(kernel.writes.count, afterUnprepare, "a second unprepare does nothing")
    XCTAssertEqual(try dra.preparedClaims(), [])
    XCTAssertEqual(try ledger().history(group: 2).map(\.result), ["ok", "ok"])
  }

  func testPrepareOwnsTheGroupAsTheClaimAsks() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let allocation = try ClaimAllocation.parse(
      claimJSON(["group-2"], parameters: #"{"owner":"1000:1000","mode":"0660"}"#), driver: driver, claim: "u1")
    XCTAssertEqual(allocation.ownership, Ownership(uid: 1000, gid: 1000, mode: 0o660))
    _ = try preparer(cdi: scratch).prepare(claim, allocation)
    XCTAssertEqual(try ledger().group(2)?.ownership, Ownership(uid: 1000, gid: 1000, mode: 0o660))
    XCTAssertEqual(try ledger().group(2)?.detachedBy, "dra")
  }

  func testBadClaimsAreAnsweredWithAnErrorAndNothingIsDetached() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let dra = preparer(cdi: scratch)
    let before = snapshot()
    func refused(_ json: Data, _ mentions: String, line: UInt = #line) {
      do {
        _ = try dra.prepare(claim, try ClaimAllocation.parse(json, driver: driver, claim: "u1"))
        XCTFail("prepared", line: line)
      } catch {
        XCTAssertTrue(error.description.contains(mentions), error.description, line: line)
      }
      XCTAssertEqual(kernel.writes, [], line: line)
      XCTAssertEqual(snapshot(), before, line: line)
    }
    refused(claimJSON(["group-99"]), "does not publish")
    // One good device and one bad: the good one is not detached either.
    refused(claimJSON(["group-2", "group-3"]), "group-3")
    refused(claimJSON(["group-2"], parameters: #"{"owner":"no-such-user-here"}"#), "no user")
    refused(claimJSON(["group-2"], parameters: #"{"owner":"0","mode":"0666"}"#), "other")
    refused(claimJSON(["group-2"], parameters: #"{"owners":"0"}"#), "unknown parameter 'owners'")
    refused(Data(#"{"metadata":{}}"#.utf8), "not allocated")
    refused(Data("not json".utf8), "not a ResourceClaim")
    refused(claimJSON([]), "nothing in it")
    XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.path + "/cdi/swift-vfio-u1.json"))
    XCTAssertEqual(try dra.preparedClaims(), [])
  }

  func testAGroupHeldByOneClaimIsRefusedToAnother() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let dra = preparer(cdi: scratch)
    _ = try dra.prepare(claim, try ClaimAllocation.parse(claimJSON(["group-2"]), driver: driver, claim: "u1"))
    let other = ClaimReference(namespace: "default", uid: "u2", name: "d")
    XCTAssertThrowsError(
      try dra.prepare(other, try ClaimAllocation.parse(claimJSON(["group-2"]), driver: driver, claim: "u2"))
    ) {
      XCTAssertEqual($0 as? KubeletError, .taken(claim: "u2", group: 2, by: "u1"))
    }
  }

  // MARK: device plugin answers

  func testAllocateAndPreferredAllocationKeepCardsTogether() throws {
    let core = DevicePluginCore(
      resourceName: "vfio.swift-vfio.io/pci", catalog: DeviceCatalog(inventory: try Fixtures.inventory("q35-vtd")))
    XCTAssertEqual(core.devices.map(\.id), ["2", "4", "5", "6", "10"])
    // The capture has 01:01.0, 01:02.0 and 00:05.1 on vfio-pci already.
    XCTAssertEqual(core.devices.map(\.health), ["Unhealthy", "Healthy", "Unhealthy", "Healthy", "Unhealthy"])
    // 00:05.0 and 00:05.1 are two groups of one card: asked for two, the card comes whole.
    XCTAssertEqual(core.preferred(available: ["2", "4", "5", "6", "10"], mustInclude: [], size: 2), ["5", "6"])
    XCTAssertEqual(core.preferred(available: ["2", "4", "5", "6", "10"], mustInclude: ["6"], size: 2), ["6", "5"])
    XCTAssertEqual(core.preferred(available: ["2", "4", "5", "6"], mustInclude: ["2"], size: 3), ["2", "5", "6"])
    var request = V1beta1_AllocateRequest()
    var container = V1beta1_ContainerAllocateRequest()
    container.devicesIds = ["4"]
    request.containerRequests = [container]
    let answer = try XCTUnwrap(try core.allocate(request).containerResponses.first)
    XCTAssertEqual(answer.devices.map(\.hostPath), ["/dev/vfio/vfio", "/dev/vfio/4"])
    XCTAssertEqual(answer.devices.map(\.containerPath), ["/dev/vfio/vfio", "/dev/vfio/4"])
    XCTAssertEqual(Set(answer.devices.map(\.permissions)), ["mrw"])
    XCTAssertEqual(answer.envs, ["PCI_RESOURCE_VFIO_SWIFT-VFIO_IO_PCI": "0000:01:01.0,0000:01:02.0"])
    container.devicesIds = ["3"]
    request.containerRequests = [container]
    XCTAssertThrowsError(try core.allocate(request))
  }

  // MARK: over real Unix sockets

  func testDRAPluginOverUnixSockets() async throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let claims = scratch.path + "/claims"
    try FileManager.default.createDirectory(atPath: claims, withIntermediateDirectories: true)
    try claimJSON(["group-2"]).write(to: URL(fileURLWithPath: claims + "/u1.json"))
    let paths = KubeletPaths(directory: scratch.path + "/kubelet")
    let plugin = DRAPlugin(
      driver: driver, paths: paths, preparer: preparer(cdi: scratch), claims: ClaimDirectory(path: claims),
      logger: Logger(label: "test"))
    let (listening, ready) = AsyncStream.makeStream(of: Void.self)
    let serving = Task { try await plugin.run { ready.yield() } }
    defer { serving.cancel() }
    for await _ in listening { break }

    let info = try await withGRPCClient(transport: try unix(paths.registrationSocket(driver: driver))) { client in
      try await Pluginregistration_Registration.Client(wrapping: client).getInfo(.init())
    }
    XCTAssertEqual(info.type, "DRAPlugin")
    XCTAssertEqual(info.name, driver)
    XCTAssertEqual(info.endpoint, scratch.path + "/kubelet/plugins/\(driver)/dra.sock")
    XCTAssertEqual(info.supportedVersions, ["v1.DRAPlugin", "v1beta1.DRAPlugin"])

    var claim = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim()
    claim.uid = "u1"
    claim.name = "c"
    claim.namespace = "default"
    var unknown = claim
    unknown.uid = "u9"
    var prepare = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest()
    prepare.claims = [claim, unknown]
    let prepared = try await withGRPCClient(transport: try unix(info.endpoint)) { client in
      try await K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin.Client(wrapping: client).nodePrepareResources(prepare)
    }
    XCTAssertEqual(prepared.claims["u1"]?.error, "")
    XCTAssertEqual(prepared.claims["u1"]?.devices.map(\.cdiDeviceIds), [["vfio.swift-vfio.io/pci=u1-group-2"]])
    XCTAssertTrue(prepared.claims["u9"]?.error.contains("no file") ?? false, "\(prepared)")
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "vfio-pci")

    // v1beta1 on the same socket: the same claim unprepared.
    var unprepare = K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodeUnprepareResourcesRequest()
    var old = K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_Claim()
    old.uid = "u1"
    unprepare.claims = [old]
    let unprepared = try await withGRPCClient(transport: try unix(info.endpoint)) { client in
      try await K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_DRAPlugin.Client(wrapping: client).nodeUnprepareResources(unprepare)
    }
    XCTAssertEqual(unprepared.claims["u1"]?.error, "")
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "e1000e")
  }

  func testDevicePluginRegistersListsAllocatesAndRegistersAgainAfterAKubeletRestart() async throws {
    let scratch = try TemporaryTree()
    let paths = KubeletPaths(directory: scratch.path)
    try FileManager.default.createDirectory(atPath: paths.devicePlugins, withIntermediateDirectories: true)
    let plugin = DevicePlugin(
      resourceName: "vfio.swift-vfio.io/pci", paths: paths,
      catalog: NodeCatalog(sysfs: Fixtures.sysfs("q35-vtd"), stateDirectory: scratch.path, view: .caller), pollInterval: 0.05,
      logger: Logger(label: "test"))
    var kubelet = try await TestKubelet.start(paths.kubeletSocket)
    let serving = Task { try await plugin.run() }
    defer { serving.cancel() }
    let first = try await kubelet.nextRegistration()
    XCTAssertEqual(first.version, "v1beta1")
    XCTAssertEqual(first.resourceName, "vfio.swift-vfio.io/pci")
    XCTAssertEqual(first.endpoint, "vfio.swift-vfio.io_pci.sock")
    XCTAssertTrue(first.options.getPreferredAllocationAvailable)

    try await withGRPCClient(transport: try unix(paths.devicePlugins + "/" + first.endpoint)) { client in
      let dp = V1beta1_DevicePlugin.Client(wrapping: client)
      let options = try await dp.getDevicePluginOptions(.init())
      XCTAssertTrue(options.getPreferredAllocationAvailable)
      let listed = try await dp.listAndWatch(.init()) { response in
        var first: V1beta1_ListAndWatchResponse?
        for try await message in response.messages {
          first = message
          break
        }
        return first
      }
      XCTAssertEqual(listed?.devices.map(\.id), ["2", "4", "5", "6", "10"])
      var request = V1beta1_AllocateRequest()
      var container = V1beta1_ContainerAllocateRequest()
      container.devicesIds = ["4"]
      request.containerRequests = [container]
      let allocated = try await dp.allocate(request)
      XCTAssertEqual(allocated.containerResponses.first?.devices.map(\.hostPath), ["/dev/vfio/vfio", "/dev/vfio/4"])
    }

    // A kubelet restart: every socket removed, kubelet.sock made anew.
    await kubelet.stop()
    unlink(paths.devicePlugins + "/" + first.endpoint)
    kubelet = try await TestKubelet.start(paths.kubeletSocket)
    let again = try await kubelet.nextRegistration()
    XCTAssertEqual(again.endpoint, first.endpoint)
    XCTAssertTrue(FileManager.default.fileExists(atPath: paths.devicePlugins + "/" + first.endpoint))
    await kubelet.stop()
  }

  func unix(_ path: String) throws -> HTTP2ClientTransport.Posix {
    try .http2NIOPosix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)
  }
}

/// The kubelet's Registration service on a scratch `kubelet.sock`.
struct TestKubelet {
  let task: Task<Void, any Error>
  let registered: AsyncStream<V1beta1_RegisterRequest>.Continuation
  var registrations: AsyncStream<V1beta1_RegisterRequest>.Iterator

  static func start(_ path: String) async throws -> TestKubelet {
    unlink(path)
    let (stream, continuation) = AsyncStream.makeStream(of: V1beta1_RegisterRequest.self)
    let transport = HTTP2ServerTransport.Posix(address: .unixDomainSocket(path: path), transportSecurity: .plaintext)
    let server = GRPCServer(transport: transport, services: [Service(registered: continuation)])
    let task = Task { try await server.serve() }
    _ = try await transport.listeningAddress
    return TestKubelet(task: task, registered: continuation, registrations: stream.makeAsyncIterator())
  }

  /// The plugin's next registration; a plugin that does not register fails the test in
  /// `seconds` instead of hanging it.
  mutating func nextRegistration(within seconds: Double = 30) async throws -> V1beta1_RegisterRequest {
    let timer = Task { [registered] in
      try await Task.sleep(for: .seconds(seconds))
      registered.finish()
    }
    defer { timer.cancel() }
    let next = await registrations.next()
    return try XCTUnwrap(next, "no registration within \(seconds) s")
  }

  /// Returns once the server is gone, as a kubelet that restarts is gone before the next one
  /// binds: SwiftNIO removes a Unix listener's path when it closes it, so a server still
  /// closing would take its successor's kubelet.sock with it.
  func stop() async {
    task.cancel()
    _ = await task.result
  }

  struct Service: V1beta1_Registration.SimpleServiceProtocol {
    let registered: AsyncStream<V1beta1_RegisterRequest>.Continuation
    func register(request: V1beta1_RegisterRequest, context: ServerContext) async throws -> V1beta1_Empty {
      registered.yield(request)
      return .init()
    }
  }
}

extension ManagerTestCase {
  /// The DRA plugin's preparer on the test tree: legacy CDI specs in `cdi`/cdi, metadata when given.
  func preparer(
    cdi: TemporaryTree, metadata: DeviceMetadataWriter? = nil, driver: String = "vfio.swift-vfio.io"
  ) -> ClaimPreparer {
    ClaimPreparer(
      manager: manager(),
      cdi: CDIWriter(
        directory: cdi.path + "/cdi", kind: "\(driver)/pci", resourceName: driver, interface: .legacy,
        sysfs: Sysfs(root: tree.path)),
      metadata: metadata, driver: driver)
  }
}
