import Glibc
import VFIOHost

/// A small deterministic generator (SplitMix64), so a fuzz run is replayed from its seed.
public struct SplitMix64: RandomNumberGenerator {
  private var state: UInt64
  public init(seed: UInt64) { state = seed }

  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// The ways a copy of a captured tree is corrupted: what a hostile or broken capture (or a
/// strange kernel) can put where vfioctl reads.
public enum Mutation: String, CaseIterable, Sendable {
  case configRandomBytes = "config-random-bytes"
  case configTruncate = "config-truncate"
  case configExtend = "config-extend"
  case resourceLine = "resource-line"
  case nonUTF8 = "non-utf8"
  case hugeFile = "huge-file"
  case hugeNumber = "huge-number"
  case symlinkLoop = "symlink-loop"
  case danglingLink = "dangling-link"
  case directoryForFile = "directory-for-file"
  case fileForDirectory = "file-for-directory"
  case fifo
  case deviceNode = "device-node"
  case groupNamesAbsentDevice = "group-names-absent-device"
  case deviceInTwoGroups = "device-in-two-groups"
  case physfnCycle = "physfn-cycle"
  case sriovCounts = "sriov-counts"
  case bridgeParentCycle = "bridge-parent-cycle"
  case holderCycle = "holder-cycle"
  case mountTable = "mount-table"
  case oddDeviceName = "odd-device-name"
}

/// Applies `Mutation`s to a scratch copy of a fixture. Every path it touches is inside `root`.
public struct TreeMutator {
  public let root: String
  private var files: [String] = []
  private var links: [String] = []
  private var directories: [String] = []

  static let devices = "/sys/bus/pci/devices"
  static let groups = "/sys/kernel/iommu_groups"

  public init(root: String) {
    self.root = root
    index("")
  }

  private mutating func index(_ relative: String) {
    for (name, _) in FileTree.entries(root + relative) {
      let path = relative + "/" + name
      var info = stat()
      guard lstat(root + path, &info) == 0 else { continue }
      switch info.st_mode & S_IFMT {
      case S_IFDIR:
        directories.append(path)
        index(path)
      case S_IFLNK: links.append(path)
      case S_IFREG: files.append(path)
      default: continue
      }
    }
  }

