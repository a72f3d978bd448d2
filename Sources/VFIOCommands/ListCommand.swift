import ArgumentParser
import VFIOHost
import VFIOPolicy

struct ListCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "list", abstract: "List every PCI device by IOMMU group, with its verdict.")

  @OptionGroup var host: HostOptions
  @OptionGroup var state: StateOptions
  @OptionGroup var devices: DeviceOptions
  @OptionGroup var output: OutputOptions

  @Flag(help: "Show the bridge tree with groups instead of a table.")
  var tree = false

  @Option(help: "Only devices of this class: hex prefix (02, 0200) or part of the class name (ethernet).")
  var `class`: String?

  @Option(help: "Only devices of this vendor: hex ID (8086) or part of the vendor name.")
  var vendor: String?

  @Flag(help: "Only devices that can be assigned (with or without conditions).")
  var assignable = false

  func validate() throws {
    if tree && output.json {
      throw ValidationError("--tree has no JSON form: `list --json` gives each device's `parent`, the tree's edges")
    }
    if let wanted = `class`, !isHex(wanted), PCIClassNames.matching(wanted).isEmpty {
      throw ValidationError(
        "--class \(wanted) is neither a hex class code (02, 0200) nor part of a class name (ethernet)")
    }
    if let wanted = vendor, !isHex(wanted) {
      guard let names = devices.names(host.sysfs) else {
        throw ValidationError(
          "--vendor \(wanted): vendor names need pci.ids (Debian's pci.ids package); or give the hex ID (8086)")
      }
      guard names.hasVendorName(containing: wanted) else {
        throw ValidationError(
          "--vendor \(wanted) is neither a hex vendor ID (8086) nor part of a vendor name in pci.ids")
      }
    }
  }

  func run() throws {
    try reportingErrors {
      let report = DeviceFilter(classFilter: `class`, vendor: vendor, assignableOnly: assignable)
        .apply(try host.builder(devices: devices, state: state).list())
      try output.emit(report) { tree ? HumanRenderer.tree($0) : HumanRenderer.list($0) }
    }
  }
}

/// The `list` filters; groups are kept when one of their devices is.
public struct DeviceFilter {
  var classFilter: String?
  var vendor: String?
  var assignableOnly: Bool

  public init(classFilter: String? = nil, vendor: String? = nil, assignableOnly: Bool = false) {
    self.classFilter = classFilter
    self.vendor = vendor
    self.assignableOnly = assignableOnly
  }

  public func apply(_ report: ListReport) -> ListReport {
    guard classFilter != nil || vendor != nil || assignableOnly else { return report }
    var filtered = report
    filtered.devices = report.devices.filter(matches)
    let kept = Set(filtered.devices.compactMap(\.iommuGroup))
    filtered.groups = report.groups.filter { kept.contains($0.id) }
    return filtered
  }

  func matches(_ device: DeviceSummary) -> Bool {
    if assignableOnly && device.verdict == .notAssignable { return false }
    if let classFilter, !matchesHexOrName(classFilter, hex: device.classCode, name: device.className) { return false }
    if let vendor, !matchesHexOrName(vendor, hex: device.vendorID, name: device.name, exact: true) { return false }
    return true
  }

  private func matchesHexOrName(_ wanted: String, hex: String, name: String?, exact: Bool = false) -> Bool {
    let lower = wanted.lowercased().replacingPrefix("0x")
    if !lower.isEmpty, lower.allSatisfy(\.isHexDigit), exact ? hex == lower : hex.hasPrefix(lower) { return true }
    return name?.lowercased().contains(wanted.lowercased()) ?? false
  }
}

/// A hex ID or prefix, with or without `0x`.
private func isHex(_ text: String) -> Bool {
  let digits = text.lowercased().replacingPrefix("0x")
  return !digits.isEmpty && digits.count <= 6 && digits.allSatisfy(\.isHexDigit)
}

extension String {
  fileprivate func replacingPrefix(_ prefix: String) -> String {
    hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
  }
}
