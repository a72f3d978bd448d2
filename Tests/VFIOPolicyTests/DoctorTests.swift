import Foundation
import VFIOHost
import VFIOPolicy
import VFIOTestSupport
import XCTest

final class DoctorTests: XCTestCase {
  func testHostWithoutIOMMUGetsAConcreteNextStep() throws {
    let findings = Doctor(inventory: try Fixtures.inventory("host-firecracker")).run()
    let iommu = try XCTUnwrap(findings.first { $0.check == "iommu" })
    XCTAssertEqual(iommu.status, .problem)
    XCTAssertNotNil(iommu.nextStep)
    XCTAssertEqual(findings.first { $0.check == "dev-vfio" }?.status, .warning)
  }

  func testQ35GuestIsReady() throws {
    let findings = Doctor(inventory: try Fixtures.inventory("q35-vtd")).run()
    XCTAssertEqual(findings.first { $0.check == "iommu" }?.status, .ok)
    // The fixture's /proc/interrupts decides; without it the check must not guess.
    let remapped = try HostInventory.read(Fixtures.sysfs("q35-vtd")).readEnvironment().interruptRemappingActive
    XCTAssertEqual(findings.first { $0.check == "interrupt-remapping" }?.status, remapped == nil ? .info : .ok)
    XCTAssertFalse(findings.contains { $0.status == .problem }, "\(findings)")
  }

  func testAcsOverrideAndMemlockAreFlagged() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    try copy.write(copy.path + "/proc/cmdline", text: "console=ttyS0 intel_iommu=on pcie_acs_override=downstream\n")
    XCTAssertEqual(system("mkdir -p '\(copy.path)/proc/self'"), 0)
    try copy.write(
      copy.path + "/proc/self/limits",
      text:
        "Limit Soft Limit Hard Limit Units\nMax locked memory         65536                65536                bytes\n"
    )
    let findings = Doctor(inventory: try HostInventory.read(Sysfs(root: copy.path), pageSize: 4096)).run()
    XCTAssertEqual(findings.first { $0.check == "acs-override" }?.status, .warning)
    XCTAssertEqual(findings.first { $0.check == "memlock" }?.status, .warning)
    XCTAssertTrue(findings.first { $0.check == "memlock" }?.summary.contains("64 KiB") ?? false)
  }

  /// Inside a VM the IOMMU is the hypervisor's to give; firmware and GRUB advice is wrong there.
  func testVirtualMachineIsToldToAskTheHypervisor() throws {
    let copy = try TemporaryTree(copying: Fixtures.root("host-firecracker"))
    let iommu = { () throws -> String in
      try XCTUnwrap(Doctor(inventory: try copy.inventory()).run().first { $0.check == "iommu" }?.nextStep)
    }
    XCTAssertTrue(try iommu().contains("-device intel-iommu"), "the fixture's CPU has the hypervisor flag")
    let cpuinfo = try XCTUnwrap(Sysfs(root: copy.path).readString("/proc/cpuinfo"))
    try copy.write(copy.path + "/proc/cpuinfo", text: cpuinfo.replacingOccurrences(of: " hypervisor", with: ""))
    let bareMetal = try iommu()
    XCTAssertTrue(bareMetal.contains("firmware setup"), bareMetal)
    XCTAssertEqual(mkdir(copy.path + "/sys/class/dmi", 0o755), 0)
    XCTAssertEqual(mkdir(copy.path + "/sys/class/dmi/id", 0o755), 0)
    try copy.write(copy.path + "/sys/class/dmi/id/sys_vendor", text: "QEMU\n")
    try copy.write(copy.path + "/sys/class/dmi/id/product_name", text: "Standard PC (Q35 + ICH9, 2009)\n")
    let qemu = try iommu()
    XCTAssertTrue(qemu.contains("virtual machine (QEMU Standard PC (Q35 + ICH9, 2009))"), qemu)
  }
}
