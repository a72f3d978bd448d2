import CVFIO
import Synchronization
import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A non-blocking eventfd: the kernel signals device interrupts into it.
public final class EventFD: @unchecked Sendable {
  let handle: OwnedFD
  public var fileDescriptor: Int32 { handle.fd }

  public init(kernel: any KernelInterface = LinuxKernel()) throws(VFIOError) {
    let fd = kernel.eventfd(initialValue: 0, flags: cvfio_EFD_NONBLOCK)
    guard fd >= 0 else { throw .syscall(Errno(rawValue: -fd), operation: "eventfd", path: nil) }
    handle = OwnedFD(kernel: kernel, fd: fd, path: "eventfd")
  }

  /// Reads and resets the counter; nil when it is zero.
  public func consume() throws(VFIOError) -> UInt64? {
    var value: UInt64 = 0
    let n = withUnsafeMutableBytes(of: &value) { handle.kernel.read(handle.fd, into: $0) }
    if n == -Int(Errno.resourceTemporarilyUnavailable.rawValue) { return nil }
    guard n == 8 else {
      throw n < 0
        ? .syscall(Errno(rawValue: Int32(-n)), operation: "read", path: "eventfd")
        : VFIOError(.shortTransfer, operation: "read", path: "eventfd", message: "\(n) of 8 bytes")
    }
    return value
  }

  /// Adds 1 to the counter (what the kernel does when an interrupt fires).
  public func signal() throws(VFIOError) {
    var one: UInt64 = 1
    let n = withUnsafeBytes(of: &one) { handle.kernel.write(handle.fd, from: $0) }
    guard n == 8 else {
      throw .syscall(Errno(rawValue: Int32(max(-n, 5))), operation: "write", path: "eventfd")
    }
  }

  /// Blocks the calling thread until signalled or `timeoutMilliseconds` pass; returns the count.
  /// For async code use `EventLoop.wait`, which does not block the cooperative pool.
  public func wait(timeoutMilliseconds: Int32) throws(VFIOError) -> UInt64 {
    let rc = handle.kernel.pollReadable(handle.fd, timeoutMilliseconds: timeoutMilliseconds)
    if rc < 0 { throw .syscall(Errno(rawValue: -rc), operation: "poll", path: "eventfd") }
    if rc == 0 {
      throw VFIOError(
        .timeout, operation: "wait for interrupt", path: "eventfd",
        message: "no interrupt within \(timeoutMilliseconds) ms",
        hint: "check that the device raised it (bus master on, vector enabled, unmasked)")
    }
    return try consume() ?? 0
  }
}

/// Waits on eventfds for async code: one dedicated thread blocks in epoll_wait and resumes
/// continuations, so no task blocks a thread of the cooperative pool.
public final class EventLoop: @unchecked Sendable {
  /// A process-wide loop, started on first use.
  public static let shared: EventLoop = {
    do { return try EventLoop() } catch { fatalError("cannot start the eventfd loop: \(error)") }
  }()

  struct Waiter {
    var fd: Int32
    var deadline: UInt64?
    var continuation: CheckedContinuation<Result<UInt64, VFIOError>, Never>?
  }

  struct State {
    var nextToken: UInt64 = 1
    var waiters: [UInt64: Waiter] = [:]
  }

  let epfd: Int32
  let wake: EventFD
  let state = Mutex(State())
  static let wakeToken: UInt64 = 0

