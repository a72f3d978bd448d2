import PCI

/// Which kernel interface owns a device's DMA.
public enum Backend: String, Sendable, CaseIterable {
  /// Group and container (/dev/vfio/N, /dev/vfio/vfio) with the type1 or sPAPR IOMMU.
  case legacy
  /// Device cdev bound to an iommufd (/dev/vfio/devices/vfioN, /dev/iommu).
  case iommufd
  /// iommufd when the kernel has it and the device has a cdev, else legacy.
  case auto
}

/// A PCI device opened through either backend, with the DMA space its mappings go into.
/// Holds every object the device depends on, so they close in the right order.
public final class OpenedDevice: @unchecked Sendable {
  public let device: Device
  public let dma: DMASpace
  /// The backend actually used (never `.auto`).
  public let backend: Backend
  public let group: Group?
  public let container: Container?
  public let iommufd: IOMMUFD?

  init(
    device: Device, dma: DMASpace, backend: Backend, group: Group?, container: Container?,
    iommufd: IOMMUFD?
  ) {
    self.device = device
    self.dma = dma
    self.backend = backend
    self.group = group
    self.container = container
    self.iommufd = iommufd
  }

  /// Opens the PCI device at `address` (e.g. 0000:00:03.0) with its own container or IOAS.
  public static func open(
    _ address: PCIAddress, backend: Backend = .auto, kernel: any KernelInterface = LinuxKernel(),
    sysfsRoot: String = "/sys", devRoot: String = "/dev"
  ) throws(VFIOError) -> OpenedDevice {
    switch backend {
    case .legacy:
      return try openLegacy(address, kernel: kernel, sysfsRoot: sysfsRoot, devRoot: devRoot)
    case .iommufd:
      return try openIOMMUFD(address, kernel: kernel, sysfsRoot: sysfsRoot, devRoot: devRoot)
    case .auto:
      if Device.cdevPath(ofDevice: address, kernel: kernel, sysfsRoot: sysfsRoot) != nil,
        kernel.listDirectory(devRoot)?.contains("iommu") == true
      {
        return try openIOMMUFD(address, kernel: kernel, sysfsRoot: sysfsRoot, devRoot: devRoot)
      }
      return try openLegacy(address, kernel: kernel, sysfsRoot: sysfsRoot, devRoot: devRoot)
    }
  }

  static func openLegacy(
    _ address: PCIAddress, kernel: any KernelInterface, sysfsRoot: String, devRoot: String
  )
    throws(VFIOError) -> OpenedDevice
  {
    let container = try Container(path: "\(devRoot)/vfio/vfio", kernel: kernel)
    let number = try Group.number(ofDevice: address, kernel: kernel, sysfsRoot: sysfsRoot)
    let group = try Group(
      number: number, kernel: kernel, devRoot: "\(devRoot)/vfio", sysfsRoot: sysfsRoot)
    try group.attach(to: container)
    let device = try group.openDevice(address.description)
    let dma = try DMASpace(container)
    return OpenedDevice(
      device: device, dma: dma, backend: .legacy, group: group, container: container, iommufd: nil)
  }

  static func openIOMMUFD(
    _ address: PCIAddress, kernel: any KernelInterface, sysfsRoot: String, devRoot: String
  )
    throws(VFIOError) -> OpenedDevice
  {
    guard var cdev = Device.cdevPath(ofDevice: address, kernel: kernel, sysfsRoot: sysfsRoot) else {
      throw VFIOError(
        .notFound, operation: "open", path: "\(sysfsRoot)/bus/pci/devices/\(address)/vfio-dev",
        message: "device \(address) has no VFIO cdev",
        hint:
          "bind it to vfio-pci; the kernel needs CONFIG_VFIO_DEVICE_CDEV, else use `--backend legacy`"
      )
    }
    if devRoot != "/dev" { cdev = devRoot + cdev.dropFirst("/dev".count) }
    let iommufd = try IOMMUFD(path: "\(devRoot)/iommu", kernel: kernel)
    let ioas = try iommufd.allocateIOAS()
    let device = try Device.open(cdev: cdev, iommufd: iommufd, ioas: ioas, name: address.description)
    // Attaching narrows the IOAS's ranges to what the device's IOMMU allows; read them after.
    let dma = try DMASpace(ioas)
    return OpenedDevice(
      device: device, dma: dma, backend: .iommufd, group: nil, container: nil, iommufd: iommufd)
  }
}

extension OpenedDevice {
  /// Opens another PCI device into the same DMA space as `other`: its group joins `other`'s
  /// container (or the device is taken from the same group), or its cdev binds to the same
  /// iommufd and IOAS. Mappings made through `dma` then reach both devices, and a hot reset
  /// can prove ownership of both.
  public static func open(
    _ address: PCIAddress, sharing other: OpenedDevice, sysfsRoot: String = "/sys",
    devRoot: String = "/dev"
  ) throws(VFIOError) -> OpenedDevice {
    let kernel = other.device.kernel
    if let container = other.container, let otherGroup = other.group {
      let number = try Group.number(ofDevice: address, kernel: kernel, sysfsRoot: sysfsRoot)
      let group: Group
      if number == otherGroup.number {
        group = otherGroup
      } else {
        group = try Group(
          number: number, kernel: kernel, devRoot: "\(devRoot)/vfio", sysfsRoot: sysfsRoot)
        try group.attach(to: container)
      }
      let device = try group.openDevice(address.description)
      return OpenedDevice(
        device: device, dma: other.dma, backend: .legacy, group: group, container: container,
        iommufd: nil)
    }
    guard let iommufd = other.iommufd, case .iommufd(_, _, let ioas) = other.device.binding else {
      throw VFIOError(
        .invalidArgument, operation: "open",
        message: "\(other.device.name) has no shareable DMA space")
    }
    guard var cdev = Device.cdevPath(ofDevice: address, kernel: kernel, sysfsRoot: sysfsRoot) else {
      throw VFIOError(
        .notFound, operation: "open", path: "\(sysfsRoot)/bus/pci/devices/\(address)/vfio-dev",
        message: "device \(address) has no VFIO cdev", hint: "bind it to vfio-pci")
    }
    if devRoot != "/dev" { cdev = devRoot + cdev.dropFirst("/dev".count) }
    let device = try Device.open(cdev: cdev, iommufd: iommufd, ioas: ioas, name: address.description)
    // Attaching can narrow the IOAS's ranges.
    try other.dma.refreshLayout()
    return OpenedDevice(
      device: device, dma: other.dma, backend: .iommufd, group: nil, container: nil,
      iommufd: iommufd)
  }

  /// Opens a device by its cdev path (/dev/vfio/devices/vfioN) with a fresh iommufd and IOAS.
  public static func open(
    cdev path: String, kernel: any KernelInterface = LinuxKernel(), devRoot: String = "/dev"
  )
    throws(VFIOError) -> OpenedDevice
  {
    let iommufd = try IOMMUFD(path: "\(devRoot)/iommu", kernel: kernel)
    let ioas = try iommufd.allocateIOAS()
    let device = try Device.open(cdev: path, iommufd: iommufd, ioas: ioas)
    return OpenedDevice(
      device: device, dma: try DMASpace(ioas), backend: .iommufd, group: nil, container: nil,
      iommufd: iommufd)
  }
}
