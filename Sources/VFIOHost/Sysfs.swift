#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The host's file system seen from a root directory: `/` on a live host, or a captured tree.
///
/// Every path the model reads is built here, so a test or a replayed bug report only has to
/// pass another root. Reads go straight to open/read/readlink: inventory walks thousands of
/// tiny sysfs attributes and Foundation's file APIs cost several times more per file.
public struct Sysfs: Sendable {
  /// The directory standing in for `/`, without a trailing slash (`""` for the live host).
  public let root: String

  /// When set, every path read is noted, so `capture` copies exactly what the model reads.
  public let recorder: AccessRecorder?

  public init(root: String = "/", recorder: AccessRecorder? = nil) {
    var trimmed = root
    while trimmed.hasSuffix("/") { trimmed.removeLast() }
    self.root = trimmed
    self.recorder = recorder
  }

  /// A file a capture puts in directories that would otherwise be empty, because git stores
  /// no empty directories; readers never list it. Sysfs has no such name.
  public static let keepMarker = ".vfioctl-keep"

  /// True when this reads the live host rather than a captured tree.
  public var isLiveHost: Bool { root.isEmpty }

  /// The real path of a host path such as `/sys/bus/pci/devices`.
  public func path(_ hostPath: String) -> String { root + hostPath }

  /// The bytes of a file, at most `limit` of them; nil when it cannot be opened or read.
  public func readBytes(_ hostPath: String, limit: Int = 65536) -> [UInt8]? {
    recorder?.note(.file, hostPath)
    let fd = open(path(hostPath), Sysfs.readFlags)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    return readAttribute(fd, limit: limit, hostPath: hostPath, checkType: !isLiveHost)
  }

  /// O_NONBLOCK: a FIFO or a terminal where a file should be (a hostile or corrupt capture)
  /// must not block open(2) or read(2). No controlling terminal is taken from a tty node.
  static let readFlags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY

  /// Opens a directory for reading many attributes relative to it, which spares the kernel
  /// walking the full path again for each one.
  public func directory(_ hostPath: String) -> SysfsDirectory? {
    let fd = open(path(hostPath), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    return SysfsDirectory(fd: fd, hostPath: hostPath, recorder: recorder, checkType: !isLiveHost)
  }

  /// A text attribute with surrounding white space removed; nil when absent.
  public func readString(_ hostPath: String) -> String? {
    readBytes(hostPath, limit: 1 << 20).map(trimmedString)
  }

  /// A decimal or `0x` hexadecimal attribute.
  public func readInteger(_ hostPath: String) -> Int? {
    guard let text = readString(hostPath) else { return nil }
    return parseInteger(text)
  }

  /// The target of a symbolic link, as stored (usually relative); nil when not a link.
  public func readLink(_ hostPath: String) -> String? {
    recorder?.note(.link, hostPath)
    return readLinkTarget(AT_FDCWD, path(hostPath))
  }

  /// The last component of a link's target: the driver name of `driver`, the group of
  /// `iommu_group`.
  public func linkName(_ hostPath: String) -> String? {
    guard let target = readLink(hostPath) else { return nil }
    return lastComponent(target)
  }

  /// Owner, group and permission bits of a path (not following a final link); nil when absent.
  public func permissions(_ hostPath: String) -> (uid: Int, gid: Int, mode: Int)? {
    var info = stat()
    guard lstat(path(hostPath), &info) == 0 else { return nil }
    return (Int(info.st_uid), Int(info.st_gid), Int(info.st_mode & 0o7777))
  }

  /// Names in a directory, without `.` and `..`, sorted; empty when absent.
  public func list(_ hostPath: String) -> [String] {
    recorder?.note(.directory, hostPath)
    return directoryEntries(path(hostPath)).map(\.name).filter { $0 != Sysfs.keepMarker }.sorted()
  }

  public func exists(_ hostPath: String) -> Bool {
    recorder?.note(.presence, hostPath)
    return access(path(hostPath), F_OK) == 0
  }

  public func isDirectory(_ hostPath: String) -> Bool {
    recorder?.note(.presence, hostPath)
    var info = stat()
    return stat(path(hostPath), &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
  }
}

/// A directory of attributes, read relative to an open descriptor; closed on deinit.
public final class SysfsDirectory {
  private let fd: Int32
  public let hostPath: String
  private let recorder: AccessRecorder?
  private let checkType: Bool

  init(fd: Int32, hostPath: String, recorder: AccessRecorder?, checkType: Bool) {
    self.fd = fd
    self.hostPath = hostPath
    self.recorder = recorder
    self.checkType = checkType
  }

  deinit { close(fd) }

  public func readBytes(_ name: String, limit: Int = 65536) -> [UInt8]? {
    recorder?.note(.file, hostPath + "/" + name)
    let file = openat(fd, name, Sysfs.readFlags)
    guard file >= 0 else { return nil }
    defer { close(file) }
    return readAttribute(file, limit: limit, hostPath: hostPath, checkType: checkType)
  }

  public func readString(_ name: String) -> String? {
    readBytes(name, limit: 1 << 20).map(trimmedString)
  }

  public func readInteger(_ name: String) -> Int? {
    readString(name).flatMap(parseInteger)
  }

  public func readLink(_ name: String) -> String? {
    recorder?.note(.link, hostPath + "/" + name)
    return readLinkTarget(fd, name)
  }

  public func linkName(_ name: String) -> String? { readLink(name).map(lastComponent) }
}

/// Reads an opened attribute. O_NONBLOCK already keeps a FIFO or a terminal from blocking;
/// what remains is a device node standing in for a file in a captured tree (`checkType`),
/// which would hand over the reading host's own disk or an endless stream. Such a read fills
/// the cap, so only a full read pays for the fstat: an fstat on each of thousands of
/// attributes cost a third of a large inventory's read time. A capture holds only regular
/// files, and the live /sys and /proc nothing else.
private func readAttribute(_ fd: Int32, limit: Int, hostPath: String, checkType: Bool) -> [UInt8]? {
  guard let bytes = readAll(fd, limit: limit, wholeAttributes: hostPath.hasPrefix("/sys/")) else { return nil }
  if checkType && bytes.count >= limit {
    var info = stat()
    guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
  }
  return bytes
}

/// Reads a descriptor to its end or `limit`. sysfs hands over a whole attribute per read, so
/// with `wholeAttributes` a short read ends it, saving the EOF read on thousands of files
/// (procfs's seq_file may return short reads mid-file, so not there).
private func readAll(_ fd: Int32, limit: Int, wholeAttributes: Bool) -> [UInt8]? {
  withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { buffer in
    var result: [UInt8] = []
    while result.count < limit {
      let got = read(fd, buffer.baseAddress, min(buffer.count, limit - result.count))
      if got < 0 {
        if errno == EINTR { continue }
        // An attribute whose read fails (EIO on some config spaces, EINVAL on write-only
        // attributes) is as good as absent for a reader.
        return result.isEmpty ? nil : result
      }
      if got == 0 { break }
      result.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[0..<got]))
      if got < buffer.count && wholeAttributes { break }
    }
    return result
  }
}

