import PCI

/// What a command is about: a PCI function or a whole IOMMU group.
public enum Selector: Sendable, Equatable, CustomStringConvertible {
  case device(PCIAddress)
  case group(IOMMUGroupID)

  /// A decimal number is a group; anything else must be a PCI address.
  public init(parsing text: String) throws(PCIAddressError) {
    if let id = IOMMUGroupID(text) {
      self = .group(id)
    } else {
      self = .device(try PCIAddress(parsing: text))
    }
  }

  public var description: String {
    switch self {
    case .device(let address): address.description
    case .group(let id): "group \(id)"
    }
  }
}

/// What every command says when a target does not exist, and what to do next.
public enum TargetNotFound {
  public static func device(_ address: String) -> String {
    "no PCI device \(address) on this host; run `vfioctl list` to see the devices"
  }
  public static func group(_ id: IOMMUGroupID) -> String {
    "no IOMMU group \(id) on this host; run `vfioctl list` to see the groups"
  }
}
