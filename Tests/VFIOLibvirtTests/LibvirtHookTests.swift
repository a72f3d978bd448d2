import Foundation
import PCI
import VFIOHost
import VFIOManager
import VFIOPolicy
import VFIOManagerTestSupport
import VFIOTestSupport
import XCTest

@testable import VFIOLibvirt

/// The hook as libvirtd calls it, against scratch copies of the q35-vtd capture with the PCI
/// core simulated: group 2 is the e1000e 00:02.0, group 4 the two e1000 behind the PCIe-to-PCI
/// bridge 00:04.0 (captured on vfio-pci by driver_override), group 10 the nvme 02:00.0.
final class LibvirtHookTests: XCTestCase {
  var tree: TemporaryTree!
  var state: TemporaryTree!
  var kernel: SimulatedKernel!
  let qemu = Ownership(uid: 64055, gid: 64055, mode: 0o600)
  /// libvirtd, as the hook sees its parent.
  var runner: ProcessIdentity?

  override func setUpWithError() throws {
    tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    tree.exposeHostInit()
    state = try TemporaryTree()
    kernel = SimulatedKernel(root: tree.path)
  }

  var manager: AssignmentManager {
    AssignmentManager(
      sysfs: Sysfs(root: tree.path), host: kernel,
      configuration: .init(stateDirectory: state.path, lockTimeout: 0.2, command: "test"))
  }

  var hook: LibvirtHook {
    let owner = qemu
    return LibvirtHook(manager: manager, runner: runner) { () throws(LibvirtHookError) -> Ownership? in owner }
  }

  func ledger() throws -> Ledger? { try Ledger.open(directory: state.path, create: false) }

  func xml(_ name: String, _ addresses: [String], managed: String = "no", metadata: String = "") -> String {
    let hostdevs = addresses.map { address -> String in
      let parts = address.split(whereSeparator: { ":.".contains($0) })
      return """
        <hostdev mode='subsystem' type='pci' managed='\(managed)'><source>\
        <address domain='0x\(parts[0])' bus='0x\(parts[1])' slot='0x\(parts[2])' function='0x\(parts[3])'/>\
        </source></hostdev>
        """
    }
    return "<domain type='qemu'><name>\(name)</name><metadata>\(metadata)</metadata><devices>\(hostdevs.joined())</devices></domain>"
  }

  @discardableResult
  func call(_ domain: String, _ operation: String, _ sub: String, _ text: String) throws -> LibvirtHook.Outcome {
    try hook.run(domain: domain, operation: operation, subOperation: sub, xml: Data(text.utf8))
  }

  func binding(_ address: String) -> String {
    let sysfs = Sysfs(root: tree.path)
    let device = "/sys/bus/pci/devices/\(address)"
    return "\(sysfs.linkName(device + "/driver") ?? "none") \(sysfs.readString(device + "/driver_override") ?? "")"
  }

  /// Every function's driver and driver_override, to prove that a refusal changed nothing.
  func snapshot() -> [String] { Sysfs(root: tree.path).list("/sys/bus/pci/devices").sorted().map { "\($0) \(binding($0))" } }