/// Entries of a directory (without `.` and `..`) and whether each is a directory, as readdir(3)
/// reports them; empty when it cannot be opened.
func directoryEntries(_ path: String) -> [(name: String, isDirectory: Bool)] {
  guard let dir = opendir(path) else { return [] }
  defer { closedir(dir) }
  var entries: [(name: String, isDirectory: Bool)] = []
  while let entry = readdir(dir) {
    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
      String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
    if name != "." && name != ".." { entries.append((name, entry.pointee.d_type == UInt8(DT_DIR))) }
  }
  return entries
}

/// readlinkat(2): a link's target as stored, or nil when `path` is not a link.
private func readLinkTarget(_ directory: Int32, _ path: String) -> String? {
  withUnsafeTemporaryAllocation(of: CChar.self, capacity: 4096) { buffer in
    let count = readlinkat(directory, path, buffer.baseAddress!, buffer.count - 1)
    guard count >= 0 else { return nil }
    return String(decoding: UnsafeRawBufferPointer(start: buffer.baseAddress, count: count), as: UTF8.self)
  }
}

private func trimmedString(_ bytes: [UInt8]) -> String {
  var end = bytes.count
  while end > 0, isSpace(bytes[end - 1]) { end -= 1 }
  var start = 0
  while start < end, isSpace(bytes[start]) { start += 1 }
  return String(decoding: bytes[start..<end], as: UTF8.self)
}

/// Resolves a relative link target against the directory holding the link, collapsing `..`.
public func resolve(link target: String, in directory: String) -> String {
  var parts = target.hasPrefix("/") ? [] : directory.split(separator: "/").map(String.init)
  for part in target.split(separator: "/") {
    switch part {
    case ".": continue
    case "..": if !parts.isEmpty { parts.removeLast() }
    default: parts.append(String(part))
    }
  }
  return "/" + parts.joined(separator: "/")
}

func lastComponent(_ path: String) -> String {
  guard let slash = path.lastIndex(of: "/") else { return path }
  return String(path[path.index(after: slash)...])
}

func parseInteger(_ text: String) -> Int? {
  let trimmed = text.trimmingSpaces
  if trimmed.hasPrefix("0x") || trimmed.hasPrefix("0X") {
    return Int(trimmed.dropFirst(2), radix: 16)
  }
  return Int(trimmed)
}

private func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x0A || byte == 0x09 || byte == 0x0D }

extension StringProtocol {
  var trimmingSpaces: String {
    var start = startIndex
    var end = endIndex
    while start < end, self[start].isWhitespace { start = index(after: start) }
    while end > start, self[index(before: end)].isWhitespace { end = index(before: end) }
    return String(self[start..<end])
  }
}
