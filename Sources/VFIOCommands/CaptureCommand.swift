import ArgumentParser
import VFIOHost

#if canImport(Glibc)
  import Glibc
#endif

struct CaptureCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "capture",
    abstract: "Copy the part of sysfs and procfs that vfioctl reads into DIR, for bug reports and tests.",
    discussion: "Replay it with `vfioctl list --root DIR`. Only reads the host; DIR must be new or empty.")

  @Argument(help: "The directory to create.")
  var directory: String

  @OptionGroup var host: HostOptions
  @OptionGroup var output: OutputOptions

  func validate() throws {
    var info = stat()
    if stat(directory, &info) == 0 && info.st_mode & S_IFMT != S_IFDIR {
      throw ValidationError("\(directory) is a file, not a directory; capture into a new directory")
    }
    guard Sysfs().list(directory).isEmpty else {
      throw ValidationError("\(directory) is not empty; capture into a new directory")
    }
  }

  func run() throws {
    try reportingErrors {
      let recorder = AccessRecorder()
      // Everything any command reads is read here: the inventory, verdicts and doctor.
      let builder = try host.builder(recorder: recorder)
      _ = builder.list()
      _ = builder.doctor()
      SysfsCapture.touchCompanionAttributes(
        Sysfs(root: host.root, recorder: recorder), devices: builder.inventory.devices)
      let count: Int
      let note = builder.inventory.configSpaceNote
      do {
        let capture = SysfsCapture(source: host.sysfs, destination: directory)
        count = try capture.write(recorder.accesses)
        try capture.writeNotes(version: VFIOCtl.version, configSpaceNote: note)
      } catch {
        throw CLIError.unavailable("\(error)")
      }
      let summary = CaptureSummary(
        directory: directory, entries: count, devices: builder.inventory.devices.count,
        groups: builder.inventory.groups.count, kernelRelease: builder.inventory.kernelRelease,
        configSpaceNote: note)
      try output.emit(summary) {
        "captured \($0.entries) entries (\(plural($0.devices, "device")), \(plural($0.groups, "group"))) into \($0.directory)\n"
          + ($0.configSpaceNote == nil ? "" : "the cut config space is noted in \(SysfsCapture.notesFile)\n")
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
  /// Set when config space was cut to the 64-byte header (a capture made without root).
  var configSpaceNote: String?
}