  func testPrepareTakesWholeGroupsForTheQEMUUserAndReleaseGivesThemBackExactly() throws {
    let before = snapshot()
    let domain = xml("vm1", ["0000:01:01.0", "0000:00:02.0"])
    let prepared = try call("vm1", "prepare", "begin", domain)
    XCTAssertEqual(prepared.action, .assign)
    XCTAssertEqual(prepared.lines.count, 2, "\(prepared.lines)")
    XCTAssertTrue(prepared.lines[0].contains("IOMMU group 4 (0000:01:01.0): detached"), "\(prepared.lines)")
    // The sibling behind the bridge moved too; the bridge stayed with the host.
    XCTAssertEqual(binding("0000:00:02.0"), "vfio-pci vfio-pci")
    XCTAssertEqual(try ledger()?.members(of: 4).map(\.address), ["0000:01:01.0", "0000:01:02.0"])
    XCTAssertFalse(kernel.writes.contains { $0.contains("0000:00:04.0") }, "\(kernel.writes)")
    for group: IOMMUGroupID in [2, 4] {
      let record = try XCTUnwrap(try ledger()?.group(group))
      XCTAssertEqual(record.state, .detached)
      XCTAssertEqual(record.reservedFor, "vm1")
      XCTAssertEqual(record.detachedBy, LibvirtHook.detachedBy)
      XCTAssertEqual(record.ownership, qemu)
    }
    XCTAssertTrue(kernel.writes.contains("/dev/vfio/2 <- owner 64055:64055 mode 0600"), "\(kernel.writes)")

    // libvirtd restarted and retried: nothing changes.
    let changes = { self.kernel.writes.filter { !$0.contains("<- owner") }.count }
    let changed = changes()
    XCTAssertTrue(try call("vm1", "prepare", "begin", domain).lines.allSatisfy { $0.hasSuffix("already vm1's") })
    let reconnected = try call("vm1", "reconnect", "begin", domain)
    XCTAssertEqual(reconnected.action, .confirm)
    XCTAssertTrue(reconnected.lines.allSatisfy { $0.hasSuffix(": vm1's") }, "\(reconnected.lines)")
    XCTAssertEqual(changes(), changed)

    let released = try call("vm1", "release", "end", domain)
    XCTAssertEqual(released.lines.map { $0.hasSuffix("given back") }, [true, true], "\(released.lines)")
    XCTAssertEqual(snapshot(), before)
    XCTAssertNil(try ledger()?.group(2)?.reservedFor)
    XCTAssertEqual(try ledger()?.group(4)?.state, .host)
    XCTAssertNil(try ledger()?.group(4)?.ownerUID)
  }

  func testARefusalNamesEveryGroupAndChangesNothing() throws {
    let swaps = tree.path + "/proc/swaps"
    let text = (try? String(contentsOfFile: swaps, encoding: .utf8)) ?? ""
    try tree.write(swaps, text: text + "/dev/nvme0n1                            partition\t1020\t0\t-2\n")
    let before = snapshot()
    XCTAssertThrowsError(try call("vm1", "prepare", "begin", xml("vm1", ["0000:00:02.0", "0000:02:00.0"]))) { error in
      guard let error = error as? LibvirtHookError, case .manager(.refusedGroups(let groups)) = error else {
        return XCTFail("\(error)")
      }
      XCTAssertEqual(error.exitCode, 1)
      XCTAssertEqual(Array(groups.keys), [10])
      XCTAssertTrue(error.description.contains("nothing was changed"), error.description)
      XCTAssertTrue(error.description.contains("swap"), error.description)
    }
    XCTAssertEqual(snapshot(), before)
    XCTAssertEqual(kernel.writes, [])
    XCTAssertNil(try ledger()?.group(2))
  }

  func testAGroupThatFailsHalfwayPutsBackTheGroupsTakenBeforeIt() throws {
    let before = snapshot()
    // Group 4 (named first) is taken; group 2's bind then fails in the kernel.
    kernel.failWrite = { path, value in
      path == "/sys/bus/pci/drivers_probe" && value == "0000:00:02.0" ? EINVAL : nil
    }
    XCTAssertThrowsError(try call("vm1", "prepare", "begin", xml("vm1", ["0000:01:01.0", "0000:00:02.0"]))) { error in
      guard let error = error as? LibvirtHookError, case .manager(.stepFailed(let group, _, _, _, let restored, _)) = error else {
        return XCTFail("\(error)")
      }
      XCTAssertEqual(group, 2)
      XCTAssertTrue(restored)
      XCTAssertEqual(error.exitCode, 74)
    }
    XCTAssertEqual(snapshot(), before)
    XCTAssertEqual(try ledger()?.group(4)?.state, .host)
    XCTAssertNil(try ledger()?.group(4)?.reservedFor)
  }

