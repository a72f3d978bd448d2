import Foundation
import VFIOHost
import VFIOManager

/// The PCI core's sysfs semantics, acted out on a scratch copy of a captured tree: `unbind`
/// removes the `driver` link, `driver_override` stores its value, `drivers_probe` binds the
/// override's driver (or the one the device had when captured), `drivers/D/bind` refuses a
/// device whose override names another driver, as `driver_match_device` does. Every write is
/// recorded. The real kernel plays this part in the integration tests (Tests/Integration).
final class SimulatedKernel: HostKernel, @unchecked Sendable {
  let root: String
  /// What the kernel would bind without an override: the drivers the capture shows.
  let nativeDrivers: [String: String]
  private let lock = NSLock()
  private var log: [String] = []
  private var resetLog: [[String]] = []
  /// Return an errno to make a write fail, as the kernel would.
  var failWrite: (@Sendable (_ path: String, _ value: String) -> Int32?)?

  init(root: String) {
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
  var writes: [String] { lock.withLock { log } }
  var busResets: [[String]] { lock.withLock { resetLog } }

  func write(_ value: String, to hostPath: String) throws(HostChangeError) {
    lock.withLock { log.append("\(hostPath) <- \(value)") }
    if let code = failWrite?(hostPath, value) { throw HostChangeError("write '\(value)' to \(hostPath)", errno: code) }
    let parts = hostPath.split(separator: "/").map(String.init)
    func fail(_ code: Int32) -> HostChangeError { HostChangeError("write '\(value)' to \(hostPath)", errno: code) }
    switch (parts.count, parts.last) {
    case (7, "unbind") where parts[3] == "devices":
      guard value == parts[4], driver(of: value) != nil else { throw fail(ENODEV) }
      unlink(devicePath(value) + "/driver")
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
    default:
      throw fail(ENOENT)
    }
  }

  func loadModule(_ name: String) throws(HostChangeError) {
    mkdir(root + "/sys/bus/pci/drivers/\(name)", 0o755)
  }

  func busReset(_ functions: [PCIAddress]) throws(HostChangeError) {
    lock.withLock { resetLog.append(functions.map(\.description)) }
  }

  // MARK: The tree

  func devicePath(_ address: String) -> String {
    let link = root + "/sys/bus/pci/devices/" + address
    return URL(fileURLWithPath: link).resolvingSymlinksInPath().path
  }

  func driver(of address: String) -> String? {
    Sysfs(root: root).linkName("/sys/bus/pci/devices/\(address)/driver")
  }

  func override(of address: String) -> String? {
    Sysfs(root: root).readString("/sys/bus/pci/devices/\(address)/driver_override").flatMap { $0 == "(null)" ? nil : $0 }
  }

  private func bind(_ address: String, to driver: String) throws(HostChangeError) {
    let directory = root + "/sys/bus/pci/drivers/" + driver
    guard access(directory, F_OK) == 0 else { throw HostChangeError("bind \(address) to \(driver)", errno: ENODEV) }
    symlink(directory, devicePath(address) + "/driver")
  }

  private func writeFile(_ path: String, _ text: String) throws(HostChangeError) {
    guard FileManager.default.createFile(atPath: path, contents: Data((text + "\n").utf8)) else {
      throw HostChangeError("write \(path)", errno: EIO)
    }
  }
}
