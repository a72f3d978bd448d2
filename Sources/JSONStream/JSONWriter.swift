/// A streaming JSON encoder: it writes each value as `Encodable` hands it over, so keys come
/// out in declaration order (stable, unlike Foundation's encoder without `.sortedKeys`) and a
/// 4,000-device listing costs a few milliseconds instead of a tree of boxed values. A
/// dictionary comes out in Swift's order, which changes from run to run: encode maps with
/// `encodeSorted`.
///
/// It relies on what synthesized `Codable` does: a container is filled before the next one
/// at the same level is made. `superEncoder` is not supported (nothing here uses it).
///
/// `compact` writes what a protocol sends (the broker's messages): no spaces or newlines, and
/// whole numbers of a `Double` as integers, as Foundation's `JSONEncoder` writes them.
public struct JSONWriter {
  public let compact: Bool

  public init() { compact = false }
  public init(compact: Bool) { self.compact = compact }

  /// The document, ending in a newline unless compact.
  public func encode<T: Encodable>(_ value: T) throws -> String {
    String(decoding: try bytes(value), as: UTF8.self)
  }

  /// The same as bytes, ready for a socket.
  public func bytes<T: Encodable>(_ value: T) throws -> [UInt8] {
    let sink = JSONSink(compact: compact)
    try value.encode(to: StreamingEncoder(sink: sink, depth: 0))
    sink.closeAll(to: 0)
    if !compact { sink.bytes.append(UInt8(ascii: "\n")) }
    return sink.bytes
  }
}

/// The output and the stack of open containers.
final class JSONSink {
  // Unchecked: one thread writes, and no access to either property spans a call that could
  // touch it again; the run-time checks were a tenth of a large listing's encoding time.
  @exclusivity(unchecked) var bytes: [UInt8] = []
  /// For each open container: is it an object, and has it had an element yet.
  @exclusivity(unchecked) var open: [(object: Bool, hasElements: Bool)] = []
  let compact: Bool

  init(compact: Bool) {
    self.compact = compact
    // A listing is large; a message is a few hundred bytes.
    bytes.reserveCapacity(compact ? 512 : 1 << 16)
  }

  /// Closes containers deeper than `depth`: a value at `depth` is about to be written.
  func closeAll(to depth: Int) {
    while open.count > depth {
      let container = open.removeLast()
      if container.hasElements { newline(open.count) }
      bytes.append(container.object ? UInt8(ascii: "}") : UInt8(ascii: "]"))
    }
  }

  func begin(object: Bool) {
    bytes.append(object ? UInt8(ascii: "{") : UInt8(ascii: "["))
    open.append((object, false))
  }

  /// Starts an element of the container at `depth - 1` (a key when `key` is given).
  func element(depth: Int, key: String?) {
    closeAll(to: depth)
    if open[depth - 1].hasElements { bytes.append(UInt8(ascii: ",")) }
    open[depth - 1].hasElements = true
    newline(depth)
    if let key {
      string(key)
      bytes.append(UInt8(ascii: ":"))
      if !compact { bytes.append(UInt8(ascii: " ")) }
    }
  }

  func newline(_ depth: Int) {
    guard !compact else { return }
    bytes.append(UInt8(ascii: "\n"))
    bytes.append(contentsOf: repeatElement(0x20, count: 2 * depth))
  }

  func string(_ text: String) {
    bytes.append(UInt8(ascii: "\""))
    // Almost every string here (addresses, IDs, names) needs no escaping: checked and copied
    // whole from its UTF-8 storage (a loop over a buffer instead of a closure per byte through
    // the view's index: 80 M instructions of a 4,160-function listing).
    let copied = text.utf8.withContiguousStorageIfAvailable { utf8 -> Bool in
      for byte in utf8 where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return false }
      bytes.append(contentsOf: utf8)
      return true
    }
    if copied == true {
      bytes.append(UInt8(ascii: "\""))
      return
    }
    for byte in text.utf8 {
      switch byte {
      case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
      case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
      case UInt8(ascii: "\n"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
      case UInt8(ascii: "\t"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
      case UInt8(ascii: "\r"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
      case 0..<0x20:
        let hex = Array("0123456789abcdef".utf8)
        bytes.append(contentsOf: Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
      default: bytes.append(byte)
      }
    }
    bytes.append(UInt8(ascii: "\""))
  }

  func raw(_ text: String) { bytes.append(contentsOf: text.utf8) }

  /// Decimal digits straight into the buffer, without a String per number.
  func integer<T: BinaryInteger>(_ value: T) {
    if value < 0 { bytes.append(UInt8(ascii: "-")) }
    var magnitude = value.magnitude
    guard magnitude != 0 else {
      bytes.append(UInt8(ascii: "0"))
      return
    }
    let start = bytes.count
    while magnitude != 0 {
      bytes.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: magnitude % 10))
      magnitude /= 10
    }
    bytes[start...].reverse()
  }
}

struct StreamingEncoder: Encoder {
  let sink: JSONSink
  /// How many containers enclose the value this encoder writes.
  let depth: Int
  var codingPath: [any CodingKey] = []
  var userInfo: [CodingUserInfoKey: Any] = [:]

