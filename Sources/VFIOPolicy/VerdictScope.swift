import PCI
import VFIOHost

extension HostInventory {
  /// The part of the host the verdicts on `groups` (and on the groups of `devices`) depend on,
  /// and nothing else: `Assessor` gives the same assessment of those groups and devices from it
  /// as from the whole host (a property the tests check over every captured tree).
  ///
  /// A verdict looks beyond its group's members at:
  /// - the bridges above them (conventional PCI, ACS on the path);
  /// - when a member can only be reset by a bus reset, every function below its bridge, and
  ///   whether the host uses them;
  /// - when a member has only INTx, the functions on the same IRQ;
  /// - when a member's MMIO BAR does not fill its pages, the functions with MMIO in those pages;
  /// - whether the host uses a member PF's VFs.
  /// The last three are host-wide scans of one attribute each, made only when needed.
  public static func read(
    _ sysfs: Sysfs, forVerdictsOn groups: [IOMMUGroupID], devices: [PCIAddress] = [], pageSize: UInt64? = nil,
    view: HostView = .caller
  ) throws(InventoryError) -> HostInventory {
    var reading = try InventoryReading(sysfs, pageSize: pageSize, view: view)
    reading.read(devices)
    let targets = Set(groups + devices.compactMap { reading.devices[$0]?.iommuGroup }).sorted()
    reading.read(targets.flatMap(reading.members(ofGroup:)))
    let judged = reading.devices.values.filter { device in
      devices.contains(device.address) || device.iommuGroup.map(targets.contains) == true
    }
    reading.read(judged.flatMap(\.upstreamBridges))
    // What the members' verdicts need beyond them, gathered first so that each host-wide scan
    // runs once for the whole set, however many members (or BARs) ask for it.
    var busResets: [PCIAddress: PCIDevice] = [:]
    var irqs: Set<Int> = []
    var pages: [(first: UInt64, last: UInt64)] = []
    for device in judged where device.isEndpoint {
      if ResetPlanner.resetsItsBus(device), let bridge = device.upstreamBridges.first { busResets[bridge] = device }
      if let irq = Assessor.onlyINTx(device) { irqs.insert(irq) }
      pages += device.bars.compactMap { Assessor.pagesShared(by: $0, page: reading.pageSize) }
    }
    for (bridge, below) in busResets { reading.read(reading.functions(below: bridge, of: below)) }
    reading.read(reading.functions(onIRQs: irqs))
    reading.read(reading.functions(withMMIOIn: pages))
    return reading.inventory(groups: targets)
  }
}
