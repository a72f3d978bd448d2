import Testing

@testable import VFIO

/// These use real eventfds: the loop is Linux-only machinery, not device access.
@Suite struct EventFDs {
  @Test func syncWaitReturnsCount() throws {
    let ev = try EventFD()
    try ev.signal()
    try ev.signal()
    #expect(try ev.wait(timeoutMilliseconds: 100) == 2)
    #expect(try ev.consume() == nil)
  }

  @Test func syncWaitTimesOut() throws {
    let ev = try EventFD()
    do {
      _ = try ev.wait(timeoutMilliseconds: 10)
      Issue.record("returned without a signal")
    } catch { #expect(error.code == .timeout) }
  }

  @Test func asyncWaitResumesWhenSignalled() async throws {
    let ev = try EventFD()
    let loop = try EventLoop()
    async let count = loop.wait(for: ev, timeout: .seconds(5))
    try await Task.sleep(for: .milliseconds(50))
    try ev.signal()
    #expect(try await count == 1)
  }

  @Test func asyncWaitTimesOut() async throws {
    let ev = try EventFD()
    let loop = try EventLoop()
    do {
      _ = try await loop.wait(for: ev, timeout: .milliseconds(30))
      Issue.record("returned without a signal")
    } catch { #expect(error.code == .timeout) }
  }

  @Test func manyWaitersAtOnce() async throws {
    let loop = try EventLoop()
    let fds = try (0..<8).map { _ in try EventFD() }
    try await withThrowingTaskGroup(of: UInt64.self) { group in
      for ev in fds { group.addTask { try await loop.wait(for: ev, timeout: .seconds(5)) } }
      try await Task.sleep(for: .milliseconds(20))
      for ev in fds { try ev.signal() }
      var total: UInt64 = 0
      for try await n in group { total += n }
      #expect(total == 8)
    }
  }

  @Test func cancellationEndsTheWait() async throws {
    let ev = try EventFD()
    let loop = try EventLoop()
    let task = Task { try await loop.wait(for: ev) }
    try await Task.sleep(for: .milliseconds(20))
    task.cancel()
    await #expect(throws: VFIOError.self) { try await task.value }
  }
}
