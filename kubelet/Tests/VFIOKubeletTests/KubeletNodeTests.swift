import Foundation
import GRPCCore
import KubeletAPI
import Logging
import PCI
import Synchronization
import VFIOHost
import VFIOManagerTestCase
import VFIOManagerTestSupport
import VFIOPolicy
import VFIOTestSupport
import XCTest

@testable import VFIOKubelet
@testable import VFIOManager

/// What the node tells the cluster beyond the devices themselves: the API server's rules on
/// every slice, SR-IOV counters, taints and the health stream, the claims' device metadata,
/// the controller that republishes, and the gate that lets claims run side by side.
final class KubeletNodeTests: ManagerTestCase {
  let driver = "vfio.swift-vfio.io"
  static let fixtures = KubeletPluginTests.fixtures

  func device(_ group: Int, functions: [String], role: String? = nil, pf: String? = nil) -> PublishedDevice {
    PublishedDevice(
      group: IOMMUGroupID(group), functions: functions.map { try! PCIAddress(parsing: $0) }, verdict: .assignable,
      vendorID: 0x8086, deviceID: 0x10ca, classCode: 0x020000, resetMethod: "flr", pcieRoot: "pci0000:00", numaNode: 0,
      sriovRole: role, physicalFunction: pf.map { try! PCIAddress(parsing: $0) }, onVFIO: true)
  }

  // MARK: the API server's rules

  func testEverySliceOfEveryFixtureKeepsToTheAPIServersRules() throws {
    for fixture in Self.fixtures {
      for catalog in [
        DeviceCatalog(inventory: try Fixtures.inventory(fixture)),
        DeviceCatalog(inventory: try Fixtures.inventory(fixture), allowNoReset: true),
      ] {
        let builder = SliceBuilder(driver: driver, nodeName: "node-1.example.com", generation: 7)
        XCTAssertEqual(ResourceSliceRules.violations(pool: builder.slices(catalog)), [], fixture)
        // The same with every device tainted, and with every device gone (NoExecute).
        for problem in [DeviceHealth.Problem.hostDriver, .gone] {
          let health = Dictionary(uniqueKeysWithValues: catalog.published.map { ($0.name, DeviceHealth.unhealthy(problem, "t")) })
          XCTAssertEqual(ResourceSliceRules.violations(pool: builder.slices(catalog, health: health)), [], fixture)
        }
      }
    }
  }

  func testAGroupOfManyFunctionsStaysPublishable() {
    // A bus behind a PCIe-to-PCI bridge: eight functions, 103 bytes joined.
    let big = device(7, functions: (0..<8).map { "0000:05:0\($0).0" })
    XCTAssertGreaterThan(big.busIDs.utf8.count, 64)
    let slices = SliceBuilder(driver: driver, nodeName: "n").slices(devices: [big])
    XCTAssertEqual(ResourceSliceRules.violations(pool: slices), [])
    let published = try! XCTUnwrap(slices.first?.spec.devices?.first)
    XCTAssertNil(published.attributes["functions"])
    XCTAssertEqual(published.attributes["functionCount"]?.int, 8)
    // What the slice used to carry is refused, as the API server refuses it.
    var old = slices[0]
    old.spec.devices![0].attributes["functions"] = .string(big.busIDs)
    XCTAssertEqual(ResourceSliceRules.violations(old).map(\.field), ["spec.devices[0].attributes[functions].string"])
  }

