import Foundation
import VFIOHost
import VFIOManager

/// A Container Device Interface spec: the device nodes, environment and mounts a runtime
/// (containerd, CRI-O, podman) adds to a container that asks for `kind=name`. Only fields of
/// CDI 0.5.0 are written, the newest version podman 4.3 (Debian 12) accepts (it refuses 0.6.0
/// and unknown fields): device names that start with a digit (claim UIDs) need 0.5.0; the
/// nodes' `uid`/`gid` and the mounts' `options` are 0.3.0's.
public struct CDISpec: Codable, Sendable, Equatable {
  public var cdiVersion = CDISpec.version
  public var kind: String
  public var devices: [Device]

  public static let version = "0.5.0"

  public struct Device: Codable, Sendable, Equatable {
    public var name: String
    public var containerEdits: ContainerEdits
  }

  public struct ContainerEdits: Codable, Sendable, Equatable {
    public var env: [String]?
    public var deviceNodes: [DeviceNode]?
    public var mounts: [Mount]?
  }

  /// A node the runtime makes in the container, like the host's `path`; `uid`/`gid` own it
  /// in the container (the VMM's user, as the DeviceClass names it: KubeVirt's qemu is 107).
  public struct DeviceNode: Codable, Sendable, Equatable {
    public var path: String
    public var uid: Int?
    public var gid: Int?
  }

  public struct Mount: Codable, Sendable, Equatable {
    public var hostPath: String
    public var containerPath: String
    public var options: [String]
  }

  /// `vendor/class=name`, what a runtime is asked for (`podman run --device` takes it too).
  public func qualifiedName(_ device: Device) -> String { "\(kind)=\(device.name)" }
}

/// How the container reaches the group: the legacy container and group nodes, or (KubeVirt's
/// VEP 266) those and the iommufd node with each function's VFIO device cdev, on kernels that
/// have them (CONFIG_IOMMUFD, CONFIG_VFIO_DEVICE_CDEV); elsewhere iommufd answers legacy only.
public enum VFIOInterface: String, Sendable, Codable, CaseIterable {
  case legacy
  case iommufd
}

/// Writes and removes the CDI specs of prepared claims, one file per claim.
public struct CDIWriter: Sendable {
  /// Where runtimes look for specs: `/var/run/cdi` (or a scratch directory in tests).
  public let directory: String
  /// `vendor/class`: `vfio.swift-vfio.io/pci` for the default driver.
  public let kind: String
  /// The extended resource or driver name the env var is named after.
  public let resourceName: String
  public let interface: VFIOInterface
  public let sysfs: Sysfs

  public init(directory: String, kind: String, resourceName: String, interface: VFIOInterface, sysfs: Sysfs) {
    self.directory = directory
    self.kind = kind
    self.resourceName = resourceName
    self.interface = interface
    self.sysfs = sysfs
  }

  /// The spec of one claim: one CDI device per group, named after the claim and the group,
  /// its nodes owned by `owner` (the DeviceClass's, never the claim's) in the container.
  public func spec(claimUID: String, devices: [PublishedDevice], owner: Ownership? = nil) -> CDISpec {
    CDISpec(
      kind: kind,
      devices: devices.map { device in
        CDISpec.Device(
          name: "\(cdiName(claimUID))-\(device.name)",
          containerEdits: .init(
            env: [environmentVariable(resourceName) + "=" + device.busIDs],
            deviceNodes: nodes(device).map { path in
              // /dev/vfio/vfio is every user's (0666) and opens nothing by itself.
              let owned = path != "/dev/vfio/vfio" ? owner : nil
              return CDISpec.DeviceNode(path: path, uid: owned?.uid, gid: owned?.gid)
            }))
      })
  }

  /// The VFIO device nodes a container needs for `device`: the legacy pair always, and with
  /// iommufd `/dev/iommu` and the functions' cdevs when this kernel made them. A cdev is
  /// named only when its node exists: sysfs can show `vfio-dev` on a kernel without
  /// CONFIG_VFIO_DEVICE_CDEV, and a runtime fails the container on a node that is missing.
  public func nodes(_ device: PublishedDevice) -> [String] {
    let legacy = ["/dev/vfio/vfio", "/dev/vfio/\(device.group)"]
    guard interface == .iommufd, let iommufd = iommufdNodes(device) else { return legacy }
    return legacy + iommufd
  }

  /// `/dev/iommu` and a cdev for every function, or nil when the kernel lacks any of them.
  public func iommufdNodes(_ device: PublishedDevice) -> [String]? {
    let cdevs = OpenHolderScanner(sysfs: sysfs).cdevNodes(of: device.functions)
    let nodes = ["/dev/iommu"] + cdevs
    guard cdevs.count == device.functions.count, nodes.allSatisfy({ FileManager.default.fileExists(atPath: sysfs.path($0)) })
    else { return nil }
    return nodes
  }

  public func path(claimUID: String) -> String { directory + "/swift-vfio-\(cdiName(claimUID)).json" }

  /// Writes the spec atomically (a runtime may be reading the directory).
  public func write(_ spec: CDISpec, claimUID: String) throws(KubeletError) {
    try writeAtomically(sortedJSON(spec) + "\n", to: path(claimUID: claimUID)) { .cdi(path: $0, $1) }
  }

  public func remove(claimUID: String) throws(KubeletError) {
    try removeIfPresent(path(claimUID: claimUID)) { .cdi(path: $0, $1) }
  }
}

/// `PCI_RESOURCE_<NAME>` as KubeVirt derives it: upper case, `/` and `.` to `_`.
public func environmentVariable(_ resourceName: String) -> String {
  "PCI_RESOURCE_"
    + resourceName.uppercased().replacingOccurrences(of: "/", with: "_")
    .replacingOccurrences(of: ".", with: "_")
}

/// CDI device names allow letters, digits, `_`, `-`, `.` and `:`; a claim UID is a UUID.
func cdiName(_ text: String) -> String {
  String(text.map { $0.isASCII && ($0.isLetter || $0.isNumber || "_-.:".contains($0)) ? $0 : "_" })
}

/// Writes `text` to `path` through a temporary file and a rename, making the directories: a
/// reader sees the old file or the new one, never half of one.
func writeAtomically(_ text: String, to path: String, _ failure: (String, String) -> KubeletError) throws(KubeletError) {
  do {
    try FileManager.default.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
  } catch {
    throw failure(path, error.localizedDescription)
  }
}

/// Removes a file or a directory tree; one already gone is fine.
func removeIfPresent(_ path: String, _ failure: (String, String) -> KubeletError) throws(KubeletError) {
  guard FileManager.default.fileExists(atPath: path) else { return }
  do { try FileManager.default.removeItem(atPath: path) } catch { throw failure(path, error.localizedDescription) }
}
