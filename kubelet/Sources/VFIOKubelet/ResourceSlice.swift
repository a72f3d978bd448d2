import Foundation
import VFIOHost

/// A `resource.k8s.io/v1` ResourceSlice: the devices of one pool (this node) for one driver.
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
    public var devices: [Device]
  }

  public struct Pool: Codable, Sendable, Equatable {
    public var name: String
    public var generation: Int
    public var resourceSliceCount: Int
  }

  public struct Device: Codable, Sendable, Equatable {
    public var name: String
    public var attributes: [String: Attribute]
  }

  /// Exactly one of the four is set, as the API's DeviceAttribute requires.
  public struct Attribute: Codable, Sendable, Equatable {
    public var int: Int?
    public var bool: Bool?
    public var string: String?
    public var version: String?

    public static func int(_ value: Int) -> Attribute { Attribute(int: value) }
    public static func string(_ value: String) -> Attribute { Attribute(string: value) }
  }

  /// The API allows at most 128 devices in one slice; a pool of more is split.
  public static let maxDevices = 128
}

/// Builds the slices a node publishes from its device catalog.
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

  public func slices(_ catalog: DeviceCatalog) -> [ResourceSlice] {
    let devices = catalog.published.map(device)
    let chunks = stride(from: 0, to: max(devices.count, 1), by: ResourceSlice.maxDevices).map {
      Array(devices[$0..<min($0 + ResourceSlice.maxDevices, devices.count)])
    }
    let base = dnsName("\(nodeName)-\(driver)")
    return chunks.enumerated().map { index, chunk in
      ResourceSlice(
        metadata: .init(name: chunks.count == 1 ? base : "\(base)-\(index)"),
        spec: .init(
          driver: driver, nodeName: nodeName,
          pool: .init(name: nodeName, generation: generation, resourceSliceCount: chunks.count), devices: chunk))
    }
  }

  /// The standard attributes (`resource.kubernetes.io/…`) and ours (in the driver's domain).
  public func device(_ published: PublishedDevice) -> ResourceSlice.Device {
    var attributes: [String: ResourceSlice.Attribute] = [
      "resource.kubernetes.io/pciBusID": .string(published.functions[0].description),
      "iommuGroup": .int(published.group.rawValue),
      "vendor": .string(hex(published.vendorID, 4)),
      "device": .string(hex(published.deviceID, 4)),
      "class": .string(hex(published.classCode, 6)),
      "functions": .string(published.busIDs),
      "functionCount": .int(published.functions.count),
      "verdict": .string(published.verdict.rawValue),
    ]
    if let root = published.pcieRoot { attributes["resource.kubernetes.io/pcieRoot"] = .string(root) }
    if let node = published.numaNode { attributes["resource.kubernetes.io/numaNode"] = .int(node) }
    if let reset = published.resetMethod { attributes["resetMethod"] = .string(reset) }
    if let role = published.sriovRole { attributes["sriov"] = .string(role) }
    if let pf = published.physicalFunction { attributes["physicalFunction"] = .string(pf.description) }
    return ResourceSlice.Device(name: published.name, attributes: attributes)
  }
}

func hex<T: BinaryInteger>(_ value: T, _ width: Int) -> String {
  let digits = String(value, radix: 16)
  return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

/// Lower case, `[a-z0-9.-]`, at most 253 characters: what object names must be.
func dnsName(_ text: String) -> String {
  let mapped = text.lowercased().map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") ? $0 : "-" }
  return String(String(mapped).prefix(253))
}

/// Sorted keys and two-space indentation, as every JSON output of vfioctl.
public func sortedJSON<T: Encodable>(_ value: T) -> String {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
  guard let data = try? encoder.encode(value) else { return "{}" }
  return String(decoding: data, as: UTF8.self)
}