  func testTheRulesRefuseWhatTheAPIServerRefuses() {
    let good = SliceBuilder(driver: driver, nodeName: "n").slices(devices: [device(1, functions: ["0000:01:00.0"])])[0]
    func broken(_ change: (inout ResourceSlice) -> Void) -> [String] {
      var slice = good
      change(&slice)
      return ResourceSliceRules.violations(slice).map(\.field)
    }
    XCTAssertEqual(ResourceSliceRules.violations(good), [])
    XCTAssertEqual(broken { $0.spec.devices![0].name = "0000:01:00.0" }, ["spec.devices[0].name"])
    XCTAssertEqual(broken { $0.spec.devices![0].attributes["aVeryLongAttributeNameOfMoreThan32"] = .int(1) }.count, 1)
    XCTAssertEqual(broken { $0.spec.devices![0].attributes["two/slashes/x"] = .int(1) }.count, 1)
    XCTAssertEqual(broken { $0.spec.devices![0].attributes["x"] = ResourceSlice.Attribute(int: 1, bool: true) }.count, 1)
    XCTAssertEqual(broken { $0.spec.devices![0].attributes["x"] = ResourceSlice.Attribute(strings: ["a"]) }.count, 1)
    XCTAssertEqual(broken { $0.spec.devices![0].attributes["v"] = ResourceSlice.Attribute(version: "1.02.3") }.count, 1)
    XCTAssertEqual(broken { $0.metadata.name = "Upper" }, ["metadata.name"])
    XCTAssertEqual(broken { $0.spec.driver = String(repeating: "d", count: 64) }, ["spec.driver"])
    XCTAssertEqual(broken { $0.spec.pool.resourceSliceCount = 0 }, ["spec.pool.resourceSliceCount"])
    XCTAssertEqual(broken { $0.spec.sharedCounters = [] }, ["spec"])
    XCTAssertEqual(
      broken { $0.spec.devices![0].taints = [.init(key: "bad key", value: nil, effect: .noSchedule)] },
      ["spec.devices[0].taints[0].key"])
    XCTAssertEqual(
      broken { $0.spec.devices![0].taints = Array(repeating: .init(key: "k", value: "v", effect: .noSchedule), count: 17) },
      ["spec.devices[0].taints"])
    XCTAssertEqual(
      broken { slice in
        slice.spec.devices = (0..<65).map { number in
          var copy = slice.spec.devices![0]
          copy.name = "group-\(number)"
          copy.taints = [.init(key: "k", value: nil, effect: .noSchedule)]
          return copy
        }
      }, ["spec.devices"])
    XCTAssertEqual(
      broken { $0.spec.devices![0].attributes = Dictionary(uniqueKeysWithValues: (0..<33).map { ("a\($0)", .int($0)) }) },
      ["spec.devices[0].attributes"])
    // A draw on a counter set the pool does not define.
    var drawing = good
    drawing.spec.devices![0].consumesCounters = [.init(counterSet: "sriov-x", counters: ["functions": .init(value: "1")])]
    XCTAssertEqual(ResourceSliceRules.violations(pool: [drawing]).count, 1)
  }

  // MARK: SR-IOV

  func testAPFAndItsVFsDrawOnOneCounterSet() throws {
    let pf = device(10, functions: ["0000:03:00.0"], role: "pf")
    let vfs = (1...3).map { device(10 + $0, functions: ["0000:03:00.\($0)"], role: "vf", pf: "0000:03:00.0") }
    let slices = SliceBuilder(driver: driver, nodeName: "n").slices(devices: [pf] + vfs)
    XCTAssertEqual(ResourceSliceRules.violations(pool: slices), [])
    // Since 1.35 the counters are a slice of their own in the pool.
    XCTAssertEqual(slices.map(\.metadata.name), ["n-vfio.swift-vfio.io-0", "n-vfio.swift-vfio.io-counters"])
    XCTAssertEqual(Set(slices.map(\.spec.pool.resourceSliceCount)), [2])
    let set = try XCTUnwrap(slices[1].spec.sharedCounters?.first)
    XCTAssertEqual(set.name, "sriov-0000-03-00-0")
    XCTAssertEqual(set.counters["functions"]?.value, "3")
    let draws = try XCTUnwrap(slices[0].spec.devices).map { $0.consumesCounters?.first?.counters["functions"]?.value }
    // The PF draws all three: with it allocated no VF fits, and with one VF the PF does not.
    XCTAssertEqual(draws, ["3", "1", "1", "1"])
    // A VF whose PF stays with the host has nothing to share.
    let alone = SliceBuilder(driver: driver, nodeName: "n").slices(devices: vfs)
    XCTAssertEqual(alone.count, 1)
    XCTAssertNil(alone[0].spec.devices?.first?.consumesCounters)
  }

