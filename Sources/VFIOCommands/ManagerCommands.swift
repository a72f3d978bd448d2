import ArgumentParser
import Foundation
import PCI
import VFIOBroker
import VFIOBrokerClient
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
  /// The manager a command runs; the crash tests' `SWIFT_VFIO_FAULT_AFTER_STEP=N` is read here,
  /// by the command line, not by the manager.
  public func manager(host: HostOptions, lockTimeout: Double = 10) -> AssignmentManager {
    let fault = ProcessInfo.processInfo.environment["SWIFT_VFIO_FAULT_AFTER_STEP"].flatMap { Int($0) }
    return AssignmentManager(
      sysfs: host.sysfs, configuration: .init(
        stateDirectory: state, lockTimeout: lockTimeout, command: CommandLine.arguments.joined(separator: " "),
        faultAfterStep: fault))
  }
}

let groupsHelp = """
  PCI addresses or IOMMU group numbers: each one's whole group is changed. Several are one batch: \
  every group is checked before any is changed, then the groups are changed side by side.
  """

extension OutputOptions {
  /// One target's report as ever; a batch's one after another (JSON: an array of the same
  /// documents, an error document for a group that failed), exiting with the first failed
  /// group's code.
  func emit(_ outcomes: [GroupOutcome]) throws {
    if outcomes.count == 1 {
      try emit(try outcomes[0].get(), human: ManagerRenderer.change)
      return
    }
    var failure: ManagerError?
    var documents: [GroupDocument] = []
    var text = ""
    for outcome in outcomes {
      switch outcome {
      case .success(let report):
        documents.append(.report(report))
        text += (text.isEmpty ? "" : "\n") + ManagerRenderer.change(report)
      case .failure(let error):
        printError(error.description)
        documents.append(.error(ErrorReport(error)))
        failure = failure ?? error
      }
    }
    print(json ? try encodeJSON(documents) : text, terminator: "")
    if let failure { throw ExitCode(failure.exitCode) }
  }
}

/// One group's document in a batch's JSON: what a single target would have printed.
enum GroupDocument: Encodable {
  case report(ChangeReport)
  case error(ErrorReport)

  func encode(to encoder: any Encoder) throws {
    var container = encoder.singleValueContainer()
    switch self {
    case .report(let report): try container.encode(report)
    case .error(let error): try container.encode(error)
    }
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

  @Argument(help: ArgumentHelp(groupsHelp, valueName: "address-or-group"), transform: parseSelector)
  var targets: [Selector]

  @OptionGroup var options: ChangeOptions

  @Option(help: "The VFIO driver: vfio-pci, or pci-stub to only keep host drivers off.")
  var driver: String = "vfio-pci"

  @Flag(help: "Detach even when a device has no reset method (a userspace driver can live without one).")
  var allowNoReset = false

  @Option(
    help: "Take this device although the host uses it (repeat for each device).",
    transform: { text in try parseAddress(text) })
  var force: [PCIAddress] = []

  @OptionGroup var owner: OwnerOptions

  @Flag(help: "The owner reaches the group only through the broker (vfioctl serve): the nodes stay root's, mode 0600.")
  var brokerOnly = false

  func validate() throws {
    if brokerOnly && owner.owner == nil { throw ValidationError("--broker-only needs --owner") }
  }

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let manager = options.manager()
      let outcomes = try manager.groups.detach(
        targets, driver: driver, force: force, allowNoReset: allowNoReset, owner: try owner.ownership(),
        brokerOnly: brokerOnly, dryRun: options.dryRun)
      reportTimings(manager)
      try options.output.emit(outcomes)
    }
  }
}

struct AttachCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "attach",
    abstract: "Give a detached IOMMU group back to the host: reset, then each device on exactly its original driver.",
    discussion: "Refuses while a process has the group or one of its devices open, naming it.")

  @Argument(help: ArgumentHelp(groupsHelp, valueName: "address-or-group"), transform: parseSelector)
  var targets: [Selector]

  @OptionGroup var options: ChangeOptions

  @Flag(help: "End the group's reservation and give it back all the same.")
  var release = false

  @Option(help: "When the broker has leased the group, ask the holder to release it and wait this many seconds.")
  var revokeAfter: Double?

  @Flag(help: "With --revoke-after, kill the holder when it has not released in time.")
  var revokeForce = false

  @OptionGroup var socketOptions: SocketOptions

  func validate() throws {
    if revokeForce && revokeAfter == nil { throw ValidationError("--revoke-force needs --revoke-after") }
    if let revokeAfter, !(0...3600).contains(revokeAfter) { throw ValidationError("--revoke-after must be 0...3600") }
  }

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let manager = options.manager()
      // Called by the manager with the group's lock held and the group marked closing, so the
      // broker grants it to nobody between the revoke and the attach.
      var revoke: (@Sendable (LedgerLease) throws(ManagerError) -> String)?
      if let wait = revokeAfter { revoke = Revoker(socket: socketOptions.socket, wait: wait, force: revokeForce).revoke }
      let outcomes = try manager.groups.attach(targets, release: release, dryRun: options.dryRun, revoke: revoke)
      reportTimings(manager)
      try options.output.emit(outcomes)
    }
  }
}

