import PCI
import VFIOHost

/// How a function will be reset between users, and what else that reset hits.
public struct ResetChoice: Sendable, Codable, Equatable {
  /// The method vfio-pci will use; nil when none is usable.
  public let method: ResetMethod?
  /// Every function the reset hits, the device itself included (more than one for a bus reset).
  public let affects: [PCIAddress]
  /// Affected functions outside the device's IOMMU group: they must be owned by the same user
  /// (detached too) before the kernel allows the reset.
  public let affectsOutsideGroup: [PCIAddress]
  /// Affected functions the host is actively using: the reset cannot be allowed.
  public let affectsInUse: [PCIAddress]
  /// Where the method came from: the kernel's `reset_method`, or inferred from capabilities.
  public let source: Source

  public enum Source: String, Sendable, Codable {
    case kernel
    case capabilities
  }

  public var usable: Bool { method != nil && affectsInUse.isEmpty }
}

/// Picks the reset vfio-pci would perform, in the kernel's own order of preference.
public struct ResetPlanner: Sendable {
  public let inventory: HostInventory

  public init(inventory: HostInventory) { self.inventory = inventory }

  /// Methods the function supports: the kernel's list when sysfs has it, otherwise what its
  /// capabilities allow (FLR, AF FLR, PM without No_Soft_Reset, bus when alone on a bus).
  public func methods(of device: PCIDevice) -> (methods: [ResetMethod], source: ResetChoice.Source) {
    Self.methods(of: device)
  }

  static func methods(of device: PCIDevice) -> (methods: [ResetMethod], source: ResetChoice.Source) {
    if let kernel = device.kernelResetMethods { return (kernel, .kernel) }
    var inferred: [ResetMethod] = []
    if device.config?.express?.functionLevelReset == true { inferred.append(.flr) }
    if device.config?.advancedFeatures?.functionLevelReset == true { inferred.append(.afFLR) }
    if let pm = device.config?.powerManagement, !pm.noSoftReset { inferred.append(.pm) }
    if !device.upstreamBridges.isEmpty { inferred.append(.bus) }
    return (inferred, .capabilities)
  }

  public func choose(for device: PCIDevice) -> ResetChoice {
    let (methods, source) = methods(of: device)
    if let functionReset = methods.first(where: { !$0.affectsOtherFunctions }) {
      return ResetChoice(
        method: functionReset, affects: [device.address], affectsOutsideGroup: [], affectsInUse: [], source: source)
    }
    guard Self.resetsItsBus(device, methods) else {
      return ResetChoice(method: nil, affects: [], affectsOutsideGroup: [], affectsInUse: [], source: source)
    }
    let scope = inventory.busResetScope(of: device)
    let outside = scope.filter { $0.iommuGroup != device.iommuGroup || $0.iommuGroup == nil }
    let inUse = scope.filter { other in inventory.uses(of: other.address).contains(where: \.active) }
    return ResetChoice(
      method: methods.contains(.cxlBus) ? .cxlBus : .bus, affects: scope.map(\.address),
      affectsOutsideGroup: outside.map(\.address), affectsInUse: inUse.map(\.address), source: source)
  }

  /// Whether the function's reset is a bus reset, whose scope (`busResetScope`) decides the
  /// verdict: it has no reset of its own, and a bus to reset.
  static func resetsItsBus(_ device: PCIDevice) -> Bool {
    let methods = methods(of: device).methods
    return !methods.contains { !$0.affectsOtherFunctions } && resetsItsBus(device, methods)
  }

  /// The kernel may omit "bus" for all but the first function probed on a shared bus, yet
  /// VFIO_DEVICE_PCI_HOT_RESET resets the whole bus for any of them: anything behind a bridge
  /// can be bus-reset once every function on that bus is owned.
  private static func resetsItsBus(_ device: PCIDevice, _ methods: [ResetMethod]) -> Bool {
    methods.contains(.bus) || methods.contains(.cxlBus) || !device.upstreamBridges.isEmpty
  }
}
