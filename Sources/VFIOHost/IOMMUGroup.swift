import PCI

/// An IOMMU group: the smallest set of devices the IOMMU can isolate from the rest, and so the
/// unit VFIO hands to a user.
public struct IOMMUGroup: Sendable, Equatable, Codable {
  public let id: IOMMUGroupID
  /// The default domain type from `type` (`DMA`, `DMA-FQ`, `identity`, `blocked`, `unmanaged`).
  public let type: String?
  /// PCI members, in address order.
  public let devices: [PCIAddress]
  /// Members that are not PCI functions (platform devices), by sysfs name; read for groups
  /// without PCI members (on PCI platforms non-PCI devices get groups of their own).
  public let otherMembers: [String]
}

/// A hardware IOMMU the kernel registered, from `/sys/class/iommu`.
public struct IOMMUUnit: Sendable, Equatable, Codable {
  /// `dmar0`, `ivhd0`, a virtio-iommu's device name, …
  public let name: String
  /// Intel VT-d extended capability register bit 3: interrupt remapping supported.
  public let interruptRemappingSupported: Bool?
}

/// What the host offers for VFIO right now: modules, drivers and device nodes.
public struct VFIOSupport: Sendable, Equatable, Codable {
  /// Kernel modules (or built-ins with parameters) present under `/sys/module`.
  public let modules: [String]
  /// The `vfio-pci` driver is registered on the PCI bus.
  public let vfioPCIDriver: Bool
  /// `/dev/vfio/vfio`, the legacy container node.
  public let containerNode: Bool
  /// Group numbers with a `/dev/vfio/N` node.
  public let groupNodes: [IOMMUGroupID]
  /// `/dev/iommu`, the iommufd node.
  public let iommufdNode: Bool
  /// Names under `/dev/vfio/devices` (VFIO device cdevs, `vfio0` …).
  public let deviceNodes: [String]

  public static let relevantModules = [
    "vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "vfio_iommu_spapr_tce", "iommufd",
    "pci_stub", "vfio_virqfd", "kvm",
  ]
}
