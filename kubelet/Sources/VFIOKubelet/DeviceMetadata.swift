import Foundation
import PCI
import VFIOHost

/// KEP-5304's device metadata: what a prepared claim's request got, as a file the container
/// reads under `/var/run/kubernetes.io/dra-device-attributes` (KubeVirt's virt-launcher finds
/// a DRA device's PCI address there, VEP 10). One object per API version, written one after
/// the other, newest first; a reader takes the first it knows (KubeVirt 1.8 knows v1alpha1).
public struct DeviceMetadata: Codable, Sendable, Equatable {
  public static let versions = ["metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1"]

  public var kind = "DeviceMetadata"
  public var apiVersion: String
  public var metadata: Object
  /// `pod.spec.resourceClaims[].name` of a claim made from a template.
  public var podClaimName: String?
  public var requests: [Request]

  public struct Object: Codable, Sendable, Equatable {
    public var name: String
    public var namespace: String
    public var uid: String
    /// 1 when written at prepare; a later rewrite of the same claim would count up.
    public var generation: Int
  }

  public struct Request: Codable, Sendable, Equatable {
    public var name: String
    public var devices: [Device]
  }

  public struct Device: Codable, Sendable, Equatable {
    public var driver: String
    public var pool: String
    public var name: String
    public var attributes: [String: ResourceSlice.Attribute]
  }
}

/// Writes and removes a claim's device metadata and the CDI specs that bind-mount it, read-only,
/// into the containers that use the request, the way Kubernetes' kubelet plugin library does:
/// - host: `<plugin dir>/dra-device-metadata/<namespace>_<claim>/<request>/metadata.json`;
/// - container: `/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json`
///   (`resourceclaimtemplates/<pod claim name>/…` for a claim made from a template);
/// - CDI: `<cdi dir>/<driver>_metadata_<claim uid>_<request>.json`, device `<driver>/metadata=<uid>_<request>`.
public struct DeviceMetadataWriter: Sendable {
  public static let containerDirectory = "/var/run/kubernetes.io/dra-device-attributes"

  public let driver: String
  /// The plugin's data directory, `/var/lib/kubelet/plugins/<driver>`.
  public let pluginDirectory: String
  public let cdiDirectory: String

  public init(driver: String, pluginDirectory: String, cdiDirectory: String) {
    self.driver = driver
    self.pluginDirectory = pluginDirectory
    self.cdiDirectory = cdiDirectory
  }

  public func claimDirectory(_ claim: ClaimReference) -> String {
    pluginDirectory + "/dra-device-metadata/\(claim.namespace)_\(claim.name)"
  }

  public func hostPath(_ claim: ClaimReference, request: String) -> String {
    claimDirectory(claim) + "/\(request)/metadata.json"
  }

  public func containerPath(_ claim: ClaimReference, podClaimName: String?, request: String) -> String {
    let owner = podClaimName.map { "resourceclaimtemplates/\($0)" } ?? "resourceclaims/\(claim.name)"
    return Self.containerDirectory + "/\(owner)/\(request)/\(driver)-metadata.json"
  }

  public var kind: String { driver + "/metadata" }
  public func cdiDeviceName(_ claim: ClaimReference, request: String) -> String { cdiName("\(claim.uid)_\(request)") }
  public func cdiID(_ claim: ClaimReference, request: String) -> String {
    "\(kind)=\(cdiDeviceName(claim, request: request))"
  }
  public func cdiPath(_ claim: ClaimReference, request: String) -> String {
    cdiDirectory + "/\(driver)_metadata_\(cdiDeviceName(claim, request: request)).json"
  }

  /// The stream written for one request: the same object once per version.
  public func documents(
    _ claim: ClaimReference, podClaimName: String?, request: String, devices: [DeviceMetadata.Device]
  ) -> [DeviceMetadata] {
    DeviceMetadata.versions.map { version in
      DeviceMetadata(
        apiVersion: version,
        metadata: .init(name: claim.name, namespace: claim.namespace, uid: claim.uid, generation: 1),
        podClaimName: podClaimName, requests: [.init(name: request, devices: devices)])
    }
  }

  /// Writes the request's metadata file, then the CDI spec that mounts it; returns the CDI ID.
  /// Both atomically: a container started meanwhile sees whole files or none.
  public func write(
    _ claim: ClaimReference, podClaimName: String?, request: String, devices: [DeviceMetadata.Device]
  ) throws(KubeletError) -> String {
    for (what, name) in [("namespace", claim.namespace), ("name", claim.name), ("request", request)]
    where !isPathSafe(name) {
      throw .badConfiguration(claim: claim.uid, why: "the claim's \(what) '\(name)' is not a Kubernetes name")
    }
    if let podClaimName, !isPathSafe(podClaimName) {
      throw .badConfiguration(claim: claim.uid, why: "the pod claim name '\(podClaimName)' is not a Kubernetes name")
    }
    let stream = documents(claim, podClaimName: podClaimName, request: request, devices: devices)
      .map { compactJSON($0) }.joined(separator: "\n") + "\n"
    try writeAtomically(stream, to: hostPath(claim, request: request)) { .metadata(path: $0, $1) }
    let spec = CDISpec(
      kind: kind,
      devices: [
        CDISpec.Device(
          name: cdiDeviceName(claim, request: request),
          containerEdits: .init(mounts: [
            CDISpec.Mount(
              hostPath: hostPath(claim, request: request),
              containerPath: containerPath(claim, podClaimName: podClaimName, request: request),
              options: ["ro", "bind"])
          ]))
      ])
    try writeAtomically(sortedJSON(spec) + "\n", to: cdiPath(claim, request: request)) { .cdi(path: $0, $1) }
    return cdiID(claim, request: request)
  }

  /// Removes every request's metadata and mount spec of the claim.
  public func remove(_ claim: ClaimReference) throws(KubeletError) {
    let prefix = "\(driver)_metadata_\(cdiName(claim.uid))_"
    for name in (try? FileManager.default.contentsOfDirectory(atPath: cdiDirectory)) ?? []
    where name.hasPrefix(prefix) && name.hasSuffix(".json") {
      try removeIfPresent(cdiDirectory + "/" + name) { .cdi(path: $0, $1) }
    }
    if isPathSafe(claim.namespace) && isPathSafe(claim.name) {
      try removeIfPresent(claimDirectory(claim)) { .metadata(path: $0, $1) }
    }
  }

  /// The attributes a request's device carries: the slice's, with every function of the group
  /// and, on iommufd, the functions' cdev names.
  public static func attributes(
    _ device: PublishedDevice, sliceAttributes: [String: ResourceSlice.Attribute], cdevs: [String]
  ) -> [String: ResourceSlice.Attribute] {
    var attributes = sliceAttributes
    attributes["functions"] = ResourceSlice.Attribute(strings: device.functions.map(\.description))
    if !cdevs.isEmpty { attributes["vfioDevices"] = ResourceSlice.Attribute(strings: cdevs) }
    return attributes
  }
}

/// A name Kubernetes allows for a namespace, claim or request: lower-case letters, digits,
/// `-` and `.`, never `..`, `/` or empty; safe as one path component.
func isPathSafe(_ name: String) -> Bool {
  ResourceSliceRules.isDNSSubdomain(name)
}

/// One line of JSON with sorted keys: one document of a metadata stream.
func compactJSON<T: Encodable>(_ value: T) -> String {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
  guard let data = try? encoder.encode(value) else { return "{}" }
  return String(decoding: data, as: UTF8.self)
}
