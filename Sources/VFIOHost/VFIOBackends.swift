/// The ways into VFIO this kernel offers a VMM: the legacy container (`/dev/vfio/vfio`, type1 or
/// sPAPR), iommufd (`/dev/iommu`) and per-device cdevs (`/dev/vfio/devices/vfioN`, which
/// iommufd needs). Read from what the running kernel shows (device nodes, loaded modules, the
/// cdevs of bound devices) and, where that cannot tell, its build configuration
/// (`/boot/config-RELEASE`, as Debian installs it).
public struct VFIOBackends: Sendable, Equatable, Codable {
  public struct Backend: Sendable, Equatable, Codable {
    /// nil when neither the running kernel nor its configuration tells.
    public let offered: Bool?
    /// What it was read from, or what to do.
    public let evidence: String
  }

  public let container: Backend
  public let iommufd: Backend
  public let deviceCdev: Backend

  public static func read(_ sysfs: Sysfs) -> VFIOBackends {
    let release = sysfs.readString("/proc/sys/kernel/osrelease")
    let config = release.flatMap { sysfs.readBytes("/boot/config-\($0)", limit: 1 << 20) }
      .map { KernelConfig(String(decoding: $0, as: UTF8.self)) }
    let configName = release.map { "/boot/config-\($0)" } ?? "the kernel configuration"

    func fromConfig(_ option: String, moduleHint: String?) -> Backend? {
      guard let config else { return nil }
      switch config.value(option) {
      case "y": return Backend(offered: true, evidence: "\(option)=y (\(configName))")
      case "m":
        return Backend(
          offered: true, evidence: "\(option)=m (\(configName))" + (moduleHint.map { "; load it: modprobe \($0)" } ?? ""))
      default: return Backend(offered: false, evidence: "\(option) is not set (\(configName))")
      }
    }

    let container: Backend
    if sysfs.exists("/dev/vfio/vfio") {
      container = Backend(offered: true, evidence: "/dev/vfio/vfio")
    } else if sysfs.exists("/sys/module/vfio") {
      container = fromConfig("CONFIG_VFIO_CONTAINER", moduleHint: nil)
        ?? Backend(offered: false, evidence: "vfio is loaded without /dev/vfio/vfio (CONFIG_VFIO_CONTAINER off)")
    } else {
      container = fromConfig("CONFIG_VFIO_CONTAINER", moduleHint: "vfio")
        ?? Backend(offered: nil, evidence: "vfio is not loaded: modprobe vfio-pci, then ask again")
    }

    let iommufd: Backend
    if sysfs.exists("/dev/iommu") {
      iommufd = Backend(offered: true, evidence: "/dev/iommu")
    } else {
      iommufd = fromConfig("CONFIG_IOMMUFD", moduleHint: "iommufd")
        ?? Backend(offered: false, evidence: "no /dev/iommu (and no \(configName) to say whether a module could add it)")
    }

    // With cdevs, each device bound to vfio-pci has a vfio-dev/vfioN entry with a `dev` number.
    var bound = false
    var cdev: String?
    for device in sysfs.list("/sys/bus/pci/devices") where sysfs.linkName("/sys/bus/pci/devices/\(device)/driver") == "vfio-pci" {
      bound = true
      for entry in sysfs.list("/sys/bus/pci/devices/\(device)/vfio-dev")
      where sysfs.exists("/sys/bus/pci/devices/\(device)/vfio-dev/\(entry)/dev") {
        cdev = "/dev/vfio/devices/\(entry) (\(device))"
      }
      if cdev != nil { break }
    }
    let deviceCdev: Backend
    if let cdev {
      deviceCdev = Backend(offered: true, evidence: cdev)
    } else if let fromConfig = fromConfig("CONFIG_VFIO_DEVICE_CDEV", moduleHint: nil) {
      deviceCdev = fromConfig
    } else if bound {
      deviceCdev = Backend(offered: false, evidence: "devices bound to vfio-pci have no cdev (CONFIG_VFIO_DEVICE_CDEV off)")
    } else {
      deviceCdev = Backend(offered: nil, evidence: "no device is bound to vfio-pci and \(configName) is not there to tell")
    }
    return VFIOBackends(container: container, iommufd: iommufd, deviceCdev: deviceCdev)
  }
}

/// `CONFIG_NAME=value` lines of a kernel's .config; `# CONFIG_NAME is not set` is no value.
struct KernelConfig {
  let values: [Substring: Substring]

  init(_ text: String) {
    var values: [Substring: Substring] = [:]
    for line in text.split(separator: "\n") where line.hasPrefix("CONFIG_") {
      guard let equals = line.firstIndex(of: "=") else { continue }
      values[line[..<equals]] = line[line.index(after: equals)...]
    }
    self.values = values
  }

  func value(_ option: String) -> String? { values[Substring(option)].map(String.init) }
}
