import Foundation
import JSONStream
import PCI
import VFIOHost

/// A `resource.k8s.io/v1` ResourceSlice: the devices of one pool (this node) for one driver,
/// or (since 1.35, KEP-4815) the pool's shared counters, never both in one slice.
public struct ResourceSlice: Codable, Sendable, Equatable {
  public var apiVersion = "resource.k8s.io/v1"
  public var kind = "ResourceSlice"
  public var metadata: Metadata
  public var spec: Spec

  public struct Metadata: Codable, Sendable, Equatable {
    public var name: String
  }

  public struct Spec: Codable, Sendable, Equatable {
    public var driver: String
    public var nodeName: String
    public var pool: Pool
    public var devices: [Device]?
    public var sharedCounters: [CounterSet]?
  }

  public struct Pool: Codable, Sendable, Equatable {
    public var name: String
    public var generation: Int
    public var resourceSliceCount: Int
  }

  public struct Device: Codable, Sendable, Equatable {
    public var name: String
    public var attributes: [String: Attribute]
    public var consumesCounters: [CounterConsumption]?
    public var taints: [Taint]?

    /// Taints or counters: a slice of such devices holds at most 64 of them.
    var usesAdvancedFeatures: Bool { !(taints ?? []).isEmpty || !(consumesCounters ?? []).isEmpty }

    // The maps are written with their names sorted, the same document on every republish.
    public func encode(to encoder: any Encoder) throws {
      var container = encoder.container(keyedBy: CodingKeys.self)
      try container.encode(name, forKey: .name)
      try container.encodeSorted(attributes, forKey: .attributes)
      try container.encodeIfPresent(consumesCounters, forKey: .consumesCounters)
      try container.encodeIfPresent(taints, forKey: .taints)
    }
  }

  /// Exactly one is set, as the API's DeviceAttribute requires. `strings` (a list) only in
  /// a claim's device metadata: slices keep to the four scalar kinds every API server takes.
  public struct Attribute: Codable, Sendable, Equatable {
    public var int: Int?
    public var bool: Bool?
    public var string: String?
    public var version: String?
    public var strings: [String]?

    public static func int(_ value: Int) -> Attribute { Attribute(int: value) }
    public static func string(_ value: String) -> Attribute { Attribute(string: value) }
  }

  /// KEP-4815: counters a pool's devices draw from; the scheduler never allocates devices
  /// whose draws on one set exceed its value.
  public struct CounterSet: Codable, Sendable, Equatable {
    public var name: String
    public var counters: [String: Counter]

    public func encode(to encoder: any Encoder) throws {
      var container = encoder.container(keyedBy: CodingKeys.self)
      try container.encode(name, forKey: .name)
      try container.encodeSorted(counters, forKey: .counters)
    }
  }

  public struct CounterConsumption: Codable, Sendable, Equatable {
    public var counterSet: String
    public var counters: [String: Counter]

    public func encode(to encoder: any Encoder) throws {
      var container = encoder.container(keyedBy: CodingKeys.self)
      try container.encode(counterSet, forKey: .counterSet)
      try container.encodeSorted(counters, forKey: .counters)
    }
  }

  /// A quantity (`"4"`), as the API writes `resource.Quantity`.
  public struct Counter: Codable, Sendable, Equatable {
    public var value: String
  }

  /// KEP-5055: keeps pods off a device (`NoSchedule`) or evicts those using it (`NoExecute`).
  public struct Taint: Codable, Sendable, Equatable {
    public var key: String
    public var value: String?
    public var effect: Effect

    public enum Effect: String, Codable, Sendable {
      case noSchedule = "NoSchedule"
      case noExecute = "NoExecute"
    }
  }

  /// The API allows at most 128 devices in one slice, 64 when any uses taints or counters.
  public static let maxDevices = 128
  public static let maxDevicesWithAdvancedFeatures = 64
}

/// Builds the slices a node publishes from its device catalog: one pool named after the
/// node, the SR-IOV counter sets in a slice of their own, the devices in slices of at most
/// 128 (64 with taints or counters).
public struct SliceBuilder: Sendable {
  public let driver: String
  public let nodeName: String
  /// Bumped whenever the devices change, so the scheduler drops the older slices.
  public let generation: Int

