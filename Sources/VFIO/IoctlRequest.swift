import CVFIO

/// An ioctl request: the number the kernel decodes and the name errors and traces show.
///
/// VFIO reuses numbers across descriptor types (VFIO_BASE + 12 is both
/// VFIO_IOMMU_GET_INFO on a container and VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on a device), so the
/// name, not the number, identifies a request.
public struct IoctlRequest: Hashable, Sendable, CustomStringConvertible {
  public let name: String
  public let number: UInt

  public init(name: String, number: UInt) {
    self.name = name
    self.number = number
  }

  public var description: String { name }
}

extension IoctlRequest {
  // Container (/dev/vfio/vfio)
  public static let getAPIVersion = Self(
    name: "VFIO_GET_API_VERSION", number: cvfio_VFIO_GET_API_VERSION)
  public static let checkExtension = Self(
    name: "VFIO_CHECK_EXTENSION", number: cvfio_VFIO_CHECK_EXTENSION)
  public static let setIOMMU = Self(name: "VFIO_SET_IOMMU", number: cvfio_VFIO_SET_IOMMU)
  public static let iommuGetInfo = Self(
    name: "VFIO_IOMMU_GET_INFO", number: cvfio_VFIO_IOMMU_GET_INFO)
  public static let iommuMapDMA = Self(name: "VFIO_IOMMU_MAP_DMA", number: cvfio_VFIO_IOMMU_MAP_DMA)
  public static let iommuUnmapDMA = Self(
    name: "VFIO_IOMMU_UNMAP_DMA", number: cvfio_VFIO_IOMMU_UNMAP_DMA)
  public static let iommuEnable = Self(name: "VFIO_IOMMU_ENABLE", number: cvfio_VFIO_IOMMU_ENABLE)
  public static let iommuDisable = Self(
    name: "VFIO_IOMMU_DISABLE", number: cvfio_VFIO_IOMMU_DISABLE)
  public static let spaprTCEGetInfo = Self(
    name: "VFIO_IOMMU_SPAPR_TCE_GET_INFO", number: cvfio_VFIO_IOMMU_SPAPR_TCE_GET_INFO)
  public static let spaprRegisterMemory = Self(
    name: "VFIO_IOMMU_SPAPR_REGISTER_MEMORY", number: cvfio_VFIO_IOMMU_SPAPR_REGISTER_MEMORY)
  public static let spaprUnregisterMemory = Self(
    name: "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", number: cvfio_VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY)
  public static let spaprTCECreate = Self(
    name: "VFIO_IOMMU_SPAPR_TCE_CREATE", number: cvfio_VFIO_IOMMU_SPAPR_TCE_CREATE)
  public static let spaprTCERemove = Self(
    name: "VFIO_IOMMU_SPAPR_TCE_REMOVE", number: cvfio_VFIO_IOMMU_SPAPR_TCE_REMOVE)
  public static let eehPEOp = Self(name: "VFIO_EEH_PE_OP", number: cvfio_VFIO_EEH_PE_OP)

  // Group (/dev/vfio/N)
  public static let groupGetStatus = Self(
    name: "VFIO_GROUP_GET_STATUS", number: cvfio_VFIO_GROUP_GET_STATUS)
  public static let groupSetContainer = Self(
    name: "VFIO_GROUP_SET_CONTAINER", number: cvfio_VFIO_GROUP_SET_CONTAINER)
  public static let groupUnsetContainer = Self(
    name: "VFIO_GROUP_UNSET_CONTAINER", number: cvfio_VFIO_GROUP_UNSET_CONTAINER)
  public static let groupGetDeviceFD = Self(
    name: "VFIO_GROUP_GET_DEVICE_FD", number: cvfio_VFIO_GROUP_GET_DEVICE_FD)

  // Device
  public static let deviceGetInfo = Self(
    name: "VFIO_DEVICE_GET_INFO", number: cvfio_VFIO_DEVICE_GET_INFO)
  public static let deviceGetRegionInfo = Self(
    name: "VFIO_DEVICE_GET_REGION_INFO", number: cvfio_VFIO_DEVICE_GET_REGION_INFO)
  public static let deviceGetIRQInfo = Self(
    name: "VFIO_DEVICE_GET_IRQ_INFO", number: cvfio_VFIO_DEVICE_GET_IRQ_INFO)
  public static let deviceSetIRQs = Self(
    name: "VFIO_DEVICE_SET_IRQS", number: cvfio_VFIO_DEVICE_SET_IRQS)
  public static let deviceReset = Self(name: "VFIO_DEVICE_RESET", number: cvfio_VFIO_DEVICE_RESET)
  public static let deviceGetPCIHotResetInfo = Self(
    name: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", number: cvfio_VFIO_DEVICE_GET_PCI_HOT_RESET_INFO)
  public static let devicePCIHotReset = Self(
    name: "VFIO_DEVICE_PCI_HOT_RESET", number: cvfio_VFIO_DEVICE_PCI_HOT_RESET)
  public static let deviceFeature = Self(
    name: "VFIO_DEVICE_FEATURE", number: cvfio_VFIO_DEVICE_FEATURE)
  public static let deviceBindIOMMUFD = Self(
    name: "VFIO_DEVICE_BIND_IOMMUFD", number: cvfio_VFIO_DEVICE_BIND_IOMMUFD)
  public static let deviceAttachIOMMUFDPT = Self(
    name: "VFIO_DEVICE_ATTACH_IOMMUFD_PT", number: cvfio_VFIO_DEVICE_ATTACH_IOMMUFD_PT)
  public static let deviceDetachIOMMUFDPT = Self(
    name: "VFIO_DEVICE_DETACH_IOMMUFD_PT", number: cvfio_VFIO_DEVICE_DETACH_IOMMUFD_PT)

  // iommufd (/dev/iommu)
  public static let iommuDestroy = Self(name: "IOMMU_DESTROY", number: cvfio_IOMMU_DESTROY)
  public static let iommuIOASAlloc = Self(name: "IOMMU_IOAS_ALLOC", number: cvfio_IOMMU_IOAS_ALLOC)
  public static let iommuIOASIOVARanges = Self(
    name: "IOMMU_IOAS_IOVA_RANGES", number: cvfio_IOMMU_IOAS_IOVA_RANGES)
  public static let iommuIOASMap = Self(name: "IOMMU_IOAS_MAP", number: cvfio_IOMMU_IOAS_MAP)
  public static let iommuIOASUnmap = Self(name: "IOMMU_IOAS_UNMAP", number: cvfio_IOMMU_IOAS_UNMAP)
  public static let iommuOption = Self(name: "IOMMU_OPTION", number: cvfio_IOMMU_OPTION)
}