  func testTheSRIOVFixturePublishesCountersWhenBothSidesArePublished() throws {
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-sriov"), allowNoReset: true)
    let slices = SliceBuilder(driver: driver, nodeName: "n").slices(catalog)
    XCTAssertEqual(ResourceSliceRules.violations(pool: slices), [])
    let roles = catalog.published.compactMap(\.sriovRole)
    let counted = slices.contains { $0.spec.sharedCounters != nil }
    XCTAssertEqual(counted, roles.contains("pf") && roles.contains("vf"), "\(roles)")
  }

  func testV1beta1NestsEachDeviceUnderBasic() throws {
    let slice = SliceBuilder(driver: driver, nodeName: "n").slices(
      devices: [device(1, functions: ["0000:01:00.0"])], health: ["group-1": .unhealthy(.fatalError, "x")])[0]
    let json = try XCTUnwrap(
      try JSONSerialization.jsonObject(with: Data(try sliceJSON(V1beta1Slice(slice)).utf8)) as? [String: Any])
    XCTAssertEqual(json["apiVersion"] as? String, "resource.k8s.io/v1beta1")
    let device = try XCTUnwrap(((json["spec"] as? [String: Any])?["devices"] as? [[String: Any]])?.first)
    XCTAssertEqual(Set(device.keys), ["name", "basic"])
    let basic = try XCTUnwrap(device["basic"] as? [String: Any])
    XCTAssertNotNil(basic["attributes"])
    XCTAssertEqual((basic["taints"] as? [[String: Any]])?.first?["effect"] as? String, "NoSchedule")
  }

  // MARK: CDI and device metadata

  func testCDINodesAreOwnedAsTheDeviceClassSaysButTheContainerNodeStaysEveryones() throws {
    let catalog = DeviceCatalog(inventory: try Fixtures.inventory("q35-iommufd"))
    let writer = CDIWriter(
      directory: "/unused", kind: "k/c", resourceName: "r", interface: .iommufd, sysfs: Fixtures.sysfs("q35-iommufd"))
    let onVFIO = try XCTUnwrap(catalog.published.first(where: \.onVFIO))
    let spec = writer.spec(claimUID: "u", devices: [onVFIO], owner: Ownership(uid: 107, gid: 107))
    let nodes = try XCTUnwrap(spec.devices.first?.containerEdits.deviceNodes)
    for node in nodes {
      XCTAssertEqual(node.uid, node.path == "/dev/vfio/vfio" ? nil : 107, node.path)
      XCTAssertEqual(node.gid, node.path == "/dev/vfio/vfio" ? nil : 107, node.path)
    }
    XCTAssertTrue(nodes.contains { $0.path == "/dev/iommu" })
    // Without an owner the nodes say nothing of one: the runtime copies the host's.
    XCTAssertTrue(writer.spec(claimUID: "u", devices: [onVFIO]).devices[0].containerEdits.deviceNodes!.allSatisfy { $0.uid == nil })
  }

