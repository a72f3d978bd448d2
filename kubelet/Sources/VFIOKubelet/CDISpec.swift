import Foundation
import VFIOHost
import VFIOManager

/// A Container Device Interface spec: the device nodes and environment a runtime (containerd,
/// CRI-O, podman) adds to a container that asks for `kind=name`. Only the fields of CDI 0.5.0
/// are written, the newest version the CDI library vendored by podman 4.3 (Debian 12) accepts:
/// `cdiVersion`, `kind`, `devices[].name`, `containerEdits.env` and `deviceNodes[].path`.
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
    public var env: [String]
    public var deviceNodes: [DeviceNode]
  }

  public struct DeviceNode: Codable, Sendable, Equatable {
    public var path: String
  }

  /// `vendor/class=name`, what a runtime is asked for (`podman run --device` takes it too).
  public func qualifiedName(_ device: Device) -> String { "\(kind)=\(device.name)" }
}

/// How the container reaches the group: the legacy container and group nodes, or the
/// iommufd node and each function's VFIO device cdev (kernels with CONFIG_VFIO_DEVICE_CDEV).
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

  /// The spec of one claim: one CDI device per group, named after the claim and the group.
  public func spec(claimUID: String, devices: [PublishedDevice]) -> CDISpec {
    CDISpec(
      kind: kind,
      devices: devices.map { device in
        CDISpec.Device(
          name: "\(cdiName(claimUID))-\(device.name)",
          containerEdits: .init(
            env: [environmentVariable(resourceName) + "=" + device.busIDs],
            deviceNodes: nodes(device).map { CDISpec.DeviceNode(path: $0) }))
      })
  }

  /// The VFIO device nodes a container needs for `device`.
  public func nodes(_ device: PublishedDevice) -> [String] {
    switch interface {
    case .legacy: return ["/dev/vfio/vfio", "/dev/vfio/\(device.group)"]
    case .iommufd:
      // The cdev names (vfio0 …) are the kernel's, read from sysfs once bound to vfio-pci.
      return ["/dev/iommu"] + OpenHolderScanner(sysfs: sysfs).cdevNodes(of: device.functions)
    }
  }

  public func path(claimUID: String) -> String { directory + "/swift-vfio-\(cdiName(claimUID)).json" }

  /// Writes the spec atomically (a runtime may be reading the directory).
  public func write(_ spec: CDISpec, claimUID: String) throws(KubeletError) {
    let target = path(claimUID: claimUID)
    do {
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      let data = Data((sortedJSON(spec) + "\n").utf8)
      try data.write(to: URL(fileURLWithPath: target), options: .atomic)
    } catch {
      throw .cdi(path: target, "\(error.localizedDescription)")
    }
  }

  public func remove(claimUID: String) throws(KubeletError) {
    let target = path(claimUID: claimUID)
    guard FileManager.default.fileExists(atPath: target) else { return }
    do { try FileManager.default.removeItem(atPath: target) } catch {
      throw .cdi(path: target, "\(error.localizedDescription)")
    }
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
