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

  /// An MMIO BAR (not a ROM, a VF BAR or a bridge window) with addresses in `first...last`:
  /// one that a mapping of those pages would expose.
  public func isMMIO(reaching first: UInt64, _ last: UInt64) -> Bool {
    role == .bar && kind == .mmio && start <= last && end >= first
  }

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

/// What a `resource` file held: the usable resources, and each line that was not one.
public struct ResourceTable: Sendable, Equatable {
  public var bars: [BAR] = []
  /// Lines that were skipped, with why ("resource line 3 is not start ≤ end; BAR ignored").
  public var problems: [ResourceProblem] = []
}

/// Parses sysfs `resource`: one `0xSTART 0xEND 0xFLAGS` line per resource, zeros when unused.
/// A line that is malformed, inverted or overflows is reported and skipped, never trusted.
public func parseResources(_ text: String, pageSize: UInt64) -> ResourceTable {
  parseResources(Array(text.utf8), pageSize: pageSize)
}

/// The same over the file's bytes: inventory parses thousands of these, so no Substrings.
public func parseResources(_ bytes: [UInt8], pageSize: UInt64) -> ResourceTable {
  var table = ResourceTable()
  var index = 0
  var lineStart = 0
  while lineStart < bytes.count {
    var lineEnd = lineStart
    while lineEnd < bytes.count, bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
    defer {
      index += 1
      lineStart = lineEnd + 1
    }
    var cursor = lineStart
    var fields: [UInt64] = []
    while fields.count < 3 {
      while cursor < lineEnd, bytes[cursor] == UInt8(ascii: " ") { cursor += 1 }
      guard let value = hexField(bytes, &cursor, lineEnd) else { break }
      fields.append(value)
    }
    while cursor < lineEnd, bytes[cursor] == UInt8(ascii: " ") || bytes[cursor] == UInt8(ascii: "\r") { cursor += 1 }
    if fields.isEmpty && cursor == lineEnd { continue }  // blank line
    guard fields.count == 3, cursor == lineEnd else {
      table.problems.append(
        .malformedLine(index, String(decoding: bytes[lineStart..<min(lineEnd, lineStart + 80)], as: UTF8.self)))
      continue
    }
    switch makeBAR(index: index, start: fields[0], end: fields[1], flags: fields[2], pageSize: pageSize) {
    case .success(let bar?): table.bars.append(bar)
    case .success(nil): break
    case .failure(let problem): table.problems.append(problem)
    }
  }
  return table
}

private func makeBAR(index: Int, start: UInt64, end: UInt64, flags: UInt64, pageSize: UInt64) -> Result<
  BAR?, ResourceProblem
> {
  // Unused lines are all zeros; disabled and flagless resources decode nothing.
  guard flags & (ResourceFlag.io | ResourceFlag.memory) != 0, flags & ResourceFlag.disabled == 0,
    start != 0 || end != 0
  else { return .success(nil) }
  guard start <= end else { return .failure(.inverted(index, start: start, end: end)) }
  // The kernel's numbers meet ours here: end - start + 1 overflows for a resource spanning
  // the whole 64-bit space, which no real resource does.
  let (size, overflow) = (end - start).addingReportingOverflow(1)
  guard !overflow else { return .failure(.tooLarge(index)) }
  let kind: BAR.Kind = flags & ResourceFlag.io != 0 ? .io : .mmio
  let role: BAR.Role =
    switch index {
    case 0...5: .bar
    case 6: .rom
    case 7...12: .vfBAR
    default: .bridgeWindow
    }
  // A page size of 0 would trap in `%`; callers validate it, this keeps the parser total.
  let page = max(pageSize, 1)
  return .success(
    BAR(
      index: index, role: role, kind: kind, start: start, size: size,
      is64Bit: flags & ResourceFlag.memory64 != 0, prefetchable: flags & ResourceFlag.prefetch != 0,
      pageAligned: start % page == 0 && size % page == 0,
      subPage: kind == .mmio && size < page))
}

/// A `resource` line that was skipped.
public enum ResourceProblem: Error, Equatable, Sendable, CustomStringConvertible {
  /// Not three hexadecimal numbers (the line, cut to 80 bytes).
  case malformedLine(Int, String)
  /// The end lies before the start.
  case inverted(Int, start: UInt64, end: UInt64)
  /// It spans the whole 64-bit address space, so its size does not fit in 64 bits.
  case tooLarge(Int)

  public var description: String {
    switch self {
    case .malformedLine(let index, let line):
      return "resource line \(index) is not 'start end flags' in hexadecimal: '\(line)'; line ignored"
    case .inverted(let index, let start, let end):
      return
        "resource line \(index) is not start ≤ end (0x\(String(start, radix: 16)) > 0x\(String(end, radix: 16))); BAR ignored"
    case .tooLarge(let index):
      return "resource line \(index) spans the whole 64-bit address space; BAR ignored"
    }
  }
}

/// `0x` followed by up to 16 hex digits, ending at a space or the line's end.
private func hexField(_ bytes: [UInt8], _ cursor: inout Int, _ end: Int) -> UInt64? {
  guard cursor + 2 < end, bytes[cursor] == UInt8(ascii: "0"), bytes[cursor + 1] == UInt8(ascii: "x") else { return nil }
  var i = cursor + 2
  var value: UInt64 = 0
  var digits = 0
  while i < end, bytes[i] != UInt8(ascii: " "), bytes[i] != UInt8(ascii: "\r") {
    guard let digit = hexDigitValue(bytes[i]) else { return nil }
    digits += 1
    guard digits <= 16 else { return nil }
    value = value << 4 | UInt64(digit)
    i += 1
  }
  guard digits > 0 else { return nil }
  cursor = i
  return value
}

/// The value of an ASCII hex digit.
func hexDigitValue(_ c: UInt8) -> UInt8? {
  switch c {
  case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
  case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
  case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
  default: nil
  }
}
