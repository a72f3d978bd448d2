import ArgumentParser
import VFIOHost

struct CaptureCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "capture",
    abstract: "Copy the part of sysfs and procfs that vfioctl reads into DIR, for bug reports and tests.",
    discussion: "Replay it with `vfioctl list --root DIR`. Only reads the host; DIR must be new or empty.")

  @Argument(help: "The directory to create.")
  var directory: String

  @OptionGroup var host: HostOptions
  @OptionGroup var output: OutputOptions

  func run() throws {
    try reportingErrors {
      let existing = Sysfs().list(directory)
      guard existing.isEmpty else {
        throw CLIError.unavailable("\(directory) is not empty; capture into a new directory")
      }
      let recorder = AccessRecorder()
      // Everything any command reads is read here: the inventory, verdicts and doctor.
      let builder = try host.builder(recorder: recorder)
      _ = builder.list()
      _ = builder.doctor()
      SysfsCapture.touchCompanionAttributes(
        Sysfs(root: host.root, recorder: recorder), devices: builder.inventory.devices)
      let count: Int
      do {
        count = try SysfsCapture(source: host.sysfs, destination: directory).write(recorder.accesses)
      } catch {
        throw CLIError.unavailable("\(error)")
      }
      let summary = CaptureSummary(
        directory: directory, entries: count, devices: builder.inventory.devices.count,
        groups: builder.inventory.groups.count, kernelRelease: builder.inventory.kernelRelease)
      try output.emit(summary) {
        "captured \($0.entries) entries (\($0.devices) devices, \($0.groups) groups) into \($0.directory)\n"
          + "replay: vfioctl list --root \($0.directory)\n"
      }
    }
  }
}

struct CaptureSummary: Codable {
  var schemaVersion = Schema.version
  var directory: String
  var entries: Int
  var devices: Int
  var groups: Int
  var kernelRelease: String?
}
