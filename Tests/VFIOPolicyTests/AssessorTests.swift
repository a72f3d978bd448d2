import PCI
import VFIOHost
import VFIOPolicy
import VFIOTestSupport
import XCTest

/// Every assignability rule, on trees captured from real kernels (copied and edited in a
/// temporary directory where a rule needs a situation the capture did not have).
final class AssessorTests: XCTestCase {
  private func assess(_ target: String, fixture: String = "q35-vtd", root: String? = nil) throws -> Assessment {
    try assessFromBothReadings(target, root: root ?? Fixtures.root(fixture))
  }

  private func codes(_ assessment: Assessment, _ severity: Reason.Severity) -> [Reason.Code] {
    assessment.reasons.filter { $0.severity == severity }.map(\.code)
  }

  func testBridgeGroupGoesTogetherWithABusReset() throws {
    let assessment = try assess("01:02.0")
    XCTAssertEqual(assessment.verdict, .conditional)
    XCTAssertEqual(codes(assessment, .blocker), [])
    XCTAssertTrue(codes(assessment, .condition).contains(.companions))
    XCTAssertTrue(codes(assessment, .condition).contains(.behindPCIBridge))
    XCTAssertTrue(codes(assessment, .condition).contains(.busReset))
    let companions = try XCTUnwrap(assessment.reasons.first { $0.code == .companions })
    XCTAssertEqual(companions.devices.map(\.description), ["0000:01:01.0", "0000:01:02.0"])
    XCTAssertEqual(assessment.members.map(\.role), [.bridge, .endpoint, .endpoint])
    // The kernel lists "bus" only for the first function it probed; both get the bus reset.
    XCTAssertEqual(assessment.members.compactMap { $0.reset?.method }, [.bus, .bus])
    XCTAssertEqual(assessment.members.last?.reset?.affectsOutsideGroup, [])
  }

  func testBridgeItselfIsNotAnEndpoint() throws {
    let assessment = try assess("00:04.0")
    XCTAssertEqual(assessment.verdict, .notAssignable)
    XCTAssertEqual(codes(assessment, .blocker), [.notEndpoint])
  }

  func testChipsetGroupHoldsAPlatformDevice() throws {
    let assessment = try assess("00:1f.2")
    XCTAssertEqual(assessment.verdict, .notAssignable)
    XCTAssertTrue(codes(assessment, .blocker).contains(.platformDevice))
  }

  func testEduHasNoResetMethod() throws {
    let assessment = try assess("00:03.0")
    XCTAssertEqual(codes(assessment, .blocker), [.noReset])
  }

  func testNVMeUsesFLR() throws {
    let assessment = try assess("02:00.0")
    XCTAssertEqual(assessment.members.first?.reset?.method, .flr)
    XCTAssertEqual(codes(assessment, .blocker), [])
    XCTAssertNotNil(assessment.plan)
  }

  func testSubPageBARAloneInItsPageIsACondition() throws {
    let assessment = try assess("00:07.0")
    XCTAssertTrue(codes(assessment, .condition).contains(.subPageBAR))
  }

  func testSubPageBARSharingAPageIsABlocker() throws {
    // Move the watchdog's 16-byte BAR0 into the page of the edu's BAR0.
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let sysfs = Sysfs(root: copy.path)
    let edu = try XCTUnwrap(HostInventory.read(sysfs, pageSize: 4096).device(try PCIAddress(parsing: "00:03.0")))
    let start = edu.bars[0].start + 0x100
    let dir = resolve(
      link: try XCTUnwrap(sysfs.readLink("/sys/bus/pci/devices/0000:00:07.0")), in: "/sys/bus/pci/devices")
    var lines = try XCTUnwrap(sysfs.readString(dir + "/resource")).split(separator: "\n").map(String.init)
    lines[0] = String(format0x(start)) + " " + format0x(start + 15) + " " + String(lines[0].split(separator: " ")[2])
    try copy.write(copy.path + dir + "/resource", text: lines.joined(separator: "\n") + "\n")
    let assessment = try assess("00:07.0", root: copy.path)
    let shared = try XCTUnwrap(assessment.reasons.first { $0.code == .sharedBARPage })
    XCTAssertEqual(shared.severity, .blocker)
    XCTAssertTrue(shared.devices.contains(try PCIAddress(parsing: "00:03.0")))
  }

