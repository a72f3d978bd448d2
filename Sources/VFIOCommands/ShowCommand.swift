import ArgumentParser
import VFIOHost
import VFIOPolicy

/// A device or group, and where and how to read and print it: what `show` and `explain` take.
struct TargetOptions: ParsableArguments {
  @Argument(help: "A PCI address or an IOMMU group number.", transform: parseSelector)
  var target: Selector

  @OptionGroup var host: HostOptions
  @OptionGroup var state: StateOptions
  @OptionGroup var devices: DeviceOptions
  @OptionGroup var output: OutputOptions

  func builder() throws(CLIError) -> ReportBuilder { try host.builder(devices: devices, state: state) }
}

struct ShowCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "show",
    abstract: "Show everything known about a device (0000:01:00.0 or 01:00.0) or an IOMMU group (a number).")

  @OptionGroup var options: TargetOptions

  func run() throws {
    try reportingErrors {
      try options.output.emit(try options.builder().show(options.target), human: HumanRenderer.show)
    }
  }
}

struct ExplainCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "explain",
    abstract: "Say whether a device or group can be assigned, why, and the plan (a dry run: nothing is changed).",
    discussion: "Exits 1 when the verdict is `not assignable`.")

  @OptionGroup var options: TargetOptions

  func run() throws {
    try reportingErrors {
      let report = try options.builder().explain(options.target)
      try options.output.emit(report, human: HumanRenderer.explain)
      if report.verdict == .notAssignable { throw ExitCode(1) }
    }
  }
}

struct DoctorCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "doctor",
    abstract: "Check the host for device assignment: IOMMU, interrupt remapping, modules, /dev/vfio, memlock.",
    discussion: """
      Also says which ways into VFIO this kernel offers a VMM (legacy container, iommufd, device \
      cdevs). With --vm, the locked memory (RLIMIT_MEMLOCK) a VMM with that much guest RAM needs, \
      and the LimitMEMLOCK= and ulimit -l lines that give it. Exits 1 when a problem stops assignment.
      """)

  @OptionGroup var host: HostOptions
  @OptionGroup var state: StateOptions
  @OptionGroup var output: OutputOptions

  @Option(help: "A VMM's guest RAM (4G, 512M, 1T; a plain number is MiB, as QEMU's -m): print the memlock it needs.")
  var vm: String?

  @Option(help: "With --vm, how many devices the VMM is given.")
  var devices: Int = 1

  @Flag(help: "With --vm, the guest has a vIOMMU (each device its own address space).")
  var viommu = false

  func validate() throws {
    if vm == nil && (devices != 1 || viommu) { throw ValidationError("--devices and --viommu go with --vm") }
    guard (1...4096).contains(devices) else { throw ValidationError("--devices must be 1...4096") }
    if let vm, MemlockRequirement.parseSize(vm) == nil {
      throw ValidationError("--vm '\(vm)': expected a size such as 4G, 512M or 4096 (MiB)")
    }
  }

  func run() throws {
    try reportingErrors {
      let requirement = vm.flatMap(MemlockRequirement.parseSize).map { MemlockRequirement(guestRAM: $0, devices: devices, viommu: viommu) }
      let report = try host.builder(state: state).doctor(memlock: requirement)
      try output.emit(report, human: HumanRenderer.doctor)
      if !report.ok { throw ExitCode(1) }
    }
  }
}
