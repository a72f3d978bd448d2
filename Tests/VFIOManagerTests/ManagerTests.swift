import Foundation
import GRDB
import PCI
import VFIOHost
import VFIOPolicy
import VFIOManagerTestCase
import VFIOManagerTestSupport
import VFIOTestSupport
import XCTest

@testable import VFIOManager

/// The manager against scratch copies of trees captured in the lab's guests, with the PCI
/// core's sysfs semantics simulated (`SimulatedKernel`); Tests/Integration runs the same
/// commands against the real kernel.
final class ManagerTests: ManagerTestCase {
  // MARK: detach and attach

  func testDetachRunsExplainsPlanAndAttachRestoresExactly() throws {
    try setUpTree()
    let explained = try XCTUnwrap(Assessor(inventory: Fixtures.inventory("q35-vtd")).assess(group: 2).plan)
    let report = try manager().groups.detach(.device(address("00:02.0")))
    XCTAssertEqual(report.outcome, .done)
    XCTAssertEqual(report.steps, explained.detach)
    XCTAssertEqual(
      kernel.writes,
      [
        "/sys/bus/pci/devices/0000:00:02.0/driver/unbind <- 0000:00:02.0",
        "/sys/bus/pci/devices/0000:00:02.0/driver_override <- vfio-pci",
        "/sys/bus/pci/drivers_probe <- 0000:00:02.0",
        "/sys/bus/pci/devices/0000:00:02.0/reset <- 1",
      ])
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "vfio-pci", driverOverride: "vfio-pci"))
    let record = try XCTUnwrap(try ledger().group(2))
    XCTAssertEqual(record.state, .detached)
    let members = try ledger().members(of: 2)
    XCTAssertEqual(members.map(\.originalDriver), ["e1000e"])
    XCTAssertEqual(members.map(\.identity), ["8086:10d3"])

    let back = try manager().groups.attach(.group(2))
    XCTAssertEqual(back.steps.map(\.action), [.resetNow, .unbind, .clearDriverOverride, .bind])
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))
    XCTAssertEqual(try ledger().group(2)?.state, .host)
    XCTAssertEqual(try ledger().members(of: 2), [])
    XCTAssertEqual(try ledger().history(group: 2).map(\.result), ["ok", "ok"])
    XCTAssertEqual(try ledger().operations(group: 2).map(\.status), [.done, .done])
  }

  func testVFIOPCIIsLoadedWhenTheKernelDoesNotHaveItYet() throws {
    try setUpTree()
    // As before `modprobe vfio-pci`: no driver directory (the e1000e's group needs nothing else).
    XCTAssertEqual(system("rm -rf '\(tree.path)/sys/bus/pci/drivers/vfio-pci'"), 0)
    let report = try manager().groups.detach(.group(2))
    XCTAssertEqual(report.steps.first, PlanStep(action: .loadModule, module: "vfio-pci"))
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "vfio-pci")
  }

  func testMultifunctionSiblingInItsOwnGroupIsUntouched() throws {
    try setUpTree()
    let before = binding("0000:00:05.1")
    _ = try manager().groups.detach(.group(5))
    XCTAssertEqual(binding("0000:00:05.0")?.driver, "vfio-pci")
    XCTAssertEqual(binding("0000:00:05.1"), before)
    XCTAssertFalse(kernel.writes.contains { $0.contains("0000:00:05.1") })
  }

  func testBridgeGroupMovesBothFunctionsKeepsTheBridgeAndResetsTheBusOnce() throws {
    try setUpTree()
    let report = try manager().groups.detach(.device(address("01:01.0")))
    XCTAssertEqual(report.steps.map(\.action), [.keep, .keep, .resetNow])
    XCTAssertEqual(kernel.busResets, [["0000:01:01.0", "0000:01:02.0"]])
    XCTAssertFalse(kernel.writes.contains { $0.contains("0000:00:04.0") })
    XCTAssertEqual(try ledger().members(of: 4).map(\.address), ["0000:01:01.0", "0000:01:02.0"])
    // They were on vfio-pci by driver_override when captured: that is what attach restores.
    _ = try manager().groups.attach(.group(4))
    XCTAssertEqual(binding("0000:01:02.0"), DriverBinding(driver: "vfio-pci", driverOverride: "vfio-pci"))
  }

  func testDryRunChangesNothingAndCreatesNoLedger() throws {
    try setUpTree()
    let before = snapshot()
    let report = try manager().groups.detach(.group(10), dryRun: true)
    XCTAssertEqual(report.outcome, .dryRun)
    XCTAssertEqual(report.steps.map(\.action), [.unbind, .setDriverOverride, .probe, .resetNow])
    XCTAssertEqual(snapshot(), before)
    XCTAssertEqual(kernel.writes, [])
    XCTAssertNil(try Ledger.open(directory: state.path, create: false))
  }

  func testDetachingTwiceIsAlreadyDoneAndKeepsTheFirstOriginals() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    let again = try manager().groups.detach(.group(2))
    XCTAssertEqual(again.outcome, .alreadyDone)
    XCTAssertEqual(try ledger().members(of: 2).map(\.originalDriver), ["e1000e"])
  }

  func testRefusesAMountedDisk() throws {
    try setUpTree()
    let mountinfo = tree.path + "/proc/self/mountinfo"
    let text = (try? String(contentsOfFile: mountinfo, encoding: .utf8)) ?? ""
    try tree.write(mountinfo, text: text + "40 1 259:0 / /srv rw,relatime - ext4 /dev/nvme0n1 rw\n")
    try assertRefused({ _ = try manager().groups.detach(.device(address("02:00.0"))) }, code: "host-in-use", mentions: "mounted at /srv")
  }

  func testRefusesActiveSwap() throws {
    try setUpTree()
    let swaps = tree.path + "/proc/swaps"
    let text = (try? String(contentsOfFile: swaps, encoding: .utf8)) ?? ""
    try tree.write(swaps, text: text + "/dev/nvme0n1                            partition\t1020\t0\t-2\n")
    try assertRefused({ _ = try manager().groups.detach(.group(10)) }, code: "host-in-use", mentions: "swap")
  }

  func testRefusesAnInterfaceThatIsUpWithRoutesUnlessForced() throws {
    try setUpTree()
    try tree.write(tree.path + "/sys/class/net/eth0/flags", text: "0x1003\n")
    try tree.write(tree.path + "/sys/class/net/eth0/operstate", text: "up\n")
    try tree.write(
      tree.path + "/proc/net/route",
      text: "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    let owner = try XCTUnwrap(Fixtures.inventory("q35-vtd").hostUse.first { $0.value.contains { $0.subject == "eth0" } }?.key)
    try assertRefused({ _ = try manager().groups.detach(.device(owner)) }, code: "host-in-use", mentions: "eth0")
    // --force for another device does not cover it; for this one it does.
    XCTAssertThrowsError(try manager().groups.detach(.device(owner), force: [address("01:01.0")]))
    let forced = try manager().groups.detach(.device(owner), force: [owner])
    XCTAssertTrue(forced.notes.contains { $0.hasPrefix("forced (--force)") })
    XCTAssertEqual(binding(owner.description)?.driver, "vfio-pci")
  }

  func testNoResetBlocksUnlessAllowed() throws {
    try setUpTree()
    try assertRefused({ _ = try manager().groups.detach(.device(address("00:03.0"))) }, code: "no-reset", mentions: "no reset method")
    let report = try manager().groups.detach(.device(address("00:03.0")), allowNoReset: true)
    XCTAssertEqual(report.steps.map(\.action), [.keep])
    XCTAssertTrue(report.notes.contains { $0.contains("--allow-no-reset") })
  }

  func testRefusesABridgeAndAPlatformGroup() throws {
    try setUpTree()
    try assertRefused({ _ = try manager().groups.detach(.device(address("00:04.0"))) }, code: "not-endpoint", mentions: "bridge")
    try assertRefused({ _ = try manager().groups.detach(.group(9)) }, code: "platform-device", mentions: "00:1f.0")
  }

  func testHalfOwnedGroupWithABusyMemberIsRefusedWhole() throws {
    try setUpTree()
    // 01:02.0 goes back to a host driver with a mounted-looking use: the group is half owned.
    let dir = kernel.devicePath("0000:01:02.0")
    unlink(dir + "/driver")
    symlink(tree.path + "/sys/bus/pci/drivers/e1000e", dir + "/driver")
    try tree.write(dir + "/driver_override", text: "(null)\n")
    let net = tree.path + "/sys/class/net/eth9"
    symlink(dir + "/net/eth9", net)
    mkdir(dir + "/net", 0o755)
    mkdir(dir + "/net/eth9", 0o755)
    try tree.write(dir + "/net/eth9/flags", text: "0x1003\n")
    try tree.write(dir + "/net/eth9/operstate", text: "up\n")
    try tree.write(
      tree.path + "/proc/net/route",
      text: "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth9\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    try assertRefused({ _ = try manager().groups.detach(.group(4)) }, code: "host-in-use", mentions: "0000:01:02.0")
    XCTAssertEqual(binding("0000:01:01.0")?.driver, "vfio-pci")
  }

  func testUnknownDeviceAndGroup() throws {
    try setUpTree()
    XCTAssertThrowsError(try manager().groups.detach(.device(address("05:00.0")))) { error in
      XCTAssertEqual(error as? ManagerError, .noSuchDevice("0000:05:00.0"))
      XCTAssertEqual((error as? ManagerError)?.exitCode, 66)
    }
    XCTAssertThrowsError(try manager().groups.attach(.group(77))) { XCTAssertEqual($0 as? ManagerError, .noSuchGroup(77)) }
    XCTAssertEqual(kernel.writes, [])
  }

  func testAttachOfAGroupNobodyDetachedIsRefused() throws {
    try setUpTree()
    XCTAssertThrowsError(try manager().groups.attach(.group(3))) { error in
      guard case ManagerError.notDetached(3, let why) = error else { return XCTFail("\(error)") }
      XCTAssertTrue(why.contains("0000:00:03.0 on vfio-pci (driver_override vfio-pci)"), why)
    }
    XCTAssertEqual(kernel.writes, [])
  }

  func testAttachIsRefusedWhileAProcessHoldsTheGroup() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    mkdir(tree.path + "/proc/4242", 0o755)
    mkdir(tree.path + "/proc/4242/fd", 0o755)
    // The descriptor's file is the group node itself (the simulated kernel's node in the tree).
    symlink(tree.path + "/dev/vfio/2", tree.path + "/proc/4242/fd/7")
    try tree.write(tree.path + "/proc/4242/comm", text: "qemu-system-x86\n")
    let writes = kernel.writes.count
    try assertRefused({ _ = try manager().groups.attach(.group(2)) }, code: "open", mentions: "pid 4242 (qemu-system-x86) has /dev/vfio/2 open")
    XCTAssertEqual(kernel.writes.count, writes)
    XCTAssertEqual(try ledger().group(2)?.state, .detached)
  }

  /// A file that only has the node's name (in the kernel: a plain file at /dev/vfio/2 in a
  /// private mount namespace, whose fd link reads "/dev/vfio/2") is not the node.
  func testAFileNamedLikeTheGroupNodeIsNoHolder() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    mkdir(tree.path + "/elsewhere", 0o755)
    mkdir(tree.path + "/elsewhere/vfio", 0o755)
    try tree.write(tree.path + "/elsewhere/vfio/2", text: "not a device\n")
    mkdir(tree.path + "/proc/202", 0o755)
    mkdir(tree.path + "/proc/202/fd", 0o755)
    symlink(tree.path + "/elsewhere/vfio/2", tree.path + "/proc/202/fd/3")
    try tree.write(tree.path + "/proc/202/comm", text: "sleep\n")
    XCTAssertEqual(OpenHolderScanner(sysfs: Sysfs(root: tree.path)).holders(group: 2, devices: [address("00:02.0")]), [])
    XCTAssertNoThrow(try manager().groups.attach(.group(2)))
  }

  func testADifferentCardInTheSlotIsReportedAndLeftAlone() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    // The inventory takes IDs from config space, as the kernel does: bytes 2-3 are the device ID.
    let config = kernel.devicePath("0000:00:02.0") + "/config"
    var bytes = try XCTUnwrap(FileManager.default.contents(atPath: config).map(Array.init))
    bytes[2] = 0xd4
    try tree.write(config, bytes: bytes)
    try tree.write(kernel.devicePath("0000:00:02.0") + "/device", text: "0x10d4\n")
    let report = try manager().groups.attach(.group(2))
    XCTAssertTrue(report.notes.contains { $0.contains("not the 8086:10d3 that was detached") }, "\(report.notes)")
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "vfio-pci")
  }

  // MARK: Resets

  func testResetUsesTheKernelsMethodOrSelectsAnother() throws {
    try setUpTree()
    _ = try manager().groups.reset(.device(address("02:00.0")))
    XCTAssertEqual(kernel.writes, ["/sys/bus/pci/devices/0000:02:00.0/reset <- 1"])
    // A bus reset only once nothing on the bus is the host's: the nvme driver still is.
    XCTAssertThrowsError(try manager().groups.reset(.device(address("02:00.0")), method: ResetMethod(rawValue: "bus"))) {
      XCTAssertTrue("\($0)".contains("0000:02:00.0 (on nvme)"), "\($0)")
    }
    _ = try manager().groups.detach(.group(10))
    let detachWrites = kernel.writes.count
    _ = try manager().groups.reset(.device(address("02:00.0")), method: ResetMethod(rawValue: "bus"))
    XCTAssertEqual(
      Array(kernel.writes.dropFirst(detachWrites)),
      [
        "/sys/bus/pci/devices/0000:02:00.0/reset_method <- bus",
        "/sys/bus/pci/devices/0000:02:00.0/reset <- 1",
        "/sys/bus/pci/devices/0000:02:00.0/reset_method <- flr bus",
      ])
    XCTAssertThrowsError(try manager().groups.reset(.device(address("00:02.0")), method: ResetMethod(rawValue: "flr"))) {
      XCTAssertTrue("\($0)".contains("does not support flr (it has: pm)"), "\($0)")
    }
  }

  func testBusResetThatHitsAFunctionOnAHostDriverIsRefused() throws {
    try setUpTree()
    let dir = kernel.devicePath("0000:01:02.0")
    unlink(dir + "/driver")
    symlink(tree.path + "/sys/bus/pci/drivers/e1000e", dir + "/driver")
    try assertRefused(
      { _ = try manager().groups.reset(.device(address("01:01.0"))) }, code: "bus-reset-busy", mentions: "0000:01:02.0 (on e1000e)")
    XCTAssertEqual(kernel.busResets, [])
  }

  func testResetOfAnOpenDeviceIsRefused() throws {
    try setUpTree()
    mkdir(tree.path + "/proc/77", 0o755)
    mkdir(tree.path + "/proc/77/fd", 0o755)
    // A node the kernel would have made for the group (its devices are opened through it).
    try tree.write(tree.path + "/dev/vfio/10", text: "")
    symlink(tree.path + "/dev/vfio/10", tree.path + "/proc/77/fd/3")
    try assertRefused({ _ = try manager().groups.reset(.device(address("02:00.0"))) }, code: "open", mentions: "pid 77")
    XCTAssertNoThrow(try manager().groups.reset(.device(address("00:02.0"))))
  }

  // MARK: Failures, crashes, locks

  func testAFailedStepRollsEveryDeviceBack() throws {
    try setUpTree()
    kernel.failWrite = { path, _ in path == "/sys/bus/pci/drivers_probe" ? EINVAL : nil }
    XCTAssertThrowsError(try manager().groups.detach(.group(2))) { error in
      guard case ManagerError.stepFailed(2, 3, _, let why, true, []) = error else { return XCTFail("\(error)") }
      XCTAssertTrue(why.contains("Invalid argument"), why)
      XCTAssertEqual((error as? ManagerError)?.exitCode, 74)
    }
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))
    XCTAssertEqual(try ledger().group(2)?.state, .host)
    XCTAssertEqual(try ledger().operations(group: 2).map(\.status), [.rolledBack])
    XCTAssertEqual(try ledger().history(group: 2).map(\.result), ["rolled-back"])
  }

  /// What a process killed after step `k` leaves: the ledger says k-1 steps are done, sysfs
  /// shows k. The next command must put it right.
  func interruptedDetach(group: IOMMUGroupID, after k: Int) throws -> [PlanStep] {
    let manager = manager()
    let inventory = try manager.groups.readInventory()
    let ledger = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    let planned = try manager.groups.planDetach(
      .group(group), group: group, inventory: inventory, ledger: ledger, driver: "vfio-pci", force: [],
      allowNoReset: false)
    let steps = planned.plan.detach
    try ledger.write { db in
      var operation = manager.groups.newOperation(.detach, group: group, steps: steps)
      operation.stepsDone = k - 1
      operation.pid = 999_999
      try LedgerGroup(id: group, state: .changing, driver: "vfio-pci", since: Date(), uid: 0).save(db)
      for member in planned.originals { try member.insert(db) }
      try operation.insert(db)
    }
    for step in steps.prefix(k) {
      try manager.executor.perform(step)
    }
    return steps
  }

  func testEveryCrashPointOfADetachIsRolledBackByTheNextCommand() throws {
    try setUpTree()
    let steps = try XCTUnwrap(Assessor(inventory: Fixtures.inventory("q35-vtd")).assess(group: 2).plan?.detach)
    for k in 1...steps.count {
      tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
      state = try TemporaryTree()
      kernel = SimulatedKernel(root: tree.path)
      _ = try interruptedDetach(group: 2, after: k)
      let status = try manager().records.status(.group(2))
      XCTAssertEqual(status.groups.first?.unfinished?.stepsDone, k - 1)
      let report = try manager().groups.detach(.group(2))
      XCTAssertTrue(report.recovered?.contains("rolled back the interrupted detach") == true, "step \(k)")
      XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "vfio-pci", driverOverride: "vfio-pci"), "step \(k)")
      XCTAssertEqual(try ledger().members(of: 2).map(\.originalDriver), ["e1000e"], "step \(k)")
      _ = try manager().groups.attach(.group(2))
      XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil), "step \(k)")
    }
  }

  func testRecoverFinishesAnInterruptedAttach() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    let ledger = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    let m = manager()
    let planned = try m.groups.planAttach(group: 2, inventory: try m.groups.readInventory(), ledger: ledger)
    try ledger.write { db in
      var operation = m.groups.newOperation(.attach, group: 2, steps: planned.steps)
      operation.pid = 999_999
      try operation.insert(db)
    }
    for step in planned.steps.prefix(2) { try m.executor.perform(step) }  // reset, unbind: then killed
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: nil, driverOverride: "vfio-pci"))
    let reports = try manager().groups.recover()
    XCTAssertEqual(reports.count, 1)
    XCTAssertTrue(reports[0].recovered?.contains("finished the interrupted attach") == true)
    XCTAssertEqual(reports[0].action, .attach)
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))
    XCTAssertEqual(try self.ledger().group(2)?.state, .host)
    XCTAssertEqual(try manager().groups.recover().count, 0)
  }

  func testASecondCommandOnABusyGroupFailsNamingTheHolder() throws {
    try setUpTree()
    let held = try GroupLock(group: 2, stateDirectory: state.path, timeout: 1, command: "vfioctl detach 2")
    XCTAssertThrowsError(try manager(lockTimeout: 0.1).groups.detach(.group(2))) { error in
      guard case ManagerError.busy(2, let holder, _) = error else { return XCTFail("\(error)") }
      XCTAssertEqual(holder, "pid \(getpid()) (vfioctl detach 2)")
      XCTAssertEqual((error as? ManagerError)?.exitCode, 75)
    }
    XCTAssertEqual(kernel.writes, [])
    withExtendedLifetime(held) {}
    // Another group is not blocked by it.
    XCTAssertNoThrow(try manager(lockTimeout: 0.1).groups.detach(.group(10)))
  }

  func testAttachPlansFromWhatSysfsShowsWhenAMemberWasReboundBehindOurBack() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    // Someone hands the e1000e back by hand, leaving the override behind.
    try kernel.write("0000:00:02.0", to: "/sys/bus/pci/devices/0000:00:02.0/driver/unbind")
    let before = kernel.writes.count
    let report = try manager().groups.attach(.group(2))
    XCTAssertEqual(report.steps.map(\.action), [.resetNow, .clearDriverOverride, .bind])
    XCTAssertFalse(kernel.writes.dropFirst(before).contains { $0.contains("driver/unbind") })
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))
  }

  func testADeviceThatDisappearedIsReportedNotFatal() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(4))
    // Hot-removed while detached: gone from the bus, and from its group.
    unlink(tree.path + "/sys/bus/pci/devices/0000:01:02.0")
    unlink(tree.path + "/sys/kernel/iommu_groups/4/devices/0000:01:02.0")
    let report = try manager().groups.attach(.group(4))
    XCTAssertTrue(report.notes.contains { $0.contains("0000:01:02.0 (8086:100e) is gone from the host") }, "\(report.notes)")
    XCTAssertEqual(try ledger().group(4)?.state, .host)
  }

  /// Every group of every captured topology that has a plan: detach runs exactly explain's
  /// steps, attach exactly its restore, and afterwards every device of the tree is bound as
  /// it was when captured.
  func testEveryCapturedTopologyRoundTripsExactly() throws {
    var groupsChecked = 0
    for fixture in ["q35-vtd", "q35-iommufd", "q35-sriov", "q35-virtio-iommu", "q35-amd-iommu", "pseries"] {
      try setUpTree(fixture)
      let inventory = try Fixtures.inventory(fixture)
      let original = snapshot()
      for group in inventory.groups {
        guard let plan = Assessor(inventory: inventory).assess(group: group.id).plan else { continue }
        let detached = try manager().groups.detach(.group(group.id))
        XCTAssertEqual(detached.steps, plan.detach, "\(fixture) group \(group.id)")
        let attached = try manager().groups.attach(.group(group.id))
        // A group the capture already shows on vfio-pci has nothing to restore but its resets.
        let expected = plan.restore.isEmpty ? plan.detach.filter { $0.action == .resetNow } : plan.restore
        XCTAssertEqual(attached.steps, expected, "\(fixture) group \(group.id)")
        XCTAssertEqual(snapshot(), original, "\(fixture) group \(group.id) did not come back exactly")
        groupsChecked += 1
      }
    }
    XCTAssertGreaterThan(groupsChecked, 20)
  }

  func testASysfsWriteThatNeverReturnsIsBoundedAndReported() throws {
    let dir = try TemporaryTree()
    mkdir(dir.path + "/sys", 0o755)
    // A FIFO nobody reads: open(O_WRONLY) blocks, as a driver's remove can.
    XCTAssertEqual(mkfifo(dir.path + "/sys/stuck", 0o600), 0)
    let host = LiveHost(sysfs: Sysfs(root: dir.path), writeTimeout: 0.3)
    let start = Date()
    XCTAssertThrowsError(try host.write("0000:00:02.0", to: "/sys/stuck")) { error in
      XCTAssertTrue("\(error)".contains("no answer after 300 ms"), "\(error)")
    }
    XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    // Unblock the abandoned writer so the test leaves no thread behind.
    let fd = open(dir.path + "/sys/stuck", O_RDONLY | O_NONBLOCK)
    usleep(100_000)
    close(fd)
  }

  // MARK: The ledger

  func testAnEmptyFileIsMigratedAndANewerSchemaIsRefused() throws {
    try setUpTree()
    try state.write(state.path + "/ledger.sqlite", bytes: [])
    let ledger = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    XCTAssertEqual(try ledger.groups(), [])
    // What a later vfioctl leaves: one more migration, and the schema version it brings.
    try ledger.write { db in
      try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99-future')")
      try db.execute(sql: "PRAGMA user_version = 99")
    }
    XCTAssertThrowsError(try Ledger.open(directory: state.path, create: true)) { error in
      XCTAssertEqual(error as? ManagerError, .ledgerTooNew(path: state.path + "/ledger.sqlite", unknown: ["v99-future"]))
      XCTAssertEqual((error as? ManagerError)?.exitCode, 65)
    }
    let before = snapshot()
    XCTAssertThrowsError(try manager().groups.detach(.group(2)))
    XCTAssertEqual(snapshot(), before)
  }

  func testHistoryIsAppendOnly() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    let ledger = try ledger()
    XCTAssertThrowsError(try ledger.write { db in try db.execute(sql: "UPDATE history SET result = 'forged'") })
    XCTAssertThrowsError(try ledger.write { db in try db.execute(sql: "DELETE FROM history") })
    XCTAssertEqual(try ledger.history().count, 1)
  }

  func testAGarbageLedgerIsAClearError() throws {
    try setUpTree()
    try state.write(state.path + "/ledger.sqlite", text: String(repeating: "not a database ", count: 100))
    XCTAssertThrowsError(try manager().groups.detach(.group(2))) { error in
      guard case ManagerError.ledger = error else { return XCTFail("\(error)") }
    }
    XCTAssertEqual(kernel.writes, [])
  }
}