  func testHostUseBlocksTheWholeGroup() throws {
    // Give the NVMe namespace a mount, as /proc/self/mountinfo and /sys/block show it.
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    try mountDisk("nvme0n1", at: "nvme/nvme0/nvme0n1", of: "0000:02:00.0", in: copy)
    let assessment = try assess("02:00.0", root: copy.path)
    XCTAssertEqual(assessment.verdict, .notAssignable)
    let use = try XCTUnwrap(assessment.reasons.first { $0.code == .hostInUse })
    XCTAssertTrue(use.message.contains("nvme0n1 is mounted at /srv"), use.message)
    XCTAssertTrue(use.remedy?.contains("unmount") ?? false)
    XCTAssertNil(assessment.plan)
  }

  func testNoIOMMUIsABlockerAndTheOtherReasonsStillShow() throws {
    let inventory = try Fixtures.inventory("host-firecracker")
    let disk = try XCTUnwrap(inventory.devices.first { $0.classCode >> 8 == 0x0180 })
    let assessment = try XCTUnwrap(Assessor(inventory: inventory).assess(device: disk.address))
    XCTAssertEqual(assessment.verdict, .notAssignable)
    XCTAssertEqual(codes(assessment, .blocker).first, .noIOMMU)
    XCTAssertTrue(codes(assessment, .blocker).contains(.hostInUse))
  }

  func testDeviceWithoutAGroupOnAnIOMMUHost() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let sysfs = Sysfs(root: copy.path)
    let dir = resolve(
      link: try XCTUnwrap(sysfs.readLink("/sys/bus/pci/devices/0000:02:00.0")), in: "/sys/bus/pci/devices")
    XCTAssertEqual(unlink(copy.path + dir + "/iommu_group"), 0)
    XCTAssertEqual(codes(try assess("02:00.0", root: copy.path), .blocker), [.noGroup])
  }

  func testMissingACSIsNamedForMultifunctionGroups() throws {
    let assessment = try assess("00:1f.3")
    XCTAssertTrue(assessment.reasons.contains { $0.code == .acsMissing })
  }

  func testPlanUnbindsBindsAndRestoresTheOriginalDriver() throws {
    let assessment = try assess("00:02.0")
    let plan = try XCTUnwrap(assessment.plan)
    // Detach resets after binding; attach resets before unbinding, while still on vfio-pci.
    XCTAssertEqual(plan.detach.map(\.action), [.unbind, .setDriverOverride, .probe, .resetNow])
    XCTAssertEqual(plan.detach.first?.driver, "e1000e")
    XCTAssertEqual(plan.restore.map(\.action), [.resetNow, .unbind, .clearDriverOverride, .bind])
    XCTAssertEqual(plan.restore.last?.driver, "e1000e")
    XCTAssertEqual(plan.resets.first?.method, .pm)
    XCTAssertEqual(
      plan.detach.flatMap(\.commands),
      [
        "echo 0000:00:02.0 > /sys/bus/pci/devices/0000:00:02.0/driver/unbind",
        "echo vfio-pci > /sys/bus/pci/devices/0000:00:02.0/driver_override",
        "echo 0000:00:02.0 > /sys/bus/pci/drivers_probe",
        "echo 1 > /sys/bus/pci/devices/0000:00:02.0/reset",
      ])
  }

  func testBridgeGroupIsResetOnceForBothFunctionsAndTheBridgeStays() throws {
    let plan = try XCTUnwrap(try assess("01:02.0").plan)
    XCTAssertEqual(plan.detach.map(\.action), [.keep, .keep, .resetNow])
    XCTAssertEqual(plan.detach.last?.affects?.map(\.description), ["0000:01:01.0", "0000:01:02.0"])
    XCTAssertFalse(plan.detach.contains { $0.device?.description == "0000:00:04.0" })
  }

  func testRebindingCoversEveryOverrideCase() throws {
    let dev = try PCIAddress(parsing: "0000:00:02.0")
    func actions(_ from: DriverBinding, _ to: DriverBinding) -> [PlanStep.Action] {
      PlanStep.rebinding(dev, from: from, to: to).map(\.action)
    }
    let vfio = DriverBinding(driver: "vfio-pci", driverOverride: "vfio-pci")
    XCTAssertEqual(actions(vfio, vfio), [])
    XCTAssertEqual(actions(.init(driver: "e1000e", driverOverride: nil), vfio), [.unbind, .setDriverOverride, .probe])
    // Crashed right after the unbind: nothing to unbind, the override is still to be set.
    XCTAssertEqual(actions(.init(driver: nil, driverOverride: nil), vfio), [.setDriverOverride, .probe])
    XCTAssertEqual(actions(.init(driver: nil, driverOverride: "vfio-pci"), .init(driver: "e1000e", driverOverride: nil)), [.clearDriverOverride, .bind])
    // Had no driver: restore leaves it without one rather than letting the kernel pick.
    XCTAssertEqual(actions(vfio, .init(driver: nil, driverOverride: nil)), [.unbind, .clearDriverOverride])
    // An override naming another driver is written after binding, or the bind is refused.
    XCTAssertEqual(actions(vfio, .init(driver: "e1000e", driverOverride: "pci-stub")), [.unbind, .clearDriverOverride, .bind, .setDriverOverride])
    XCTAssertEqual(actions(.init(driver: "vfio-pci", driverOverride: nil), vfio), [.setDriverOverride])
  }

  func testUnknownGroupIsNotAssignable() {
    XCTAssertEqual(try Assessor(inventory: Fixtures.inventory("q35-vtd")).assess(group: 999).verdict, .notAssignable)
  }
}