  init(sink: JSONSink, depth: Int) {
    self.sink = sink
    self.depth = depth
  }

  func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
    sink.closeAll(to: depth)
    sink.begin(object: true)
    return KeyedEncodingContainer(KeyedWriter(sink: sink, depth: depth + 1))
  }

  func unkeyedContainer() -> any UnkeyedEncodingContainer {
    sink.closeAll(to: depth)
    sink.begin(object: false)
    return UnkeyedWriter(sink: sink, depth: depth + 1)
  }

  func singleValueContainer() -> any SingleValueEncodingContainer { SingleWriter(sink: sink, depth: depth) }
}

extension KeyedEncodingContainer {
  /// Encodes a map keyed by strings with its keys in sorted order, under `key`. A dictionary
  /// encodes its keys in Swift's hash order, seeded anew in every process: two runs over the
  /// same host would print different documents. (A writer that sorted every dictionary itself
  /// would have to ask each value's type whether it is one: a conformance lookup per type,
  /// 9 M instructions on a small listing.)
  /// Inlinable: specialised where it is called, for the thousands of devices of a node's slices.
  @inlinable
  public mutating func encodeSorted<Value: Encodable>(_ map: [String: Value], forKey key: Key) throws {
    var nested = nestedContainer(keyedBy: StringKey.self, forKey: key)
    for name in map.keys.sorted() {
      if let value = map[name] { try nested.encode(value, forKey: StringKey(name)) }
    }
  }

  /// The same, left out when `map` is nil.
  @inlinable
  public mutating func encodeSortedIfPresent<Value: Encodable>(_ map: [String: Value]?, forKey key: Key) throws {
    if let map { try encodeSorted(map, forKey: key) }
  }
}

/// Any string as a key.
@frozen
public struct StringKey: CodingKey {
  public let stringValue: String
  @inlinable public init(_ string: String) { stringValue = string }
  @inlinable public init?(stringValue: String) { self.stringValue = stringValue }
  @inlinable public var intValue: Int? { nil }
  @inlinable public init?(intValue: Int) { nil }
}

/// Writes scalars; shared by the three container kinds.
private protocol ScalarWriting {
  var sink: JSONSink { get }
}

extension ScalarWriting {
  func write(_ value: Bool) { sink.raw(value ? "true" : "false") }
  func write(_ value: String) { sink.string(value) }
  func write<T: BinaryInteger>(_ value: T) { sink.integer(value) }
  func write(_ value: Double) throws {
    guard value.isFinite else {
      throw EncodingError.invalidValue(value, .init(codingPath: [], debugDescription: "JSON has no NaN or infinity"))
    }
    // Foundation writes 20.0 as 20: so does a compact document (the wire's bytes are documented).
    if sink.compact, value == value.rounded(), abs(value) < 0x1p53 {
      sink.integer(Int64(value))
    } else {
      sink.raw(String(value))
    }
  }
}

private struct KeyedWriter<Key: CodingKey>: KeyedEncodingContainerProtocol, ScalarWriting {
  let sink: JSONSink
  let depth: Int
  var codingPath: [any CodingKey] = []

  init(sink: JSONSink, depth: Int) {
    self.sink = sink
    self.depth = depth
  }

  private func key(_ key: Key) { sink.element(depth: depth, key: key.stringValue) }

