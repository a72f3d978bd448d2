import Dispatch
import PCI

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Everything the host's sysfs says about PCI devices, IOMMU groups and VFIO, read once and
/// without writing anything.
public struct HostInventory: Sendable {
  /// Every PCI function, in address order.
  public let devices: [PCIDevice]
  /// IOMMU groups in numeric order; empty when no IOMMU is enabled.
  public let groups: [IOMMUGroup]
  public let iommuUnits: [IOMMUUnit]
  public let vfio: VFIOSupport
  /// `uname -r` of the kernel the tree comes from.
  public let kernelRelease: String?
  /// What the host uses below each function (mounts, interfaces, consoles).
  public let hostUse: [PCIAddress: [HostUse]]
  /// Functions sharing each Linux IRQ among those with an INTx pin.
  public let sharedIRQs: [Int: [PCIAddress]]
  /// The page size BAR alignment is judged by.
  public let pageSize: UInt64
  /// Devices that could not be read, with the reason; they are left out of `devices`.
  public let unreadable: [(name: String, reason: String)]

  private let index: [PCIAddress: Int]
  private let groupIndex: [IOMMUGroupID: Int]
  /// Where the inventory was read from, for the host-wide facts only `doctor` needs.
  public let sysfs: Sysfs

  /// The kernel command line, CPU vendor, interrupt remapping, memlock limit and type1
  /// parameters. Read on demand: `/proc/interrupts` alone can be megabytes on a large host, and
  /// only `doctor` looks at any of it.
  public func readEnvironment() -> KernelEnvironment { KernelEnvironment.read(sysfs) }

  public func device(_ address: PCIAddress) -> PCIDevice? { index[address].map { devices[$0] } }
  public func group(_ id: IOMMUGroupID) -> IOMMUGroup? { groupIndex[id].map { groups[$0] } }
  public func group(of device: PCIDevice) -> IOMMUGroup? { device.iommuGroup.flatMap(group) }
  public func uses(of address: PCIAddress) -> [HostUse] { hostUse[address] ?? [] }

  /// Functions on the same bus segment behind the same bridge: what a secondary bus reset at
  /// that bridge hits, the function itself included. Empty on a root bus, which has no bridge.
  public func busResetScope(of device: PCIDevice) -> [PCIDevice] {
    guard let bridge = device.upstreamBridges.first else { return [] }
    return devices.filter { $0.upstreamBridges.contains(bridge) }
  }

  /// Functions whose config space read gave only the 64-byte header: what sysfs hands a reader
  /// that is not root (or a capture such a reader made).
  public var devicesWithConfigHeaderOnly: [PCIDevice] { devices.filter { ($0.config?.bytes.count ?? 0) == 64 } }

  /// Said once per run when config space was cut, since every capability-derived fact then
  /// reads as unknown; nil when it was read whole.
  public var configSpaceNote: String? {
    let cut = devicesWithConfigHeaderOnly.count
    guard cut > 0 else { return nil }
    return
      "config space is cut to 64 bytes for \(plural(cut, "device")) (not read as root): capabilities, FLR, ACS and SR-IOV are unknown; run as root"
  }

  /// Whether IOMMU groups exist at all: the kernel created them because an IOMMU is on.
  public let iommuEnabled: Bool
  /// False for a part of the host read for the verdicts on some groups (`InventoryReading`):
  /// `devices` and `groups` then hold what those verdicts need, and the host-wide facts
  /// (`hostUse`, `sharedIRQs`) are whole only for those devices.
  public let isWholeHost: Bool

  /// Reads the host (or a captured tree) rooted at `sysfs`.
  public static func read(_ sysfs: Sysfs, pageSize: UInt64? = nil, view: HostView = .caller) throws(InventoryError)
    -> HostInventory
  {
    let pageSize = try checkedPageSize(sysfs, pageSize)
    let names = sysfs.list("/sys/bus/pci/devices")
    let results = readConcurrently(names) { name -> Result<PCIDevice, DeviceReadError> in
      Result { () throws(DeviceReadError) -> PCIDevice in try DeviceReader(sysfs: sysfs, pageSize: pageSize).read(name)
      }
    }
    var devices: [PCIDevice] = []
    var unreadable: [(String, String)] = []
    var seen: [PCIAddress: String] = [:]
    for (name, result) in zip(names, results) {
      switch result {
      case .success(let device):
        // Two names for one address (`0000:00:02.0` and `00:02.0`) cannot come from the
        // kernel; every lookup by address assumes one device per address.
        if let first = seen[device.address] {
          unreadable.append((name, "names the same function as \(first); left out"))
        } else {
          seen[device.address] = name
          devices.append(device)
        }
      case .failure(let error): unreadable.append((name, error.description))
      }
    }
    let groupIDs = sysfs.list("/sys/kernel/iommu_groups").compactMap { IOMMUGroupID($0) }
    return assemble(
      sysfs, pageSize: pageSize, view: view, devices: devices, unreadable: unreadable,
      resetAttributeSeen: devices.contains { $0.kernelResetMethods != nil }, groupIDs: groupIDs,
      iommuEnabled: !groupIDs.isEmpty, hostUseOf: nil)
  }

