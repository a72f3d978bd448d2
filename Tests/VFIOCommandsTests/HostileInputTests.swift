import Glibc
import PCI
import VFIOCommands
import VFIOHost
import VFIOPolicy
import VFIOManagerTestSupport
import VFIOTestSupport
import XCTest

/// What vfio-fuzz found, each on a scratch copy of a captured tree mutated the same way: the
/// answer is a warning or an error, never a trap or a hang.
final class HostileInputTests: XCTestCase {
  /// Reads the copy and renders every report, human and JSON, as the commands do.
  @discardableResult
  private func renderEverything(_ tree: TemporaryTree) throws -> ListReport {
    let builder = ReportBuilder(inventory: try tree.inventory(), names: nil)
    let list = builder.list()
    _ = HumanRenderer.list(list)
    _ = HumanRenderer.tree(list)
    _ = try encodeJSON(list)
    for device in builder.inventory.devices {
      _ = HumanRenderer.show(try builder.show(.device(device.address)))
      _ = HumanRenderer.explain(try builder.explain(.device(device.address)))
    }
    _ = HumanRenderer.doctor(builder.doctor())
    return list
  }

  private func device(_ report: ListReport, _ address: String) throws -> DeviceSummary {
    let wanted = try PCIAddress(parsing: address)
    return try XCTUnwrap(report.devices.first { $0.address == wanted }, address)
  }

