import CVFIO
import PCI
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// VFIO_GROUP_GET_STATUS flags.
public struct GroupStatus: Sendable, Equatable {
  /// Every device in the group is bound to a VFIO driver, a stub, or nothing.
  public var viable: Bool
  /// The group is attached to a container.
  public var containerSet: Bool
}

/// A legacy VFIO group (/dev/vfio/N): the unit of ownership the IOMMU isolates.
public final class Group: @unchecked Sendable {
  public let number: IOMMUGroupID
  let handle: OwnedFD
  let sysfsRoot: String
  /// The container this group is attached to; held so the container outlives the group.
  public private(set) var container: Container?

  public var kernel: any KernelInterface { handle.kernel }
  /// The group's descriptor: the ownership proof VFIO_DEVICE_PCI_HOT_RESET wants.
  public var fileDescriptor: Int32 { handle.fd }

  /// Opens /dev/vfio/`number` and checks that the group is viable, naming the devices that
  /// keep it from being so.
  /// With `requireViable: false` a non-viable group opens anyway, for inspection (`status`,
  /// `blockers`); the kernel still refuses to attach it.
  public convenience init(
    number: IOMMUGroupID, kernel: any KernelInterface = LinuxKernel(), devRoot: String = "/dev/vfio",
    sysfsRoot: String = "/sys", requireViable: Bool = true
  ) throws(VFIOError) {
    try self.init(number: number, handle: OwnedFD.open("\(devRoot)/\(number)", kernel: kernel), sysfsRoot: sysfsRoot)
    let status = try self.status()
    guard status.viable || !requireViable else {
      throw notViable(request: IoctlRequest.groupGetStatus.name, errno: nil)
    }
  }

  init(number: IOMMUGroupID, handle: OwnedFD, sysfsRoot: String) {
    self.number = number
    self.handle = handle
    self.sysfsRoot = sysfsRoot
  }

  /// A group another process attached: the container is recorded, not set again.
  func adoptContainer(_ container: Container) { self.container = container }

  /// The IOMMU group of a PCI device, from /sys/bus/pci/devices/BDF/iommu_group.
  public static func number(
    ofDevice address: PCIAddress, kernel: any KernelInterface = LinuxKernel(),
    sysfsRoot: String = "/sys"
  ) throws(VFIOError) -> IOMMUGroupID {
    let link = "\(sysfsRoot)/bus/pci/devices/\(address)/iommu_group"
    guard let target = kernel.readLink(link) else {
      let exists = kernel.readLink("\(sysfsRoot)/bus/pci/devices/\(address)") != nil
      throw VFIOError(
        .notFound, operation: "readlink", path: link,
        message: exists ? "device \(address) has no IOMMU group" : "no PCI device \(address)",
        hint: exists
          ? "the IOMMU is off: boot with intel_iommu=on (or amd_iommu=on) and check dmesg for DMAR/IOMMU"
          : "check the address with `ls /sys/bus/pci/devices`")
    }
    guard let last = target.split(separator: "/").last, let n = IOMMUGroupID(last) else {
      throw VFIOError(
        .notFound, operation: "readlink", path: link, message: "unexpected link target \(target)")
    }
    return n
  }

  /// VFIO_GROUP_GET_STATUS.
  public func status() throws(VFIOError) -> GroupStatus {
    var status = vfio_group_status()
    status.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
    try handle.ioctl(.groupGetStatus, &status)
    return GroupStatus(
      viable: status.flags & UInt32(VFIO_GROUP_FLAGS_VIABLE) != 0,
      containerSet: status.flags & UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) != 0)
  }

  /// Devices of this group bound to a driver that is not VFIO's or a stub, as "BDF is still
  /// bound to DRIVER".
  public func blockers() -> [String] {
    let dir = "\(sysfsRoot)/kernel/iommu_groups/\(number)/devices"
    var result: [String] = []
    for device in kernel.listDirectory(dir) ?? [] {
      guard let driverLink = kernel.readLink("\(dir)/\(device)/driver"),
        let driver = driverLink.split(separator: "/").last.map(String.init)
      else { continue }
      // Bridges stay on pcieport and vfio-pci variants carry "vfio" in their names; the
      // kernel lets both (driver_managed_dma) share a group with a user-owned device.
      if driver.contains("vfio") || driver == "pci-stub" || driver == "pcieport" { continue }
      result.append("\(device) is still bound to \(driver)")
    }
    return result
  }

  func notViable(request: String, errno: Errno?) -> VFIOError {
    let blockers = blockers()
    let why =
      blockers.isEmpty
      ? "a device is still bound to a host driver" : blockers.joined(separator: ", ")
    return VFIOError(
      .groupNotViable(group: number, blockers: blockers), errno: errno, operation: request,
      path: handle.path, message: "IOMMU group \(number) is not viable: \(why)",
      hint: "run `vfioctl detach \(number)` to bind every device of the group to vfio-pci")
  }

  /// VFIO_GROUP_SET_CONTAINER, then VFIO_SET_IOMMU if this is the container's first group
  /// (`iommu` or the best type the kernel offers). Several groups may share one container,
  /// and so one IOMMU domain; or give each group its own.
  public func attach(to container: Container, iommu: IOMMUType? = nil) throws(VFIOError) {
    var fd = container.fileDescriptor
    let rc = handle.rawIoctl(.groupSetContainer, &fd)
    if rc < 0 {
      let errno = Errno(rawValue: -rc)
      // Since 5.19 the kernel claims DMA ownership here and refuses with EBUSY while a device
      // of the group is bound to a host driver.
      if errno == .resourceBusy {
        throw notViable(request: IoctlRequest.groupSetContainer.name, errno: errno)
      }
      throw VFIOError.syscall(
        errno, operation: IoctlRequest.groupSetContainer.name, path: handle.path)
    }
    do {
      try container.groupAttached(requested: iommu)
    } catch {
      // Leave the group as it was: without an IOMMU model the container is unusable.
      container.groupDetached()
      _ = kernel.ioctl(handle.fd, .groupUnsetContainer, nil)
      throw error
    }
    self.container = container
  }

  /// VFIO_GROUP_UNSET_CONTAINER. Close this group's devices first or the kernel says EBUSY.
  public func detach() throws(VFIOError) {
    guard let container else { return }
    try handle.check(
      kernel.ioctl(handle.fd, .groupUnsetContainer, nil), .groupUnsetContainer,
      hint: "close every device opened from this group first")
    container.groupDetached()
    self.container = nil
  }

  /// VFIO_GROUP_GET_DEVICE_FD for `name` (the PCI address, e.g. 0000:00:04.0).
  public func openDevice(_ name: String) throws(VFIOError) -> Device {
    guard container != nil else {
      throw VFIOError(
        .invalidArgument, operation: IoctlRequest.groupGetDeviceFD.name, path: handle.path,
        message: "group \(number) is not attached to a container",
        hint: "call attach(to:) first; the kernel hands out device fds only then")
    }
    var cName = Array(name.utf8CString)
    let rc = cName.withUnsafeMutableBytes {
      kernel.ioctl(handle.fd, .groupGetDeviceFD, $0.baseAddress)
    }
    try handle.check(rc, .groupGetDeviceFD)
    return try Device(
      handle: OwnedFD(kernel: kernel, fd: rc, path: "\(handle.path):\(name)"), name: name,
      binding: .group(self))
  }
}
