import CVFIO
import Foundation
import PCI
import VFIOHost

/// A process that has a group or device open: what `attach` and `reset` must not pull the
/// devices away from.
public struct OpenHolder: Sendable, Equatable, Codable, CustomStringConvertible {
  public let pid: Int?
  public let command: String?
  /// `/dev/vfio/4`, `/dev/vfio/devices/vfio2`, or what the kernel's answer showed.
  public let node: String
  /// The holder's start time when it was found (`/proc/PID/stat` field 22): what a signal
  /// checks first, so a later process given the same pid is never the one signalled.
  public let startTime: Int64?

  public init(pid: Int?, command: String?, node: String, startTime: Int64? = nil) {
    self.pid = pid
    self.command = command
    self.node = node
    self.startTime = startTime
  }

  public var description: String {
    guard let pid else { return "\(node) is held open by a process this user cannot see (\(printable(command ?? "EBUSY")))" }
    return "pid \(pid) (\(printable(command ?? "?"))) has \(node) open"
  }

  public var process: ProcessIdentity? { pid.map { ProcessIdentity(pid: $0, startTime: startTime) } }
}

/// A process as the kernel tells it from every later one with the same pid: its pid and its
/// start time (clock ticks after boot, `/proc/PID/stat` field 22).
public struct ProcessIdentity: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
  public let pid: Int
  public let startTime: Int64?

  public init(pid: Int, startTime: Int64?) {
    self.pid = pid
    self.startTime = startTime
  }

  /// The process with `pid` now, as `/proc` (under `sysfs`'s root) shows it.
  public static func current(pid: Int, sysfs: Sysfs = Sysfs()) -> ProcessIdentity? {
    guard let start = startTime(pid: pid, sysfs: sysfs) else { return nil }
    return ProcessIdentity(pid: pid, startTime: start)
  }

  /// Field 22 of `/proc/PID/stat`, counted after the command's closing parenthesis (the
  /// command itself may hold spaces and parentheses).
  public static func startTime(pid: Int, sysfs: Sysfs = Sysfs()) -> Int64? {
    guard let stat = sysfs.readString("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    // fields[0] is field 3 (state), so field 22 is fields[19].
    return fields.count > 19 ? Int64(fields[19]) : nil
  }

  /// Sends `signal` to exactly this process: a pidfd is opened for the pid, then the start
  /// time read again; only if it still matches is the signal sent, through the pidfd (which
  /// cannot be redirected to a later process). False when the process is gone or another.
  @discardableResult
  public func signal(_ signal: Int32, sysfs: Sysfs = Sysfs()) -> Bool {
    let pidfd = cvfio_pidfd_open(Int32(pid))
    guard pidfd >= 0 else { return false }
    defer { close(pidfd) }
    guard let startTime, ProcessIdentity.startTime(pid: pid, sysfs: sysfs) == startTime else { return false }
    return cvfio_pidfd_send_signal(pidfd, signal) == 0
  }

  public var description: String { "pid \(pid)" }
}

/// What a node is to the kernel: a character device by its device number (st_rdev), anything
/// else by its file system and inode. A file that merely has a node's name (a plain file at
/// /dev/vfio/8 in someone's private mount namespace) is never the node.
struct NodeIdentity: Hashable {
  let characterDevice: Bool
  let device: UInt64
  let inode: UInt64

  init?(path: String) {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    if info.st_mode & S_IFMT == S_IFCHR {
      self.init(characterDevice: true, device: UInt64(info.st_rdev), inode: 0)
    } else {
      self.init(characterDevice: false, device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }
  }

  init(characterDevice: Bool, device: UInt64, inode: UInt64) {
    self.characterDevice = characterDevice
    self.device = device
    self.inode = inode
  }
}

/// Finds who holds a group's VFIO nodes: every `/proc/PID/fd` entry whose file is the group
/// node or one of its devices' cdevs (compared by device number, never by the link's text),
/// and, because a device descriptor taken through the group shows only as
/// `anon_inode:[vfio-device]`, the kernel's own answer: opening a group node that someone holds
/// (or whose device is bound through its cdev) fails with EBUSY.
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

  public func holders(group: IOMMUGroupID, devices: [PCIAddress]) -> [OpenHolder] {
    holders(of: [group: devices])[group] ?? []
  }

  /// The holders of several groups (each with its devices) from one walk of /proc, which on a
  /// large host has far more descriptors than there are groups to ask about.
  public func holders(of groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: [OpenHolder]] {
    var nodes: [NodeIdentity: (group: IOMMUGroupID, node: String)] = [:]
    for (group, devices) in groups {
      for node in ["/dev/vfio/\(group)"] + cdevNodes(of: devices) {
        if let identity = NodeIdentity(path: sysfs.path(node)) { nodes[identity] = (group, node) }
      }
    }
    var found: [IOMMUGroupID: [OpenHolder]] = [:]
    var seen = 0
    let me = Int(getpid())
    if !nodes.isEmpty {
      scan: for entry in sysfs.list("/proc") where entry.allSatisfy(\.isNumber) {
        guard let pid = Int(entry), pid != me else { continue }
        for fd in sysfs.list("/proc/\(entry)/fd") {
          seen += 1
          if seen > maxDescriptors { break scan }
          guard let identity = NodeIdentity(path: sysfs.path("/proc/\(entry)/fd/\(fd)")), let hit = nodes[identity] else {
            continue
          }
          let holder = OpenHolder(
            pid: pid, command: sysfs.readString("/proc/\(entry)/comm"), node: hit.node,
            startTime: ProcessIdentity.startTime(pid: pid, sysfs: sysfs))
          if found[hit.group]?.contains(holder) != true { found[hit.group, default: []].append(holder) }
        }
      }
    }
    for group in groups.keys where found[group] == nil && groupNodeIsBusy(group) {
      found[group] = [OpenHolder(pid: nil, command: "open of /dev/vfio/\(group) answers EBUSY", node: "/dev/vfio/\(group)")]
    }
    return found
  }

  /// Opens and closes the group node: EBUSY means a process holds the group (or a device of it).
  func groupNodeIsBusy(_ group: IOMMUGroupID) -> Bool {
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
