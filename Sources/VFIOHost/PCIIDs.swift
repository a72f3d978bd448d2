#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Vendor and device names from the `pci.ids` database (Debian's `pci.ids` package, which
/// pciutils pulls in), looked up by ID. Class names are built in (`PCIClassNames`).
///
/// The file is indexed in one pass over its lines (vendor and class line offsets); device and
/// subclass names are found by scanning only that vendor's or class's block. Lines are stepped
/// over with `memchr`, and only their first bytes are looked at: the index of a 1.3 MB file
/// was 9 M instructions byte by byte, a sixth of what `vfioctl list` runs on a small host.
public final class PCIIDDatabase: Sendable {
  public static let standardPaths = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids"]

  private let bytes: [UInt8]
  private let vendors: [UInt16: Int]
  private let classes: [UInt8: Int]

  /// Loads the first database found under `sysfs`'s root, then on the live host.
  public static func load(_ sysfs: Sysfs) -> PCIIDDatabase? {
    for base in [sysfs, Sysfs()] {
      for path in standardPaths {
        if let bytes = base.readBytes(path, limit: 64 << 20) { return PCIIDDatabase(bytes: bytes) }
      }
    }
    return nil
  }

  public init(bytes: [UInt8]) {
    self.bytes = bytes
    var vendors: [UInt16: Int] = [:]
    var classes: [UInt8: Int] = [:]
    var lineStart = 0
    let count = bytes.count
    while lineStart < count {
      let first = bytes[lineStart]
      if first == UInt8(ascii: "C"), lineStart + 4 < count, bytes[lineStart + 1] == UInt8(ascii: " "),
        let id = parseHex(bytes, lineStart + 2, 2)
      {
        classes[UInt8(id)] = lineStart
      } else if first != UInt8(ascii: "\t"), first != UInt8(ascii: "#"), let id = parseHex(bytes, lineStart, 4) {
        if vendors[UInt16(id)] == nil { vendors[UInt16(id)] = lineStart }
      }
      lineStart = endOfLine(bytes, from: lineStart) + 1
    }
    self.vendors = vendors
    self.classes = classes
  }

  public func vendorName(_ vendor: UInt16) -> String? {
    vendors[vendor].map { name(atLine: $0, skip: 4) }
  }

  /// Whether some vendor's name contains `text`, ignoring case (what `list --vendor NAME` matches).
  public func hasVendorName(containing text: String) -> Bool {
    let wanted = text.lowercased()
    return vendors.values.contains { name(atLine: $0, skip: 4).lowercased().contains(wanted) }
  }

  public func deviceName(vendor: UInt16, device: UInt16) -> String? {
    guard let start = vendors[vendor] else { return nil }
    return findChild(after: start, depth: 1, id: UInt32(device), digits: 4)
  }

  /// Subclass name (`Ethernet controller`), or the base class name when the subclass is unknown.
  public func className(_ classCode: UInt32) -> String? {
    let base = UInt8(classCode >> 16)
    guard let start = classes[base] else { return nil }
    return findChild(after: start, depth: 1, id: (classCode >> 8) & 0xFF, digits: 2) ?? name(atLine: start, skip: 4)
  }

  /// Scans the lines following a block header for `depth` tabs then `id`; stops at the next
  /// header of a lower depth.
  private func findChild(after start: Int, depth: Int, id: UInt32, digits: Int) -> String? {
    var line = nextLine(start)
    while line < bytes.count {
      var tabs = 0
      while line + tabs < bytes.count, bytes[line + tabs] == UInt8(ascii: "\t") { tabs += 1 }
      let isComment = line + tabs < bytes.count && bytes[line + tabs] == UInt8(ascii: "#")
      let isBlank = line + tabs < bytes.count && bytes[line + tabs] == UInt8(ascii: "\n")
      if tabs < depth && !isComment && !isBlank { return nil }
      if tabs == depth, let value = parseHex(bytes, line + tabs, digits), value == id {
        return name(atLine: line, skip: tabs + digits)
      }
      line = nextLine(line)
    }
    return nil
  }

  private func nextLine(_ offset: Int) -> Int { endOfLine(bytes, from: offset) + 1 }

  private func name(atLine line: Int, skip: Int) -> String {
    var start = line + skip
    while start < bytes.count, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") { start += 1 }
    var end = start
    while end < bytes.count, bytes[end] != UInt8(ascii: "\n") { end += 1 }
    return String(decoding: bytes[start..<end], as: UTF8.self)
  }
}

/// The offset of the first newline at or after `offset`, or the end of `bytes`.
private func endOfLine(_ bytes: [UInt8], from offset: Int) -> Int {
  guard offset < bytes.count else { return bytes.count }
  return bytes.withUnsafeBufferPointer { buffer in
    guard let base = buffer.baseAddress, let found = memchr(base + offset, 0x0A, buffer.count - offset) else {
      return buffer.count
    }
    return base.distance(to: found.assumingMemoryBound(to: UInt8.self))
  }
}

private func parseHex(_ bytes: [UInt8], _ offset: Int, _ digits: Int) -> UInt32? {
  guard offset + digits < bytes.count else { return nil }
  var value: UInt32 = 0
  for i in 0..<digits {
    guard let digit = hexDigitValue(bytes[offset + i]) else { return nil }
    value = value << 4 | UInt32(digit)
  }
  // The ID must be followed by the two-space separator, or it is some other line.
  return bytes[offset + digits] == UInt8(ascii: " ") ? value : nil
}
