import Foundation
import VFIOHost

/// A process that has a group or device open: what `attach` and `reset` must not pull the
/// devices away from.
public struct OpenHolder: Sendable, Equatable, Codable, CustomStringConvertible {
  public let pid: Int?
  public let command: String?
  /// `/dev/vfio/4`, `/dev/vfio/devices/vfio2`, or what the kernel's answer showed.
  public let node: String

  public init(pid: Int?, command: String?, node: String) {
    self.pid = pid
    self.command = command
    self.node = node
  }

  public var description: String {
    guard let pid else { return "\(node) is held open by a process this user cannot see (\(command ?? "EBUSY"))" }
    return "pid \(pid) (\(command ?? "?")) has \(node) open"
  }
}

/// Finds who holds a group's VFIO nodes: every `/proc/PID/fd` link that names the group node
/// or one of its devices' cdevs, and, because a device descriptor taken through the group
/// shows only as `anon_inode:[vfio-device]`, the kernel's own answer: opening a group node
/// that someone holds (or whose device is open through its cdev) fails with EBUSY.
public struct OpenHolderScanner: Sendable {
  public let sysfs: Sysfs
  /// /proc on a large host has tens of thousands of descriptors; bound the walk.
  let maxDescriptors = 1 << 20

  public init(sysfs: Sysfs) { self.sysfs = sysfs }

  /// The cdev nodes (`/dev/vfio/devices/vfioN`) of `devices`, where the kernel has them.
  public func cdevNodes(of devices: [PCIAddress]) -> [String] {
    devices.flatMap { address in
      sysfs.list("/sys/bus/pci/devices/\(address)/vfio-dev").filter { $0.hasPrefix("vfio") }
        .map { "/dev/vfio/devices/\($0)" }
    }
  }

  public func holders(group: Int, devices: [PCIAddress]) -> [OpenHolder] {
    holders(of: [group: devices])[group] ?? []
  }

  /// The holders of several groups (each with its devices) from one walk of /proc, which on a
  /// large host has far more descriptors than there are groups to ask about.
  public func holders(of groups: [Int: [PCIAddress]]) -> [Int: [OpenHolder]] {
    var groupOfNode: [String: Int] = [:]
    for (group, devices) in groups {
      for node in ["/dev/vfio/\(group)"] + cdevNodes(of: devices) { groupOfNode[node] = group }
    }
    var found: [Int: [OpenHolder]] = [:]
    var seen = 0
    scan: for entry in sysfs.list("/proc") where entry.allSatisfy(\.isNumber) {
      guard let pid = Int(entry), pid != Int(getpid()) else { continue }
      for fd in sysfs.list("/proc/\(entry)/fd") {
        seen += 1
        if seen > maxDescriptors { break scan }
        guard let target = sysfs.readLink("/proc/\(entry)/fd/\(fd)"), let group = groupOfNode[target] else { continue }
        let holder = OpenHolder(pid: pid, command: sysfs.readString("/proc/\(entry)/comm"), node: target)
        if found[group]?.contains(holder) != true { found[group, default: []].append(holder) }
      }
    }
    for group in groups.keys where found[group] == nil && groupNodeIsBusy(group) {
      found[group] = [OpenHolder(pid: nil, command: "open of /dev/vfio/\(group) answers EBUSY", node: "/dev/vfio/\(group)")]
    }
    return found
  }

  /// Opens and closes the group node: EBUSY means a process holds the group (or a device of it).
  func groupNodeIsBusy(_ group: Int) -> Bool {
    let path = sysfs.path("/dev/vfio/\(group)")
    var info = stat()
    guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFCHR else { return false }
    let fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK)
    if fd >= 0 {
      close(fd)
      return false
    }
    return errno == EBUSY
  }
}
