import Foundation
import PCI
import VFIOHost
import VFIOManagerTestCase
import VFIOManagerTestSupport
import VFIOPolicy
import XCTest

@testable import VFIOManager

/// `detach` and `attach` of several groups in one call (`GroupBatch`), on the q35-vtd capture:
/// group 2 (an e1000e), group 4 (two e1000 behind a PCIe-to-PCI bridge, one bus reset) and
/// group 10 (an NVMe controller).
final class BatchTests: ManagerTestCase {
  func testABatchDetachesEveryGroupAndAttachGivesThemAllBackExactly() throws {
    try setUpTree()
    let before = snapshot()
    let detached = try manager().groups.detach([.group(2), .device(address("0000:01:01.0")), .group(10)])
    XCTAssertEqual(try detached.map { try $0.get().group }, [2, 4, 10], "one outcome per group, in the targets' order")
    XCTAssertEqual(try detached.map { try $0.get().outcome }, [.done, .done, .done])
    XCTAssertEqual(try ledger().groups().filter { $0.state == .detached }.map(\.id).sorted(), [2, 4, 10])
    for device in ["0000:00:02.0", "0000:01:01.0", "0000:01:02.0", "0000:02:00.0"] {
      XCTAssertEqual(binding(device)?.driver, "vfio-pci", device)
    }
    XCTAssertEqual(kernel.busResets, [["0000:01:01.0", "0000:01:02.0"]], "the bridge group's bus reset, once")
    XCTAssertEqual(try ledger().operations(group: 4).map(\.status), [.done])

    let attached = try manager().groups.attach([.group(10), .group(2), .group(4)])
    XCTAssertEqual(try attached.map { try $0.get().group }, [10, 2, 4])
    XCTAssertEqual(try attached.map { try $0.get().outcome }, [.done, .done, .done])
    XCTAssertEqual(snapshot(), before, "every device on exactly its original binding")
    XCTAssertEqual(try ledger().groups().filter { $0.state != .host }.map(\.id), [])
  }

  func testFunctionsOfOneGroupNamedTwiceAreOneGroupChangedOnce() throws {
    try setUpTree()
    let outcomes = try manager().groups.detach([.device(address("0000:01:01.0")), .device(address("0000:01:02.0")), .group(4)])
    XCTAssertEqual(outcomes.count, 1)
    XCTAssertEqual(try outcomes[0].get().group, 4)
    XCTAssertEqual(try ledger().operations(group: 4).count, 1)
    XCTAssertEqual(kernel.busResets.count, 1)
  }

  func testOneRefusedGroupRefusesTheWholeBatchAndNothingChanges() throws {
    try setUpTree()
    let before = snapshot()
    // Group 1 (the VGA device on the root bus) has no reset method.
    XCTAssertThrowsError(try manager().groups.detach([.group(2), .group(1), .group(10)])) { error in
      guard case ManagerError.refusedGroups(let refused) = error else { return XCTFail("\(error)") }
      XCTAssertEqual(Array(refused.keys), [1])
      XCTAssertTrue("\(error)".hasPrefix("nothing was changed"), "\(error)")
      XCTAssertEqual((error as? ManagerError)?.exitCode, 1)
    }
    XCTAssertEqual(snapshot(), before)
    XCTAssertEqual(kernel.writes, [])
    XCTAssertEqual(historyCount(), 0)
  }

  func testAGroupWhoseStepFailsIsPutBackAndTheOthersStayDetached() throws {
    try setUpTree()
    kernel.failWrite = { path, value in
      path == "/sys/bus/pci/drivers_probe" && value == "0000:00:02.0" ? EINVAL : nil
    }
    let outcomes = try manager().groups.detach([.group(2), .group(10)])
    guard case .failure(.stepFailed(2, 3, _, _, true, [])) = outcomes[0] else { return XCTFail("\(outcomes[0])") }
    XCTAssertEqual(try outcomes[1].get().outcome, .done)
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "e1000e", driverOverride: nil))
    XCTAssertEqual(binding("0000:02:00.0")?.driver, "vfio-pci")
    XCTAssertEqual(try ledger().group(2)?.state, .host)
    XCTAssertEqual(try ledger().group(10)?.state, .detached)
    XCTAssertEqual(try ledger().operations(group: 2).map(\.status), [.rolledBack])
  }

  func testABatchThatCannotLockEveryGroupChangesNone() throws {
    try setUpTree()
    let before = snapshot()
    let held = try GroupLock(group: 10, stateDirectory: state.path, timeout: 1, command: "vfioctl detach 10")
    XCTAssertThrowsError(try manager(lockTimeout: 0.1).groups.detach([.group(2), .group(10)])) { error in
      guard case ManagerError.busy(10, _, _) = error else { return XCTFail("\(error)") }
    }
    withExtendedLifetime(held) {}
    XCTAssertEqual(snapshot(), before)
    XCTAssertEqual(kernel.writes, [])
  }

  func testADryRunBatchPlansEveryGroupAndChangesNothing() throws {
    try setUpTree()
    let before = snapshot()
    let planned = try manager().groups.detach([.group(10), .group(2)], dryRun: true)
    XCTAssertEqual(try planned.map { try $0.get().outcome }, [.dryRun, .dryRun])
    XCTAssertEqual(try planned.map { try $0.get().group }, [10, 2])
    XCTAssertEqual(snapshot(), before)
    XCTAssertNil(try Ledger.open(directory: state.path, create: false), "no ledger made by a dry run")
  }

  func testGroupsThatTouchACommonFunctionFormOneChain() {
    let a = address("0000:00:02.0")
    let b = address("0000:01:01.0")
    let c = address("0000:01:02.0")
    let d = address("0000:02:00.0")
    XCTAssertEqual(GroupBatch.chains([[a], [b, c], [d], [c]]), [[0], [1, 3], [2]])
    XCTAssertEqual(GroupBatch.chains([[a, b], [c], [b, d], [d], [c]]), [[0, 2, 3], [1, 4]])
    XCTAssertEqual(GroupBatch.chains([]), [])
  }
}