  func testAnotherGuestsGroupOrAGroupDetachedForAnotherUseIsRefused() throws {
    try call("vm1", "prepare", "begin", xml("vm1", ["0000:00:02.0"]))
    XCTAssertThrowsError(try call("vm2", "prepare", "begin", xml("vm2", ["0000:00:02.0"]))) { error in
      XCTAssertTrue("\(error)".contains("reserved for vm1"), "\(error)")
    }
    _ = try manager.groups.detach(.group(10), owner: Ownership(uid: 1000, gid: 1000))
    XCTAssertThrowsError(try call("vm2", "prepare", "begin", xml("vm2", ["0000:02:00.0"]))) { error in
      XCTAssertTrue("\(error)".contains("detached by swift-vfio for another use (detach, owned by uid 1000)"), "\(error)")
      XCTAssertTrue("\(error)".contains("vfioctl reserve 10 --for vm2"), "\(error)")
    }
    // vm2's stop takes nothing of vm1's or of the administrator's.
    XCTAssertEqual(try call("vm2", "release", "end", xml("vm2", ["0000:00:02.0", "0000:02:00.0"])).lines, [])
    XCTAssertEqual(try ledger()?.group(2)?.reservedFor, "vm1")
    XCTAssertEqual(try ledger()?.group(10)?.state, .detached)
  }

  func testADomainMarkedToKeepItsGroupsKeepsThemReservedWithTheNodesBackToRoot() throws {
    let mark = "<vfio:groups xmlns:vfio='\(DomainDefinition.metadataNamespace)' keep='reserved'/>"
    let domain = xml("gpu-vm", ["0000:00:02.0"], metadata: mark)
    try call("gpu-vm", "prepare", "begin", domain)
    let released = try call("gpu-vm", "release", "end", domain)
    XCTAssertEqual(released.lines, ["swift-vfio: IOMMU group 2 (0000:00:02.0): kept for gpu-vm"])
    let record = try XCTUnwrap(try ledger()?.group(2))
    XCTAssertEqual(record.state, .detached)
    XCTAssertEqual(record.reservedFor, "gpu-vm")
    XCTAssertNil(record.ownership)
    XCTAssertEqual(kernel.writes.last, "/dev/vfio/2 <- owner 0:0 mode 0600")
    // The next start finds its group and gives the QEMU user the node again.
    XCTAssertEqual(try call("gpu-vm", "prepare", "begin", domain).lines, ["swift-vfio: IOMMU group 2 (0000:00:02.0): already gpu-vm's"])
    XCTAssertEqual(try ledger()?.group(2)?.ownership, qemu)
    // A reservation the administrator made beforehand is kept even without the mark.
    _ = try manager.groups.detach(.group(10))
    _ = try manager.access.reserve(.group(10), for: "db-vm", owner: nil)
    try call("db-vm", "prepare", "begin", xml("db-vm", ["0000:02:00.0"]))
    XCTAssertEqual(try call("db-vm", "release", "end", xml("db-vm", ["0000:02:00.0"])).lines.first?.hasSuffix("kept for db-vm"), true)
  }

  func testDomainsWithoutPCIHostDevicesAndOtherOperationsTouchNothing() throws {
    let plain = "<domain type='qemu'><name>web</name><devices><disk type='file'/></devices></domain>"
    for (operation, sub) in [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end"), ("release", "end"), ("reconnect", "begin")] {
      XCTAssertEqual(try call("web", operation, sub, plain).lines, [])
    }
    // Operations the hook has nothing to do in do not even read the XML.
    XCTAssertEqual(try call("web", "migrate", "begin", "not xml").action, .none)
    XCTAssertNil(try ledger(), "no ledger is created for domains that take no device")
    XCTAssertEqual(kernel.writes, [])
  }

  func testBadInputIsRefusedWithNothingChanged() throws {
    for (domain, text) in [
      ("vm1", "<domain><name>vm1</name><devices><hostdev type='pci'>"),
      ("vm1", "<domain><name>vm1</name><devices><hostdev type='pci'><source><address bus='0x1ff' slot='0' function='0'/></source></hostdev></devices></domain>"),
      ("other", xml("vm1", ["0000:00:02.0"])),
    ] {
      XCTAssertThrowsError(try call(domain, "prepare", "begin", text)) { error in
        XCTAssertEqual((error as? LibvirtHookError)?.exitCode, 64, "\(error)")
      }
    }
    XCTAssertThrowsError(try call("vm1", "prepare", "begin", xml("vm1", ["0000:07:00.0"]))) { error in
      XCTAssertEqual((error as? LibvirtHookError)?.exitCode, 66, "\(error)")
    }
    XCTAssertEqual(kernel.writes, [])
  }