  public init(driver: String, nodeName: String, generation: Int = 1) {
    self.driver = driver
    self.nodeName = nodeName
    self.generation = generation
  }

  /// The taint key of an unhealthy device, in the driver's domain.
  public var taintKey: String { driver + "/unhealthy" }

  public func slices(_ catalog: DeviceCatalog, health: [String: DeviceHealth] = [:]) -> [ResourceSlice] {
    slices(devices: catalog.published, health: health)
  }

  public func slices(devices published: [PublishedDevice], health: [String: DeviceHealth] = [:]) -> [ResourceSlice] {
    let counters = SRIOVCounters(published)
    let devices = published.map { device($0, health: health[$0.name], counters: counters) }
    let size =
      devices.contains(where: \.usesAdvancedFeatures) ? ResourceSlice.maxDevicesWithAdvancedFeatures : ResourceSlice.maxDevices
    var chunks = stride(from: 0, to: devices.count, by: size).map { Array(devices[$0..<min($0 + size, devices.count)]) }
    // A node without devices still publishes one (empty) slice: the pool says it has none.
    if chunks.isEmpty { chunks = [[]] }
    let sets = counters.sets
    let count = chunks.count + (sets.isEmpty ? 0 : 1)
    let base = dnsName("\(nodeName)-\(driver)")
    func slice(_ name: String, devices: [ResourceSlice.Device]?, counters: [ResourceSlice.CounterSet]?) -> ResourceSlice {
      ResourceSlice(
        metadata: .init(name: name),
        spec: .init(
          driver: driver, nodeName: nodeName,
          pool: .init(name: nodeName, generation: generation, resourceSliceCount: count), devices: devices,
          sharedCounters: counters))
    }
    var slices = chunks.enumerated().map { index, chunk in
      slice(count == 1 ? base : "\(base)-\(index)", devices: chunk, counters: nil)
    }
    if !sets.isEmpty { slices.append(slice("\(base)-counters", devices: nil, counters: sets)) }
    return slices
  }

  public func device(_ published: PublishedDevice, health: DeviceHealth? = nil, counters: SRIOVCounters? = nil)
    -> ResourceSlice.Device
  {
    var taints: [ResourceSlice.Taint]?
    if let health, health.state == .unhealthy, let problem = health.problem {
      taints = [
        ResourceSlice.Taint(
          key: taintKey, value: problem.rawValue, effect: problem == .gone ? .noExecute : .noSchedule)
      ]
    }
    return ResourceSlice.Device(
      name: published.name, attributes: Self.attributes(published),
      consumesCounters: counters?.consumption(of: published), taints: taints)
  }

  /// The standard attributes (`resource.kubernetes.io/…`) and ours (in the driver's domain).
  public static func attributes(_ published: PublishedDevice) -> [String: ResourceSlice.Attribute] {
    var attributes: [String: ResourceSlice.Attribute] = [
      "resource.kubernetes.io/pciBusID": .string(published.functions[0].description),
      "iommuGroup": .int(published.group.rawValue),
      "vendor": .string(hex(published.vendorID, 4)),
      "device": .string(hex(published.deviceID, 4)),
      "class": .string(hex(published.classCode, 6)),
      "functionCount": .int(published.functions.count),
      "verdict": .string(published.verdict.rawValue),
    ]
    // The API takes strings of 64 bytes at most, and rejects the whole slice for one longer:
    // five functions fit, a larger group is told by functionCount (and the claim's metadata).
    if published.busIDs.utf8.count <= ResourceSliceRules.maxStringLength {
      attributes["functions"] = .string(published.busIDs)
    }
    if let root = published.pcieRoot { attributes["resource.kubernetes.io/pcieRoot"] = .string(root) }
    if let node = published.numaNode { attributes["resource.kubernetes.io/numaNode"] = .int(node) }
    if let reset = published.resetMethod { attributes["resetMethod"] = .string(reset) }
    if let role = published.sriovRole { attributes["sriov"] = .string(role) }
    if let pf = published.physicalFunction { attributes["physicalFunction"] = .string(pf.description) }
    return attributes
  }
}

