import ArgumentParser
import VFIO

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension Backend: ExpressibleByArgument {}

/// Drives QEMU's edu device through VFIO and reports whether every check passed.
@main
struct VFIOEdu: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vfio-edu",
    abstract: "Example VFIO userspace driver for QEMU's edu device (1234:11e8).",
    discussion: "Exits 0 only if every check passed.")

  @Argument(help: "PCI address (0000:00:03.0) or device cdev (/dev/vfio/devices/vfio0).")
  var device: String

  @Option(help: "legacy (group/container), iommufd (cdev), or auto.")
  var backend: Backend = .auto

  @Option(help: "Bytes per DMA transfer (1...4095; QEMU 7.2 rejects the full 4096).")
  var size: Int = 1024

  @Option(help: "Interrupt paths to test: msi, intx or both (comma separated).")
  var interrupts: String = "msi,intx"

  @Flag(help: "Use pread/pwrite for BAR0 instead of mmap.")
  var noMmap = false

  @Flag(help: "Print the report as JSON.")
  var json = false

  func validate() throws {
    guard (1...4095).contains(size) else { throw ValidationError("--size must be 1...4095") }
  }

  func run() async throws {
    var report = Report(device: device, backend: backend.rawValue)
    do {
      let opened = try open()
      report.backend = opened.backend.rawValue
      let options = EduOptions(
        transferSize: size, interrupts: Set(interrupts.split(separator: ",").map(String.init)),
        useMmap: !noMmap)
      try await EduDriver(opened: opened, options: options).run(into: &report)
    } catch {
      report.error = error.description
    }
    print(json ? Render.json(report) : Render.text(report))
    if !report.passed { throw ExitCode.failure }
  }

  func open() throws(VFIOError) -> OpenedDevice {
    guard device.hasPrefix("/dev/vfio/devices/") else {
      return try OpenedDevice.open(device, backend: backend)
    }
    return try OpenedDevice.open(cdev: device)
  }
}
