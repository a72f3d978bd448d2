import Glibc

/// A scratch directory for tests that must modify a copy of a fixture; removed on deinit.
public final class TemporaryTree {
  public let path: String

  public init(copying source: String? = nil) throws {
    var template = Array("/tmp/vfio-test-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw TreeError(errno) }
    path = String(cString: made)
    if let source { try run("cp -a '\(source)/.' '\(path)/'") }
  }

  public func write(_ file: String, bytes: [UInt8]) throws {
    let fd = open(file, O_WRONLY | O_TRUNC | O_CREAT, 0o644)
    guard fd >= 0 else { throw TreeError(errno) }
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
  }

  public func write(_ file: String, text: String) throws { try write(file, bytes: Array(text.utf8)) }

  deinit { try? run("rm -rf '\(path)'") }

  private func run(_ command: String) throws {
    guard system(command) == 0 else { throw TreeError(EIO) }
  }
}

public struct TreeError: Error {
  public let code: Int32
  public init(_ code: Int32) { self.code = code }
}