  /// The page size to judge BARs by, after checking that `sysfs` has a PCI bus at all.
  static func checkedPageSize(_ sysfs: Sysfs, _ pageSize: UInt64?) throws(InventoryError) -> UInt64 {
    guard sysfs.isDirectory("/sys/bus/pci/devices") else { throw .noPCIBus(sysfs.path("/sys/bus/pci/devices")) }
    let pageSize = pageSize ?? UInt64(sysconf(Int32(_SC_PAGESIZE)))
    guard isValidPageSize(pageSize) else { throw .badPageSize(pageSize) }
    return pageSize
  }

  /// An inventory from functions already read: the whole host's (`read`) or a part of it
  /// (`InventoryReading`), which then gives `hostUseOf`, the functions whose host use it needs.
  static func assemble(
    _ sysfs: Sysfs, pageSize: UInt64, view: HostView, devices: [PCIDevice], unreadable: [(String, String)],
    resetAttributeSeen: Bool, groupIDs: [IOMMUGroupID], iommuEnabled: Bool, hostUseOf: Set<PCIAddress>?
  ) -> HostInventory {
    var devices = devices
    devices.sort { $0.address < $1.address }
    // Kernels since 5.15 hide `reset_method` on functions they cannot reset; once any
    // function shows it, its absence elsewhere means "no method" rather than "unknown".
    if resetAttributeSeen {
      for i in devices.indices where devices[i].kernelResetMethods == nil { devices[i].kernelResetMethods = [] }
    }
    resolveVirtualFunctionIDs(&devices, sysfs)
    var hostUse = HostUseScanner(sysfs: sysfs, view: view, owners: hostUseOf).scan()
    for device in devices where device.bootVGA {
      hostUse[device.address, default: []].append(
        HostUse(
          kind: .bootVGA, subject: "boot_vga", detail: "is set: the firmware drew its console on this device",
          active: false))
    }
    var shared: [Int: [PCIAddress]] = [:]
    for device in devices where device.interrupt.pin != 0 {
      if let irq = device.interrupt.irq, irq > 0 { shared[irq, default: []].append(device.address) }
    }
    return HostInventory(
      devices: devices, groups: readGroups(sysfs, ids: groupIDs, devices: devices), iommuEnabled: iommuEnabled,
      isWholeHost: hostUseOf == nil, iommuUnits: readIOMMUUnits(sysfs), vfio: readVFIOSupport(sysfs),
      kernelRelease: sysfs.readString("/proc/sys/kernel/osrelease"), sysfs: sysfs, hostUse: hostUse,
      sharedIRQs: shared.filter { $0.value.count > 1 },
      pageSize: pageSize, unreadable: unreadable)
  }

  init(
    devices: [PCIDevice], groups: [IOMMUGroup], iommuEnabled: Bool, isWholeHost: Bool, iommuUnits: [IOMMUUnit],
    vfio: VFIOSupport,
    kernelRelease: String?, sysfs: Sysfs, hostUse: [PCIAddress: [HostUse]], sharedIRQs: [Int: [PCIAddress]],
    pageSize: UInt64,
    unreadable: [(name: String, reason: String)]
  ) {
    self.devices = devices
    self.groups = groups
    self.iommuEnabled = iommuEnabled
    self.isWholeHost = isWholeHost
    self.iommuUnits = iommuUnits
    self.vfio = vfio
    self.kernelRelease = kernelRelease
    self.sysfs = sysfs
    self.hostUse = hostUse
    self.sharedIRQs = sharedIRQs
    self.pageSize = pageSize
    self.unreadable = unreadable
    var index: [PCIAddress: Int] = [:]
    for (i, device) in devices.enumerated() { index[device.address] = i }
    self.index = index
    var groupIndex: [IOMMUGroupID: Int] = [:]
    for (i, group) in groups.enumerated() { groupIndex[group.id] = i }
    self.groupIndex = groupIndex
  }

