import Foundation
import VFIOHost
import VFIOPolicy
import VFIOManagerTestCase
import VFIOTestSupport
import XCTest

@testable import VFIOManager

/// Owners, reservations, persistence and SR-IOV VFs on scratch copies of captured trees.
final class OwnershipTests: ManagerTestCase {
  func owner(_ node: String) -> (uid: Int, gid: Int, mode: Int)? { Sysfs(root: tree.path).permissions(node) }

  func testOwnerParsing() throws {
    XCTAssertEqual(try Ownership.parse("1000:1001"), Ownership(uid: 1000, gid: 1001, mode: 0o660))
    XCTAssertEqual(try Ownership.parse("root"), Ownership(uid: 0, gid: 0, mode: 0o660))
    XCTAssertEqual(try Ownership.parse("root:root", mode: "0600"), Ownership(uid: 0, gid: 0, mode: 0o600))
    XCTAssertEqual(try Ownership.parse("4242", mode: "0o640").mode, 0o640)
    for (text, mode) in [("", nil), ("1000:", nil), ("no-such-user-here", nil), ("1000:no-such-group-here", nil),
      ("1000", "0666"), ("1000", "0644x"), ("1000", "0060"), ("1000", "01777"), ("-5", nil)] as [(String, String?)]
    {
      XCTAssertThrowsError(try Ownership.parse(text, mode: mode), "\(text) \(mode ?? "")") { error in
        guard case ManagerError.usage = error else { return XCTFail("\(error)") }
        XCTAssertEqual((error as? ManagerError)?.exitCode, 64)
      }
    }
  }

  func testDetachWithAnOwnerGivesTheGroupNodeAndCdevAndAttachEndsTheClaim() throws {
    try setUpTree("q35-iommufd")
    let me = Ownership(uid: 1000, gid: 1000)
    _ = try manager().groups.detach(.group(2), owner: me)
    XCTAssertEqual(owner("/dev/vfio/2")?.uid, 1000)
    XCTAssertEqual(owner("/dev/vfio/2")?.mode, 0o660)
    // edu already has a cdev in the capture: it is given too.
    _ = try manager().groups.detach(.group(3), allowNoReset: true, owner: me)
    XCTAssertEqual(owner("/dev/vfio/3")?.gid, 1000)
    XCTAssertTrue(kernel.writes.contains("/dev/vfio/devices/vfio0 <- owner 1000:1000 mode 0660"), "\(kernel.writes)")
    // Attach: the group is the host's again, and the owner's claim ends with it (the node is
    // gone too). A later plain detach is the host's: root's node, no owner.
    let attached = try manager().groups.attach(.group(2))
    XCTAssertTrue(attached.notes.contains("uid 1000 no longer owns IOMMU group 2"), "\(attached.notes)")
    XCTAssertNil(owner("/dev/vfio/2"))
    XCTAssertNil(try ledger().group(2)?.ownerUID)
    _ = try manager().groups.detach(.group(2))
    XCTAssertNotEqual(owner("/dev/vfio/2")?.uid, 1000, "a group given back to the host is not given to its old owner again")
    let owners = try manager().access.owners()
    XCTAssertEqual(owners.map(\.group), [2, 3])
    XCTAssertEqual(owners.map(\.owner), [nil, me])
  }

  func testOwnAndDisown() throws {
    try setUpTree()
    XCTAssertThrowsError(try manager().access.own(.group(2), owner: Ownership(uid: 1000, gid: 0))) { error in
      guard case ManagerError.notDetached = error else { return XCTFail("\(error)") }
    }
    _ = try manager().groups.detach(.group(2))
    let report = try manager().access.own(.group(2), owner: Ownership(uid: 1000, gid: 0, mode: 0o600))
    XCTAssertEqual(report.owner?.mode, 0o600)
    XCTAssertEqual(owner("/dev/vfio/2")?.uid, 1000)
    _ = try manager().access.disown(.group(2))
    XCTAssertEqual(owner("/dev/vfio/2")?.uid, 0)
    XCTAssertEqual(owner("/dev/vfio/2")?.mode, 0o600)
    XCTAssertNil(try ledger().group(2)?.ownerUID)
  }