  func testInvertedResourceLineIsAWarningOnTheDevice() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    try tree.write(
      tree.deviceDirectory("0000:00:02.0") + "/resource",
      text: "0x00000000fea20000 0x00000000fea1ffff 0x0000000000040200\n0x0 0xffffffffffffffff 0x200\n")
    let nic = try device(try renderEverything(tree), "00:02.0")
    XCTAssertEqual(nic.bars, [])
    XCTAssertEqual(nic.warnings.count, 2)
    XCTAssertTrue(nic.warnings[0].contains("resource line 0 is not start ≤ end"), nic.warnings[0])
    let json = try encodeJSON(try renderEverything(tree))
    XCTAssertTrue(json.contains("\"warnings\": [\n        \"resource line 0"), "warnings are in the JSON")
  }

  /// `(0..<numVFs)` trapped on a negative count (DeviceReader.swift:78) and an absurd one hung.
  func testAbsurdSRIOVCountsAreWarnings() throws {
    for (total, num) in [("2", "-1"), ("4294967296", "3"), ("65535", "2000000000")] {
      let tree = try TemporaryTree(copying: Fixtures.root("q35-sriov"))
      let pf = tree.deviceDirectory("0000:01:00.0")
      try tree.write(pf + "/sriov_totalvfs", text: total + "\n")
      try tree.write(pf + "/sriov_numvfs", text: num + "\n")
      let summary = try device(try renderEverything(tree), "01:00.0")
      XCTAssertEqual(summary.sriov?.virtualFunctions, [], "\(total) \(num)")
      XCTAssertFalse(summary.warnings.isEmpty, "\(total) \(num)")
    }
  }

  func testPhysfnAndVirtfnCyclesEnd() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-sriov"))
    let pf = tree.deviceDirectory("0000:01:00.0")
    let vf = tree.deviceDirectory("0000:01:00.1")
    try tree.replace(pf + "/virtfn0") { symlink("../0000:01:00.0", $0) }
    try tree.replace(pf + "/physfn") { symlink("../0000:01:00.1", $0) }
    try tree.replace(vf + "/physfn") { symlink("../0000:01:00.1", $0) }
    let report = try renderEverything(tree)
    XCTAssertEqual(try device(report, "01:00.0").sriov?.virtualFunctions.map(\.description), ["0000:01:00.2"])
    XCTAssertNil(try device(report, "01:00.1").physicalFunction, "a VF naming itself as its PF")
  }

  /// `Dictionary(uniqueKeysWithValues:)` trapped (HumanRenderer.swift:26) on one function
  /// listed under two names, as in a device in two groups.
  func testOneFunctionUnderTwoNamesIsListedOnce() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let devices = tree.path + "/sys/bus/pci/devices"
    let target = try XCTUnwrap(FileTree.readLink(devices + "/0000:00:02.0"))
    XCTAssertEqual(symlink(target, devices + "/00:02.0"), 0)
    // It also joins group 3, which the kernel never does.
    XCTAssertEqual(
      symlink(
        "../../../../bus/pci/devices/0000:00:02.0", tree.path + "/sys/kernel/iommu_groups/3/devices/0000:00:02.0"), 0)
    let report = try renderEverything(tree)
    XCTAssertEqual(report.devices.filter { $0.address.description == "0000:00:02.0" }.count, 1)
    XCTAssertTrue(report.unreadable.contains { $0.name == "00:02.0" && $0.reason.contains("same function") })
    var doubled = report
    doubled.devices += report.devices
    XCTAssertEqual(
      HumanRenderer.tree(doubled), HumanRenderer.tree(report).replacingOccurrences(of: "15 devices", with: "30 devices")
    )
  }

  func testADeviceBelowItselfIsNotItsOwnBridge() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let link = tree.path + "/sys/bus/pci/devices/0000:01:01.0"
    let target = try XCTUnwrap(FileTree.readLink(link))
    XCTAssertEqual(symlink(".", tree.deviceDirectory("0000:01:01.0") + "/0000:01:01.0"), 0)
    try tree.replace(link) { symlink(target + "/0000:01:01.0", $0) }
    let report = try renderEverything(tree)
    XCTAssertEqual(try device(report, "01:01.0").parent?.description, "0000:00:04.0")
    let rows = HumanRenderer.tree(report).split(separator: "\n").filter { $0.contains("─ 01:01.0") }
    XCTAssertEqual(rows.count, 1, "printed once")
    XCTAssertTrue(try device(report, "01:01.0").warnings[0].contains("the function itself"))
  }

  /// A FIFO or a device node where an attribute belongs blocked open(2) or read(2) forever.
  func testFIFOsAndDeviceNodesAreNotRead() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let nic = tree.deviceDirectory("0000:00:02.0")
    try tree.replace(nic + "/config") { mkfifo($0, 0o644) }
    try tree.replace(tree.path + "/proc/interrupts") { mkfifo($0, 0o644) }
    try tree.replace(nic + "/resource") { mknod($0, S_IFCHR | 0o644, dev_t(1 << 8 | 5)) == 0 ? 0 : mkfifo($0, 0o644) }
    let summary = try device(try renderEverything(tree), "00:02.0")
    XCTAssertEqual(summary.vendorID, "8086", "IDs come from the attributes when config is not a file")
    XCTAssertEqual(summary.bars, [])
  }

  func testSymlinkLoopsAndDanglingLinks() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let nic = tree.deviceDirectory("0000:00:02.0")
    try tree.replace(nic + "/config") { symlink("config", $0) }
    try tree.replace(nic + "/driver") { symlink("../../../nonexistent", $0) }
    try tree.replace(nic + "/iommu_group") { symlink("iommu_group", $0) }
    let summary = try device(try renderEverything(tree), "00:02.0")
    XCTAssertEqual(summary.driver, "nonexistent", "a dangling link still names its target")
    XCTAssertNil(summary.iommuGroup)
  }

  /// Cyclic, wide holders made HostUseScanner walk width⁴ paths; a mount table of 30,000
  /// mounts of one disk made the de-duplication quadratic.
  func testHolderWebsAndHugeMountTablesAreBounded() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    TreeMutator.makeHolderWeb(root: tree.path, disk: "nvme0n1", width: 32)
    let disk = try XCTUnwrap(Sysfs(root: tree.path).readString("/sys/block/nvme0n1/dev"))
    try tree.write(
      tree.path + "/proc/self/mountinfo",
      text: (0..<30000).map { "\($0) 1 \(disk) / /mnt/\($0 % 7) rw - ext4 /dev/nvme0n1 rw\n" }.joined())
    let start = monotonicSeconds()
    let nvme = try device(try renderEverything(tree), "02:00.0")
    XCTAssertLessThan(monotonicSeconds() - start, 10)
    XCTAssertEqual(nvme.hostUse.filter { $0.kind == .mount }.count, 7, "each mount point once")
    XCTAssertTrue(nvme.hostUse.contains { $0.kind == .holder })
  }

  func testNonUTF8AndHugeAttributes() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let nic = tree.deviceDirectory("0000:00:02.0")
    try tree.write(nic + "/driver_override", bytes: [0xFF, 0xFE, 0xC3, 0x28, 0x0A])
    XCTAssertEqual(truncate(nic + "/reset_method", 1 << 30), 0)
    XCTAssertEqual(truncate(tree.path + "/proc/cpuinfo", 1 << 30), 0)
    try renderEverything(tree)
  }

  func testNamesThatAreNotAddressesAreReportedUnreadable() throws {
    let tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let devices = tree.path + "/sys/bus/pci/devices"
    let target = try XCTUnwrap(FileTree.readLink(devices + "/0000:00:02.0"))
    for name in ["garbage", "0000:zz:00.0", "0000:00:20.9"] { XCTAssertEqual(symlink(target, devices + "/" + name), 0) }
    let report = try renderEverything(tree)
    XCTAssertEqual(Set(report.unreadable.map(\.name)), ["garbage", "0000:zz:00.0", "0000:00:20.9"])
    XCTAssertEqual(report.devices.count, 15)
  }
}
