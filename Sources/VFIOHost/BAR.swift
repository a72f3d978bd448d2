/// One resource of a PCI function, from a line of sysfs `resource`.
public struct BAR: Sendable, Equatable, Codable {
  public enum Kind: String, Sendable, Codable { case io, mmio }
  public enum Role: String, Sendable, Codable {
    /// BAR0–BAR5.
    case bar
    /// The expansion ROM.
    case rom
    /// A VF BAR of an SR-IOV physical function (shared by all its VFs).
    case vfBAR = "vf-bar"
    /// A bridge's forwarding window.
    case bridgeWindow = "bridge-window"
  }

  /// Line number in `resource`: 0–5 BARs, 6 ROM, 7–12 SR-IOV VF BARs, 13–16 bridge windows.
  public let index: Int
  public let role: Role
  public let kind: Kind
  public let start: UInt64
  public let size: UInt64
  public let is64Bit: Bool
  public let prefetchable: Bool
  /// Start and size are both multiples of the page size.
  public let pageAligned: Bool
  /// An MMIO region smaller than a page: it cannot be mapped without exposing the rest of the page.
  public let subPage: Bool

  public var end: UInt64 { start &+ size &- 1 }
}

/// Flags of struct resource (include/linux/ioport.h) that sysfs prints in the third column.
enum ResourceFlag {
  static let io: UInt64 = 0x100
  static let memory: UInt64 = 0x200
  static let prefetch: UInt64 = 0x2000
  static let memory64: UInt64 = 0x0010_0000
  static let disabled: UInt64 = 0x1000_0000
  static let unset: UInt64 = 0x2000_0000
}

/// Parses sysfs `resource`: one `0xSTART 0xEND 0xFLAGS` line per resource, zeros when unused.
public func parseResources(_ text: String, pageSize: UInt64) throws(ResourceParseError) -> [BAR] {
  var bars: [BAR] = []
  var index = 0
  for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
    defer { index += 1 }
    if line.allSatisfy(\.isWhitespace) { continue }
    let fields = line.split(separator: " ")
    guard fields.count == 3, let start = hexField(fields[0]), let end = hexField(fields[1]),
      let flags = hexField(fields[2])
    else { throw .malformedLine(index, String(line)) }
    guard flags & (ResourceFlag.io | ResourceFlag.memory) != 0, end > start || (end == start && end != 0)
    else { continue }
    guard flags & ResourceFlag.disabled == 0 else { continue }
    let size = end - start + 1
    let kind: BAR.Kind = flags & ResourceFlag.io != 0 ? .io : .mmio
    let role: BAR.Role =
      switch index {
      case 0...5: .bar
      case 6: .rom
      case 7...12: .vfBAR
      default: .bridgeWindow
      }
    bars.append(
      BAR(
        index: index, role: role, kind: kind, start: start, size: size,
        is64Bit: flags & ResourceFlag.memory64 != 0, prefetchable: flags & ResourceFlag.prefetch != 0,
        pageAligned: start % pageSize == 0 && size % pageSize == 0,
        subPage: kind == .mmio && size < pageSize))
  }
  return bars
}

/// A `resource` line that is not three hexadecimal numbers.
public enum ResourceParseError: Error, Equatable, CustomStringConvertible {
  case malformedLine(Int, String)
  public var description: String {
    switch self {
    case .malformedLine(let index, let line):
      return "resource line \(index) is not 'start end flags' in hexadecimal: '\(line)'"
    }
  }
}

private func hexField(_ field: Substring) -> UInt64? {
  guard field.hasPrefix("0x") else { return nil }
  return UInt64(field.dropFirst(2), radix: 16)
}
