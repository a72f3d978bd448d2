import CVFIO

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Files below a root directory (a `--root` tree, a capture's destination), reached so that no
/// path ever leaves it: every lookup resolves beneath the root (openat2 with RESOLVE_BENEATH), so
/// a symbolic link that points outside it (absolute, or `..` past the root), planted there or
/// not, is refused instead of followed; the relative links sysfs itself is made of, which stay
/// inside, still work. On the live host (root `/`) everything is beneath the root and plain
/// calls are used.
public enum RootedFiles {
  static let beneath = UInt64(CVFIO_RESOLVE_BENEATH | CVFIO_RESOLVE_NO_MAGICLINKS)

  /// Opens `path` (absolute, within the root) with `flags` (close-on-exec added); the
  /// descriptor or -errno.
  public static func open(root: String, _ path: String, _ flags: Int32, mode: mode_t = 0) -> Int32 {
    if isLive(root) {
      let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
      return fd >= 0 ? fd : -errno
    }
    let directory = Glibc.open(root, O_DIRECTORY | O_CLOEXEC | cvfio_O_PATH)
    guard directory >= 0 else { return -errno }
    defer { close(directory) }
    let relative = String(path.drop(while: { $0 == "/" }))
    return cvfio_openat2(directory, relative.isEmpty ? "." : relative, flags | O_CLOEXEC, UInt32(mode), beneath)
  }

  /// `mkdir -p` of `path` below the root, each level created in its parent as reached beneath
  /// the root; 0 or the errno of the first failure (EEXIST of a directory is no failure).
  public static func makeDirectories(root: String, _ path: String, mode: mode_t = 0o755) -> Int32 {
    var parent = ""
    for component in path.split(separator: "/") {
      let code = inDirectory(root: root, parent) { mkdirat($0, String(component), mode) == 0 ? 0 : errno }
      if code != 0 && code != EEXIST { return code }
      parent += "/" + component
    }
    return 0
  }

  /// A symbolic link named `path` (its parent reached beneath the root) pointing at `target`;
  /// 0 or the errno.
  public static func symlink(root: String, target: String, at path: String) -> Int32 {
    let (parent, name) = split(path)
    return inDirectory(root: root, parent) { symlinkat(target, $0, name) == 0 ? 0 : errno }
  }

  /// Runs `body` with a descriptor of the directory `path` below the root; its result, or the
  /// errno of opening the directory.
  private static func inDirectory(root: String, _ path: String, _ body: (Int32) -> Int32) -> Int32 {
    let fd = open(root: root, path.isEmpty ? "/" : path, O_DIRECTORY | cvfio_O_PATH)
    guard fd >= 0 else { return -fd }
    defer { close(fd) }
    return body(fd)
  }

  private static func split(_ path: String) -> (parent: String, name: String) {
    guard let slash = path.lastIndex(of: "/") else { return ("", path) }
    return (String(path[..<slash]), String(path[path.index(after: slash)...]))
  }

  private static func isLive(_ root: String) -> Bool { root.isEmpty || root == "/" }
}