/// KEP-4815 for SR-IOV: a PF and its VFs are separate devices (separate IOMMU groups), but a
/// guest given the PF can reset or reconfigure every VF, so the two must never be allocated
/// together. Each PF with published VFs gets a counter set whose one counter holds the
/// number of those VFs: each VF draws 1, the PF draws them all.
public struct SRIOVCounters: Sendable {
  /// PF address → how many of its VFs are published.
  let vfCounts: [PCIAddress: Int]
  static let counter = "functions"

  public init(_ published: [PublishedDevice]) {
    var counts: [PCIAddress: Int] = [:]
    for device in published where device.sriovRole == "vf" {
      if let pf = device.physicalFunction { counts[pf, default: 0] += 1 }
    }
    // Only PFs this node publishes need a set: a VF whose PF stays with the host has no rival.
    let pfs = Set(published.filter { $0.sriovRole == "pf" }.flatMap(\.functions))
    vfCounts = counts.filter { pfs.contains($0.key) }
  }

  public var sets: [ResourceSlice.CounterSet] {
    vfCounts.keys.sorted().map { pf in
      ResourceSlice.CounterSet(name: Self.setName(pf), counters: [Self.counter: .init(value: String(vfCounts[pf]!))])
    }
  }

  static func setName(_ pf: PCIAddress) -> String { dnsLabel("sriov-\(pf)") }

  public func consumption(of device: PublishedDevice) -> [ResourceSlice.CounterConsumption]? {
    if device.sriovRole == "vf", let pf = device.physicalFunction, vfCounts[pf] != nil {
      return [.init(counterSet: Self.setName(pf), counters: [Self.counter: .init(value: "1")])]
    }
    if device.sriovRole == "pf", let pf = device.functions.first(where: { vfCounts[$0] != nil }), let count = vfCounts[pf] {
      return [.init(counterSet: Self.setName(pf), counters: [Self.counter: .init(value: String(count))])]
    }
    return nil
  }
}

func hex<T: BinaryInteger>(_ value: T, _ width: Int) -> String {
  let digits = String(value, radix: 16)
  return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

/// Lower case, `[a-z0-9.-]`, at most `limit` characters, starting and ending alphanumeric: a
/// DNS subdomain (object names). The slices' names leave room for a `-counters` suffix.
func dnsName(_ text: String, limit: Int = 240) -> String { dnsTrimmed(text, limit: limit, keeping: [UInt8(ascii: ".")]) }

/// Lower case, `[a-z0-9-]`, at most 63 characters, starting and ending alphanumeric: a DNS
/// label (counter set names).
func dnsLabel(_ text: String) -> String { dnsTrimmed(text, limit: 63, keeping: []) }

/// `text` in lower case with every byte but ASCII letters, digits, `-` and `extra` made `-`,
/// then without what is not alphanumeric at either end, cut to `limit`. Bytes, not Characters:
/// a counter set is named for every device of a slice (a fifth of --print-slices on 4,096
/// devices when it went through Character).
private func dnsTrimmed(_ text: String, limit: Int, keeping extra: [UInt8]) -> String {
  let hyphen = UInt8(ascii: "-")
  let isAlphanumeric: (UInt8) -> Bool = { (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) }
  let mapped = text.utf8.map { byte -> UInt8 in
    let lower = (0x41...0x5a).contains(byte) ? byte + 0x20 : byte
    return isAlphanumeric(lower) || lower == hyphen || extra.contains(lower) ? lower : hyphen
  }
  let head = mapped.drop { !isAlphanumeric($0) }.prefix(limit)
  let kept = head.reversed().drop { !isAlphanumeric($0) }.reversed()
  return String(decoding: kept, as: UTF8.self)
}

/// Slices as the node publishes them (files, the API server's request bodies, --print-slices),
/// written as they are encoded by the writer of `vfioctl list --json`: keys in declaration
/// order, attribute and counter names sorted. Thousands of devices are a hot path (every
/// republish); Foundation's sorted-key encoder took a fifth of --print-slices.
public func sliceJSON<T: Encodable>(_ value: T) throws(KubeletError) -> String {
  do { return try JSONWriter().encode(value) } catch {
    throw .apiServer("\(T.self) cannot be written as JSON: \(error)")
  }
}

/// Sorted keys and two-space indentation: CDI specs and checkpoints, small and read by people.
public func sortedJSON<T: Encodable>(_ value: T) -> String {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
  guard let data = try? encoder.encode(value) else { return "{}" }
  return String(decoding: data, as: UTF8.self)
}
