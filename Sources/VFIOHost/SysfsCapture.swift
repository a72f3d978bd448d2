#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Copies what a recorded read of the host touched into a directory, in the same layout, so
/// that `Sysfs(root: directory)` replays the read exactly: files with their contents, links
/// with their (relative) targets, directories, and device nodes as empty placeholders.
public struct SysfsCapture {
  public let source: Sysfs
  public let destination: String

  public init(source: Sysfs, destination: String) {
    var trimmed = destination
    if !trimmed.hasPrefix("/") {
      var buffer = [CChar](repeating: 0, count: 4096)
      if getcwd(&buffer, buffer.count) != nil {
        trimmed =
          String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/"
          + trimmed
      }
    }
    while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
    self.source = Sysfs(root: source.root)  // never record the copy's own reads
    self.destination = trimmed
  }

  /// Attributes the model reads only as a fallback but other readers of a capture need:
  /// `lspci -A linux-sysfs` requires them, and they let a capture be checked against config.
  public static let companionAttributes = [
    "vendor", "device", "class", "revision", "subsystem_vendor", "subsystem_device", "irq", "modalias",
  ]

  /// Reads the companion attributes of every device through `sysfs`, so a recorder notes them.
  public static func touchCompanionAttributes(_ sysfs: Sysfs, devices: [PCIDevice]) {
    for device in devices {
      for name in companionAttributes { _ = sysfs.readBytes("\(device.sysfsPath)/\(name)") }
    }
  }

  /// Writes every access; returns how many entries were written.
  @discardableResult
  public func write(_ accesses: [(access: AccessRecorder.Access, path: String)]) throws(CaptureError) -> Int {
    // The destination itself is the caller's choice; everything below it is made beneath it
    // (RootedFiles): a link planted in it, or one it copied, never takes a write outside.
    var current = ""
    for component in destination.split(separator: "/") {
      current += "/" + component
      if mkdir(current, 0o755) != 0 && errno != EEXIST { throw .write(current, errno) }
    }
    var written = 0
    for (access, path) in accesses {
      switch access {
      case .file: written += try copyFile(path) ? 1 : 0
      case .link: written += try copyLink(path) ? 1 : 0
      case .presence: written += try copyEntry(path, contentsToo: true) ? 1 : 0
      case .directory:
        guard source.isDirectory(path) else { continue }
        try makeDirectories(path)
        written += 1
        // Listings are replayed for what the readers look for in them: links, subdirectories
        // and device nodes. Unread attribute files are left out rather than faked.
        for name in source.list(path) {
          written += try copyEntry(path == "/" ? "/\(name)" : "\(path)/\(name)", contentsToo: false) ? 1 : 0
        }
      }
    }
    try markEmptyDirectories("")
    return written
  }

  /// The capture's own record, beside `sys` and `proc` where no reader looks: which vfioctl
  /// made it and, when it ran without root, that config space is only the 64-byte header.
  public static let notesFile = "vfioctl-capture.txt"

  public func writeNotes(version: String, configSpaceNote: String?) throws(CaptureError) {
    var text = "captured by vfioctl \(version) as uid \(geteuid())\n"
    if let configSpaceNote { text += "note: \(configSpaceNote)\n" }
    let file = destination + "/" + Self.notesFile
    let fd = RootedFiles.open(root: destination, "/" + Self.notesFile, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: 0o644)
    guard fd >= 0 else { throw .write(file, -fd) }
    defer { close(fd) }
    let written = text.utf8CString.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count - 1) }
    guard written == text.utf8.count else { throw .write(file, errno) }
  }

  /// Puts the keep marker into every empty directory below `path` (within the destination).
  private func markEmptyDirectories(_ path: String) throws(CaptureError) {
    let entries = directoryEntries(destination + path)
    if entries.isEmpty { try touch(path + "/" + Sysfs.keepMarker) }
    let names = entries.filter(\.isDirectory).map(\.name)
    for name in names { try markEmptyDirectories(path + "/" + name) }
  }

  private func copyFile(_ path: String) throws(CaptureError) -> Bool {
    guard let bytes = source.readBytes(path, limit: 4 << 20) else { return false }
    try makeDirectories(parent(path))
    let fd = RootedFiles.open(root: destination, path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: 0o644)
    guard fd >= 0 else { throw .write(destination + path, -fd) }
    defer { close(fd) }
    let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    guard written == bytes.count else { throw .write(destination + path, errno) }
    return true
  }

  private func copyLink(_ path: String) throws(CaptureError) -> Bool {
    guard let target = source.readLink(path) else { return false }
    try makeDirectories(parent(path))
    var existing = stat()
    if lstat(destination + path, &existing) == 0 { return false }
    let code = RootedFiles.symlink(root: destination, target: target, at: path)
    guard code == 0 else { throw .write(destination + path, code) }
    // Readers take names from links (driver, iommu_group) and walk others (bus → devices);
    // give the target directory a place so the link is not dangling.
    let resolved = resolve(link: target, in: parent(path))
    if resolved.hasPrefix("/sys/"), source.isDirectory(resolved) { try makeDirectories(resolved) }
    return true
  }

  private func copyEntry(_ path: String, contentsToo: Bool) throws(CaptureError) -> Bool {
    var info = stat()
    guard lstat(source.path(path), &info) == 0 else { return false }
    switch info.st_mode & S_IFMT {
    case S_IFLNK: return try copyLink(path)
    case S_IFDIR:
      try makeDirectories(path)
      return true
    case S_IFCHR, S_IFBLK:
      return try placeholder(path)
    case S_IFREG where path.hasPrefix("/dev/"):
      // A node that an earlier capture already turned into a placeholder.
      return try placeholder(path)
    case S_IFREG: return contentsToo ? try copyFile(path) : false
    default: return false
    }
  }

  private func placeholder(_ path: String) throws(CaptureError) -> Bool {
    try makeDirectories(parent(path))
    try touch(path)
    return true
  }

  /// Creates an empty file `path` within the destination (or leaves an existing one as it is).
  private func touch(_ path: String) throws(CaptureError) {
    let fd = RootedFiles.open(root: destination, path, O_WRONLY | O_CREAT | O_NOFOLLOW, mode: 0o644)
    guard fd >= 0 else { throw .write(destination + path, -fd) }
    close(fd)
  }

  /// `mkdir -p` of `path` within the destination, never through a link that leaves it.
  private func makeDirectories(_ path: String) throws(CaptureError) {
    let code = RootedFiles.makeDirectories(root: destination, path)
    guard code == 0 else { throw .write(destination + path, code) }
  }

  private func parent(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
    return String(path[..<slash])
  }
}

/// A capture that could not be written.
public enum CaptureError: Error, CustomStringConvertible {
  case write(String, Int32)

  public var description: String {
    switch self {
    case .write(let path, let code):
      return "cannot write \(path): \(String(cString: strerror(code))); choose a writable, empty directory"
    }
  }
}