extension BatchTests {
  /// The ledger's writes per group: one transaction records the plan, one marks each step but
  /// the last, and one marks the last, ends the operation and writes the history.
  func testADetachAndAnAttachWriteTheLedgerOncePerStep() throws {
    try setUpTree()
    let detaching = manager()
    let detached = try detaching.groups.detach(.group(2))
    XCTAssertEqual(detached.steps.count, 4)
    XCTAssertEqual(detaching.timings.ledgerTransactions, 1 + 4, "the plan, then one per step (was 1 + 4 + 2)")
    XCTAssertEqual(try ledger().operations(group: 2).map(\.stepsDone), [4])
    XCTAssertEqual(try ledger().history(group: 2).map(\.result), ["ok"])
    let attaching = manager()
    let attached = try attaching.groups.attach(.group(2))
    XCTAssertEqual(attaching.timings.ledgerTransactions, 1 + attached.steps.count)
    XCTAssertEqual(try ledger().history(group: 2).map(\.result), ["ok", "ok"])
  }
}

extension BatchTests {
  /// Holders are looked for in one walk of /proc for every group; one held group refuses all.
  func testAProcessHoldingOneGroupRefusesTheWholeAttach() throws {
    try setUpTree()
    _ = try manager().groups.detach([.group(2), .group(10)])
    mkdir(tree.path + "/proc/4242", 0o755)
    mkdir(tree.path + "/proc/4242/fd", 0o755)
    symlink(tree.path + "/dev/vfio/10", tree.path + "/proc/4242/fd/7")
    try tree.write(tree.path + "/proc/4242/comm", text: "qemu-system-x86\n")
    let writes = kernel.writes.count
    XCTAssertThrowsError(try manager().groups.attach([.group(2), .group(10)])) { error in
      guard case ManagerError.refusedGroups(let refused) = error else { return XCTFail("\(error)") }
      XCTAssertEqual(refused[10]?.map(\.code), ["open"])
      XCTAssertNil(refused[2])
      XCTAssertTrue("\(error)".contains("pid 4242 (qemu-system-x86) has /dev/vfio/10 open"), "\(error)")
    }
    XCTAssertEqual(kernel.writes.count, writes)
    XCTAssertEqual(try ledger().group(2)?.state, .detached)
    XCTAssertEqual(try ledger().group(10)?.state, .detached)
  }
}

extension BatchTests {
  /// A detach and an attach read the functions their verdicts need, not the whole host: on the
  /// q35-sriov capture, a VF's group reads the VF, its PF (whose IDs it carries) and the bridge
  /// above, and none of the other functions' config space.
  func testADetachAndAnAttachReadOnlyTheFunctionsTheirVerdictNeeds() throws {
    try setUpTree("q35-sriov")
    let whole = try HostInventory.read(Sysfs(root: tree.path), pageSize: 4096)
    let vf = try XCTUnwrap(whole.devices.first { $0.isVirtualFunction })
    let group = try XCTUnwrap(vf.iommuGroup)
    let expected = Set(([vf.address, try XCTUnwrap(vf.physicalFunction)] + vf.upstreamBridges).map(\.description))
    XCTAssertLessThan(expected.count, whole.devices.count)
    for change in ["detach", "attach"] {
      let recorder = AccessRecorder()
      let manager = AssignmentManager(
        sysfs: Sysfs(root: tree.path, recorder: recorder), host: kernel,
        configuration: .init(stateDirectory: state.path, lockTimeout: 0.2, command: "test"))
      let report =
        change == "detach" ? try manager.groups.detach(.group(group)) : try manager.groups.attach(.group(group))
      XCTAssertEqual(report.outcome, .done, change)
      // Config space is what reading a function costs most; each function read reads it once.
      let configs = recorder.accesses.filter { $0.access == .file && $0.path.hasSuffix("/config") }.map { path in
        String(path.path.split(separator: "/").dropLast().last ?? "")
      }
      XCTAssertEqual(Set(configs), expected, change)
    }
    XCTAssertEqual(binding(vf.address.description), DriverBinding(vf))
  }
}