  func testAReservedGroupStaysDetachedAndIsNotAssignableForOthers() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    _ = try manager().access.reserve(.group(2), for: "vm1", owner: Ownership(uid: 1000, gid: 1000))
    try assertRefused({ _ = try manager().groups.attach(.group(2)) }, code: "reserved", mentions: "reserved for vm1")
    XCTAssertThrowsError(try manager().access.disown(.group(2)))
    XCTAssertThrowsError(try manager().access.reserve(.group(2), for: "vm2", owner: nil))
    XCTAssertThrowsError(try manager().access.reserve(.group(2), for: "bad name!", owner: nil))

    let records = try LedgerRecord.all(directory: state.path)
    let inventory = try HostInventory.read(Sysfs(root: tree.path), pageSize: 4096)
    let asRoot = Assessor(inventory: inventory, reservations: LedgerRecord.reservations(records), callerUID: 0)
    XCTAssertEqual(asRoot.assess(group: 2).verdict, .notAssignable)
    XCTAssertTrue(asRoot.assess(group: 2).reasons.contains { $0.code == .reserved && $0.message.contains("vm1 (owner 1000)") })
    let asOwner = Assessor(inventory: inventory, reservations: LedgerRecord.reservations(records), callerUID: 1000)
    XCTAssertNotEqual(asOwner.assess(group: 2).verdict, .notAssignable)