private func format0x(_ value: UInt64) -> String {
  let digits = String(value, radix: 16)
  return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
}

/// Gives function `address` a disk `name` (at `path` in its directory) mounted on /srv, laid out
/// as the kernel does: its directory, the /sys/block link, its device number in mountinfo. A
/// capture that already has the disk (the guest's driver made it) keeps its own.
private func mountDisk(_ name: String, at path: String, of address: String, in copy: TemporaryTree) throws {
  let sysfs = Sysfs(root: copy.path)
  let dir = resolve(link: try XCTUnwrap(sysfs.readLink("/sys/bus/pci/devices/\(address)")), in: "/sys/bus/pci/devices")
  if !sysfs.exists("/sys/block/\(name)") {
    XCTAssertEqual(system("mkdir -p '\(copy.path + dir)/\(path)' '\(copy.path)/sys/block'"), 0)
    try copy.write(copy.path + dir + "/\(path)/dev", text: "259:0\n")
    XCTAssertEqual(symlink("..\(dir.dropFirst("/sys".count))/\(path)", copy.path + "/sys/block/\(name)"), 0)
  }
  let devNumber = try XCTUnwrap(sysfs.readString("/sys/block/\(name)/dev"))
  XCTAssertEqual(system("mkdir -p '\(copy.path)/proc/self'"), 0)
  try copy.write(
    copy.path + "/proc/self/mountinfo", text: "30 1 \(devNumber) / /srv rw,relatime - ext4 /dev/\(name) rw\n")
}

