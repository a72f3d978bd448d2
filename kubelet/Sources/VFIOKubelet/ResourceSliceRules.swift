import Foundation

/// The API server's validation of a ResourceSlice (Kubernetes `pkg/apis/resource/validation`,
/// the limits of `resource.k8s.io/v1`'s types), as far as the fields this driver writes go.
/// The API server rejects a whole slice for one bad device, so every slice is checked before
/// it is sent, and the unit tests check every fixture's.
public enum ResourceSliceRules {
  public static let maxDriverNameLength = 63
  public static let maxPoolNameLength = 253
  public static let maxAttributesAndCapacitiesPerDevice = 32
  public static let maxStringLength = 64
  public static let maxDomainLength = 63
  public static let maxIDLength = 32
  public static let maxTaintsPerDevice = 16
  public static let maxCounterSets = 8
  public static let maxCountersPerSet = 32
  public static let maxConsumptionsPerDevice = 2
  public static let maxCountersPerConsumption = 32

  /// One broken rule: the field's path as the API server names it, and what is wrong.
  public struct Violation: Sendable, Equatable, CustomStringConvertible {
    public let field: String
    public let problem: String
    public var description: String { "\(field): \(problem)" }
  }

  public static func violations(_ slice: ResourceSlice) -> [Violation] {
    var found: [Violation] = []
    func check(_ ok: Bool, _ field: String, _ problem: @autoclosure () -> String) {
      if !ok { found.append(Violation(field: field, problem: problem())) }
    }
    check(isDNSSubdomain(slice.metadata.name), "metadata.name", "not a DNS subdomain")
    let spec = slice.spec
    check(!spec.driver.isEmpty && spec.driver.count <= maxDriverNameLength, "spec.driver", "1 to 63 characters")
    check(isDNSSubdomain(spec.driver.lowercased()), "spec.driver", "not a DNS subdomain")
    check(!spec.nodeName.isEmpty && isDNSSubdomain(spec.nodeName), "spec.nodeName", "not a node name")
    check(
      !spec.pool.name.isEmpty && spec.pool.name.count <= maxPoolNameLength
        && spec.pool.name.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { isDNSSubdomain(String($0)) },
      "spec.pool.name", "not DNS subdomains joined by /, at most 253 characters")
    check(spec.pool.generation >= 0, "spec.pool.generation", "negative")
    check(spec.pool.resourceSliceCount > 0, "spec.pool.resourceSliceCount", "must be positive")
    check(spec.devices == nil || spec.sharedCounters == nil, "spec", "only one of sharedCounters or devices is allowed")
    let devices = spec.devices ?? []
    let limit =
      devices.contains(where: \.usesAdvancedFeatures) ? ResourceSlice.maxDevicesWithAdvancedFeatures : ResourceSlice.maxDevices
    check(devices.count <= limit, "spec.devices", "\(devices.count) devices, at most \(limit)")
    var names = Set<String>()
    for (index, device) in devices.enumerated() {
      let path = "spec.devices[\(index)]"
      check(isDNSLabel(device.name), path + ".name", "'\(device.name)' is not a DNS label")
      check(names.insert(device.name).inserted, path + ".name", "duplicate '\(device.name)'")
      check(
        device.attributes.count <= maxAttributesAndCapacitiesPerDevice, path + ".attributes",
        "\(device.attributes.count) attributes, at most \(maxAttributesAndCapacitiesPerDevice)")
      for (key, value) in device.attributes.sorted(by: { $0.key < $1.key }) {
        let field = path + ".attributes[\(key)]"
        check(isQualifiedName(key), field, "not a C identifier of at most 32 characters, with an optional domain/")
        let set = [value.int != nil, value.bool != nil, value.string != nil, value.version != nil].filter { $0 }.count
        check(set == 1 && value.strings == nil, field, "exactly one of int, bool, string and version must be set")
        if let text = value.string {
          check(text.utf8.count <= maxStringLength, field + ".string", "\(text.utf8.count) bytes, at most 64")
        }
        if let text = value.version {
          check(text.utf8.count <= maxStringLength && isSemanticVersion(text), field + ".version", "not a semantic version")
        }
      }
      let taints = device.taints ?? []
      check(taints.count <= maxTaintsPerDevice, path + ".taints", "at most \(maxTaintsPerDevice)")
      for (number, taint) in taints.enumerated() {
        check(isLabelName(taint.key), path + ".taints[\(number)].key", "not a label name")
        check(taint.value.map(isLabelValue) ?? true, path + ".taints[\(number)].value", "not a label value")
      }
      let draws = device.consumesCounters ?? []
      check(draws.count <= maxConsumptionsPerDevice, path + ".consumesCounters", "at most \(maxConsumptionsPerDevice)")
      check(Set(draws.map(\.counterSet)).count == draws.count, path + ".consumesCounters", "a counter set twice")
      for (number, draw) in draws.enumerated() {
        let field = path + ".consumesCounters[\(number)]"
        check(isDNSLabel(draw.counterSet), field + ".counterSet", "not a DNS label")
        check(!draw.counters.isEmpty && draw.counters.count <= maxCountersPerConsumption, field + ".counters", "1 to 32")
        check(draw.counters.keys.allSatisfy(isDNSLabel), field + ".counters", "names must be DNS labels")
        check(draw.counters.values.allSatisfy { isQuantity($0.value) }, field + ".counters", "not a quantity")
      }
    }
    let sets = spec.sharedCounters ?? []
    check(sets.count <= maxCounterSets, "spec.sharedCounters", "\(sets.count) counter sets, at most \(maxCounterSets)")
    check(Set(sets.map(\.name)).count == sets.count, "spec.sharedCounters", "duplicate names")
    for (number, set) in sets.enumerated() {
      let field = "spec.sharedCounters[\(number)]"
      check(isDNSLabel(set.name), field + ".name", "not a DNS label")
      check(!set.counters.isEmpty && set.counters.count <= maxCountersPerSet, field + ".counters", "1 to 32")
      check(set.counters.keys.allSatisfy(isDNSLabel), field + ".counters", "names must be DNS labels")
      check(set.counters.values.allSatisfy { isQuantity($0.value) }, field + ".counters", "not a quantity")
    }
    return found
  }

