import ArgumentParser
import Foundation
import VFIOHost
import VFIOManager
import VFIOPolicy

/// Where the ledger lives and how long to wait for another command on the same group.
public struct StateOptions: ParsableArguments {
  @Option(help: "The directory of the ledger (ledger.sqlite) and its locks.")
  public var state: String = Ledger.defaultDirectory

  public init() {}
}

/// What every command that changes the host takes.
struct ChangeOptions: ParsableArguments {
  @Argument(help: "A PCI address or an IOMMU group number: the whole group is changed.", transform: parseSelector)
  var target: Selector

  @Flag(help: "Print the steps and change nothing.")
  var dryRun = false

  @Option(help: "Seconds to wait for another vfioctl changing the same group.")
  var wait: Double = 10

  @OptionGroup var stateOptions: StateOptions
  @OptionGroup var host: HostOptions
  @OptionGroup var output: OutputOptions

  func manager() -> AssignmentManager { stateOptions.manager(host: host, lockTimeout: wait) }
}

/// What the commands that only read the ledger (and recover) take.
struct LedgerOptions: ParsableArguments {
  @OptionGroup var stateOptions: StateOptions
  @OptionGroup var host: HostOptions
  @OptionGroup var output: OutputOptions

  func manager() -> AssignmentManager { stateOptions.manager(host: host) }
}

extension StateOptions {
  func manager(host: HostOptions, lockTimeout: Double = 10) -> AssignmentManager {
    AssignmentManager(
      sysfs: host.sysfs, configuration: .init(stateDirectory: state, lockTimeout: lockTimeout))
  }
}

/// With `SWIFT_VFIO_TIMINGS=1`, where a change's time went, on stderr (the benchmark reads it).
func reportTimings(_ manager: AssignmentManager) {
  guard ProcessInfo.processInfo.environment["SWIFT_VFIO_TIMINGS"] == "1" else { return }
  printError("timings: \(manager.timings)")
}

struct DetachCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "detach",
    abstract: "Move a whole IOMMU group from its host drivers to vfio-pci, recorded so `attach` restores it exactly.",
    discussion: """
      Executes the plan `vfioctl explain` prints: every endpoint of the group is unbound from its host \
      driver, given driver_override and bound to vfio-pci, then reset; bridges stay with the host. \
      Refuses, changing nothing, while a member is in use by the host. A failed step puts every \
      device back. Exit codes: 0 done, 1 refused, 74 a step failed (rolled back), 75 the group is busy.
      """)

  @OptionGroup var options: ChangeOptions

  @Option(help: "The VFIO driver: vfio-pci, or pci-stub to only keep host drivers off.")
  var driver: String = "vfio-pci"

  @Flag(help: "Detach even when a device has no reset method (a userspace driver can live without one).")
  var allowNoReset = false

  @Option(
    help: "Take this device although the host uses it (repeat for each device).",
    transform: { text in try parseAddress(text) })
  var force: [PCIAddress] = []

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let manager = options.manager()
      let report = try manager.detach(
        options.target, driver: driver, force: force, allowNoReset: allowNoReset, dryRun: options.dryRun)
      reportTimings(manager)
      try options.output.emit(report, human: ManagerRenderer.change)
    }
  }
}

struct AttachCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "attach",
    abstract: "Give a detached IOMMU group back to the host: reset, then each device on exactly its original driver.",
    discussion: "Refuses while a process has the group or one of its devices open, naming it.")

  @OptionGroup var options: ChangeOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let manager = options.manager()
      let report = try manager.attach(options.target, dryRun: options.dryRun)
      reportTimings(manager)
      try options.output.emit(report, human: ManagerRenderer.change)
    }
  }
}

struct ResetCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "reset",
    abstract: "Reset a device (or every device of a group) now, while nothing has it open.",
    discussion: """
      Function-level methods go through the kernel's `reset` attribute; a bus reset that hits several \
      functions is one VFIO hot reset, allowed only when every function it hits is detached or unused.
      """)

  @OptionGroup var options: ChangeOptions

  @Option(help: "The kernel's reset method to use: flr, af_flr, pm, bus, ... (default: the kernel's first).")
  var method: String?

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let report = try options.manager().reset(
        options.target, method: method.map(ResetMethod.init(rawValue:)), dryRun: options.dryRun)
      try options.output.emit(report, human: ManagerRenderer.change)
    }
  }
}

struct RecoverCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "recover",
    abstract: "Finish or roll back whatever an interrupted vfioctl left half done, and say which.")

  @OptionGroup var options: LedgerOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let reports = try options.manager().recover()
      try options.output.emit(reports) { reports in
        reports.isEmpty ? "Nothing was left unfinished.\n" : reports.compactMap(\.recovered).joined(separator: "\n") + "\n"
      }
    }
  }
}

struct StatusCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "status",
    abstract: "What the ledger holds: detached groups, their original drivers, unfinished operations, who has them open.")

  @Argument(help: "A PCI address or an IOMMU group number (default: every group not on the host).", transform: parseSelector)
  var target: Selector?

  @OptionGroup var options: LedgerOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      try options.output.emit(try options.manager().status(target), human: ManagerRenderer.status)
    }
  }
}

struct HistoryCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "history", abstract: "The ledger's append-only history: when, who, what, and how it ended.")

  @Argument(help: "A PCI address or an IOMMU group number (default: every group).", transform: parseSelector)
  var target: Selector?

  @OptionGroup var options: LedgerOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      try options.output.emit(try options.manager().history(target), human: ManagerRenderer.history)
    }
  }
}

func parseAddress(_ text: String) throws -> PCIAddress {
  do {
    return try PCIAddress(parsing: text)
  } catch {
    throw ValidationError(error.description)
  }
}