  /// A process in the scratch tree's /proc, with field 22 (start time) of its stat.
  func fakeProcess(_ pid: Int, start: Int64) throws -> ProcessIdentity {
    XCTAssertEqual(system("mkdir -p '\(tree.path)/proc/\(pid)'"), 0)
    let fields = (3...21).map { _ in "0" }.joined(separator: " ")
    try tree.write(tree.path + "/proc/\(pid)/stat", text: "\(pid) (libvirtd) \(fields) \(start) 0 0\n")
    return ProcessIdentity(pid: pid, startTime: start)
  }

  func testAGroupWhoseLibvirtdDiedIsGivenBackByReconcileAndARestartedOneTakesOver() throws {
    runner = try fakeProcess(777, start: 4242)
    XCTAssertEqual(ProcessIdentity.current(pid: 777, sysfs: Sysfs(root: tree.path)), runner)
    let before = snapshot()
    let domain = xml("vm1", ["0000:01:01.0"])
    try call("vm1", "prepare", "begin", domain)
    XCTAssertEqual(try ledger()?.group(4)?.runnerPID, 777)
    XCTAssertEqual(try manager.access.owners().first { $0.group == 4 }?.reservedWhileRunning, 777)
    // libvirtd alive: reconcile leaves the domain's group alone.
    XCTAssertEqual(try manager.persistence.reconcile().first { $0.group == 4 }?.outcome, "ok")
    // libvirtd restarted (a new pid) and reconnected: it now bounds the reservation.
    runner = try fakeProcess(778, start: 5000)
    try call("vm1", "reconnect", "begin", domain)
    XCTAssertEqual(try ledger()?.group(4)?.runnerPID, 778)
    XCTAssertEqual(try manager.persistence.reconcile().first { $0.group == 4 }?.outcome, "ok")
    // Killed with its QEMU: nobody calls release end; reconcile gives the group back.
    XCTAssertEqual(system("rm -rf '\(tree.path)/proc/778'"), 0)
    let reconciled = try XCTUnwrap(try manager.persistence.reconcile().first { $0.group == 4 })
    XCTAssertEqual(reconciled.outcome, "ended", "\(reconciled.notes)")
    XCTAssertTrue(reconciled.notes[0].contains("reserved for vm1 while pid 778 ran it"), "\(reconciled.notes)")
    XCTAssertEqual(snapshot(), before)
    XCTAssertNil(try ledger()?.group(4)?.runnerPID)
    // A pid reused by another process (another start time) is not the runner either.
    runner = try fakeProcess(779, start: 1)
    try call("vm1", "prepare", "begin", domain)
    _ = try fakeProcess(779, start: 2)
    XCTAssertEqual(try manager.persistence.reconcile().first { $0.group == 4 }?.outcome, "ended")
    // A domain marked to keep its groups has no runner: they outlive libvirtd.
    let mark = "<vfio:groups xmlns:vfio='\(DomainDefinition.metadataNamespace)' keep='reserved'/>"
    try call("vm1", "prepare", "begin", xml("vm1", ["0000:01:01.0"], metadata: mark))
    XCTAssertNil(try ledger()?.group(4)?.runnerPID)
  }

  func testTheInstalledScriptExecsAnInstalledVfioctlAndQuotesWhatItPasses() throws {
    let hooks = try TemporaryTree()
    try FileManager.default.createDirectory(atPath: tree.path + "/usr/local/bin", withIntermediateDirectories: true)
    try tree.write(tree.path + "/usr/local/bin/vfioctl", text: "#!/bin/sh\n")
    chmod(tree.path + "/usr/local/bin/vfioctl", 0o755)
    let installer = HookInstaller(hooksDirectory: hooks.path, options: ["--state", "/var/lib/it's here"])
    let said = try installer.install(manager: manager)
    XCTAssertTrue(said.contains("restart libvirtd"), said)
    let script = try String(contentsOfFile: installer.scriptPath, encoding: .utf8)
    XCTAssertTrue(
      script.contains("exec /usr/local/bin/vfioctl libvirt-hook --state '/var/lib/it'\\''s here' -- \"$@\"\n"), script)
    var info = stat()
    XCTAssertEqual(stat(installer.scriptPath, &info), 0)
    XCTAssertEqual(info.st_mode & 0o777, 0o755)
    XCTAssertTrue(installer.uninstall().hasPrefix("removed"))
    XCTAssertTrue(installer.uninstall().hasPrefix("no hook"))
  }
}
