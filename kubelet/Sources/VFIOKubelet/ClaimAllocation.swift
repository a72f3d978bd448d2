import Foundation
import VFIOManager

/// The claim the kubelet names in NodePrepareResources and NodeUnprepareResources.
public struct ClaimReference: Sendable, Equatable, Codable, CustomStringConvertible {
  public let namespace: String
  public let uid: String
  public let name: String

  public init(namespace: String, uid: String, name: String) {
    self.namespace = namespace
    self.uid = uid
    self.name = name
  }

  public var description: String { "\(namespace)/\(name) (\(uid))" }
}

/// What the scheduler allocated to a claim for this driver, read from the ResourceClaim's
/// `status.allocation`: the devices and the opaque configuration (who gets to own them).
public struct ClaimAllocation: Sendable, Equatable {
  public struct Result: Sendable, Equatable {
    public let request: String
    public let pool: String
    public let device: String
  }

  public let results: [Result]
  /// From `{"owner": "USER[:GROUP]", "mode": "0660"}` in the opaque parameters of the
  /// DeviceClass's config (`source: FromClass`); a claim's own config may not set them.
  public let ownership: Ownership?
  /// `pod.spec.resourceClaims[].name` for a claim made from a template (the claim's
  /// `resource.kubernetes.io/pod-claim-name` annotation): where its metadata is mounted.
  public var podClaimName: String? = nil

  /// Parses a `resource.k8s.io/v1` ResourceClaim (as the API server returns it, or as
  /// `kubectl get resourceclaim -o json` prints it), keeping what is for `driver`.
  public static func parse(_ data: Data, driver: String, claim: String) throws(KubeletError) -> ClaimAllocation {
    let object: ResourceClaimJSON
    do { object = try JSONDecoder().decode(ResourceClaimJSON.self, from: data) } catch {
      throw .claimUnknown(uid: claim, why: "not a ResourceClaim: \(error)")
    }
    guard let devices = object.status?.allocation?.devices else {
      throw .claimUnknown(uid: claim, why: "the claim is not allocated (no status.allocation)")
    }
    let results = (devices.results ?? []).filter { $0.driver == driver }.map {
      Result(request: $0.request, pool: $0.pool, device: $0.device)
    }
    var ownership: Ownership?
    for config in devices.config ?? [] where config.opaque?.driver == driver {
      guard let parameters = config.opaque?.parameters else { continue }
      // Who owns a claim's nodes is the administrator's to say (the DeviceClass), never the
      // claim author's: a pod author could otherwise pick any uid on the node.
      if config.source != "FromClass" && (parameters.owner != nil || parameters.mode != nil) {
        throw .badConfiguration(
          claim: claim, why: "owner and mode come from the DeviceClass's config, not from the claim's")
      }
      if let unknown = parameters.unknown.first {
        throw .badConfiguration(claim: claim, why: "unknown parameter '\(unknown)' (this driver takes owner and mode)")
      }
      guard let owner = parameters.owner else {
        if parameters.mode != nil { throw .badConfiguration(claim: claim, why: "mode without owner") }
        continue
      }
      do { ownership = try Ownership.parse(owner, mode: parameters.mode) } catch {
        throw .badConfiguration(claim: claim, why: error.description)
      }
    }
    let podClaimName = object.metadata?.annotations?["resource.kubernetes.io/pod-claim-name"].flatMap { $0.isEmpty ? nil : $0 }
    return ClaimAllocation(results: results, ownership: ownership, podClaimName: podClaimName)
  }
}

/// Where a claim's allocation comes from: the API server, or a directory of ResourceClaim
/// files named `<uid>.json` (tests, and nodes run without an API server).
public protocol ClaimSource: Sendable {
  func allocation(of claim: ClaimReference, driver: String) async throws(KubeletError) -> ClaimAllocation
}

public struct ClaimDirectory: ClaimSource {
  public let path: String
  public init(path: String) { self.path = path }

  public func allocation(of claim: ClaimReference, driver: String) async throws(KubeletError) -> ClaimAllocation {
    let file = path + "/" + claim.uid + ".json"
    guard let data = FileManager.default.contents(atPath: file) else {
      throw .claimUnknown(uid: claim.uid, why: "no file \(file)")
    }
    return try ClaimAllocation.parse(data, driver: driver, claim: claim.uid)
  }
}

/// The part of a ResourceClaim the plugin reads.
struct ResourceClaimJSON: Decodable {
  struct Status: Decodable { let allocation: Allocation? }
  struct Allocation: Decodable { let devices: Devices? }
  struct Devices: Decodable {
    let results: [DeviceResult]?
    let config: [Config]?
  }
  struct DeviceResult: Decodable {
    let request: String
    let driver: String
    let pool: String
    let device: String
  }
  struct Config: Decodable {
    /// `FromClass` (the DeviceClass, the administrator's) or `FromClaim` (the claim author's).
    let source: String?
    let opaque: Opaque?
  }
  struct Opaque: Decodable {
    let driver: String
    let parameters: Parameters?
  }
  struct Parameters: Decodable {
    let owner: String?
    let mode: String?
    let unknown: [String]

    struct Key: CodingKey {
      var stringValue: String
      var intValue: Int? { nil }
      init(stringValue: String) { self.stringValue = stringValue }
      init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
      let container = try decoder.container(keyedBy: Key.self)
      owner = try container.decodeIfPresent(String.self, forKey: Key(stringValue: "owner"))
      mode = try container.decodeIfPresent(String.self, forKey: Key(stringValue: "mode"))
      // Kubernetes adds apiVersion/kind to typed parameters; anything else is a mistake.
      unknown = container.allKeys.map(\.stringValue).filter { !["owner", "mode", "apiVersion", "kind"].contains($0) }
        .sorted()
    }
  }
  struct Metadata: Decodable { let annotations: [String: String]? }
  let metadata: Metadata?
  let status: Status?
}
