import PCI

/// A part of the host, read function by function as a caller finds it needs them: what a
/// command about a few IOMMU groups reads instead of the whole host. On a host of thousands of
/// SR-IOV functions, detaching one VF reads a handful of them.
///
/// The caller (the policy, which knows what its verdicts depend on) decides which functions to
/// read; this type reads them exactly as `HostInventory.read` would, and finds the ones a
/// host-wide fact could involve: a group's members, the functions below a bridge, those on an
/// IRQ line, those with MMIO in a page. The result is a `HostInventory` whose facts about the
/// functions read are the ones a whole read gives.
public struct InventoryReading {
  public let sysfs: Sysfs
  public let pageSize: UInt64
  let view: HostView
  /// The functions read so far, by address.
  public private(set) var devices: [PCIAddress: PCIDevice] = [:]
  private var unreadable: [(String, String)] = []
  private var attempted: Set<PCIAddress> = []
  /// Whether any function shows `reset_method` (a 5.15 or later kernel); found once, on demand.
  private var resetAttributeSeen: Bool?

  public init(_ sysfs: Sysfs, pageSize: UInt64? = nil, view: HostView = .caller) throws(InventoryError) {
    self.sysfs = sysfs
    self.pageSize = try HostInventory.checkedPageSize(sysfs, pageSize)
    self.view = view
  }

  /// Reads the functions not read yet (a name the bus does not list is passed over, as a whole
  /// read never sees it). A VF whose IDs come from its PF brings its PF along.
  public mutating func read(_ addresses: some Sequence<PCIAddress>) {
    var pending = addresses.filter { attempted.insert($0).inserted }
    while !pending.isEmpty {
      let sysfs = self.sysfs
      let pageSize = self.pageSize
      let names = pending.map(\.description).filter { sysfs.exists("/sys/bus/pci/devices/\($0)") }
      let results = readConcurrently(names) { name -> Result<PCIDevice, DeviceReadError> in
        Result { () throws(DeviceReadError) -> PCIDevice in
          try DeviceReader(sysfs: sysfs, pageSize: pageSize).read(name)
        }
      }
      pending = []
      for (name, result) in zip(names, results) {
        switch result {
        case .success(var device):
          if device.kernelResetMethods == nil && kernelHidesResetMethods() { device.kernelResetMethods = [] }
          devices[device.address] = device
          if device.vendorID == 0xFFFF, let pf = device.physicalFunction, attempted.insert(pf).inserted {
            pending.append(pf)
          }
        case .failure(let error): unreadable.append((name, error.description))
        }
      }
    }
  }

  /// The PCI functions in IOMMU group `id` (empty when there is no such group).
  public func members(ofGroup id: IOMMUGroupID) -> [PCIAddress] {
    sysfs.list("/sys/kernel/iommu_groups/\(id)/devices").compactMap(pciAddress)
  }

  /// Every function below `bridge`, at any depth: what a secondary bus reset at it hits. The
  /// bridge's directory is the one `device`, a function below it, has in its path.
  public func functions(below bridge: PCIAddress, of device: PCIDevice) -> [PCIAddress] {
    let components = device.sysfsPath.split(separator: "/", omittingEmptySubsequences: false)
    guard let at = components.firstIndex(where: { $0 == bridge.description }) else { return [] }
    var found: [PCIAddress] = []
    var directories = [components[...at].joined(separator: "/")]
    // A capture could nest without end; no real bus tree comes near this many functions.
    var budget = 1 << 16
    while let directory = directories.popLast(), budget > 0 {
      for name in sysfs.list(directory) {
        guard let address = pciAddress(name) else { continue }
        budget -= 1
        found.append(address)
        directories.append(directory + "/" + name)
      }
    }
    return found
  }

  /// Every function whose kernel IRQ is one of `irqs` (its `irq` attribute; whether it has an
  /// INTx pin is its config space's to say, once read). One pass over the bus for all of them.
  public func functions(onIRQs irqs: Set<Int>) -> [PCIAddress] {
    guard !irqs.isEmpty else { return [] }
    return sysfs.list("/sys/bus/pci/devices").filter { name in
      sysfs.readInteger("/sys/bus/pci/devices/\(name)/irq").map(irqs.contains) == true
    }.compactMap(pciAddress)
  }

  /// Every function with an MMIO BAR reaching into one of `ranges`, from each one's `resource`.
  /// One pass over the bus for all of them.
  public func functions(withMMIOIn ranges: [(first: UInt64, last: UInt64)]) -> [PCIAddress] {
    guard !ranges.isEmpty else { return [] }
    return sysfs.list("/sys/bus/pci/devices").filter { name in
      guard let bytes = sysfs.readBytes("/sys/bus/pci/devices/\(name)/resource") else { return false }
      return parseResources(bytes, pageSize: pageSize).bars.contains { bar in
        ranges.contains { bar.isMMIO(reaching: $0.first, $0.last) }
      }
    }.compactMap(pciAddress)
  }

  /// The inventory of what was read: `groups` are the IOMMU groups it describes (their members
  /// must have been read), and host use is looked up for every function read and for the VFs
  /// of the PFs read.
  public func inventory(groups: [IOMMUGroupID]) -> HostInventory {
    var owners = Set(devices.keys)
    for device in devices.values { owners.formUnion(device.sriov?.virtualFunctions ?? []) }
    let present = groups.filter { sysfs.isDirectory("/sys/kernel/iommu_groups/\($0)") }
    return HostInventory.assemble(
      sysfs, pageSize: pageSize, view: view, devices: Array(devices.values), unreadable: unreadable,
      resetAttributeSeen: false, groupIDs: present,
      iommuEnabled: !present.isEmpty || !sysfs.list("/sys/kernel/iommu_groups").isEmpty, hostUseOf: owners)
  }

  /// Whether the kernel hides `reset_method` where it knows no method, as `HostInventory.read`
  /// concludes when any function shows the attribute: looked for once, up to the first that does.
  private mutating func kernelHidesResetMethods() -> Bool {
    if let resetAttributeSeen { return resetAttributeSeen }
    let seen = sysfs.list("/sys/bus/pci/devices").contains {
      sysfs.readString("/sys/bus/pci/devices/\($0)/reset_method") != nil
    }
    resetAttributeSeen = seen
    return seen
  }

  private func pciAddress(_ name: String) -> PCIAddress? {
    looksLikePCIAddress(name) ? try? PCIAddress(parsing: name) : nil
  }
}
