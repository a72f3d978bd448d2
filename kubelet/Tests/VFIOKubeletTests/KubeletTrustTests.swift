import Foundation
import KubeletAPI
import Logging
import VFIOHost
import VFIOPolicy
import VFIOTestSupport
import XCTest

@testable import VFIOKubelet
@testable import VFIOManager

/// The kubelet plugins act as root for any pod author: they read the host as its init sees it,
/// never publish what the ledger gives to someone, take owners only from the administrator,
/// and leave a checkpoint before they touch a group.
extension KubeletPluginTests {
  func names(_ catalog: DeviceCatalog) -> [String] { catalog.published.map(\.name) }

  func testAPluginThatCannotSeeTheHostsViewPublishesNothing() throws {
    try setUpTree()
    unlink(tree.path + "/proc/1/root")
    XCTAssertThrowsError(try NodeCatalog(sysfs: Sysfs(root: tree.path), stateDirectory: state.path).read()) { error in
      guard case KubeletError.hostViewUnavailable(let paths) = error else { return XCTFail("\(error)") }
      XCTAssertEqual(paths, [tree.path + "/proc/1/root/sys/class/net"])
    }
  }

  /// The pod's own network namespace shows no route on the e1000e; the host's init shows the
  /// node's default route through it: the host's view decides, and the uplink is withheld.
  func testTheNodesUplinkIsWithheldWhateverThePodSees() throws {
    try setUpTree()
    try tree.write(tree.path + "/sys/class/net/eth0/flags", text: "0x1003\n")
    try tree.write(tree.path + "/sys/class/net/eth0/operstate", text: "up\n")
    unlink(tree.path + "/proc/1/net")
    mkdir(tree.path + "/proc/1/net", 0o755)
    try tree.write(
      tree.path + "/proc/1/net/route",
      text: "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    let sysfs = Sysfs(root: tree.path)
    let pod = try NodeCatalog(sysfs: sysfs, stateDirectory: state.path, view: .caller).read()
    let host = try NodeCatalog(sysfs: sysfs, stateDirectory: state.path).read()
    XCTAssertTrue(names(pod).contains("group-2"), "the pod's own view would publish it: \(names(pod))")
    XCTAssertFalse(names(host).contains("group-2"), "the host's view withholds the uplink: \(names(host))")
  }

  func testGroupsTheLedgerGivesToSomeoneAreNeverPublishedNorPrepared() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: 1000, gid: 1000), brokerOnly: true)
    _ = try manager().groups.detach(.group(10))
    _ = try manager().access.reserve(.group(10), for: "vm1", owner: nil)
    let catalog = try NodeCatalog(sysfs: Sysfs(root: tree.path), stateDirectory: state.path).read()
    XCTAssertFalse(names(catalog).contains("group-2"), "owned by a user: \(names(catalog))")
    XCTAssertFalse(names(catalog).contains("group-10"), "reserved for a guest: \(names(catalog))")
    let scratch = try TemporaryTree()
    let before = kernel.writes.count
    XCTAssertThrowsError(
      try preparer(cdi: scratch).prepare(claim, try ClaimAllocation.parse(claimJSON(["group-2"]), driver: driver, claim: "u1"))
    ) { XCTAssertEqual(($0 as? KubeletError).map { if case .noSuchDevice = $0 { true } else { false } }, true, "\($0)") }
    XCTAssertEqual(kernel.writes.count, before)
    XCTAssertEqual(try ledger().group(2)?.ownerUID, 1000, "the owner keeps it")
  }

  func testAClaimCannotPickTheOwnerOfItsNodes() throws {
    XCTAssertThrowsError(
      try ClaimAllocation.parse(
        claimJSON(["group-2"], parameters: #"{"owner":"0:0","mode":"0660"}"#, source: "FromClaim"), driver: driver,
        claim: "u1")
    ) { error in
      guard case KubeletError.badConfiguration(_, let why) = error else { return XCTFail("\(error)") }
      XCTAssertTrue(why.contains("DeviceClass"), why)
    }
    let fromClass = try ClaimAllocation.parse(
      claimJSON(["group-2"], parameters: #"{"owner":"107:107"}"#), driver: driver, claim: "u1")
    XCTAssertEqual(fromClass.ownership?.uid, 107)
  }

  /// Killed after the checkpoint and the detach, before the CDI spec: the retry finishes the
  /// claim, and an unprepare gives the group back.
  func testAPrepareKilledMidwayIsFinishedByItsRetryAndUndoneByUnprepare() throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let dra = preparer(cdi: scratch)
    let allocation = try ClaimAllocation.parse(claimJSON(["group-2"]), driver: driver, claim: "u1")
    // What a plugin killed right after its first detach leaves: a pending checkpoint, the group detached.
    let pending = ClaimCheckpoint(claim: claim, groups: [.init(group: 2, detached: true)], devices: [], pending: true)
    try FileManager.default.createDirectory(atPath: dra.checkpointDirectory, withIntermediateDirectories: true)
    try Data(sortedJSON(pending).utf8).write(to: URL(fileURLWithPath: dra.checkpointPath("u1")))
    _ = try manager().groups.detach(.group(2), detachedBy: "dra")
    XCTAssertEqual(try dra.preparedClaims(), [claim])
    // The retry: same claim, the group is its own, the spec is written, the checkpoint final.
    let devices = try dra.prepare(claim, allocation)
    XCTAssertEqual(devices.map(\.device), ["group-2"])
    XCTAssertEqual(try dra.checkpoint("u1")?.isPending, false)
    try dra.unprepare(claim)
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))

    // Killed before the first detach: the unprepare finds a pending checkpoint and nothing detached.
    try Data(sortedJSON(pending).utf8).write(to: URL(fileURLWithPath: dra.checkpointPath("u1")))
    XCTAssertNoThrow(try dra.unprepare(claim))
    XCTAssertEqual(try dra.preparedClaims(), [])
  }

  /// The gRPC side answers a prepared claim from its checkpoint; a pending one (a plugin killed
  /// mid-prepare) is no answer: the prepare runs again.
  func testThePluginPreparesAgainOverAPendingCheckpoint() async throws {
    try setUpTree()
    let scratch = try TemporaryTree()
    let dra = preparer(cdi: scratch)
    let pending = ClaimCheckpoint(claim: claim, groups: [.init(group: 2, detached: true)], devices: [], pending: true)
    try FileManager.default.createDirectory(atPath: dra.checkpointDirectory, withIntermediateDirectories: true)
    try Data(sortedJSON(pending).utf8).write(to: URL(fileURLWithPath: dra.checkpointPath("u1")))
    try claimJSON(["group-2"]).write(to: URL(fileURLWithPath: scratch.path + "/u1.json"))
    let plugin = DRAPlugin(
      driver: driver, paths: KubeletPaths(directory: scratch.path), preparer: dra,
      claims: ClaimDirectory(path: scratch.path), logger: Logger(label: "test"))
    var request = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest()
    var reference = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim()
    reference.uid = "u1"
    reference.name = "c"
    reference.namespace = "default"
    request.claims = [reference]
    let response = await plugin.prepare(request)
    XCTAssertEqual(response.claims["u1"]?.error, "")
    XCTAssertEqual(response.claims["u1"]?.devices.map(\.deviceName), ["group-2"])
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "vfio-pci")
  }
}