  /// Applies one mutation; returns what it did (for the log and a reproducer), or nil when
  /// the tree has nothing it applies to.
  @discardableResult
  public mutating func apply<G: RandomNumberGenerator>(_ mutation: Mutation, _ rng: inout G) -> String? {
    switch mutation {
    case .configRandomBytes:
      guard let path = pick(files, named: "config", &rng), var bytes = read(path), !bytes.isEmpty else { return nil }
      let count = Int.random(in: 1...16, using: &rng)
      for _ in 0..<count {
        bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
      }
      write(path, bytes)
      return "\(count) random bytes in \(path)"
    case .configTruncate:
      guard let path = pick(files, named: "config", &rng), let bytes = read(path) else { return nil }
      let length = Int.random(in: 0...max(0, bytes.count - 1), using: &rng)
      write(path, Array(bytes.prefix(length)))
      return "\(path) cut to \(length) bytes"
    case .configExtend:
      guard let path = pick(files, named: "config", &rng), let bytes = read(path) else { return nil }
      let extra = (0..<Int.random(in: 1...8192, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
      write(path, bytes + extra)
      return "\(path) extended by \(extra.count) random bytes"
    case .resourceLine:
      guard let path = pick(files, named: "resource", &rng) else { return nil }
      var lines = String(decoding: read(path) ?? [], as: UTF8.self).split(separator: "\n").map(String.init)
      let bad = [
        "garbage here now", "-0x1 0x2 0x200", "0x0000000000000000 0xffffffffffffffff 0x0000000000040200",
        "0x00000000fea20000 0x00000000fea1ffff 0x0000000000040200", "0x1 0x2", "0x1 0x2 0x200 0x4",
        "0x00000000000000001 0x2 0x200", "0xffffffffffffffff 0xffffffffffffffff 0x0000000000040101", "0x 0x 0x",
        String(repeating: "0x1 ", count: 5000),
      ]
      let line = bad.randomElement(using: &rng)!
      if lines.isEmpty || Bool.random(using: &rng) {
        lines.append(line)
      } else {
        lines[Int.random(in: 0..<lines.count, using: &rng)] = line
      }
      write(path, Array(lines.joined(separator: "\n").utf8))
      return "\(path) holds '\(line.prefix(60))'"
    case .nonUTF8:
      guard let path = files.randomElement(using: &rng) else { return nil }
      write(path, [0xFF, 0xFE, 0xC3, 0x28, 0x0A, 0xE2, 0x82, 0x80, 0xF0, 0x90, 0x28, 0xBC])
      return "\(path) is not UTF-8"
    case .hugeFile:
      guard let path = files.randomElement(using: &rng) else { return nil }
      // Sparse, so the copy costs no disk: reads see a gibibyte of zeros.
      truncate(root + path, 1 << 30)
      return "\(path) is 1 GiB"
    case .hugeNumber:
      guard let path = files.randomElement(using: &rng) else { return nil }
      let value = ["99999999999999999999999", "-1", "-9223372036854775808", "0x", "18446744073709551615"]
        .randomElement(using: &rng)!
      write(path, Array((value + "\n").utf8))
      return "\(path) holds \(value)"
    case .symlinkLoop:
      guard let path = (files + links).randomElement(using: &rng) else { return nil }
      replace(path) { symlink(lastComponent(path), $0) }
      return "\(path) is a link to itself"
    case .danglingLink:
      guard let path = links.randomElement(using: &rng) else { return nil }
      replace(path) { symlink("../nonexistent/0000:7f:1f.7", $0) }
      return "\(path) dangles"
    case .directoryForFile:
      guard let path = files.randomElement(using: &rng) else { return nil }
      replace(path) { mkdir($0, 0o755) }
      return "\(path) is a directory"
    case .fileForDirectory:
      guard let path = directories.filter({ $0.hasPrefix("/sys") }).randomElement(using: &rng) else { return nil }
      FileTree.remove(root + path)
      write(path, Array("not a directory\n".utf8))
      return "\(path) is a file"
    case .fifo:
      guard let path = pick(files, named: nil, &rng) else { return nil }
      replace(path) { mkfifo($0, 0o644) }
      return "\(path) is a FIFO"
    case .deviceNode:
      guard let path = pick(files, named: nil, &rng) else { return nil }
      // /dev/zero's numbers: an endless read if nothing caps it. Only root may make nodes;
      // a FIFO stands in otherwise.
      replace(path) { mknod($0, S_IFCHR | 0o644, dev_t(1 << 8 | 5)) == 0 ? 0 : mkfifo($0, 0o644) }
      return "\(path) is a character device (or a FIFO)"
    case .groupNamesAbsentDevice:
      guard let group = groupDirectories().randomElement(using: &rng) else { return nil }
      symlink("../../../../devices/pci0000:00/0000:00:1e.7", root + group + "/devices/0000:00:1e.7")
      return "\(group) names the absent 0000:00:1e.7"
    case .deviceInTwoGroups:
      let groups = groupDirectories()
      guard let device = deviceLinks().randomElement(using: &rng), let other = groups.randomElement(using: &rng),
        let canonical = FileTree.readLink(root + device)
      else { return nil }
      let name = lastComponent(device)
      symlink("../../../../bus/pci/devices/\(name)", root + other + "/devices/\(name)")
      let deviceDirectory = resolve(canonical, in: Self.devices)
      replace(deviceDirectory + "/iommu_group") { symlink("../../../kernel/iommu_groups/\(lastComponent(other))", $0) }
      return "\(name) is also in \(other)"
    case .physfnCycle:
      let devices = deviceLinks()
      guard let device = devices.randomElement(using: &rng), let other = devices.randomElement(using: &rng),
        let canonical = FileTree.readLink(root + device)
      else { return nil }
      let directory = resolve(canonical, in: Self.devices)
      let target = "../\(lastComponent(other))"
      let name = ["physfn", "virtfn0", "virtfn1"].randomElement(using: &rng)!
      replace(directory + "/" + name) { symlink(target, $0) }
      write(directory + "/sriov_totalvfs", Array("2\n".utf8))
      write(directory + "/sriov_numvfs", Array("2\n".utf8))
      return "\(directory)/\(name) points at \(lastComponent(other))"
    case .sriovCounts:
      guard let device = deviceLinks().randomElement(using: &rng), let canonical = FileTree.readLink(root + device)
      else { return nil }
      let directory = resolve(canonical, in: Self.devices)
      let total = ["65535", "4294967296", "-7", "7"].randomElement(using: &rng)!
      let num = ["2000000000", "-1", "65535", "3"].randomElement(using: &rng)!
      write(directory + "/sriov_totalvfs", Array((total + "\n").utf8))
      write(directory + "/sriov_numvfs", Array((num + "\n").utf8))
      return "\(directory) has sriov_totalvfs \(total), sriov_numvfs \(num)"
    case .bridgeParentCycle:
      guard let device = deviceLinks().randomElement(using: &rng), let canonical = FileTree.readLink(root + device)
      else { return nil }
      let name = lastComponent(device)
      let doubled = canonical.hasSuffix(name) ? canonical + "/../\(name)/\(name)" : canonical
      // The device's directory appears below itself, so its path names it as its own bridge.
      let directory = resolve(canonical, in: Self.devices)
      symlink(".", root + directory + "/" + name)
      replace(device) { symlink(doubled, $0) }
      return "\(device) → \(doubled)"
    case .holderCycle:
      let disks = FileTree.entries(root + "/sys/block").map(\.name)
      guard let disk = disks.randomElement(using: &rng) else { return nil }
      TreeMutator.makeHolderWeb(root: root, disk: disk, width: 32)
      return "\(disk) holds itself and 32 holders that all hold each other"
    case .mountTable:
      let path = "/proc/self/mountinfo"
      let line = String(decoding: read(path) ?? Array("22 1 254:0 / / rw - ext4 /dev/vda rw\n".utf8), as: UTF8.self)
      let odd = [
        String(repeating: line, count: 2000), "- - - -\n\\\\\\0 \\777 \\\n", "1\n2 3\n4 5 6 7 8 - \n",
        String(repeating: "22 1 254:0 / /\\040x rw - ext4 /dev/vda rw\n", count: 30000),
      ].randomElement(using: &rng)!
      write(path, Array(odd.utf8))
      write("/proc/mounts", Array(odd.utf8))
      return "\(path) is odd (\(odd.utf8.count) bytes)"
    case .oddDeviceName:
      guard let device = deviceLinks().randomElement(using: &rng), let canonical = FileTree.readLink(root + device)
      else { return nil }
      let name = lastComponent(device)
      let odd = [
        "garbage", "0000:zz:00.0", String(name.dropFirst(5)), String(repeating: "x", count: 255), "0000:00:20.9",
        "ffff:ff:1f.7",
      ].randomElement(using: &rng)!
      symlink(canonical, root + Self.devices + "/" + odd)
      return "\(Self.devices)/\(odd) → \(canonical)"
    }
  }

  /// Makes `disk` hold itself and `width` device-mapper disks that each hold all the others:
  /// a cycle and a fan-out whose unbounded walk to depth 4 visits width⁴ paths.
  public static func makeHolderWeb(root: String, disk: String, width: Int) {
    let names = (0..<width).map { "dm-\($0)" }
    for holder in [disk] + names {
      mkdir(root + "/sys/block/\(holder)", 0o755)
      mkdir(root + "/sys/block/\(holder)/holders", 0o755)
      for name in [disk] + names { symlink("../../\(name)", root + "/sys/block/\(holder)/holders/\(name)") }
    }
  }

  /// A random file, preferring those called `name` (any attribute under /sys when nil).
  private func pick<G: RandomNumberGenerator>(_ paths: [String], named name: String?, _ rng: inout G) -> String? {
    let matching = paths.filter { path in name.map { path.hasSuffix("/" + $0) } ?? path.hasPrefix("/sys") }
    return matching.randomElement(using: &rng) ?? paths.randomElement(using: &rng)
  }

  private func deviceLinks() -> [String] { links.filter { $0.hasPrefix(Self.devices + "/") } }
  private func groupDirectories() -> [String] {
    directories.filter { $0.hasPrefix(Self.groups + "/") && $0.split(separator: "/").count == 4 }
  }

  private func read(_ path: String) -> [UInt8]? {
    let fd = open(root + path, O_RDONLY | O_NONBLOCK)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while result.count < 1 << 20 {
      let got = Glibc.read(fd, &buffer, buffer.count)
      guard got > 0 else { break }
      result += buffer[0..<got]
    }
    return result
  }

  private func write(_ path: String, _ bytes: [UInt8]) {
    let fd = open(root + path, O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK, 0o644)
    guard fd >= 0 else { return }
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
  }

  /// Removes what is at `path` and lets `make` create something else there.
  private func replace(_ path: String, _ make: (String) -> Int32) {
    FileTree.remove(root + path)
    _ = make(root + path)
  }

  private func resolve(_ target: String, in directory: String) -> String {
    VFIOHost.resolve(link: target, in: directory)
  }

  private func lastComponent(_ path: String) -> String {
    path.split(separator: "/").last.map(String.init) ?? path
  }
}
