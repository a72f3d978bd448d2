/// A PCI function address, `domain:bus:device.function` (the kernel's "BDF" with a domain).
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
  public var domain: UInt32
  public var bus: UInt8
  public var device: UInt8
  public var function: UInt8

  public init(domain: UInt32 = 0, bus: UInt8, device: UInt8, function: UInt8) {
    precondition(device < 32 && function < 8, "device must be < 32 and function < 8")
    self.domain = domain
    self.bus = bus
    self.device = device
    self.function = function
  }

  /// Parses `0000:01:00.0` or the short `01:00.0` (domain 0), as `lspci` prints them.
  public init(parsing text: String) throws(PCIAddressError) {
    if let canonical = PCIAddress(canonical: text) {
      self = canonical
      return
    }
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    let domainText: Substring
    let busText: Substring
    let slotText: Substring
    switch parts.count {
    case 2: (domainText, busText, slotText) = ("0", parts[0], parts[1])
    case 3: (domainText, busText, slotText) = (parts[0], parts[1], parts[2])
    default: throw .malformed(text)
    }
    let slotParts = slotText.split(separator: ".", omittingEmptySubsequences: false)
    guard slotParts.count == 2,
      (1...8).contains(domainText.count), (1...2).contains(busText.count),
      (1...2).contains(slotParts[0].count), slotParts[1].count == 1,
      let domain = UInt32(domainText, radix: 16), let bus = UInt8(busText, radix: 16),
      let device = UInt8(slotParts[0], radix: 16), let function = UInt8(slotParts[1], radix: 16),
      [domainText, busText, slotParts[0], slotParts[1]].allSatisfy({ $0.allSatisfy(\.isHexDigit) })
    else { throw .malformed(text) }
    guard device < 32 else { throw .outOfRange(text, "device number \(device) is above 0x1f") }
    guard function < 8 else { throw .outOfRange(text, "function number \(function) is above 7") }
    self.init(domain: domain, bus: bus, device: device, function: function)
  }

  /// The sysfs spelling `dddd:bb:dd.f` in lower-case hex, parsed without Substrings: inventory
  /// parses one per device and per path component.
  private init?(canonical text: String) {
    let utf8 = text.utf8
    let parsed: PCIAddress? =
      utf8.withContiguousStorageIfAvailable { b -> PCIAddress? in
        guard b.count == 12, b[4] == UInt8(ascii: ":"), b[7] == UInt8(ascii: ":"), b[10] == UInt8(ascii: ".") else {
          return nil
        }
        func value(_ range: Range<Int>) -> UInt32? {
          var v: UInt32 = 0
          for i in range {
            guard let d = lowerHexDigitValue(b[i]) else { return nil }
            v = v << 4 | UInt32(d)
          }
          return v
        }
        guard let domain = value(0..<4), let bus = value(5..<7), let device = value(8..<10),
          let function = value(11..<12),
          device < 32, function < 8
        else { return nil }
        return PCIAddress(domain: domain, bus: UInt8(bus), device: UInt8(device), function: UInt8(function))
      } ?? nil
    guard let parsed else { return nil }
    self = parsed
  }

  /// The canonical sysfs spelling, `0000:01:00.0`.
  public var description: String {
    hex(domain, width: 4) + ":" + hex(bus, width: 2) + ":" + hex(device, width: 2) + "." + String(function)
  }

  /// The address of function 0 in the same slot.
  public var slot: PCIAddress { PCIAddress(domain: domain, bus: bus, device: device, function: 0) }

  public static func < (a: PCIAddress, b: PCIAddress) -> Bool {
    (a.domain, a.bus, a.device, a.function) < (b.domain, b.bus, b.device, b.function)
  }
}

extension PCIAddress: Codable {
  public init(from decoder: Decoder) throws {
    let text = try decoder.singleValueContainer().decode(String.self)
    try self.init(parsing: text)
  }

  public func encode(to encoder: Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(description)
  }
}

/// Why a string is not a PCI address.
public enum PCIAddressError: Error, Equatable, CustomStringConvertible {
  case malformed(String)
  case outOfRange(String, String)

  public var description: String {
    switch self {
    case .malformed(let text):
      return
        "'\(text)' is not a PCI address; use domain:bus:device.function as in 0000:01:00.0, or bus:device.function as in 01:00.0"
    case .outOfRange(let text, let why):
      return "'\(text)' is not a PCI address: \(why)"
    }
  }
}

/// Lower-case hex, zero padded: the spelling the kernel uses in sysfs names.
public func hex<T: BinaryInteger>(_ value: T, width: Int) -> String {
  let digits = String(value, radix: 16)
  return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}

/// The value of an ASCII hex digit in the kernel's lower-case spelling; nil for anything else.
private func lowerHexDigitValue(_ c: UInt8) -> UInt8? {
  switch c {
  case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
  case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
  default: nil
  }
}
