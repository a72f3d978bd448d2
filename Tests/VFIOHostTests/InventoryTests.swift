import PCI
import VFIOHost
import VFIOTestSupport
import XCTest

/// The model read from a tree captured in a q35 guest with VT-d (Debian 6.1), checked against
/// what the guest's own shell script read from the kernel in the same boot.
final class InventoryTests: XCTestCase {
  /// Every captured tree that came with the kernel's own facts from the same boot.
  private var capturedTrees: [String] {
    Sysfs().list(Fixtures.directory).filter {
      !Fixtures.facts($0).isEmpty && Sysfs().exists(Fixtures.root($0) + "/sys/bus/pci/devices")
    }
  }

  func testEveryCaptureMatchesItsKernel() throws {
    XCTAssertGreaterThanOrEqual(capturedTrees.count, 2)
    for tree in capturedTrees {
      try checkDevicesDriversAndGroups(tree)
      try checkResetMethodsAndBARs(tree)
    }
  }

  private func checkDevicesDriversAndGroups(_ tree: String) throws {
    let inventory = try Fixtures.inventory(tree)
    let facts = Fixtures.facts(tree)
    XCTAssertFalse(facts.isEmpty, "lab-facts.txt missing from the fixture")
    let devices = facts.filter { $0.first == "device" }
    XCTAssertEqual(inventory.devices.map(\.address.description), devices.map { $0[1] }, tree)
    for fact in devices {
      let device = try XCTUnwrap(inventory.device(try PCIAddress(parsing: fact[1])), "\(tree) \(fact)")
      XCTAssertEqual(String(device.vendorID, radix: 16), fact[2].lowercased().trimmingLeadingZeros, "\(tree) \(fact)")
      XCTAssertEqual(String(device.deviceID, radix: 16), fact[3].lowercased().trimmingLeadingZeros, "\(tree) \(fact)")
      XCTAssertEqual(device.classCode, UInt32(fact[4], radix: 16), "\(tree) \(fact)")
    }
    for fact in facts where fact.first == "driver" {
      XCTAssertEqual(inventory.device(try PCIAddress(parsing: fact[1]))?.driver ?? "-", fact[2], "\(tree) \(fact)")
    }
    var members: [IOMMUGroupID: [String]] = [:]
    for fact in facts where fact.first == "member" { members[IOMMUGroupID(fact[1])!, default: []].append(fact[2]) }
    XCTAssertEqual(inventory.groups.map(\.id), members.keys.sorted())
    for group in inventory.groups {
      XCTAssertEqual(group.devices.map(\.description), members[group.id]?.sorted(), "\(tree) group \(group.id)")
      XCTAssertEqual(group.type, facts.first { $0.first == "group" && $0[1] == group.id.description }?[2])
    }
  }

  private func checkResetMethodsAndBARs(_ tree: String) throws {
    let inventory = try Fixtures.inventory(tree)
    for fact in Fixtures.facts(tree) where fact.first == "reset" {
      let device = try XCTUnwrap(inventory.device(try PCIAddress(parsing: fact[1])))
      let expected = fact[2] == "absent" || fact[2] == "-" ? [] : Array(fact[2...])
      XCTAssertEqual(device.kernelResetMethods?.map(\.rawValue) ?? [], expected, "\(tree) \(fact)")
    }
    for fact in Fixtures.facts(tree) where fact.first == "bar" {
      let device = try XCTUnwrap(inventory.device(try PCIAddress(parsing: fact[1])))
      let bar = try XCTUnwrap(device.bars.first { $0.index == Int(fact[2]) }, "\(fact)")
      XCTAssertEqual(bar.start, UInt64(fact[3]))
      XCTAssertEqual(bar.size, UInt64(fact[4]))
    }
  }