  mutating func encodeNil(forKey k: Key) throws {
    key(k)
    sink.raw("null")
  }
  mutating func encode(_ value: Bool, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: String, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: Double, forKey k: Key) throws {
    key(k)
    try write(value)
  }
  mutating func encode(_ value: Float, forKey k: Key) throws {
    key(k)
    try write(Double(value))
  }
  mutating func encode(_ value: Int, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: Int8, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: Int16, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: Int32, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: Int64, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: UInt, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: UInt8, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: UInt16, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: UInt32, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode(_ value: UInt64, forKey k: Key) throws {
    key(k)
    write(value)
  }
  mutating func encode<T: Encodable>(_ value: T, forKey k: Key) throws {
    key(k)
    try value.encode(to: StreamingEncoder(sink: sink, depth: depth))
  }

  mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey k: Key)
    -> KeyedEncodingContainer<NestedKey>
  {
    key(k)
    return StreamingEncoder(sink: sink, depth: depth).container(keyedBy: keyType)
  }

  mutating func nestedUnkeyedContainer(forKey k: Key) -> any UnkeyedEncodingContainer {
    key(k)
    return StreamingEncoder(sink: sink, depth: depth).unkeyedContainer()
  }

  mutating func superEncoder() -> any Encoder { preconditionFailure("JSONWriter does not support superEncoder") }
  mutating func superEncoder(forKey key: Key) -> any Encoder {
    preconditionFailure("JSONWriter does not support superEncoder")
  }
}

private struct UnkeyedWriter: UnkeyedEncodingContainer, ScalarWriting {
  let sink: JSONSink
  let depth: Int
  var codingPath: [any CodingKey] = []
  var count = 0

  init(sink: JSONSink, depth: Int) {
    self.sink = sink
    self.depth = depth
  }

  private mutating func next() {
    sink.element(depth: depth, key: nil)
    count += 1
  }

  mutating func encodeNil() throws {
    next()
    sink.raw("null")
  }
  mutating func encode(_ value: Bool) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: String) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: Double) throws {
    next()
    try write(value)
  }
  mutating func encode(_ value: Float) throws {
    next()
    try write(Double(value))
  }
  mutating func encode(_ value: Int) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: Int8) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: Int16) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: Int32) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: Int64) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: UInt) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: UInt8) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: UInt16) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: UInt32) throws {
    next()
    write(value)
  }
  mutating func encode(_ value: UInt64) throws {
    next()
    write(value)
  }
  mutating func encode<T: Encodable>(_ value: T) throws {
    next()
    try value.encode(to: StreamingEncoder(sink: sink, depth: depth))
  }

  mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<
    NestedKey
  > {
    next()
    return StreamingEncoder(sink: sink, depth: depth).container(keyedBy: keyType)
  }

  mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
    next()
    return StreamingEncoder(sink: sink, depth: depth).unkeyedContainer()
  }

  mutating func superEncoder() -> any Encoder { preconditionFailure("JSONWriter does not support superEncoder") }
}

private struct SingleWriter: SingleValueEncodingContainer, ScalarWriting {
  let sink: JSONSink
  let depth: Int
  var codingPath: [any CodingKey] = []

  init(sink: JSONSink, depth: Int) {
    self.sink = sink
    self.depth = depth
  }

  mutating func encodeNil() throws { sink.raw("null") }
  mutating func encode(_ value: Bool) throws { write(value) }
  mutating func encode(_ value: String) throws { write(value) }
  mutating func encode(_ value: Double) throws { try write(value) }
  mutating func encode(_ value: Float) throws { try write(Double(value)) }
  mutating func encode(_ value: Int) throws { write(value) }
  mutating func encode(_ value: Int8) throws { write(value) }
  mutating func encode(_ value: Int16) throws { write(value) }
  mutating func encode(_ value: Int32) throws { write(value) }
  mutating func encode(_ value: Int64) throws { write(value) }
  mutating func encode(_ value: UInt) throws { write(value) }
  mutating func encode(_ value: UInt8) throws { write(value) }
  mutating func encode(_ value: UInt16) throws { write(value) }
  mutating func encode(_ value: UInt32) throws { write(value) }
  mutating func encode(_ value: UInt64) throws { write(value) }
  mutating func encode<T: Encodable>(_ value: T) throws {
    try value.encode(to: StreamingEncoder(sink: sink, depth: depth))
  }
}
