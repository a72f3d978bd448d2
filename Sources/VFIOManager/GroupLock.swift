import Foundation
import PCI
import VFIOHost

/// The right to change one IOMMU group: an exclusive `flock` on `STATE/locks/group-N.lock`.
///
/// The kernel drops an flock when its holder dies, so a crashed or killed process can never
/// leave a group locked; the holder writes its pid and command into the file so that a
/// waiting process can say who it is waiting for. Released in deinit (closing the descriptor).
public final class GroupLock {
  public let group: IOMMUGroupID
  let fd: Int32

  /// Waits up to `timeout` seconds for the lock, polling, then throws `.busy` naming the holder.
  public init(group: IOMMUGroupID, stateDirectory: String, timeout: Double, command: String) throws(ManagerError) {
    self.group = group
    let directory = stateDirectory + "/locks"
    if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw .stateDirectory(path: directory, errno: errno) }
    let path = "\(directory)/group-\(group).lock"
    let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
    guard fd >= 0 else { throw .stateDirectory(path: path, errno: errno) }
    let start = Date()
    while flock(fd, LOCK_EX | LOCK_NB) != 0 {
      let waited = Date().timeIntervalSince(start)
      guard errno == EWOULDBLOCK || errno == EINTR, waited < timeout else {
        let holder = Self.holder(fd)
        close(fd)
        throw .busy(group: group, holder: holder, waited: waited)
      }
      usleep(20_000)
    }
    self.fd = fd
    let note = "pid \(getpid()) (\(command))\n"
    _ = ftruncate(fd, 0)
    _ = note.withCString { pwrite(fd, $0, strlen($0), 0) }
  }

  deinit { close(fd) }

  private static func holder(_ fd: Int32) -> String {
    var buffer = [UInt8](repeating: 0, count: 512)
    let count = pread(fd, &buffer, buffer.count, 0)
    let text = count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : ""
    let line = text.split(separator: "\n").first.map(String.init) ?? ""
    return line.isEmpty ? "another process" : line
  }
}
