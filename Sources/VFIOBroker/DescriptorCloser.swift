import CVFIO
import Foundation
import Synchronization
import VFIOBrokerClient

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Closes descriptors on a thread of its own, so that a close that blocks never stops the
/// broker's loop: a socket a client slipped in with SO_LINGER and unsent data blocks its last
/// close, and so does closing a Unix socket whose queue still carries such a descriptor. Used
/// where the kernel cannot refuse descriptors (SO_PASSRIGHTS, Linux 6.16+). Sockets among them
/// are set to reset at once first; what still blocks only holds up this thread. The queue is
/// bounded: `offer` says false when it is full, and the caller stops taking from that client.
final class DescriptorCloser: Sendable {
  let capacity: Int
  private let queue = Mutex<[Int32]>([])
  private let ready = DispatchSemaphore(value: 0)
  private let stopped = Atomic<Bool>(false)

  init(capacity: Int = 4096) {
    self.capacity = capacity
    let thread = Thread { [self] in drain() }
    thread.name = "swift-vfio broker closer"
    thread.start()
  }

  /// Descriptors waiting to be closed.
  var backlog: Int { queue.withLock { $0.count } }

  /// Takes `fds` to close; false (and nothing taken) when that would pass the capacity.
  func offer(_ fds: [Int32]) -> Bool {
    guard !fds.isEmpty else { return true }
    let taken = queue.withLock { waiting -> Bool in
      guard waiting.count + fds.count <= capacity else { return false }
      waiting.append(contentsOf: fds)
      return true
    }
    if taken { for _ in fds { ready.signal() } }
    return taken
  }

  func stop() {
    stopped.store(true, ordering: .releasing)
    ready.signal()
  }

  private func drain() {
    while true {
      ready.wait()
      guard let fd = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else {
        if stopped.load(ordering: .acquiring) { return }
        continue
      }
      _ = cvfio_abort_on_close(fd)
      close(fd)
    }
  }
}