    _ = try manager().groups.attach(.group(2), release: true)
    XCTAssertEqual(binding("0000:00:02.0")?.driver, "e1000e")
    XCTAssertNil(try ledger().group(2)?.reservedFor)
  }

  /// A vfioctl where the boot unit may run it from: /usr/local/bin, not writable by others.
  func installVfioctl() throws {
    try FileManager.default.createDirectory(atPath: tree.path + "/usr/local/bin", withIntermediateDirectories: true)
    try tree.write(tree.path + "/usr/local/bin/vfioctl", text: "#!/bin/sh\n")
    chmod(tree.path + "/usr/local/bin/vfioctl", 0o755)
  }

  func testPersistWritesRulesAndAnEnabledUnitAndRemovesThem() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(4), owner: Ownership(uid: 1000, gid: 100))
    XCTAssertThrowsError(try manager().persistence.persist(.group(2)))  // not detached
    // The unit runs vfioctl as root at every boot: never a binary others can write.
    XCTAssertThrowsError(try manager().persistence.persist(.group(4))) { XCTAssertTrue("\($0)".contains("install -o root"), "\($0)") }
    try installVfioctl()
    chmod(tree.path + "/usr/local/bin/vfioctl", 0o777)
    XCTAssertThrowsError(try manager().persistence.persist(.group(4)))
    chmod(tree.path + "/usr/local/bin/vfioctl", 0o755)
    _ = try manager().persistence.persist(.group(4))
    let rules = try String(contentsOfFile: tree.path + "/etc/udev/rules.d/70-swift-vfio.rules", encoding: .utf8)
    XCTAssertTrue(
      rules.contains(
        #"ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:01:01.0", ATTR{vendor}=="0x8086", ATTR{device}=="0x100e", ATTR{driver_override}="vfio-pci", RUN+="/bin/sh -c 'd=/sys%p; if [ -e $$d/driver ] && [ $$(basename $$(readlink $$d/driver)) != vfio-pci ]; then echo %k > $$d/driver/unbind; fi; echo %k > /sys/bus/pci/drivers_probe'""#
      ), rules)
    // The group node by its member, never by the number the kernel may give others.
    XCTAssertFalse(rules.contains(#"KERNEL=="4""#), rules)
    XCTAssertTrue(
      rules.contains(
        #"ACTION=="bind", SUBSYSTEM=="pci", KERNEL=="0000:01:02.0", ATTR{vendor}=="0x8086", ATTR{device}=="0x100e", DRIVER=="vfio-pci", RUN+="/bin/sh -c 'g=$$(basename $$(readlink /sys%p/iommu_group)); chown 1000:100 /dev/vfio/$$g && chmod 0660 /dev/vfio/$$g'""#
      ), rules)
    XCTAssertTrue(
      rules.contains(
        #"SUBSYSTEM=="vfio-dev", KERNELS=="0000:01:02.0", ATTRS{vendor}=="0x8086", ATTRS{device}=="0x100e", OWNER="1000", GROUP="100", MODE="0660""#
      ), rules)
    XCTAssertFalse(rules.contains("00:04.0"), "the bridge stays with the host")
    let unit = try String(contentsOfFile: tree.path + "/etc/systemd/system/swift-vfio-reconcile.service", encoding: .utf8)
    XCTAssertTrue(unit.contains("Type=oneshot"))
    XCTAssertTrue(unit.contains("ExecStart=/usr/local/bin/vfioctl reconcile --state \(state.path)\n"), unit)
    // Disowning regenerates the rules: the old owner does not come back at the next hot-plug.
    _ = try manager().access.disown(.group(4))
    let disowned = try String(contentsOfFile: tree.path + "/etc/udev/rules.d/70-swift-vfio.rules", encoding: .utf8)
    XCTAssertFalse(disowned.contains("1000"), disowned)
    XCTAssertTrue(disowned.contains(#"ATTR{driver_override}="vfio-pci""#), "still persisted, now the host's")
    XCTAssertEqual(
      try FileManager.default.destinationOfSymbolicLink(
        atPath: tree.path + "/etc/systemd/system/multi-user.target.wants/swift-vfio-reconcile.service"),
      "../swift-vfio-reconcile.service")
    _ = try manager().persistence.persist(.group(4), remove: true)
    XCTAssertFalse(FileManager.default.fileExists(atPath: tree.path + "/etc/udev/rules.d/70-swift-vfio.rules"))
    XCTAssertFalse(FileManager.default.fileExists(atPath: tree.path + "/etc/systemd/system/swift-vfio-reconcile.service"))
  }

  /// The broker's pass is written through statements that name their columns: every field of
  /// a lease, a history line and a refusal must read back as the records the rest of the
  /// ledger writes through `Codable`, so a column added to one and not the other shows here.
  func testTheBrokersStatementsWriteEveryColumnOfTheRecords() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: 1000, gid: 1000), brokerOnly: true)
    let ledger = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    // Whole milliseconds: the ledger keeps dates to the millisecond.
    let at = Date(timeIntervalSince1970: 1_796_000_000.125)
    let lease = LedgerLease(
      groupID: 2, uid: 1000, gid: 1001, pid: 4242, command: "qemu", backend: "iommufd", device: "0000:00:02.0",
      guest: "vm-db", started: at, bootID: "boot-1", pidStart: 987_654)
    let entry = HistoryEntry(
      at: at, uid: 1000, pid: 4242, groupID: 2, command: "broker qemu", result: "granted", detail: "iommufd: 2 descriptors")
    let refusal = LedgerRefusal(uid: 1002, groupID: 2, code: "not-owner", count: 3, first: at, last: at, detail: "pid 7: no")
    var records = BrokerRecords()
    records.grants = [lease]
    records.history = [entry]
    records.refusals = [refusal, refusal]
    try ledger.recordBroker(records)

    XCTAssertEqual(try ledger.lease(group: 2), lease)
    var written = try XCTUnwrap(try ledger.history(group: 2).last)
    XCTAssertNotNil(written.id)
    written.id = nil
    XCTAssertEqual(written, entry)
    var counted = refusal
    counted.count = 6
    XCTAssertEqual(try ledger.refusals(group: 2), [counted], "a second refusal adds to the count")

    records = BrokerRecords()
    records.endedLeases = [2]
    try ledger.recordBroker(records)
    XCTAssertNil(try ledger.lease(group: 2))
  }

  /// The manager's statements (begin, mark, finish) against the records they stand for: every
  /// column written is read back as the Codable record, and a group given back keeps nothing
  /// of a user's (the test fails when a column is left out of a statement).
  func testTheManagersStatementsWriteEveryColumnOfTheRecords() throws {
    try setUpTree()
    let ledger = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    // Whole milliseconds: the ledger keeps dates to the millisecond.
    let at = Date(timeIntervalSince1970: 1_796_000_000.125)
    let steps = [PlanStep(action: .unbind, device: address("0000:00:02.0"), driver: "e1000e")]
    let planned = LedgerOperation(
      id: nil, groupID: 7, kind: .detach, plan: "[{\"action\":\"unbind\"}]", stepsDone: 0, status: .running, started: at,
      finished: nil, pid: 4242, uid: 1000, command: "vfioctl detach 7", detail: nil)
    let member = LedgerMember(
      groupID: 7, address: "0000:00:02.0", vendorID: 0x8086, deviceID: 0x10d3, originalDriver: "e1000e",
      originalOverride: "e1000e")
    // Group 7 has no row yet: the detach makes it.
    var operation = try ledger.beginDetach(
      planned, driver: "vfio-pci", bootID: "boot-1", detachedBy: "vfs", originals: [member])
    XCTAssertNotNil(operation.id)
    XCTAssertEqual(try ledger.operations(group: 7), [operation])
    XCTAssertEqual(try ledger.members(of: 7), [member])
    var group = try XCTUnwrap(try ledger.group(7))
    XCTAssertEqual(
      [group.state.rawValue, group.driver, group.bootID, group.detachedBy], ["changing", "vfio-pci", "boot-1", "vfs"])
    XCTAssertEqual(group.uid, Int(getuid()))

    operation.stepsDone = 1
    try ledger.markStep(operation)
    XCTAssertEqual(try ledger.operations(group: 7).map(\.stepsDone), [1])
    let entry = HistoryEntry(at: at, uid: 1000, pid: 4242, groupID: 7, command: "vfioctl", result: "ok", detail: "detached")
    try ledger.finish(&operation, .done, detail: "all of it", groupState: .detached, history: entry)
    var finished = try XCTUnwrap(try ledger.operations(group: 7).first)
    XCTAssertEqual(
      [finished.status.rawValue, finished.detail, String(finished.stepsDone)], ["done", "all of it", "1"])
    XCTAssertEqual(finished.finished.map { abs($0.timeIntervalSince(operation.finished!)) < 0.002 }, true)
    finished.finished = operation.finished
    XCTAssertEqual(finished, operation)
    var written = try XCTUnwrap(try ledger.history(group: 7).last)
    written.id = nil
    XCTAssertEqual(written, entry)
    XCTAssertEqual(try ledger.group(7)?.state, .detached)

    // Everything a user can hold on the group, then an attach gives it back.
    try ledger.recordOwner(group: 7, Ownership(uid: 1000, gid: 1000), brokerOnly: true)
    try ledger.reserve(group: 7, Reservation(guest: "vm-db", since: at))
    try ledger.setPersisted(group: 7, true)
    try ledger.setClosing(group: 7, true)
    try ledger.setRunner(group: 7, ProcessIdentity(pid: 99, startTime: 1234))
    group = try XCTUnwrap(try ledger.group(7))
    XCTAssertNotNil(group.ownership)
    XCTAssertNotNil(group.reservedFor)
    var attach = try ledger.begin(
      LedgerOperation(starting: .attach, group: 7, steps: steps, command: "vfioctl attach 7"))
    XCTAssertEqual(try ledger.group(7)?.state, .changing)
    try ledger.finish(&attach, .done, groupState: .host)
    let given = try XCTUnwrap(try ledger.group(7))
    let expected = LedgerGroup(
      id: 7, state: .host, driver: group.driver, since: given.since, uid: group.uid, bootID: group.bootID,
      detachedBy: group.detachedBy)
    XCTAssertEqual(given, expected, "nothing of a user's stays with a group given back")
    XCTAssertEqual(try ledger.members(of: 7), [])
  }

  func testReconcileFinishesWhatShouldBeAndReportsWhatCannot() throws {
    try setUpTree()
    try installVfioctl()
    _ = try manager().groups.detach(.group(2), owner: Ownership(uid: 1000, gid: 1000))
    _ = try manager().persistence.persist(.group(2))
    _ = try manager().groups.detach(.group(10))
    // As after a reboot: the e1000e came up on its host driver, the nvme's detach was not
    // persisted and the boot is another one.
    let dir = kernel.devicePath("0000:00:02.0")
    try kernel.write("0000:00:02.0", to: "/sys/bus/pci/devices/0000:00:02.0/driver/unbind")
    try kernel.write("", to: "/sys/bus/pci/devices/0000:00:02.0/driver_override")
    try kernel.write("0000:00:02.0", to: "/sys/bus/pci/drivers/e1000e/bind")
    _ = dir
    mkdir(tree.path + "/proc/sys/kernel/random", 0o755)
    try tree.write(tree.path + "/proc/sys/kernel/random/boot_id", text: "00000000-0000-4000-8000-000000000001\n")
    let writable = try XCTUnwrap(try Ledger.open(directory: state.path, create: true))
    try writable.recordBoot(group: 10, bootID: "an-earlier-boot")
    let reports = try manager().persistence.reconcile()
    XCTAssertEqual(reports.map(\.group), [2, 10])
    XCTAssertEqual(reports.map(\.outcome), ["fixed", "ended"])
    XCTAssertEqual(binding("0000:00:02.0"), DriverBinding(driver: "vfio-pci", driverOverride: "vfio-pci"))
    XCTAssertEqual(owner("/dev/vfio/2")?.uid, 1000)
    XCTAssertEqual(try ledger().group(10)?.state, .host)

    // Another card in the slot: left alone and said so.
    let config = kernel.devicePath("0000:00:02.0") + "/config"
    var bytes = try XCTUnwrap(FileManager.default.contents(atPath: config).map(Array.init))
    bytes[2] = 0xd4
    try tree.write(config, bytes: bytes)
    let again = try manager().persistence.reconcile()
    XCTAssertEqual(again.first?.outcome, "cannot")
    XCTAssertTrue(again.first?.notes.contains { $0.contains("not the 8086:10d3") } == true, "\(again)")
  }

  func testVFsAreCreatedDetachedOwnedAndTheCountCannotDropUnderAnOwner() throws {
    try setUpTree("q35-sriov")
    let pf = address("01:00.0")
    let me = Ownership(uid: 1000, gid: 1000)
    XCTAssertThrowsError(try manager().virtualFunctions.setVirtualFunctions(pf, count: 3)) { error in
      guard case ManagerError.usage(let why) = error else { return XCTFail("\(error)") }
      XCTAssertTrue(why.contains("0 to 2"), why)
    }
    XCTAssertThrowsError(try manager().virtualFunctions.setVirtualFunctions(address("00:02.0"), count: 1))
    _ = try manager().virtualFunctions.setVirtualFunctions(pf, count: 0)
    XCTAssertEqual(try HostInventory.read(Sysfs(root: tree.path), pageSize: 4096).device(pf)?.sriov?.numVFs, 0)
    // With autoprobe on, the nvme driver would take VF 1 the moment it appears.
    try tree.write(kernel.devicePath("0000:01:00.0") + "/sriov_drivers_autoprobe", text: "1\n")
    let report = try manager().virtualFunctions.setVirtualFunctions(pf, count: 2, detach: true, owner: me)
    XCTAssertEqual(report.after, 2)
    XCTAssertEqual(report.virtualFunctions.map(\.driver), ["vfio-pci", "vfio-pci"])
    XCTAssertEqual(Set(report.virtualFunctions.compactMap(\.group)).count, 2, "each VF in its own group")
    XCTAssertEqual(report.virtualFunctions.map(\.owner), [me, me])
    XCTAssertTrue(kernel.writes.contains("/sys/bus/pci/devices/0000:01:00.0/sriov_drivers_autoprobe <- 0"))
    XCTAssertEqual(kernel.writes.last { $0.contains("sriov_drivers_autoprobe") }, "/sys/bus/pci/devices/0000:01:00.0/sriov_drivers_autoprobe <- 1")
    let groups = report.virtualFunctions.compactMap(\.group)
    try assertRefused({ _ = try manager().virtualFunctions.setVirtualFunctions(pf, count: 0) }, code: "owned", mentions: "is owned by 1000:1000")
    for group in groups { _ = try manager().access.disown(.group(group)) }
    let removed = try manager().virtualFunctions.setVirtualFunctions(pf, count: 0)
    XCTAssertEqual(removed.after, 0)
    XCTAssertTrue(removed.notes.contains { $0.hasPrefix("gave back VF group") })
    XCTAssertTrue(try ledger().groups().filter { groups.contains($0.id) }.allSatisfy { $0.state == .host })
  }
}
