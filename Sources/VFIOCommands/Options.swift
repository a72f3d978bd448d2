import ArgumentParser
import VFIOHost
import VFIOManager

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Where the host is read from, shared by every command.
public struct HostOptions: ParsableArguments {
  @Option(help: "Read the host from this directory instead of / (a `vfioctl capture` tree).")
  public var root: String = "/"

  @Option(name: .customLong("pci-ids"), help: "The pci.ids database for device names (default: the system's).")
  public var pciIDs: String?

  @Option(help: "Page size in bytes for BAR checks (default: this machine's).")
  public var pageSize: UInt64?

  public init() {}

  public var sysfs: Sysfs { Sysfs(root: root) }

  /// Reads the host once and prepares every report from it.
  func builder(recorder: AccessRecorder? = nil, state: StateOptions? = nil) throws(CLIError) -> ReportBuilder {
    let inventory: HostInventory
    do {
      inventory = try HostInventory.read(Sysfs(root: root, recorder: recorder), pageSize: pageSize)
    } catch {
      throw .unavailable(error.description)
    }
    var ledger: [Int: LedgerRecord] = [:]
    if let state {
      // The inventory does not depend on the ledger: a ledger that cannot be read is a warning.
      do { ledger = try LedgerRecord.all(directory: state.state) } catch { printError("warning: \(error)") }
    }
    return ReportBuilder(inventory: inventory, names: names(), ledger: ledger)
  }

  private func names() -> PCIIDDatabase? {
    if let pciIDs {
      return Sysfs().readBytes(pciIDs, limit: 64 << 20).map(PCIIDDatabase.init(bytes:))
    }
    return PCIIDDatabase.load(sysfs)
  }
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
/// the exit code.
func reportingErrors(_ body: () throws -> Void) throws {
  do {
    try body()
  } catch let error as CLIError {
    printError(error.description)
    throw ExitCode(error.exitCode)
  } catch let error as ManagerError {
    printError(error.description)
    throw ExitCode(error.exitCode)
  }
}

func printError(_ message: String) {
  var line = "vfioctl: \(message)\n"
  line.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
}
