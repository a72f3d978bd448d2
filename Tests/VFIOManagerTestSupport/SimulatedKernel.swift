import Foundation
import PCI
import VFIOHost
import VFIOManager

/// The PCI core's sysfs semantics, acted out on a scratch copy of a captured tree: `unbind`
/// removes the `driver` link, `driver_override` stores its value, `drivers_probe` binds the
/// override's driver (or the one the device had when captured), `drivers/D/bind` refuses a
/// device whose override names another driver, as `driver_match_device` does. Every write is
/// recorded. The real kernel plays this part in the integration tests (Tests/Integration).
public final class SimulatedKernel: HostKernel, @unchecked Sendable {
  public let root: String
  /// What the kernel would bind without an override: the drivers the capture shows.
  public let nativeDrivers: [String: String]
  private let lock = NSLock()
  private var log: [String] = []
  private var resetLog: [[String]] = []
  /// Return an errno to make a write fail, as the kernel would.
  public var failWrite: (@Sendable (_ path: String, _ value: String) -> Int32?)?

  public init(root: String) {
    self.root = root
    var native: [String: String] = [:]
    let sysfs = Sysfs(root: root)
    for device in sysfs.list("/sys/bus/pci/devices") {
      if let driver = sysfs.linkName("/sys/bus/pci/devices/\(device)/driver"), !PCIDevice.isVFIODriver(driver) {
        native[device] = driver
      }
    }
    nativeDrivers = native
  }

  /// Every write as `path <- value`, in order.
  public var writes: [String] { lock.withLock { log } }
  public var busResets: [[String]] { lock.withLock { resetLog } }

  public func write(_ value: String, to hostPath: String) throws(HostChangeError) {
    lock.withLock { log.append("\(hostPath) <- \(value)") }
    if let code = failWrite?(hostPath, value) { throw HostChangeError("write '\(value)' to \(hostPath)", errno: code) }
    let parts = hostPath.split(separator: "/").map(String.init)
    func fail(_ code: Int32) -> HostChangeError { HostChangeError("write '\(value)' to \(hostPath)", errno: code) }
    switch (parts.count, parts.last) {
    case (7, "unbind") where parts[3] == "devices":
      guard value == parts[4], driver(of: value) != nil else { throw fail(ENODEV) }
      unbind(value)
    case (6, "driver_override"):
      try writeFile(devicePath(parts[4]) + "/driver_override", value.isEmpty ? "(null)" : value)
    case (4, "drivers_probe"):
      guard driver(of: value) == nil else { return }
      guard let chosen = override(of: value) ?? nativeDrivers[value] else { return }
      try bind(value, to: chosen)
    case (6, "bind") where parts[3] == "drivers":
      if let override = override(of: value), override != parts[4] { throw fail(ENODEV) }
      guard driver(of: value) == nil else { throw fail(EBUSY) }
      try bind(value, to: parts[4])
    case (6, "reset"), (6, "reset_method"):
      if parts.last == "reset_method" { try writeFile(devicePath(parts[4]) + "/reset_method", value) }
    case (6, "sriov_drivers_autoprobe"):
      try writeFile(devicePath(parts[4]) + "/sriov_drivers_autoprobe", value)
    case (6, "sriov_numvfs"):
      try setVFCount(parts[4], Int(value) ?? -1, fail)
    default:
      throw fail(ENOENT)
    }
  }

