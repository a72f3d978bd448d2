import ArgumentParser
import VFIOHost
import VFIOPolicy

struct ListCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "list", abstract: "List every PCI device by IOMMU group, with its verdict.")

  @OptionGroup var host: HostOptions
  @OptionGroup var state: StateOptions
  @OptionGroup var output: OutputOptions

  @Flag(help: "Show the bridge tree with groups instead of a table.")
  var tree = false

  @Option(help: "Only devices of this class: hex prefix (02, 0200) or part of the class name (ethernet).")
  var `class`: String?

  @Option(help: "Only devices of this vendor: hex ID (8086) or part of the vendor name.")
  var vendor: String?

  @Flag(help: "Only devices that can be assigned (with or without conditions).")
  var assignable = false

  func run() throws {
    try reportingErrors {
      let report = DeviceFilter(classFilter: `class`, vendor: vendor, assignableOnly: assignable)
        .apply(try host.builder(state: state).list())
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

extension String {
  fileprivate func replacingPrefix(_ prefix: String) -> String {
    hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self
  }
}
