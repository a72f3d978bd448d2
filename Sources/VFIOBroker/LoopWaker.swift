import CVFIO
import Synchronization
import VFIOBrokerClient

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// How work finished on other threads gets back to the event loop: an eventfd in the loop's epoll
/// set and the work queued behind it. A value of its own, made before the broker's parts, so that
/// the parts (the journal) can hand results back without reaching the broker while it is being
/// built.
final class LoopWaker: Sendable {
  /// The eventfd the loop polls (nonblocking).
  let descriptor: Descriptor
  private let queued = Mutex<[@Sendable () -> Void]>([])

  init() throws(BrokerError) {
    let fd = cvfio_eventfd(0, cvfio_EFD_NONBLOCK)
    guard fd >= 0 else { throw BrokerError(.internalError, "eventfd: \(String(cString: strerror(-fd)))") }
    descriptor = Descriptor(fd)
  }

  /// Wakes the loop (from any thread) with nothing queued: a stop, a new listener.
  func signal() {
    var one: UInt64 = 1
    _ = write(descriptor.fd, &one, 8)
  }

  /// Runs `work` on the loop thread at its next pass.
  func post(_ work: @escaping @Sendable () -> Void) {
    queued.withLock { $0.append(work) }
    signal()
  }

  /// On the loop thread, when the eventfd is readable: clears it and hands over what was queued,
  /// in order.
  func take() -> [@Sendable () -> Void] {
    var value: UInt64 = 0
    _ = read(descriptor.fd, &value, 8)
    return queued.withLock { work in
      defer { work = [] }
      return work
    }
  }
}
