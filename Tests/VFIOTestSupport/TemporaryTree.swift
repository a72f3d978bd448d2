import Glibc
import VFIOHost

/// A scratch directory for tests that must modify a copy of a fixture; removed on deinit.
public final class TemporaryTree {
  public let path: String

  public init(copying source: String? = nil) throws {
    var template = Array("/tmp/vfio-test-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw TreeError(errno) }
    path = String(cString: made)
    if let source { try FileTree.copy(source, to: path) }
  }

  public func write(_ file: String, bytes: [UInt8]) throws {
    let fd = open(file, O_WRONLY | O_TRUNC | O_CREAT, 0o644)
    guard fd >= 0 else { throw TreeError(errno) }
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
  }

  public func write(_ file: String, text: String) throws { try write(file, bytes: Array(text.utf8)) }

  /// Gives a copied capture a `/proc/1` as the host's init shows it (its network facts, mount
  /// table and root), so code that reads the host through process 1, as the kubelet plugins
  /// do, reads the capture.
  public func exposeHostInit() {
    mkdir(path + "/proc/1", 0o755)
    mkdir(path + "/proc/net", 0o755)
    symlink("../net", path + "/proc/1/net")
    symlink("../self/mountinfo", path + "/proc/1/mountinfo")
    symlink(path, path + "/proc/1/root")
  }

  deinit { FileTree.remove(path) }
}

public struct TreeError: Error {
  public let code: Int32
  public init(_ code: Int32) { self.code = code }
}

/// Copies and removals of whole trees without a shell: the fuzzer makes one copy per
/// iteration, and `cp -a` through system(3) would be two processes each time.
public enum FileTree {
  /// Copies `source` into the existing directory `destination`: directories, regular files
  /// and symbolic links as they are (links are not followed).
  public static func copy(_ source: String, to destination: String) throws {
    for (name, _) in entries(source) {
      let from = source + "/" + name
      let to = destination + "/" + name
      var info = stat()
      guard lstat(from, &info) == 0 else { throw TreeError(errno) }
      switch info.st_mode & S_IFMT {
      case S_IFDIR:
        guard mkdir(to, 0o755) == 0 else { throw TreeError(errno) }
        try copy(from, to: to)
      case S_IFLNK:
        guard let target = readLink(from), symlink(target, to) == 0 else { throw TreeError(errno) }
      case S_IFREG:
        try copyFile(from, to)
      default:
        continue
      }
    }
  }

  /// Removes `path` and everything below it, without following links; errors are ignored.
  public static func remove(_ path: String) {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    if info.st_mode & S_IFMT == S_IFDIR {
      // A mutated tree may hold directories without search permission.
      chmod(path, 0o755)
      for (name, _) in entries(path) { remove(path + "/" + name) }
      rmdir(path)
    } else {
      unlink(path)
    }
  }

  /// Names in a directory, without `.` and `..`, with whether readdir(3) calls each a directory.
  public static func entries(_ path: String) -> [(name: String, isDirectory: Bool)] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var result: [(String, Bool)] = []
    while let entry = readdir(dir) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
      if name != "." && name != ".." { result.append((name, entry.pointee.d_type == UInt8(DT_DIR))) }
    }
    return result
  }

  public static func readLink(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink(path, &buffer, buffer.count - 1)
    guard count >= 0 else { return nil }
    return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  private static func copyFile(_ from: String, _ to: String) throws {
    let input = open(from, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    guard input >= 0 else { throw TreeError(errno) }
    defer { close(input) }
    let output = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard output >= 0 else { throw TreeError(errno) }
    defer { close(output) }
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let got = read(input, &buffer, buffer.count)
      if got < 0 && errno == EINTR { continue }
      guard got > 0 else { return }
      guard Glibc.write(output, buffer, got) == got else { throw TreeError(errno) }
    }
  }
}

extension TemporaryTree {
  /// The real path of a device's canonical sysfs directory in this copy (`0000:00:02.0`).
  public func deviceDirectory(_ address: String) -> String {
    let link = "/sys/bus/pci/devices/\(address)"
    let target = Sysfs(root: path).readLink(link).map { resolve(link: $0, in: "/sys/bus/pci/devices") } ?? link
    return path + target
  }

  /// Puts what `make` creates where `file` was.
  public func replace(_ file: String, with make: (String) -> Int32) throws {
    FileTree.remove(file)
    guard make(file) == 0 else { throw TreeError(errno) }
  }

  /// Reads the copy as the commands do.
  public func inventory() throws -> HostInventory { try HostInventory.read(Sysfs(root: path), pageSize: 4096) }
}
