import Foundation
import PCI

/// Claims prepared and unprepared at once: serialised per IOMMU group and per claim, parallel
/// across groups. A caller names every group it will touch and gets them all or waits for all,
/// so two claims that share groups can never hold one each and wait for the other (no
/// deadlock), and a claim never runs twice at once (the kubelet retries while one is running).
///
/// The wait blocks its thread: callers are on a host-work thread (`onHostThread`), never on
/// the gRPC executors.
public final class ClaimGate: @unchecked Sendable {
  private let condition = NSCondition()
  /// Guarded by `condition`.
  private var busy: Set<String> = []

  public init() {}

  public func whileHolding<R>(claim: String, groups: [IOMMUGroupID], _ body: () throws(KubeletError) -> R)
    throws(KubeletError) -> R
  {
    let keys = Set(["claim " + claim] + groups.map { "group \($0)" })
    condition.lock()
    while !busy.isDisjoint(with: keys) { condition.wait() }
    busy.formUnion(keys)
    condition.unlock()
    defer {
      condition.lock()
      busy.subtract(keys)
      condition.broadcast()
      condition.unlock()
    }
    return try body()
  }

  /// What is held now (tests).
  var held: Set<String> {
    condition.lock()
    defer { condition.unlock() }
    return busy
  }
}

/// Runs blocking host work (sysfs writes, resets that take up to seconds, the ledger's fsyncs,
/// a wait at the claim gate) on a thread of its own, so that the async executors serving the
/// kubelet never wait on the kernel.
public func onHostThread<R: Sendable>(_ body: @escaping @Sendable () throws(KubeletError) -> R) async throws(KubeletError)
  -> R
{
  let result: Result<R, KubeletError> = await withCheckedContinuation { continuation in
    let thread = Thread {
      do throws(KubeletError) { continuation.resume(returning: .success(try body())) } catch {
        continuation.resume(returning: .failure(error))
      }
    }
    thread.name = "vfio-host-work"
    thread.start()
  }
  return try result.get()
}