/// Asks the broker for a leased group back, for `attach --revoke-after`.
struct Revoker {
  let socket: String
  let wait: Double
  let force: Bool

  func revoke(_ lease: LedgerLease) throws(ManagerError) -> String {
    do {
      let outcome = try BrokerClient(socketPath: socket).revoke(group: lease.groupID, wait: wait, force: force)
      printError("group \(lease.groupID): lease \(outcome) (pid \(lease.pid))")
      return outcome
    } catch {
      throw .unavailable("the broker (\(socket)) could not revoke the lease of group \(lease.groupID): \(error)")
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

  @Argument(help: "A PCI address, or an IOMMU group number for every endpoint of the group.", transform: parseSelector)
  var target: Selector

  @OptionGroup var options: ChangeOptions

  @Option(help: "The kernel's reset method to use: flr, af_flr, pm, bus, ... (default: the kernel's first).")
  var method: String?

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let report = try options.manager().groups.reset(
        target, method: method.map(ResetMethod.init(rawValue:)), dryRun: options.dryRun)
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
      let reports = try options.manager().groups.recover()
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
      try options.output.emit(try options.manager().records.status(target), human: ManagerRenderer.status)
    }
  }
}

struct HistoryCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "history", abstract: "The ledger's append-only history: when, who, what, and how it ended.")

  @Argument(help: "A PCI address or an IOMMU group number (default: every group).", transform: parseSelector)
  var target: Selector?

  @OptionGroup var options: LedgerOptions

  @Flag(help: "Apply the retention policy now: remove the entries older than the days kept and the oldest beyond the entries kept.")
  var prune = false

  @Option(help: "The days of history a prune keeps.")
  var keepDays: Int = Int(HistoryRetention.standard.maxAge / 86_400)

  @Option(help: "The most entries a prune keeps.")
  var keepEntries: Int = HistoryRetention.standard.maxEntries

  @Flag(help: "The broker's refusals instead: how often each user was refused each group, and why.")
  var refusals = false

  func validate() throws {
    guard (1...36_500).contains(keepDays) else { throw ValidationError("--keep-days must be 1...36500") }
    guard (1...100_000_000).contains(keepEntries) else { throw ValidationError("--keep-entries must be 1...100000000") }
    if prune && (target != nil || refusals) { throw ValidationError("--prune applies to the whole history; give no target") }
  }

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let manager = options.manager()
      if prune {
        let report = try manager.records.pruneHistory(HistoryRetention(maxAge: Double(keepDays) * 86_400, maxEntries: keepEntries))
        try options.output.emit(report) {
          "removed \($0.historyRemoved) history entries and \($0.refusalsRemoved) refusal counts; \($0.historyKept) entries kept\n"
        }
      } else if refusals {
        try options.output.emit(try manager.records.refusals(target), human: ManagerRenderer.refusals)
      } else {
        try options.output.emit(try manager.records.history(target), human: ManagerRenderer.history)
      }
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

/// `--owner USER[:GROUP]` and `--mode`, for the commands that give a group to a user.
struct OwnerOptions: ParsableArguments {
  @Option(help: "Give the group's /dev/vfio nodes to this user (name or uid), with USER:GROUP a group too.")
  var owner: String?

  @Option(help: "The nodes' mode, octal; never any bits for \"other\" (default 0660).")
  var mode: String?

  func validate() throws {
    if mode != nil && owner == nil { throw ValidationError("--mode needs --owner") }
  }

  /// nil without --owner; a usage error (exit 64) for a name that does not resolve.
  func ownership() throws(ManagerError) -> Ownership? {
    guard let owner else { return nil }
    return try Ownership.parse(owner, mode: mode)
  }
}

/// A group number (or an address standing for its group), where to keep the ledger, and how
/// to print: what own, disown, reserve and unreserve take.
struct OwnershipOptions: ParsableArguments {
  @Argument(help: "An IOMMU group number, or a PCI address for its group.", transform: parseSelector)
  var target: Selector

  @OptionGroup var ledger: LedgerOptions

  /// Runs one ownership change on the target and prints the group as it is afterwards.
  func run(_ change: (AssignmentManager, Selector) throws -> OwnerReport) throws {
    try reportingErrors(json: ledger.output.json) {
      try ledger.output.emit(try change(ledger.manager(), target), human: ManagerRenderer.owner)
    }
  }
}

