import CVFIO
import PCI
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// Objects made from descriptors another process opened and passed over a Unix socket (the
// broker's grants). A received number is only a number until the kernel says what it is:
// each initialiser asks the kernel with the object's own ioctl and refuses anything else, and
// from then on the object owns (and closes) the descriptor exactly like one it opened.

extension OwnedFD {
  /// Takes `fd` over; on a refusal the caller still owns it.
  static func adopting(_ fd: Int32, kernel: any KernelInterface, what: String) throws(VFIOError) -> OwnedFD {
    guard fd >= 0 else {
      throw VFIOError(.invalidArgument, operation: "adopt", message: "descriptor \(fd) is not a descriptor (\(what))")
    }
    return OwnedFD(kernel: kernel, fd: fd, path: "fd \(fd) (\(what))")
  }
}

extension Container {
  /// A container received from another process, with `iommu` already set by it (the broker
  /// attaches the group and sets the model before granting). Checked with
  /// VFIO_GET_API_VERSION, and for type1 with VFIO_IOMMU_GET_INFO, which only an attached,
  /// configured container answers.
  public convenience init(adopting fd: Int32, iommu: IOMMUType, kernel: any KernelInterface = LinuxKernel())
    throws(VFIOError)
  {
    try self.init(handle: OwnedFD.adopting(fd, kernel: kernel, what: "container"))
    groupCount = 1
    try adopt(iommu: iommu)
  }
}

extension Group {
  /// A group received from another process, attached to `container` by it. Checked with
  /// VFIO_GROUP_GET_STATUS: viable and set to a container, as a granted group must be.
  public convenience init(
    adopting fd: Int32, number: IOMMUGroupID, container: Container, kernel: any KernelInterface = LinuxKernel(),
    sysfsRoot: String = "/sys"
  ) throws(VFIOError) {
    try self.init(
      number: number, handle: OwnedFD.adopting(fd, kernel: kernel, what: "group \(number)"), sysfsRoot: sysfsRoot)
    let status = try self.status()
    guard status.viable, status.containerSet else {
      throw VFIOError(
        .invalidArgument, operation: IoctlRequest.groupGetStatus.name, path: handle.path,
        message: "the received group \(number) is \(status.viable ? "not set to a container" : "not viable")",
        hint: "the sender must attach the group to the container it sends along")
    }
    adoptContainer(container)
  }
}

extension Device {
  /// A device descriptor taken from `group` by another process (VFIO_GROUP_GET_DEVICE_FD).
  /// VFIO_DEVICE_GET_INFO checks it is a VFIO device.
  public static func adopting(_ fd: Int32, name: String, group: Group) throws(VFIOError) -> Device {
    try Device(handle: OwnedFD.adopting(fd, kernel: group.kernel, what: name), name: name, binding: .group(group))
  }

  /// A device cdev (/dev/vfio/devices/vfioN) another process opened and did not bind: binds
  /// it to `iommufd` (VFIO_DEVICE_BIND_IOMMUFD, which only a fresh cdev descriptor accepts)
  /// and attaches it to `ioas`.
  public static func adopting(cdev fd: Int32, name: String, iommufd: IOMMUFD, ioas: IOAS) throws(VFIOError) -> Device {
    try bind(OwnedFD.adopting(fd, kernel: iommufd.kernel, what: name), name: name, iommufd: iommufd, ioas: ioas)
  }
}

extension IOMMUFD {
  /// An iommufd received from another process. Checked with IOMMU_OPTION(RLIMIT_MODE, GET),
  /// which every iommufd answers and nothing else does.
  public convenience init(adopting fd: Int32, kernel: any KernelInterface = LinuxKernel()) throws(VFIOError) {
    self.init(handle: try OwnedFD.adopting(fd, kernel: kernel, what: "iommufd"))
    _ = try processBasedMemlockAccounting()
  }
}

extension OpenedDevice {
  /// A device granted on the legacy path: container (IOMMU set), group (attached) and device.
  /// Takes the three descriptors over; on a refusal the ones not yet adopted are closed too,
  /// so a bad grant never leaks.
  public static func adopting(
    container containerFD: Int32, iommu: IOMMUType, group groupFD: Int32, number: IOMMUGroupID, device deviceFD: Int32,
    name: String, kernel: any KernelInterface = LinuxKernel()
  ) throws(VFIOError) -> OpenedDevice {
    var pending = [containerFD, groupFD, deviceFD]
    defer { for fd in pending where fd >= 0 { kernel.close(fd) } }
    pending[0] = -1
    let container = try Container(adopting: containerFD, iommu: iommu, kernel: kernel)
    pending[1] = -1
    let group = try Group(adopting: groupFD, number: number, container: container, kernel: kernel)
    pending[2] = -1
    let device = try Device.adopting(deviceFD, name: name, group: group)
    return OpenedDevice(
      device: device, dma: try DMASpace(container), backend: .legacy, group: group, container: container, iommufd: nil)
  }

  /// A device granted on the iommufd path: the iommufd and the unbound cdev. Binds the device
  /// and attaches it to a fresh IOAS, as `open(cdev:)` does for a cdev opened here.
  public static func adopting(
    iommufd iommufdFD: Int32, cdev cdevFD: Int32, name: String, kernel: any KernelInterface = LinuxKernel()
  ) throws(VFIOError) -> OpenedDevice {
    var pending = [iommufdFD, cdevFD]
    defer { for fd in pending where fd >= 0 { kernel.close(fd) } }
    pending[0] = -1
    let iommufd = try IOMMUFD(adopting: iommufdFD, kernel: kernel)
    let ioas = try iommufd.allocateIOAS()
    pending[1] = -1
    let device = try Device.adopting(cdev: cdevFD, name: name, iommufd: iommufd, ioas: ioas)
    return OpenedDevice(
      device: device, dma: try DMASpace(ioas), backend: .iommufd, group: nil, container: nil, iommufd: iommufd)
  }
}