  func testDeviceMetadataOfEveryFixtureForBothBackends() throws {
    let scratch = try TemporaryTree()
    let writer = DeviceMetadataWriter(driver: driver, pluginDirectory: scratch.path + "/plugin", cdiDirectory: scratch.path + "/cdi")
    let claim = ClaimReference(namespace: "vms", uid: "0c6f8f0e-1b2c-4d3e-8f90-123456789abc", name: "vm1-gpu")
    for fixture in Self.fixtures {
      let catalog = DeviceCatalog(inventory: try Fixtures.inventory(fixture), allowNoReset: true)
      for interface in VFIOInterface.allCases {
        let cdi = CDIWriter(directory: "/unused", kind: "k/c", resourceName: "r", interface: interface, sysfs: Fixtures.sysfs(fixture))
        for published in catalog.published {
          let cdevs =
            interface == .iommufd ? (cdi.iommufdNodes(published) ?? []).filter { $0.hasPrefix("/dev/vfio/devices/") } : []
          let attributes = DeviceMetadataWriter.attributes(
            published, sliceAttributes: SliceBuilder.attributes(published), cdevs: cdevs.map { String($0.split(separator: "/").last!) })
          let id = try writer.write(
            claim, podClaimName: "gpu", request: "vm-gpu",
            devices: [.init(driver: driver, pool: "node1", name: published.name, attributes: attributes)])
          XCTAssertEqual(id, "vfio.swift-vfio.io/metadata=0c6f8f0e-1b2c-4d3e-8f90-123456789abc_vm-gpu")
          // A stream: v1beta1 first, then v1alpha1 (what KubeVirt 1.8 reads), one per line.
          let text = try String(contentsOfFile: writer.hostPath(claim, request: "vm-gpu"), encoding: .utf8)
          let lines = text.split(separator: "\n")
          XCTAssertEqual(lines.count, 2)
          let documents = try lines.map { try JSONDecoder().decode(DeviceMetadata.self, from: Data($0.utf8)) }
          XCTAssertEqual(documents.map(\.apiVersion), DeviceMetadata.versions)
          let entry = try XCTUnwrap(documents[0].requests.first?.devices.first)
          XCTAssertEqual(documents[0].metadata.uid, claim.uid)
          XCTAssertEqual(documents[0].podClaimName, "gpu")
          XCTAssertEqual(entry.attributes["resource.kubernetes.io/pciBusID"]?.string, published.functions[0].description)
          XCTAssertEqual(entry.attributes["iommuGroup"]?.int, published.group.rawValue)
          XCTAssertEqual(entry.attributes["functions"]?.strings, published.functions.map(\.description))
          XCTAssertEqual(entry.attributes["vfioDevices"]?.strings?.count ?? 0, interface == .iommufd ? cdevs.count : 0, fixture)
          if interface == .iommufd && fixture == "q35-iommufd" && published.onVFIO {
            XCTAssertEqual(entry.attributes["vfioDevices"]?.strings?.count, published.functions.count)
          }
          // The mount KubeVirt's virt-launcher reads, for a claim made from a template.
          let spec = try JSONDecoder().decode(
            CDISpec.self, from: try XCTUnwrap(FileManager.default.contents(atPath: writer.cdiPath(claim, request: "vm-gpu"))))
          XCTAssertEqual(spec.kind, "vfio.swift-vfio.io/metadata")
          XCTAssertEqual(
            spec.devices.first?.containerEdits.mounts?.first?.containerPath,
            "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpu/vm-gpu/vfio.swift-vfio.io-metadata.json")
          XCTAssertEqual(spec.devices.first?.containerEdits.mounts?.first?.options, ["ro", "bind"])
          try writer.remove(claim)
          XCTAssertFalse(FileManager.default.fileExists(atPath: writer.claimDirectory(claim)))
          XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: scratch.path + "/cdi"), [])
        }
      }
    }
    // A claim named directly is mounted under resourceclaims/<name>.
    XCTAssertEqual(
      writer.containerPath(claim, podClaimName: nil, request: "r"),
      "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/vm1-gpu/r/vfio.swift-vfio.io-metadata.json")
    // A name that is not Kubernetes' never becomes a path.
    XCTAssertThrowsError(
      try writer.write(ClaimReference(namespace: "..", uid: "u", name: "x"), podClaimName: nil, request: "r", devices: []))
    XCTAssertThrowsError(try writer.write(claim, podClaimName: nil, request: "../../etc", devices: []))
  }

  func testPrepareWritesTheMetadataAndUnprepareRemovesIt() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let metadata = DeviceMetadataWriter(
      driver: driver, pluginDirectory: scratch.path + "/plugin", cdiDirectory: scratch.path + "/cdi")
    let dra = preparer(cdi: scratch, metadata: metadata)
    let claim = ClaimReference(namespace: "default", uid: "u1", name: "c")
    let json = #"{"metadata":{"name":"c","uid":"u1"},"status":{"allocation":{"devices":{"results":[{"request":"nic","driver":"\#(driver)","pool":"node1","device":"group-2"}]}}}}"#
    let devices = try dra.prepare(claim, try ClaimAllocation.parse(Data(json.utf8), driver: driver, claim: "u1"))
    XCTAssertEqual(
      devices.first?.cdiDeviceIDs, ["vfio.swift-vfio.io/pci=u1-group-2", "vfio.swift-vfio.io/metadata=u1_nic"])
    let text = try String(contentsOfFile: metadata.hostPath(claim, request: "nic"), encoding: .utf8)
    XCTAssertTrue(text.contains(#""resource.kubernetes.io/pciBusID":{"string":"0000:00:02.0"}"#), text)
    try dra.unprepare(claim)
    XCTAssertFalse(FileManager.default.fileExists(atPath: metadata.claimDirectory(claim)))
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: scratch.path + "/cdi"), [])
  }

  // MARK: health

  func testHealthFollowsTheHostAndTheLedger() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let reader = NodeReader(preparer: preparer(cdi: scratch))
    func health() throws -> DeviceHealth? { try reader.read().health["group-2"] }
    XCTAssertEqual(try health(), .healthy)
    _ = try manager().groups.detach(.group(2))
    XCTAssertEqual(try health(), .healthy, "on vfio-pci as the ledger says")
    // Rebound to its host driver behind the ledger's back.
    let link = tree.path + "/sys/bus/pci/devices/0000:00:02.0/driver"
    let vfio = try FileManager.default.destinationOfSymbolicLink(atPath: link)
    try FileManager.default.removeItem(atPath: link)
    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: vfio.replacingOccurrences(of: "vfio-pci", with: "e1000e"))
    XCTAssertEqual(try health()?.problem, .hostDriver)
    let tainted = SliceBuilder(driver: driver, nodeName: "n").slices(devices: try reader.read().devices, health: try reader.read().health)
    let taint = try XCTUnwrap(tainted.flatMap { $0.spec.devices ?? [] }.first { $0.name == "group-2" }?.taints?.first)
    XCTAssertEqual(taint, .init(key: "vfio.swift-vfio.io/unhealthy", value: "BoundToHostDriver", effect: .noSchedule))
    try FileManager.default.removeItem(atPath: link)
    try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: vfio)
    XCTAssertEqual(try health(), .healthy, "back on vfio-pci: the taint goes")
    // A fatal AER error counts from the first look since the detach.
    let aer = tree.path + "/sys/bus/pci/devices/0000:00:02.0/aer_dev_fatal"
    try "Undefined 0\nTOTAL_ERR_FATAL 0\n".write(toFile: aer, atomically: true, encoding: .utf8)
    XCTAssertEqual(try health(), .healthy)
    try "Undefined 0\nTOTAL_ERR_FATAL 1\n".write(toFile: aer, atomically: true, encoding: .utf8)
    XCTAssertEqual(try health()?.problem, .fatalError)
  }

  func testASingleLookReadsNoAERCountAndDoesNotLookUpWhatTheCatalogJustRead() throws {
    let devices = DeviceCatalog(inventory: try Fixtures.inventory("q35-vtd")).published
    let functions = devices.flatMap(\.functions)
    XCTAssertFalse(functions.isEmpty)
    for tracking in [true, false] {
      let recorder = AccessRecorder()
      let judge = HealthJudge(
        sysfs: Sysfs(root: Fixtures.root("q35-vtd"), recorder: recorder), stateDirectory: "/nonexistent",
        tracksFatalErrors: tracking)
      XCTAssertTrue(judge.judge(devices, ledger: [:]).values.allSatisfy { $0 == .healthy })
      let paths = recorder.accesses.map(\.path)
      XCTAssertEqual(paths.filter { $0.hasSuffix("/aer_dev_fatal") }.count, tracking ? functions.count : 0)
      XCTAssertFalse(recorder.accesses.contains { $0.access == .presence }, "the catalog saw them a moment ago")
    }
    // A group only remembered (prepared, then gone from the catalog) is looked up.
    let recorder = AccessRecorder()
    let judge = HealthJudge(sysfs: Sysfs(root: Fixtures.root("q35-vtd"), recorder: recorder), stateDirectory: "/nonexistent")
    let gone = device(99, functions: ["0000:7f:00.0"])
    XCTAssertEqual(judge.judge(gone, record: nil).problem, .gone)
    XCTAssertEqual(recorder.accesses.map(\.access), [.presence])
  }

  func testAPreparedGroupThatIsGoneStaysPublishedForEviction() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let dra = preparer(cdi: scratch)
    let reader = NodeReader(preparer: dra)
    _ = try reader.read()
    let claim = ClaimReference(namespace: "default", uid: "u1", name: "c")
    let json = #"{"status":{"allocation":{"devices":{"results":[{"request":"r","driver":"\#(driver)","pool":"n","device":"group-2"}]}}}}"#
    _ = try dra.prepare(claim, try ClaimAllocation.parse(Data(json.utf8), driver: driver, claim: "u1"))
    // Surprise removal: the function leaves sysfs.
    try FileManager.default.removeItem(atPath: tree.path + "/sys/bus/pci/devices/0000:00:02.0")
    let snapshot = try reader.read()
    XCTAssertEqual(snapshot.health["group-2"]?.problem, .gone)
    let slices = SliceBuilder(driver: driver, nodeName: "n").slices(devices: snapshot.devices, health: snapshot.health)
    let gone = try XCTUnwrap(slices.flatMap { $0.spec.devices ?? [] }.first { $0.name == "group-2" })
    XCTAssertEqual(gone.taints?.first?.effect, .noExecute)
  }

  func testTheHealthReportNamesEveryDeviceInBothVersions() throws {
    let board = HealthBoard(pool: "node1")
    XCTAssertNil(board.report(), "nothing before the first read")
    let devices = [device(1, functions: ["0000:01:00.0"]), device(2, functions: ["0000:02:00.0"])]
    board.update(NodeSnapshot(devices: devices, health: ["group-1": .healthy, "group-2": .unhealthy(.gone, "removed")]))
    let version = board.version
    board.update(NodeSnapshot(devices: devices, health: ["group-1": .healthy, "group-2": .unhealthy(.gone, "removed")]))
    XCTAssertEqual(board.version, version, "the same health is no change")
    let report = try XCTUnwrap(board.report(now: Date(timeIntervalSince1970: 1000)))
    XCTAssertEqual(report.devices.map(\.device.deviceName), ["group-1", "group-2"])
    XCTAssertEqual(report.devices.map(\.health), [.healthy, .unhealthy])
    XCTAssertEqual(report.devices.map(\.device.poolName), ["node1", "node1"])
    XCTAssertEqual(report.devices[0].lastUpdatedTime, 1000)
    XCTAssertTrue(report.devices[1].message.contains("removed"))
    let alpha: V1alpha1_NodeWatchResourcesResponse = try twin(report)
    XCTAssertEqual(alpha.devices.map(\.health), [.healthy, .unhealthy])
    XCTAssertEqual(alpha.devices[1].device.deviceName, "group-2")
  }

  // MARK: the controller

  func testTheControllerLeavesOutOnlyTheDeviceTheAPIServerWouldRefuse() {
    let controller = SliceController(
      driver: driver, nodeName: "n", read: { () throws(KubeletError) in NodeSnapshot(devices: [], health: [:]) },
      publisher: SliceDirectory(path: "/nonexistent"), triggers: AsyncStream { $0.finish() }, logger: Logger(label: "test"))
    let good = (1...3).map { device($0, functions: ["0000:0\($0):00.0"]) }
    let bad = PublishedDevice(
      group: IOMMUGroupID(9), functions: [try! PCIAddress(parsing: "0000:09:00.0")], verdict: .assignable,
      vendorID: 0x8086, deviceID: 0x10ca, classCode: 0x020000, resetMethod: "flr",
      pcieRoot: String(repeating: "p", count: 70), numaNode: 0, sriovRole: nil, physicalFunction: nil, onVFIO: true)
    let whole = controller.slices(NodeSnapshot(devices: good, health: [:]), generation: 4)
    XCTAssertEqual(whole.flatMap { $0.spec.devices ?? [] }.map(\.name), ["group-1", "group-2", "group-3"])
    let slices = controller.slices(NodeSnapshot(devices: good + [bad], health: [:]), generation: 4)
    XCTAssertEqual(slices, whole)
    XCTAssertEqual(ResourceSliceRules.violations(pool: slices), [])
  }

  func testTheControllerRepublishesWhatChangedWithAHigherGeneration() async throws {
    let scratch = try TemporaryTree()
    let current = Mutex(NodeSnapshot(devices: (1...130).map { device($0, functions: ["0000:01:00.0"]) }, health: [:]))
    let (triggers, trigger) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    let directory = SliceDirectory(path: scratch.path + "/slices")
    let board = HealthBoard(pool: "n")
    let controller = SliceController(
      driver: driver, nodeName: "n", read: { () throws(KubeletError) in current.withLock { $0 } }, publisher: directory,
      triggers: triggers, observe: { board.update($0) }, logger: Logger(label: "test"))
    let running = Task { try await controller.run() }
    defer { running.cancel() }
    func published(_ generation: Int) async throws -> [ResourceSlice] {
      for _ in 0..<200 {
        let slices = directory.current()
        if !slices.isEmpty, slices.allSatisfy({ $0.spec.pool.generation == generation }) {
          return slices.sorted { $0.metadata.name < $1.metadata.name }
        }
        try await Task.sleep(for: .milliseconds(20))
      }
      XCTFail("generation \(generation) never appeared: \(directory.current().map(\.spec.pool.generation))")
      return []
    }
    let first = try await published(1)
    XCTAssertEqual(first.map { $0.spec.devices?.count }, [128, 2])
    // A trigger with nothing changed publishes nothing new.
    trigger.yield()
    try await Task.sleep(for: .milliseconds(300))
    XCTAssertEqual(Set(directory.current().map(\.spec.pool.generation)), [1])
    // Devices go: one slice is left, the other deleted; one goes unhealthy: tainted.
    current.withLock { $0 = NodeSnapshot(devices: [device(1, functions: ["0000:01:00.0"])], health: ["group-1": .unhealthy(.hostDriver, "x")]) }
    trigger.yield()
    let after = try await published(2)
    XCTAssertEqual(after.count, 1)
    XCTAssertEqual(after[0].spec.devices?.first?.taints?.first?.value, "BoundToHostDriver")
    XCTAssertEqual(board.report()?.devices.map(\.health), [.unhealthy])
    XCTAssertEqual(ResourceSliceRules.violations(pool: after), [])
    // A restarted controller goes on from the published generation.
    running.cancel()
    let restarted = SliceController(
      driver: driver, nodeName: "n", read: { () throws(KubeletError) in current.withLock { $0 } }, publisher: directory,
      triggers: AsyncStream { $0.finish() }, logger: Logger(label: "test"))
    current.withLock { $0 = NodeSnapshot(devices: [], health: [:]) }
    try await restarted.run()
    XCTAssertEqual(directory.current().map(\.spec.pool.generation), [3])
    XCTAssertEqual(directory.current().first?.spec.devices, [])
  }

  // MARK: claims side by side

  func testTheGateSerialisesClaimsOnOneGroupAndLetsOthersRun() throws {
    let gate = ClaimGate()
    let events = Mutex<[String]>([])
    let inside = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    let done = DispatchGroup()
    func run(_ name: String, claim: String, groups: [IOMMUGroupID], hold: Bool) {
      done.enter()
      Thread {
        try? gate.whileHolding(claim: claim, groups: groups) { () throws(KubeletError) in
          events.withLock { $0.append("\(name) in") }
          if hold {
            inside.signal()
            release.wait()
          }
          events.withLock { $0.append("\(name) out") }
        }
        done.leave()
      }.start()
    }
    run("a", claim: "a", groups: [1, 2], hold: true)
    inside.wait()
    run("b", claim: "b", groups: [2], hold: false)  // shares group 2: waits for a
    run("c", claim: "c", groups: [3], hold: false)  // another group: runs now
    run("a2", claim: "a", groups: [], hold: false)  // the same claim again: waits for a
    Thread.sleep(forTimeInterval: 0.2)
    XCTAssertEqual(events.withLock { $0 }, ["a in", "c in", "c out"])
    release.signal()
    XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
    let order = events.withLock { $0 }
    XCTAssertLessThan(order.firstIndex(of: "a out")!, order.firstIndex(of: "b in")!)
    XCTAssertLessThan(order.firstIndex(of: "a out")!, order.firstIndex(of: "a2 in")!)
    XCTAssertEqual(gate.held, [])
  }
}