struct OwnCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "own",
    abstract: "Give a detached group's /dev/vfio nodes (group node and device cdevs) to a user, who may then open it without root.")

  @OptionGroup var options: OwnershipOptions
  @OptionGroup var owner: OwnerOptions

  func validate() throws {
    if owner.owner == nil { throw ValidationError("own needs --owner USER[:GROUP]") }
  }

  @Flag(help: "The owner reaches the group only through the broker (vfioctl serve): the nodes stay root's, mode 0600.")
  var brokerOnly = false

  func run() throws {
    try options.run { manager, target in
      guard let ownership = try owner.ownership() else { throw ManagerError.usage("own needs --owner USER[:GROUP]") }
      return try manager.access.own(target, owner: ownership, brokerOnly: brokerOnly)
    }
  }
}

struct DisownCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "disown", abstract: "Give a group's nodes back to root (mode 0600) and forget its owner.")

  @OptionGroup var options: OwnershipOptions

  func run() throws { try options.run { manager, target in try manager.access.disown(target) } }
}

struct ReserveCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "reserve",
    abstract: "Keep a detached group for a guest that is not running: attach refuses it, list says whose it is.")

  @OptionGroup var options: OwnershipOptions

  @Option(name: .customLong("for"), help: "The guest (or job) it is kept for.")
  var name: String

  @OptionGroup var owner: OwnerOptions

  func run() throws {
    try options.run { manager, target in try manager.access.reserve(target, for: name, owner: try owner.ownership()) }
  }
}

struct UnreserveCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "unreserve", abstract: "End a group's reservation (it stays detached and owned).")

  @OptionGroup var options: OwnershipOptions

  func run() throws { try options.run { manager, target in try manager.access.unreserve(target) } }
}

struct OwnersCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "owners",
    abstract: "Every group that is not the host's: owner, reservation, since when, and whether a process has it open now.")

  @OptionGroup var options: LedgerOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      try options.output.emit(try options.manager().access.owners(), human: ManagerRenderer.owners)
    }
  }
}

struct PersistCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "persist",
    abstract: "Make a detached group (and its owner) survive reboot and hot-plug: udev rules and a boot-time reconcile unit.",
    discussion: """
      Writes 70-swift-vfio.rules (driver_override for every member on add, the owner and mode of the \
      group node and cdevs) and swift-vfio-reconcile.service (enabled), both from the ledger. \
      --remove takes the group out; the files go with the last persisted group.
      """)

  @OptionGroup var options: OwnershipOptions

  @Flag(help: "Stop persisting the group.")
  var remove = false

  @Option(help: "Where the udev rules go (default: etc/udev/rules.d in the root directory)")
  var rulesDir: String?

  @Option(help: "Where the systemd unit goes (default: etc/systemd/system in the root directory)")
  var unitDir: String?

  func run() throws {
    try reportingErrors(json: options.ledger.output.json) {
      let written = try options.ledger.manager().persistence.persist(
        options.target, remove: remove, paths: .init(rulesDirectory: rulesDir, unitDirectory: unitDir))
      try options.ledger.output.emit(written) { $0.joined(separator: "\n") + "\n" }
    }
  }
}

struct ReconcileCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "reconcile",
    abstract: "The ledger against what sysfs shows (at boot): finish what should be, report what cannot be.")

  @OptionGroup var options: LedgerOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let reports = try options.manager().persistence.reconcile()
      try options.output.emit(reports) { reports in
        reports.isEmpty
          ? "Nothing recorded.\n"
          : reports.map { "IOMMU group \($0.group): \($0.outcome)" + ($0.notes.isEmpty ? "" : ": " + $0.notes.joined(separator: "; ")) }
            .joined(separator: "\n") + "\n"
      }
      if reports.contains(where: { $0.outcome == "cannot" }) { throw ExitCode(1) }
    }
  }
}

struct VFsCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vfs",
    abstract: "Set an SR-IOV physical function's VF count; with --detach the VFs go straight to vfio-pci, each group recorded.",
    discussion: """
      The kernel changes a non-zero count only through 0, which destroys every VF: any change is refused \
      while a VF is detached by hand, owned, reserved or open. VFs this command detached are given back \
      first. --count 0 removes them all.
      """)

  @Argument(help: "The physical function's PCI address.", transform: { text in try parseAddress(text) })
  var pf: PCIAddress

  @Option(help: "How many VFs (0 removes them).")
  var count: Int

  @Flag(help: "Create them with autoprobe off and detach each VF's group to vfio-pci.")
  var detach = false

  @OptionGroup var owner: OwnerOptions

  @Flag(help: "Say what would be done and change nothing.")
  var dryRun = false

  @OptionGroup var options: LedgerOptions

  func run() throws {
    try reportingErrors(json: options.output.json) {
      let report = try options.manager().virtualFunctions.setVirtualFunctions(
        pf, count: count, detach: detach, owner: try owner.ownership(), dryRun: dryRun)
      try options.output.emit(report, human: ManagerRenderer.virtualFunctions)
    }
  }
}