  /// sriov_numvfs as the PCI core treats it: a non-zero count changes only through 0; 0 takes
  /// every VF away (device, bus link, virtfn link, its IOMMU group), N brings N back from
  /// what the capture had, bound only when sriov_drivers_autoprobe is 1.
  private func setVFCount(_ pf: String, _ count: Int, _ fail: (Int32) -> HostChangeError) throws(HostChangeError) {
    let pfDir = devicePath(pf)
    let sysfs = Sysfs(root: root)
    let current = sysfs.readInteger("/sys/bus/pci/devices/\(pf)/sriov_numvfs") ?? 0
    let total = sysfs.readInteger("/sys/bus/pci/devices/\(pf)/sriov_totalvfs") ?? 0
    guard count >= 0, count <= total else { throw fail(ERANGE) }
    guard current == 0 || count == 0 else { throw fail(EBUSY) }
    let stash = root + "/.simulated-vfs"
    mkdir(stash, 0o755)
    if count == 0 {
      for link in sysfs.list("/sys/bus/pci/devices/\(pf)").filter({ $0.hasPrefix("virtfn") }).sorted() {
        guard let vf = sysfs.linkName("/sys/bus/pci/devices/\(pf)/\(link)") else { continue }
        let group = sysfs.linkName("/sys/bus/pci/devices/\(vf)/iommu_group") ?? ""
        let vfDir = devicePath(vf)
        mkdir(stash + "/" + link, 0o755)
        rename(vfDir, stash + "/\(link)/device")
        rename(root + "/sys/bus/pci/devices/" + vf, stash + "/\(link)/bus-link")
        rename(root + "/sys/kernel/iommu_groups/" + group, stash + "/\(link)/group-\(group)")
        rename(pfDir + "/" + link, stash + "/\(link)/virtfn-link")
        unlink(root + "/dev/vfio/" + group)
      }
    } else {
      let autoprobe = sysfs.readString("/sys/bus/pci/devices/\(pf)/sriov_drivers_autoprobe") != "0"
      for index in 0..<count {
        let link = "virtfn\(index)"
        let saved = Sysfs(root: stash)
        guard let vfDirName = saved.linkName("/\(link)/bus-link") else { throw fail(ENOMEM) }
        let parent = String(pfDir[..<pfDir.lastIndex(of: "/")!])
        rename(stash + "/\(link)/device", parent + "/" + vfDirName)
        rename(stash + "/\(link)/bus-link", root + "/sys/bus/pci/devices/" + vfDirName)
        rename(stash + "/\(link)/virtfn-link", pfDir + "/" + link)
        for entry in saved.list("/\(link)") where entry.hasPrefix("group-") {
          rename(stash + "/\(link)/\(entry)", root + "/sys/kernel/iommu_groups/" + entry.dropFirst(6))
        }
        unlink(parent + "/\(vfDirName)/driver")
        try writeFile(parent + "/\(vfDirName)/driver_override", "(null)")
        if autoprobe, let native = nativeDrivers[vfDirName] { try bind(vfDirName, to: native) }
      }
    }
    try writeFile(pfDir + "/sriov_numvfs", String(count))
  }

  public func loadModule(_ name: String) throws(HostChangeError) {
    mkdir(root + "/sys/bus/pci/drivers/\(name)", 0o755)
  }

  public func setOwner(_ hostPath: String, _ ownership: Ownership) throws(HostChangeError) {
    lock.withLock { log.append("\(hostPath) <- owner \(ownership)") }
    let path = root + hostPath
    guard chown(path, uid_t(ownership.uid), gid_t(ownership.gid)) == 0, chmod(path, mode_t(ownership.mode)) == 0 else {
      throw HostChangeError("owner of \(hostPath)", errno: errno)
    }
  }

  public func busReset(_ functions: [PCIAddress]) throws(HostChangeError) {
    lock.withLock { resetLog.append(functions.map(\.description)) }
  }

  // MARK: The tree

  public func devicePath(_ address: String) -> String {
    let link = root + "/sys/bus/pci/devices/" + address
    return URL(fileURLWithPath: link).resolvingSymlinksInPath().path
  }

  public func driver(of address: String) -> String? {
    Sysfs(root: root).linkName("/sys/bus/pci/devices/\(address)/driver")
  }

  public func override(of address: String) -> String? {
    Sysfs(root: root).readString("/sys/bus/pci/devices/\(address)/driver_override").flatMap { $0 == "(null)" ? nil : $0 }
  }

  private func bind(_ address: String, to driver: String) throws(HostChangeError) {
    let directory = root + "/sys/bus/pci/drivers/" + driver
    guard access(directory, F_OK) == 0 else { throw HostChangeError("bind \(address) to \(driver)", errno: ENODEV) }
    symlink(directory, devicePath(address) + "/driver")
    // The vfio core creates the group node (root, 0600) when a group's first device binds.
    if driver == "vfio-pci", let group = Sysfs(root: root).linkName("/sys/bus/pci/devices/\(address)/iommu_group") {
      let node = root + "/dev/vfio/" + group
      if access(node, F_OK) != 0 {
        mkdir(root + "/dev", 0o755)
        mkdir(root + "/dev/vfio", 0o755)
        _ = FileManager.default.createFile(atPath: node, contents: nil, attributes: [.posixPermissions: 0o600])
      }
    }
  }

  /// ... and removes it when the last one leaves.
  private func unbind(_ address: String) {
    let sysfs = Sysfs(root: root)
    let wasVFIO = driver(of: address) == "vfio-pci"
    unlink(devicePath(address) + "/driver")
    guard wasVFIO, let group = sysfs.linkName("/sys/bus/pci/devices/\(address)/iommu_group") else { return }
    let members = sysfs.list("/sys/kernel/iommu_groups/\(group)/devices")
    if !members.contains(where: { driver(of: $0) == "vfio-pci" }) { unlink(root + "/dev/vfio/" + group) }
  }

  private func writeFile(_ path: String, _ text: String) throws(HostChangeError) {
    guard FileManager.default.createFile(atPath: path, contents: Data((text + "\n").utf8)) else {
      throw HostChangeError("write \(path)", errno: EIO)
    }
  }
}

/// Seconds on CLOCK_MONOTONIC, for time limits in tests and the fuzzer: the manager's clock.
@_exported import func VFIOManager.monotonicSeconds