  func testTheTwoE1000BehindTheBridgeShareTheBridgesGroup() throws {
    let inventory = try Fixtures.inventory("q35-vtd")
    let first = try XCTUnwrap(inventory.device(try PCIAddress(parsing: "01:01.0")))
    let second = try XCTUnwrap(inventory.device(try PCIAddress(parsing: "01:02.0")))
    XCTAssertEqual(first.iommuGroup, second.iommuGroup)
    XCTAssertEqual(first.upstreamBridges.map(\.description), ["0000:00:04.0"])
    let group = try XCTUnwrap(inventory.group(of: first))
    XCTAssertEqual(group.devices.map(\.description), ["0000:00:04.0", "0000:01:01.0", "0000:01:02.0"])
    XCTAssertEqual(inventory.busResetScope(of: second).map(\.address.description), ["0000:01:01.0", "0000:01:02.0"])
    XCTAssertEqual(first.interrupt.masking, .untested)
    XCTAssertEqual(first.isConventionalPCI, true)
  }

  func testIOMMUAndVFIOSupport() throws {
    let inventory = try Fixtures.inventory("q35-vtd")
    XCTAssertTrue(inventory.iommuEnabled)
    XCTAssertEqual(inventory.iommuUnits.map(\.name), ["dmar0"])
    XCTAssertTrue(inventory.vfio.vfioPCIDriver)
    XCTAssertTrue(inventory.vfio.containerNode)
    let nodes = Fixtures.facts("q35-vtd").filter { $0.first == "dev" && $0[1].hasPrefix("/dev/vfio/") }
      .compactMap { IOMMUGroupID($0[1].dropFirst("/dev/vfio/".count)) }
    XCTAssertEqual(inventory.vfio.groupNodes, nodes.sorted())
    // Captures made before vfioctl existed in the guest lack /proc/sys/kernel/osrelease.
    if let release = inventory.kernelRelease {
      XCTAssertEqual(release, Fixtures.facts("q35-vtd").first { $0.first == "kernel" }?[1])
    }
  }

  func testHostWithoutIOMMUStillListsEveryDeviceAndItsUse() throws {
    let inventory = try Fixtures.inventory("host-firecracker")
    XCTAssertFalse(inventory.iommuEnabled)
    XCTAssertEqual(inventory.devices.count, 6)
    XCTAssertTrue(inventory.devices.allSatisfy { $0.iommuGroup == nil })
    let disk = try XCTUnwrap(inventory.devices.first { $0.classCode >> 8 == 0x0180 })
    XCTAssertTrue(
      inventory.uses(of: disk.address).contains { $0.kind == .mount && $0.detail == "is mounted at /" && $0.active })
    let nic = try XCTUnwrap(inventory.devices.first { $0.classCode >> 8 == 0x0200 })
    XCTAssertTrue(inventory.uses(of: nic.address).contains { $0.kind == .interface && $0.active })
  }

  func testMissingRootIsAClearError() {
    XCTAssertThrowsError(try HostInventory.read(Sysfs(root: "/nonexistent/tree"))) {
      XCTAssertTrue("\($0)".contains("not a Linux sysfs tree"))
    }
  }