  /// The rules that span a pool's slices: one generation and count, every counter set a
  /// device draws from defined in the pool (since 1.35 in a slice of its own) with room for
  /// what its devices draw at once.
  public static func violations(pool slices: [ResourceSlice]) -> [Violation] {
    var found = slices.flatMap { slice in
      violations(slice).map { Violation(field: slice.metadata.name + " " + $0.field, problem: $0.problem) }
    }
    let counts = Set(slices.map(\.spec.pool.resourceSliceCount))
    let generations = Set(slices.map(\.spec.pool.generation))
    if counts != [slices.count] {
      found.append(Violation(field: "spec.pool.resourceSliceCount", problem: "\(counts.sorted()) for \(slices.count) slices"))
    }
    if generations.count > 1 { found.append(Violation(field: "spec.pool.generation", problem: "differs between slices")) }
    if Set(slices.map(\.metadata.name)).count != slices.count {
      found.append(Violation(field: "metadata.name", problem: "two slices of the pool share a name"))
    }
    let sets = Dictionary(
      slices.flatMap { $0.spec.sharedCounters ?? [] }.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    for device in slices.flatMap({ $0.spec.devices ?? [] }) {
      for draw in device.consumesCounters ?? [] where sets[draw.counterSet] == nil {
        found.append(Violation(field: device.name, problem: "draws on counter set \(draw.counterSet), which the pool lacks"))
      }
    }
    return found
  }

  // MARK: The API machinery's name rules (k8s.io/apimachinery/pkg/util/validation)

  static func isDNSLabel(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    guard !bytes.isEmpty, bytes.count <= 63, isLowerAlphanumeric(bytes.first!), isLowerAlphanumeric(bytes.last!) else {
      return false
    }
    return bytes.allSatisfy { isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") }
  }

  static func isDNSSubdomain(_ text: String) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 253 else { return false }
    return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
      let bytes = Array(label.utf8)
      guard let first = bytes.first, let last = bytes.last else { return false }
      return isLowerAlphanumeric(first) && isLowerAlphanumeric(last)
        && bytes.allSatisfy { isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") }
    }
  }

  /// An attribute name: a C identifier of at most 32 characters, optionally after a domain
  /// (a DNS subdomain of at most 63 characters) and one `/`.
  static func isQualifiedName(_ text: String) -> Bool {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count <= 2, let id = parts.last else { return false }
    if parts.count == 2 {
      let domain = String(parts[0])
      guard domain.count <= maxDomainLength, isDNSSubdomain(domain) else { return false }
    }
    let bytes = Array(id.utf8)
    guard let first = bytes.first, bytes.count <= maxIDLength, isLetter(first) || first == UInt8(ascii: "_") else {
      return false
    }
    return bytes.allSatisfy { isLetter($0) || isDigit($0) || $0 == UInt8(ascii: "_") }
  }

  /// A label key: an optional DNS subdomain prefix and `/`, then a name of at most 63.
  static func isLabelName(_ text: String) -> Bool {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count <= 2, let name = parts.last, isLabelValue(String(name)), !name.isEmpty else { return false }
    return parts.count == 1 || isDNSSubdomain(String(parts[0]))
  }

  /// Empty, or at most 63 of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
  static func isLabelValue(_ text: String) -> Bool {
    let bytes = Array(text.utf8)
    guard let first = bytes.first, let last = bytes.last else { return true }
    let alphanumeric: (UInt8) -> Bool = { isLetter($0) || isDigit($0) }
    return bytes.count <= 63 && alphanumeric(first) && alphanumeric(last)
      && bytes.allSatisfy { alphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
  }

  /// The counters this driver writes are whole numbers: a plain decimal quantity.
  static func isQuantity(_ text: String) -> Bool {
    !text.isEmpty && text.utf8.count <= 20 && text.utf8.allSatisfy(isDigit)
  }

  static func isSemanticVersion(_ text: String) -> Bool {
    let core = text.split(separator: "+", maxSplits: 1)[0].split(separator: "-", maxSplits: 1)[0]
    let numbers = core.split(separator: ".", omittingEmptySubsequences: false)
    return numbers.count == 3
      && numbers.allSatisfy { !$0.isEmpty && $0.utf8.allSatisfy(isDigit) && ($0 == "0" || $0.first != "0") }
  }

  private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || isDigit(byte)
  }
  private static func isLetter(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
  }
  private static func isDigit(_ byte: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) }
}
