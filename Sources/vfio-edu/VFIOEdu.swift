import ArgumentParser
import PCI
import VFIO
import VFIOBrokerClient

extension Backend: ExpressibleByArgument {}

/// Example VFIO userspace driver for QEMU's edu device, plus the probes the integration
/// tests use on other devices.
@main
struct VFIOEdu: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vfio-edu",
    abstract: "Example VFIO userspace driver for QEMU's edu device (1234:11e8).",
    subcommands: [
      Exercise.self, Probe.self, HotReset.self, DMAChecks.self, Reset.self, MSIX.self,
      Features.self,
    ],
    defaultSubcommand: Exercise.self)
}

struct Common: ParsableArguments {
  @Option(help: "legacy (group/container), iommufd (cdev), or auto.")
  var backend: Backend = .auto

  @Flag(help: "Print the report as JSON.")
  var json = false

  @Option(help: "Get the device from the swift-vfio broker at this socket instead of opening it (no root, no /dev/vfio access needed).")
  var broker: String?

  /// Opens a PCI address or a /dev/vfio/devices/vfioN path, or asks the broker for the address.
  func open(_ device: String) throws -> OpenedDevice {
    if broker == nil && device.hasPrefix("/dev/vfio/devices/") { return try OpenedDevice.open(cdev: device) }
    let address = try PCIAddress(parsing: device)
    guard let broker else { return try OpenedDevice.open(address, backend: backend) }
    let client = try BrokerClient(socketPath: broker)
    // The connection is the lease: it lives as long as this process.
    Common.brokerConnection = client
    return try client.openDevice(address, backend: backend)
  }

  nonisolated(unsafe) static var brokerConnection: BrokerClient?

  /// Opens `device`, lets `body` add its checks, records the error that ended it early, and
  /// prints the report (exit 1 unless every check passed). Usage errors still stop the command.
  func report(_ device: String, _ body: (OpenedDevice, inout Report) throws -> Void) throws {
    var report = Report(device: device, backend: backend.rawValue)
    do {
      let opened = try open(device)
      report.backend = opened.backend.rawValue
      try body(opened, &report)
    } catch let error as ValidationError {
      throw error
    } catch {
      report.error = "\(error)"
    }
    try finish(report)
  }

  func finish(_ report: Report) throws {
    print(json ? Render.json(report) : Render.text(report))
    if !report.passed { throw ExitCode.failure }
  }
}

/// Runs the edu checks: identity, liveness, factorial, DMA both ways with MSI, INTx.
struct Exercise: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run", abstract: "Exercise an edu device; exits 0 only if every check passed.")

  @Argument(help: "PCI address (0000:00:03.0) or device cdev (/dev/vfio/devices/vfio0).")
  var device: String

  @OptionGroup var common: Common

  @Option(help: "Bytes per DMA transfer (1...4095; QEMU 7.2 aborts on the full 4096).")
  var size: Int = 1024

  @Option(help: "Interrupt paths to test: msi, intx or both (comma separated).")
  var interrupts: String = "msi,intx"

  @Flag(help: "Use pread/pwrite for BAR0 instead of mmap.")
  var noMmap = false

  @Option(
    name: .customLong("also"),
    help: "Another device to open into the same container or IOAS first (shared IOMMU domain).")
  var others: [String] = []

  func validate() throws {
    guard (1...4095).contains(size) else { throw ValidationError("--size must be 1...4095") }
  }

  func run() async throws {
    var report = Report(device: device, backend: common.backend.rawValue)
    do {
      let opened = try common.open(device)
      report.backend = opened.backend.rawValue
      let companions = try others.map { try OpenedDevice.open(PCIAddress(parsing: $0), sharing: opened) }
      for c in companions {
        report.notes.append(
          "\(c.device.name) shares the DMA space\(c.group.map { " (group \($0.number) in the same container)" } ?? " (same iommufd IOAS)")"
        )
      }
      defer { withExtendedLifetime(companions) {} }
      let options = EduOptions(
        transferSize: size, interrupts: Set(interrupts.split(separator: ",").map(String.init)),
        useMmap: !noMmap)
      try await EduDriver(opened: opened, options: options).run(into: &report)
    } catch {
      report.error = "\(error)"
    }
    try common.finish(report)
  }
}

