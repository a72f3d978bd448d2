import Foundation
import VFIOHost
import VFIOPolicy
import VFIOTestSupport
import XCTest

/// `doctor --vm`: the memlock arithmetic and the backends a kernel offers.
final class MemlockRequirementTests: XCTestCase {
  let gib: UInt64 = 1 << 30

  func testTheRAMIsPinnedOnceOrOncePerDeviceBehindAVIOMMU() {
    // libvirt's qemuDomainGetMemLockLimitBytes: factor x RAM + 1 GiB.
    XCTAssertEqual(MemlockRequirement(guestRAM: 4 * gib, devices: 1, viommu: false).bytes, 5 * gib)
    XCTAssertEqual(MemlockRequirement(guestRAM: 4 * gib, devices: 3, viommu: false).bytes, 5 * gib)
    XCTAssertEqual(MemlockRequirement(guestRAM: 4 * gib, devices: 3, viommu: true).bytes, 13 * gib)
    XCTAssertEqual(MemlockRequirement(guestRAM: 8 * gib, devices: 2, viommu: true).bytes, 17 * gib)  // KubeVirt #17805's 2 GPUs
    XCTAssertEqual(MemlockRequirement(guestRAM: 4 * gib, devices: 0, viommu: true).copies, 1)
    XCTAssertEqual(MemlockRequirement(guestRAM: .max / 2, devices: 4, viommu: true).bytes, .max)
  }

  func testTheLinesThatSetIt() {
    let budget = MemlockRequirement(guestRAM: 128 << 20, devices: 1, viommu: false)
    XCTAssertEqual(budget.bytes, (1 << 30) + (128 << 20))
    XCTAssertEqual(budget.systemdLimit, "1152M")
    XCTAssertEqual(budget.ulimitKiB, 1_179_648)
    XCTAssertEqual(MemlockRequirement(guestRAM: 4 * gib, devices: 2, viommu: true).systemdLimit, "9G")
  }

  func testSizesAsQEMUsDashMTakesThem() {
    XCTAssertEqual(MemlockRequirement.parseSize("4G"), 4 * gib)
    XCTAssertEqual(MemlockRequirement.parseSize("4GiB"), 4 * gib)
    XCTAssertEqual(MemlockRequirement.parseSize("512M"), 512 << 20)
    XCTAssertEqual(MemlockRequirement.parseSize("2048"), 2 * gib)
    XCTAssertEqual(MemlockRequirement.parseSize("1t"), 1 << 40)
    XCTAssertEqual(MemlockRequirement.parseSize("64K"), 64 << 10)
    for bad in ["", "G", "4X", "-4G", "0", "4.5G", " 4G", "99999999999999T", "４G"] {
      XCTAssertNil(MemlockRequirement.parseSize(bad), bad)
    }
  }

  func testBackendsFromTheRunningKernelAndItsConfiguration() throws {
    let iommufd = VFIOBackends.read(Fixtures.sysfs("q35-iommufd"))
    XCTAssertEqual(iommufd.container.offered, true)
    XCTAssertEqual(iommufd.iommufd.offered, true)
    XCTAssertEqual(iommufd.deviceCdev.offered, true)
    XCTAssertTrue(iommufd.deviceCdev.evidence.hasPrefix("/dev/vfio/devices/vfio"), iommufd.deviceCdev.evidence)
    // Debian's 6.1: vfio-pci devices without cdevs, no /dev/iommu.
    let debian = VFIOBackends.read(Fixtures.sysfs("q35-vtd"))
    XCTAssertEqual(debian.container.offered, true)
    XCTAssertEqual(debian.iommufd.offered, false)
    XCTAssertEqual(debian.deviceCdev.offered, false)
    // The configuration decides where the running kernel cannot tell.
    let copy = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    let release = try XCTUnwrap(Sysfs(root: copy.path).readString("/proc/sys/kernel/osrelease"))
    XCTAssertEqual(system("mkdir -p '\(copy.path)/boot'"), 0)
    try copy.write(
      copy.path + "/boot/config-\(release)",
      text: "CONFIG_VFIO=m\nCONFIG_VFIO_CONTAINER=y\nCONFIG_IOMMUFD=m\n# CONFIG_VFIO_DEVICE_CDEV is not set\n")
    let configured = VFIOBackends.read(Sysfs(root: copy.path))
    XCTAssertEqual(configured.iommufd.offered, true)
    XCTAssertTrue(configured.iommufd.evidence.contains("modprobe iommufd"), configured.iommufd.evidence)
    XCTAssertEqual(configured.deviceCdev.offered, false)
    XCTAssertTrue(configured.deviceCdev.evidence.contains("CONFIG_VFIO_DEVICE_CDEV is not set"))
  }
}