  /// The kernel names a VF by its PF's vendor and the SR-IOV capability's VF device ID, while
  /// the VF's own config space reads 0xffff there.
  private static func resolveVirtualFunctionIDs(_ devices: inout [PCIDevice], _ sysfs: Sysfs) {
    var index: [PCIAddress: Int] = [:]
    for (i, device) in devices.enumerated() { index[device.address] = i }
    for i in devices.indices where devices[i].vendorID == 0xFFFF {
      let dir = devices[i].sysfsPath
      if let pf = devices[i].physicalFunction.flatMap({ index[$0] }).map({ devices[$0] }), pf.vendorID != 0xFFFF,
        let vfDevice = pf.sriov?.vfDeviceID
      {
        devices[i].vendorID = pf.vendorID
        devices[i].deviceID = vfDevice
      } else {
        devices[i].vendorID = sysfs.readInteger("\(dir)/vendor").map { UInt16(truncatingIfNeeded: $0) } ?? 0xFFFF
        devices[i].deviceID = sysfs.readInteger("\(dir)/device").map { UInt16(truncatingIfNeeded: $0) } ?? 0xFFFF
      }
    }
  }

  /// Groups with their PCI members taken from each device's `iommu_group` link, which the
  /// device read has already followed; listing every group's `devices/` again would cost four
  /// system calls per group. Only groups no PCI device points at are listed, to name their
  /// non-PCI members.
  private static func readGroups(_ sysfs: Sysfs, ids: [IOMMUGroupID], devices: [PCIDevice]) -> [IOMMUGroup] {
    var members: [IOMMUGroupID: [PCIAddress]] = [:]
    for device in devices {
      if let group = device.iommuGroup { members[group, default: []].append(device.address) }
    }
    let pciMembers = members
    return readConcurrently(ids) { id -> IOMMUGroup in
      let path = "/sys/kernel/iommu_groups/\(id)"
      let pci = pciMembers[id] ?? []
      let others = pci.isEmpty ? sysfs.list("\(path)/devices").filter { !looksLikePCIAddress($0) } : []
      return IOMMUGroup(id: id, type: sysfs.readString("\(path)/type"), devices: pci.sorted(), otherMembers: others)
    }.sorted { $0.id < $1.id }
  }

  private static func readIOMMUUnits(_ sysfs: Sysfs) -> [IOMMUUnit] {
    sysfs.list("/sys/class/iommu").map { name in
      // VT-d's ECAP bit 3 (IR): the unit can remap interrupts.
      let ecap = sysfs.readString("/sys/class/iommu/\(name)/intel-iommu/ecap").flatMap { UInt64($0, radix: 16) }
      return IOMMUUnit(name: name, interruptRemappingSupported: ecap.map { $0 & 0x8 != 0 })
    }
  }

  private static func readVFIOSupport(_ sysfs: Sysfs) -> VFIOSupport {
    VFIOSupport(
      modules: VFIOSupport.relevantModules.filter { sysfs.isDirectory("/sys/module/\($0)") },
      vfioPCIDriver: sysfs.isDirectory("/sys/bus/pci/drivers/vfio-pci"),
      containerNode: sysfs.exists("/dev/vfio/vfio"),
      groupNodes: sysfs.list("/dev/vfio").compactMap { IOMMUGroupID($0) }.sorted(),
      iommufdNode: sysfs.exists("/dev/iommu"),
      deviceNodes: sysfs.list("/dev/vfio/devices"))
  }
}

/// Why the host could not be read at all.
public enum InventoryError: Error, Equatable, CustomStringConvertible {
  case noPCIBus(String)
  case badPageSize(UInt64)

  public var description: String {
    switch self {
    case .noPCIBus(let path):
      return
        "\(path) does not exist: this is not a Linux sysfs tree with a PCI bus (check --root, or that /sys is mounted)"
    case .badPageSize(let size):
      return "page size \(size) is not a power of two of at least 4096; pass the guest's or host's page size in bytes"
    }
  }
}

/// "1 device", "2 devices": a count with its noun, plural unless it is one.
public func plural(_ count: Int, _ noun: String, _ plural: String? = nil) -> String {
  "\(count) \(count == 1 ? noun : plural ?? noun + "s")"
}

/// Page sizes Linux uses: 4 KiB and larger powers of two.
public func isValidPageSize(_ size: UInt64) -> Bool { size >= 4096 && size & (size - 1) == 0 }

/// Maps `body` over `items` on every core: inventory is thousands of independent small reads.
func readConcurrently<T, R: Sendable>(_ items: [T], _ body: @Sendable (T) -> R) -> [R] where T: Sendable {
  let workers = max(1, min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), 8, items.count / 64))
  guard workers > 1 else { return items.map(body) }
  nonisolated(unsafe) var results = [R?](repeating: nil, count: items.count)
  results.withUnsafeMutableBufferPointer { buffer in
    nonisolated(unsafe) let slots = buffer
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      // Each worker owns the indices congruent to its number, so no slot is shared.
      for i in stride(from: worker, to: items.count, by: workers) { slots[i] = body(items[i]) }
    }
  }
  return results.map { $0! }
}