/// Opens any VFIO device and reports what the kernel says about it, or why it cannot be opened.
struct Probe: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Open a device and list its regions and interrupts (any vfio-pci device).")

  @Argument(help: "PCI address or device cdev.")
  var device: String

  @OptionGroup var common: Common

  func run() throws {
    try common.report(device) { opened, report in
      let d = opened.device
      report.check(
        "device info", d.info.isPCI,
        "flags 0x\(hex(d.info.flags)), \(d.info.regionCount) regions, \(d.info.irqCount) irqs")
      for index in 0..<d.info.regionCount {
        guard let r = try? d.regionInfo(index), r.size > 0 else { continue }
        report.notes.append(
          "region \(index): \(r.size) bytes flags 0x\(hex(r.flags)) caps \(r.capabilities)")
      }
      for index in IRQIndex.allCases where index.rawValue < d.info.irqCount {
        do {
          let i = try d.irqInfo(index)
          report.notes.append("irq \(index): count \(i.count) flags 0x\(hex(i.flags))")
        } catch let error as VFIOError {
          // vfio-pci answers EINVAL for ERR on conventional PCI devices (no AER).
          report.notes.append("irq \(index): \(error.errnoName ?? error.message)")
        }
      }
      if opened.iommufd != nil {
        // IOMMU_OPTION(RLIMIT_MODE) on a fresh context: the kernel allows the switch only
        // while the iommufd holds no objects.
        let fresh = try IOMMUFD()
        let before = try fresh.processBasedMemlockAccounting()
        try fresh.setProcessBasedMemlockAccounting(true)
        let after = try fresh.processBasedMemlockAccounting()
        report.check(
          "iommufd rlimit mode", after,
          "RLIMIT_MEMLOCK accounting \(before ? "process" : "user") -> \(after ? "process" : "user") on a fresh iommufd"
        )
        do {
          try opened.iommufd!.setProcessBasedMemlockAccounting(true)
          report.notes.append("RLIMIT_MODE changed on an iommufd with objects")
        } catch let error as VFIOError {
          report.notes.append(
            "RLIMIT_MODE on the device's iommufd: \(error.errnoName ?? "") (it holds an IOAS)")
        }
      }
      report.notes.append(
        "dma: \(opened.dma.layout.ranges.map(\.description).joined(separator: " ")) pages 0x\(hex(opened.dma.layout.pageSizes))\(opened.dma.layout.dmaAvailable.map { " dma_avail \($0)" } ?? "")"
      )
    }
  }
}

/// Resets a device's bus with VFIO_DEVICE_PCI_HOT_RESET, proving ownership of every affected
/// device (group fds, or one iommufd for cdevs).
struct HotReset: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "hot-reset", abstract: "Bus-reset a device and the devices that share its bus.")

  @Argument(help: "PCI address.")
  var device: String

  @Option(
    name: .customLong("also"), help: "Other affected devices to open into the same DMA space first."
  )
  var others: [String] = []

  @OptionGroup var common: Common

  func run() throws {
    try common.report(device) { opened, report in
      let companions = try others.map { try OpenedDevice.open(PCIAddress(parsing: $0), sharing: opened) }
      do {
        try opened.device.reset()
        report.notes.append("VFIO_DEVICE_RESET succeeded")
      } catch let error as VFIOError {
        report.notes.append("VFIO_DEVICE_RESET: \(error.errnoName ?? error.message)")
      }
      let info = try opened.device.hotResetInfo()
      report.check(
        "hot reset info", !info.devices.isEmpty,
        "\(info.devices.count) affected: \(info.devices.map { "\($0.address) (\(info.byDeviceID ? "devid" : "group") \($0.groupOrDeviceID))" }.joined(separator: ", "))\(info.byDeviceID ? " (device ids\(info.allOwned ? ", all owned" : ""))" : "")"
      )
      let groups = companions.compactMap(\.group)
      try opened.device.hotReset(groups: groups)
      report.check("hot reset", true, "VFIO_DEVICE_PCI_HOT_RESET succeeded")
      withExtendedLifetime(companions) {}
    }
  }
}
