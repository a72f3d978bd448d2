import Synchronization

/// Notes the host paths a `Sysfs` reader touched, in first-touch order.
public final class AccessRecorder: Sendable {
  public enum Access: Sendable, Hashable {
    /// A file's contents were read.
    case file
    /// A symbolic link's target was read.
    case link
    /// A directory was listed.
    case directory
    /// Only whether the path exists was asked (device nodes, module directories).
    case presence
  }

  private let state = Mutex<(order: [(Access, String)], seen: Set<String>)>(([], []))

  public init() {}

  func note(_ access: Access, _ hostPath: String) {
    state.withLock { state in
      if state.seen.insert("\(access):\(hostPath)").inserted { state.order.append((access, hostPath)) }
    }
  }

  /// Every access so far, each path once per kind of access.
  public var accesses: [(access: Access, path: String)] {
    state.withLock { $0.order.map { (access: $0.0, path: $0.1) } }
  }
}