/// The assessment of device `target` from the whole host at `root`; it is also checked to be
/// the one a detach, which reads only what the verdict needs, comes to (`VerdictScopeTests`),
/// for the device and for its group.
private func assessFromBothReadings(_ target: String, root: String, file: StaticString = #filePath, line: UInt = #line)
  throws -> Assessment
{
  let sysfs = Sysfs(root: root)
  let inventory = try HostInventory.read(sysfs, pageSize: 4096)
  let address = try PCIAddress(parsing: target)
  try assertJudgedAlike(.device(address), sysfs, inventory, file: file, line: line)
  if let group = inventory.device(address)?.iommuGroup {
    try assertJudgedAlike(.group(group), sysfs, inventory, file: file, line: line)
  }
  return try XCTUnwrap(Assessor(inventory: inventory).assess(device: address))
}

/// The rules the captures show without edits, and the ones that need a situation made.
final class MoreAssessorTests: XCTestCase {
  private func assess(_ target: String, root: String) throws -> Assessment {
    try assessFromBothReadings(target, root: root)
  }

  func testGroupOfOnlyABridgeHasNothingToAssign() throws {
    let inventory = try Fixtures.inventory("q35-vtd")
    let rootPortGroup = try XCTUnwrap(inventory.device(try PCIAddress(parsing: "00:06.0"))?.iommuGroup)
    let assessment = Assessor(inventory: inventory).assess(group: rootPortGroup)
    XCTAssertEqual(assessment.reasons.map(\.code), [.noEndpoint])
    XCTAssertNil(assessment.plan)
  }

  func testIdleHostUseIsACondition() throws {
    // In the guest the e1000e's eth0 exists but is down, and the nvme namespace is not mounted.
    for target in ["00:02.0", "02:00.0"] {
      let assessment = try assess(target, root: Fixtures.root("q35-vtd"))
      let use = try XCTUnwrap(assessment.reasons.first { $0.code == .hostUse }, target)
      XCTAssertEqual(use.severity, .condition)
      XCTAssertEqual(assessment.verdict, .conditional)
    }
  }

  func testBootVGAIsNamed() throws {
    let assessment = try assess("00:01.0", root: Fixtures.root("q35-vtd"))
    XCTAssertTrue(assessment.reasons.contains { $0.code == .hostUse && $0.message.contains("boot_vga") })
  }

  func testConventionalINTxSharedOutsideTheGroup() throws {
    let assessment = try assess("01:01.0", root: Fixtures.root("q35-vtd"))
    let shared = assessment.reasons.filter { $0.code == .sharedINTx }
    XCTAssertFalse(shared.isEmpty)
    XCTAssertTrue(shared.allSatisfy { $0.message.contains("DisINTx") })
  }

  func testPFWithVFsNamesThem() throws {
    let assessment = try assess("01:00.0", root: Fixtures.root("q35-sriov"))
    let vfs = try XCTUnwrap(assessment.reasons.first { $0.code == .sriovVFs })
    XCTAssertEqual(vfs.devices.map(\.description), ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2"])
    XCTAssertEqual(vfs.severity, .condition)
  }

  func testAPFWhoseVFTheHostUsesIsABlocker() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("q35-sriov"))
    try mountDisk("nvme9n1", at: "nvme/nvme9/nvme9n1", of: "0000:01:00.2", in: copy)
    let assessment = try assess("01:00.0", root: copy.path)
    let vfs = try XCTUnwrap(assessment.reasons.first { $0.code == .sriovVFs })
    XCTAssertEqual(vfs.severity, .blocker)
    XCTAssertEqual(vfs.devices.map(\.description), ["0000:01:00.0", "0000:01:00.2"])
  }

  func testEachVFIsItsOwnGroupWithFLR() throws {
    let inventory = try Fixtures.inventory("q35-sriov")
    let pf = try XCTUnwrap(inventory.device(try PCIAddress(parsing: "01:00.0")))
    let vfs = try XCTUnwrap(pf.sriov?.virtualFunctions).compactMap(inventory.device)
    XCTAssertEqual(vfs.count, 2)
    XCTAssertEqual(Set(vfs.compactMap(\.iommuGroup)).count, 2)
    XCTAssertFalse(vfs.contains { $0.iommuGroup == pf.iommuGroup })
    for vf in vfs {
      XCTAssertEqual(vf.physicalFunction, pf.address)
      XCTAssertEqual(vf.vendorID, pf.vendorID)
      XCTAssertEqual(vf.deviceID, pf.sriov?.vfDeviceID)
      XCTAssertEqual(ResetPlanner(inventory: inventory).choose(for: vf).method, .flr)
    }
  }

  func testHeaderOnlyConfigIsReported() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let sysfs = Sysfs(root: copy.path)
    let dir = resolve(
      link: try XCTUnwrap(sysfs.readLink("/sys/bus/pci/devices/0000:02:00.0")), in: "/sys/bus/pci/devices")
    let config = try XCTUnwrap(sysfs.readBytes(dir + "/config", limit: 4096))
    try copy.write(copy.path + dir + "/config", bytes: Array(config.prefix(64)))
    // Without the capability list the kernel's reset_method still decides the reset.
    let assessment = try assess("02:00.0", root: copy.path)
    XCTAssertTrue(
      assessment.reasons.contains {
        $0.code == .configUnreadable && $0.remedy == "run as root for the full config space"
      })
  }

  func testBusResetThatWouldHitAnActiveDeviceIsABlocker() throws {
    // Give 01:02.0 a network interface that is up with routes, as /sys/class/net and
    // /proc/net/route would show it; 01:01.0 can only be reset together with it.
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let sysfs = Sysfs(root: copy.path)
    let dir = resolve(
      link: try XCTUnwrap(sysfs.readLink("/sys/bus/pci/devices/0000:01:02.0")), in: "/sys/bus/pci/devices")
    XCTAssertEqual(
      system("mkdir -p '\(copy.path + dir)/net/eth9' '\(copy.path)/sys/class/net' '\(copy.path)/proc/net'"), 0)
    try copy.write(copy.path + dir + "/net/eth9/flags", text: "0x1003\n")
    try copy.write(copy.path + dir + "/net/eth9/operstate", text: "up\n")
    XCTAssertEqual(symlink("../..\(dir.dropFirst("/sys".count))/net/eth9", copy.path + "/sys/class/net/eth9"), 0)
    try copy.write(
      copy.path + "/proc/net/route",
      text:
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth9\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    let assessment = try assess("01:01.0", root: copy.path)
    XCTAssertEqual(assessment.verdict, .notAssignable)
    XCTAssertTrue(assessment.reasons.contains { $0.code == .hostInUse && $0.message.contains("eth9") })
    XCTAssertTrue(
      assessment.reasons.contains { $0.code == .noReset && $0.devices.contains(try! PCIAddress(parsing: "01:02.0")) })
  }
}