  func testGarbageConfigSpaceDoesNotStopTheInventory() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let device = try XCTUnwrap(Sysfs(root: copy.path).readLink("/sys/bus/pci/devices/0000:00:02.0"))
    let configPath = copy.path + resolve(link: device, in: "/sys/bus/pci/devices") + "/config"
    try copy.write(configPath, bytes: [1, 2, 3])
    let inventory = try HostInventory.read(Sysfs(root: copy.path), pageSize: 4096)
    let broken = try XCTUnwrap(inventory.device(try PCIAddress(parsing: "00:02.0")))
    XCTAssertEqual(broken.configError, ConfigSpaceError.truncated(3).description)
    XCTAssertEqual(broken.vendorID, 0x8086, "IDs come from the sysfs attributes when config is unusable")
    XCTAssertEqual(inventory.devices.count, 15)
  }

  /// Every address, IPv4 and IPv6, and the default routes; the procfs text is this machine's
  /// kernel's (6.18), the interface the host-firecracker capture's.
  func testHostUseNamesEveryAddressAndTheDefaultRoutes() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("host-firecracker"))
    try copy.write(
      copy.path + "/proc/net/fib_trie",
      text: """
        Main:
          +-- 0.0.0.0/0 3 0 5
             |-- 0.0.0.0
                /0 universe UNICAST
             +-- 127.0.0.0/8 2 0 2
                +-- 127.0.0.0/31 1 0 0
                   |-- 127.0.0.1
                      /32 host LOCAL
             +-- 192.0.2.0/24 2 0 2
                +-- 192.0.2.0/30 2 0 2
                   |-- 192.0.2.0
                      /24 link UNICAST
                   |-- 192.0.2.2
                      /32 host LOCAL
                |-- 192.0.2.255
                   /32 link BROADCAST

        """)
    try copy.write(
      copy.path + "/proc/net/ipv6_route",
      text: """
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo

        """)
    let inventory = try copy.inventory()
    let uses = inventory.hostUse.values.flatMap { $0 }.filter { $0.kind == .interface }
    let eth0 = try XCTUnwrap(uses.first { $0.subject == "eth0" })
    XCTAssertEqual(
      eth0.detail,
      "is up, has addresses 192.0.2.2/24, fd00::2/64, fe80::fc:ff:fe00:1/64, carries the host's IPv4 and IPv6 default routes"
    )
    XCTAssertTrue(eth0.active)
  }

  func testCaptureReplaysExactly() throws {
    let source = Fixtures.sysfs("q35-vtd")
    let recorder = AccessRecorder()
    let original = try HostInventory.read(Sysfs(root: source.root, recorder: recorder), pageSize: 4096)
    let target = try TemporaryTree()
    try SysfsCapture(source: source, destination: target.path + "/copy").write(recorder.accesses)
    let replayed = try HostInventory.read(Sysfs(root: target.path + "/copy"), pageSize: 4096)
    XCTAssertEqual(replayed.devices.map(\.address), original.devices.map(\.address))
    XCTAssertEqual(replayed.groups, original.groups)
    XCTAssertEqual(replayed.vfio, original.vfio)
    XCTAssertEqual(replayed.devices.map(\.bars), original.devices.map(\.bars))
    XCTAssertEqual(replayed.devices.map(\.driver), original.devices.map(\.driver))
  }

  /// A link planted in the destination (here `sys` pointing at a directory outside it) is never
  /// written through: the capture fails and nothing appears outside.
  func testCaptureNeverWritesThroughAPlantedLink() throws {
    let source = Fixtures.sysfs("q35-vtd")
    let recorder = AccessRecorder()
    _ = try HostInventory.read(Sysfs(root: source.root, recorder: recorder), pageSize: 4096)
    let target = try TemporaryTree()
    let outside = try TemporaryTree()
    mkdir(target.path + "/copy", 0o755)
    symlink(outside.path, target.path + "/copy/sys")
    XCTAssertThrowsError(try SysfsCapture(source: source, destination: target.path + "/copy").write(recorder.accesses))
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outside.path), [], "nothing written outside")
    // A relative link that climbs out is refused the same way.
    unlink(target.path + "/copy/sys")
    symlink("../../" + outside.path.split(separator: "/").last!, target.path + "/copy/sys")
    XCTAssertThrowsError(try SysfsCapture(source: source, destination: target.path + "/copy").write(recorder.accesses))
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outside.path), [])
  }

  func testRootedFilesStayBeneathTheirRoot() throws {
    let root = try TemporaryTree()
    let outside = try TemporaryTree()
    try outside.write(outside.path + "/secret", text: "x\n")
    mkdir(root.path + "/a", 0o755)
    symlink("a", root.path + "/inside")
    symlink(outside.path, root.path + "/out")
    let inside = RootedFiles.open(root: root.path, "/inside/f", O_WRONLY | O_CREAT, mode: 0o644)
    XCTAssertGreaterThanOrEqual(inside, 0, "a link that stays inside works")
    close(inside)
    XCTAssertTrue(FileManager.default.fileExists(atPath: root.path + "/a/f"))
    XCTAssertLessThan(RootedFiles.open(root: root.path, "/out/secret", O_WRONLY), 0, "a link out of the root is refused")
    XCTAssertNotEqual(RootedFiles.makeDirectories(root: root.path, "/out/new"), 0)
    XCTAssertFalse(FileManager.default.fileExists(atPath: outside.path + "/new"))
  }
}

extension String {
  fileprivate var trimmingLeadingZeros: String {
    let trimmed = drop { $0 == "0" }
    return trimmed.isEmpty ? "0" : String(trimmed)
  }
}