  public init() throws(VFIOError) {
    let fd = cvfio_epoll_create()
    guard fd >= 0 else {
      throw .syscall(Errno(rawValue: -fd), operation: "epoll_create1", path: nil)
    }
    epfd = fd
    wake = try EventFD()
    _ = cvfio_epoll_add(epfd, wake.fileDescriptor, Self.wakeToken)
    let box = Unmanaged.passRetained(self).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
      &thread, nil,
      { arg in
        let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
        loop.run()
        return nil
      }, box)
    guard rc == 0 else {
      throw .syscall(Errno(rawValue: rc), operation: "pthread_create", path: nil)
    }
    pthread_detach(thread)
  }

  /// Suspends until `eventFD` is signalled and returns its count; throws `.timeout` after
  /// `timeout`, or when the task is cancelled.
  public func wait(for eventFD: EventFD, timeout: Duration? = nil) async throws(VFIOError) -> UInt64 {
    // A count already pending needs no trip through the loop.
    if let count = try eventFD.consume() { return count }
    let token = state.withLock { s in
      defer { s.nextToken += 1 }
      return s.nextToken
    }
    let deadline = timeout.map {
      now() + UInt64($0.components.seconds) * 1_000_000_000
        + UInt64($0.components.attoseconds / 1_000_000_000)
    }
    let result = await withTaskCancellationHandler {
      await withCheckedContinuation {
        (continuation: CheckedContinuation<Result<UInt64, VFIOError>, Never>) in
        let rc: Int32 = state.withLock { s in
          if Task.isCancelled { return -Errno.canceled.rawValue }
          s.waiters[token] = Waiter(
            fd: eventFD.fileDescriptor, deadline: deadline, continuation: continuation)
          let rc = cvfio_epoll_add(epfd, eventFD.fileDescriptor, token)
          if rc < 0 { s.waiters[token] = nil }
          return rc
        }
        if rc < 0 {
          let error: VFIOError =
            rc == -Errno.canceled.rawValue
            ? VFIOError(.timeout, operation: "wait for interrupt", message: "cancelled")
            : .syscall(
              Errno(rawValue: -rc), operation: "epoll_ctl", path: "eventfd",
              hint: rc == -Errno.fileExists.rawValue
                ? "another task already waits on this eventfd" : nil)
          continuation.resume(returning: .failure(error))
          return
        }
        try? wake.signal()
      }
    } onCancel: {
      finish(
        token, .failure(VFIOError(.timeout, operation: "wait for interrupt", message: "cancelled")))
    }
    let count = try result.get()
    withExtendedLifetime(eventFD) {}
    return count
  }

  func finish(_ token: UInt64, _ result: Result<UInt64, VFIOError>) {
    let continuation = state.withLock {
      s -> CheckedContinuation<Result<UInt64, VFIOError>, Never>? in
      guard let waiter = s.waiters.removeValue(forKey: token) else { return nil }
      _ = cvfio_epoll_del(epfd, waiter.fd)
      return waiter.continuation
    }
    continuation?.resume(returning: result)
  }

  func run() {
    var tokens = [UInt64](repeating: 0, count: 64)
    while true {
      let nearest = state.withLock { s in s.waiters.values.compactMap(\.deadline).min() }
      var timeout: Int32 = -1
      if let nearest {
        let t = now()
        timeout = nearest <= t ? 0 : Int32(min((nearest - t) / 1_000_000 + 1, 60_000))
      }
      let n = tokens.withUnsafeMutableBufferPointer {
        cvfio_epoll_wait(epfd, $0.baseAddress, 64, timeout)
      }
      if n > 0 {
        for token in tokens[0..<Int(n)] {
          if token == Self.wakeToken {
            _ = try? wake.consume()
            continue
          }
          let fd = state.withLock { s in s.waiters[token]?.fd }
          guard let fd else { continue }
          var value: UInt64 = 0
          let got = withUnsafeMutableBytes(of: &value) { Glibc.read(fd, $0.baseAddress, 8) }
          if got == 8 { finish(token, .success(value)) }
        }
      }
      let t = now()
      let expired = state.withLock { s in
        s.waiters.filter { $0.value.deadline.map { $0 <= t } ?? false }.map(\.key)
      }
      for token in expired {
        finish(
          token,
          .failure(
            VFIOError(
              .timeout, operation: "wait for interrupt", path: "eventfd",
              message: "no interrupt before the deadline",
              hint: "check that the device raised it (bus master on, vector enabled, unmasked)")))
      }
    }
  }
}

func now() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
