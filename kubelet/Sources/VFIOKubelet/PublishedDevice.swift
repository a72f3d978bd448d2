import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// One IOMMU group as the cluster sees it: the unit a claim (DRA) or a container request
/// (device plugin) gets, never a single function, so companions always go together.
public struct PublishedDevice: Sendable, Equatable, Codable {
  public let group: IOMMUGroupID
  /// Every endpoint of the group, in address order; bridges stay with the host.
  public let functions: [PCIAddress]
  public let verdict: Verdict
  public let vendorID: UInt16
  public let deviceID: UInt16
  public let classCode: UInt32
  /// The reset vfio-pci will use on the first function (`flr`, `pm`, `bus`, …); nil: none.
  public let resetMethod: String?
  /// The root complex the group hangs off (`pci0000:00`), from the device's sysfs path.
  public let pcieRoot: String?
  /// nil when the kernel says -1 (no NUMA information): never published as -1.
  public let numaNode: Int?
  /// `pf` for an SR-IOV physical function, `vf` for a virtual function, nil otherwise.
  public let sriovRole: String?
  public let physicalFunction: PCIAddress?
  /// Every endpoint is bound to a VFIO driver: `/dev/vfio/N` exists or will on the next bind.
  public let onVFIO: Bool

  /// The DRA device name: a DNS label, stable for as long as the group number is.
  public var name: String { "group-\(group)" }
  /// The group a DRA device name stands for; nil for a name this driver never publishes.
  public static func group(named name: String) -> IOMMUGroupID? {
    guard name.hasPrefix("group-") else { return nil }
    return IOMMUGroupID(name.dropFirst(6))
  }
  /// The device plugin ID: the group number, as KubeVirt's PCI device plugin uses it.
  public var pluginID: String { group.description }
  /// The card of the first function (domain, bus, slot): functions of one card share it.
  public var card: String { cardKey(functions[0]) }
  /// `PCI_RESOURCE_<NAME>`'s value: the functions, comma-separated, as KubeVirt reads it.
  public var busIDs: String { functions.map(\.description).joined(separator: ",") }
}

func cardKey(_ address: PCIAddress) -> String {
  String(address.description.split(separator: ".").first ?? "")
}

/// The devices a node publishes: one per group whose verdict allows assignment. Groups of
/// bridges only, groups the host uses and other non-assignable groups are left out.
public struct DeviceCatalog: Sendable {
  public let devices: [PCIDevice]
  public let published: [PublishedDevice]

  public static let empty = DeviceCatalog(devices: [], published: [])

  init(devices: [PCIDevice], published: [PublishedDevice]) {
    self.devices = devices
    self.published = published
  }

  /// With `allowNoReset`, a group whose only blocker is a missing reset is published too
  /// (as `conditional`), for userspace drivers that live without one (QEMU's edu device).
  /// `withheld`: groups not to publish whatever they are (the ledger gives them to someone).
  public init(inventory: HostInventory, allowNoReset: Bool = false, withheld: [IOMMUGroupID: String] = [:]) {
    self.devices = inventory.devices
    let assessor = Assessor(inventory: inventory)
    published = inventory.groups.compactMap { group -> PublishedDevice? in
      guard withheld[group.id] == nil else { return nil }
      let assessment = assessor.assess(group: group.id)
      let blockers = assessment.reasons.filter { $0.severity == .blocker }
      let resetOnly = allowNoReset && !blockers.isEmpty && blockers.allSatisfy { $0.code == .noReset }
      guard assessment.verdict != .notAssignable || resetOnly else { return nil }
      let endpoints = assessment.members.filter { $0.role == .endpoint }
      guard let first = endpoints.first, let device = inventory.device(first.address) else { return nil }
      let onVFIO = endpoints.allSatisfy { $0.driver.map(PCIDevice.isVFIODriver) ?? false }
      return PublishedDevice(
        group: group.id, functions: endpoints.map(\.address), verdict: resetOnly ? .conditional : assessment.verdict,
        vendorID: device.vendorID, deviceID: device.deviceID, classCode: device.classCode,
        resetMethod: first.reset?.method?.rawValue, pcieRoot: pcieRoot(of: device),
        numaNode: device.numaNode,
        sriovRole: device.isVirtualFunction ? "vf" : (device.sriov?.totalVFs ?? 0) > 0 ? "pf" : nil,
        physicalFunction: device.physicalFunction, onVFIO: onVFIO)
    }
  }

  public func device(named name: String) -> PublishedDevice? { published.first { $0.name == name } }
  public func device(pluginID: String) -> PublishedDevice? { published.first { $0.pluginID == pluginID } }
}

/// `pci0000:00` from the device's canonical directory (`/sys/devices/pci0000:00/0000:00:04.0/X`),
/// which the inventory resolved already. Bytes, not Characters: once per published group.
func pcieRoot(of device: PCIDevice) -> String? {
  let components = device.sysfsPath.utf8.split(separator: UInt8(ascii: "/"))
  return components.first { $0.starts(with: "pci".utf8) && $0.contains(UInt8(ascii: ":")) }
    .map { String(decoding: $0, as: UTF8.self) }
}
