import ArgumentParser
import JSONStream
import PCI
import VFIOHost
import VFIOManager

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Where the host is read from: every command takes it.
public struct HostOptions: ParsableArguments {
  @Option(help: "Read the host from this directory instead of / (a `vfioctl capture` tree).")
  public var root: String = "/"

  public init() {}

  public var sysfs: Sysfs { Sysfs(root: root) }

  /// Reads the host once and prepares every report from it; `devices` names and judges the
  /// devices for the commands that print them, `state` adds what swift-vfio's ledger holds.
  func builder(devices: DeviceOptions? = nil, recorder: AccessRecorder? = nil, state: StateOptions? = nil)
    throws(CLIError) -> ReportBuilder
  {
    let inventory: HostInventory
    do {
      inventory = try HostInventory.read(Sysfs(root: root, recorder: recorder), pageSize: devices?.pageSize)
    } catch {
      throw .unavailable(error.description)
    }
    if let note = inventory.configSpaceNote { printError("note: \(note)") }
    var ledger: [IOMMUGroupID: LedgerRecord] = [:]
    if let state {
      // The inventory does not depend on the ledger: a ledger that cannot be read is a warning.
      do { ledger = try LedgerRecord.all(directory: state.state) } catch { printError("warning: \(error)") }
    }
    return ReportBuilder(inventory: inventory, names: devices?.names(sysfs), ledger: ledger)
  }
}

/// How devices are named and judged: what `list`, `show` and `explain` take.
public struct DeviceOptions: ParsableArguments {
  @Option(
    name: .customLong("pci-ids"), help: "The pci.ids database for vendor and device names (default: the system's).")
  public var pciIDs: String?

  @Option(
    help: "Page size in bytes for BAR checks: a power of two, at least 4096 (default: this machine's).",
    transform: parsePageSize)
  public var pageSize: UInt64?

  public init() {}

  public func validate() throws {
    if let pciIDs, Sysfs().readBytes(pciIDs, limit: 1) == nil {
      throw ValidationError(
        "--pci-ids \(pciIDs): no readable file there; install Debian's pci.ids package or omit the option")
    }
  }

  func names(_ sysfs: Sysfs) -> PCIIDDatabase? {
    if let pciIDs {
      return Sysfs().readBytes(pciIDs, limit: 64 << 20).map(PCIIDDatabase.init(bytes:))
    }
    return PCIIDDatabase.load(sysfs)
  }
}

func parsePageSize(_ text: String) throws -> UInt64 {
  guard let size = UInt64(text), isValidPageSize(size) else {
    throw ValidationError("not a power of two of at least 4096 (4096, 16384, 65536, …)")
  }
  return size
}

/// Human text or JSON.
public struct OutputOptions: ParsableArguments {
  @Flag(help: "Print JSON (field names in docs/json.md) instead of text.")
  public var json = false

  public init() {}

  func emit<Report: Encodable>(_ report: Report, human: (Report) -> String) throws {
    if json {
      print(try encodeJSON(report), terminator: "")
    } else {
      print(human(report), terminator: "")
    }
  }
}

/// Stable JSON: keys in declaration order, written as the values are encoded (`JSONWriter`).
public func encodeJSON<T: Encodable>(_ value: T) throws -> String {
  try JSONWriter().encode(value)
}

/// Parses a command-line address or group, with our error text rather than a generic one.
func parseSelector(_ text: String) throws -> Selector {
  do {
    return try Selector(parsing: text)
  } catch {
    throw ValidationError(error.description)
  }
}

/// Runs a command body, turning `CLIError` and `ManagerError` into the message on stderr and
/// the exit code; with `json`, a manager error is also printed as an `ErrorReport` on stdout,
/// so that a program driving `detach --json` always gets a document.
func reportingErrors(json: Bool = false, _ body: () throws -> Void) throws {
  do {
    try body()
  } catch let error as CLIError {
    printError(error.description)
    throw ExitCode(error.exitCode)
  } catch let error as ManagerError {
    printError(error.description)
    if json, let text = try? encodeJSON(ErrorReport(error)) { print(text, terminator: "") }
    throw ExitCode(error.exitCode)
  }
}

public func printError(_ message: String) {
  var line = "vfioctl: \(message)\n"
  line.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
}
