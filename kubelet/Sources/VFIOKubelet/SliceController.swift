import Foundation
import Logging
import PCI
import ServiceLifecycle
import Synchronization
import VFIOHost
import VFIOManager

/// What the node publishes at one moment: its devices and how each one is.
public struct NodeSnapshot: Sendable, Equatable {
  public var devices: [PublishedDevice]
  public var health: [String: DeviceHealth]
}

/// Reads the node's snapshot: the catalog as the claims see it (what this driver prepared
/// stays in), each device judged; a group prepared for a claim that dropped out of the catalog
/// (gone from the bus, or no longer assignable) stays published, as it was last seen, with the
/// problem that tainted it, so the pods using it learn of it.
public final class NodeReader: Sendable {
  public let preparer: ClaimPreparer
  public let judge: HealthJudge
  private let lastSeen = Mutex<[IOMMUGroupID: PublishedDevice]>([:])

  /// `oneLook`: this reader is asked once (--print-slices), so fatal AER counts, which are
  /// judged against the count first seen, are not read.
  public init(preparer: ClaimPreparer, oneLook: Bool = false) {
    self.preparer = preparer
    judge = HealthJudge(
      sysfs: preparer.manager.sysfs, stateDirectory: preparer.manager.configuration.stateDirectory,
      tracksFatalErrors: !oneLook)
  }

  /// Blocking (sysfs, the ledger): call it on a host-work thread.
  public func read() throws(KubeletError) -> NodeSnapshot {
    let prepared = try preparer.preparedGroups()
    let catalog = try preparer.catalog(prepared: prepared)
    let ledger = try preparer.ledgerGroups()
    var devices = catalog.published
    var health = judge.judge(devices, ledger: ledger)
    let published = Set(devices.map(\.group))
    let lost = lastSeen.withLock { seen -> [PublishedDevice] in
      for device in devices { seen[device.group] = device }
      // Forget what no claim holds and the catalog no longer has: it is simply not published.
      seen = seen.filter { published.contains($0.key) || prepared.contains($0.key) }
      return prepared.subtracting(published).sorted().compactMap { seen[$0] }
    }
    for device in lost {
      let judged = judge.judge(device, record: ledger[device.group])
      health[device.name] =
        judged.state == .unhealthy
        ? judged : .unhealthy(.notAssignable, "group \(device.group) is prepared for a claim but no longer assignable")
      devices.append(device)
    }
    return NodeSnapshot(devices: devices, health: health)
  }
}

/// Keeps the node's ResourceSlices true: publishes at start, then again whenever a trigger
/// says the host may have changed (a uevent, a ledger write, the periodic look) and the
/// devices or their health differ from what is published, with the pool's generation one
/// higher. An API error is retried with backoff (1 s doubling to 60 s). A burst of triggers
/// is one republish.
public struct SliceController: Service {
  public let driver: String
  public let nodeName: String
  public let read: @Sendable () throws(KubeletError) -> NodeSnapshot
  public let publisher: any SlicePublisher
  public let triggers: AsyncStream<Void>
  /// Who else wants each snapshot (the health stream).
  public let observe: @Sendable (NodeSnapshot) -> Void
  let logger: Logger

  public init(
    driver: String, nodeName: String, read: @escaping @Sendable () throws(KubeletError) -> NodeSnapshot,
    publisher: any SlicePublisher, triggers: AsyncStream<Void>, observe: @escaping @Sendable (NodeSnapshot) -> Void = { _ in },
    logger: Logger
  ) {
    self.driver = driver
    self.nodeName = nodeName
    self.read = read
    self.publisher = publisher
    self.triggers = triggers
    self.observe = observe
    self.logger = logger
  }

  /// The slices of `snapshot` at `generation`, less any device the API server would refuse
  /// (it refuses the whole slice for one): such a device is logged and left out.
  public func slices(_ snapshot: NodeSnapshot, generation: Int) -> [ResourceSlice] {
    let builder = SliceBuilder(driver: driver, nodeName: nodeName, generation: generation)
    // Every republish: the pool is checked once, and only a pool with a refused device is
    // built again device by device to find it (the rules a device breaks alone are the rules
    // it breaks among others).
    let all = builder.slices(devices: snapshot.devices, health: snapshot.health)
    guard all.contains(where: { !ResourceSliceRules.violations($0).isEmpty }) else { return all }
    let acceptable = snapshot.devices.filter { device in
      let problems = builder.slices(devices: [device], health: snapshot.health).flatMap(ResourceSliceRules.violations)
      if !problems.isEmpty { logger.error("not publishing \(device.name): \(problems.map(\.description).joined(separator: "; "))") }
      return problems.isEmpty
    }
    return builder.slices(devices: acceptable, health: snapshot.health)
  }

  public func run() async throws {
    var generation = 0
    var published: [ResourceSlice]?
    var backoff = 1.0
    var iterator = triggers.cancelOnGracefulShutdown().makeAsyncIterator()
    while !Task.isCancelled {
      do {
        if published == nil { generation = try await publisher.publishedGeneration() }
        let read = self.read
        let snapshot = try await onHostThread { () throws(KubeletError) in try read() }
        observe(snapshot)
        let candidate = slices(snapshot, generation: generation)
        if published.map({ !sameContent($0, candidate) }) ?? true {
          generation += 1
          let slices = candidate.map { slice in
            var next = slice
            next.spec.pool.generation = generation
            return next
          }
          try await publisher.publish(slices)
          published = slices
          let devices = slices.reduce(0) { $0 + ($1.spec.devices?.count ?? 0) }
          let tainted = snapshot.health.values.filter { $0.state == .unhealthy }.count
          logger.info("published \(slices.count) slice(s), \(devices) device(s), \(tainted) tainted, generation \(generation)")
        }
        backoff = 1
      } catch {
        // Whatever failed, the next round starts from what the API server has.
        published = nil
        logger.error("publishing ResourceSlices: \(error); again in \(Int(backoff)) s")
        try? await Task.sleep(for: .seconds(backoff))
        backoff = min(backoff * 2, 60)
        continue
      }
      guard await iterator.next() != nil else { return }
      // A VF count change or a rescan is dozens of uevents: let the burst settle.
      try? await Task.sleep(for: .milliseconds(100))
    }
  }

  /// The same slices but for the pool generation.
  private func sameContent(_ a: [ResourceSlice], _ b: [ResourceSlice]) -> Bool {
    func normalised(_ slices: [ResourceSlice]) -> [ResourceSlice] {
      slices.map { slice in
        var copy = slice
        copy.spec.pool.generation = 0
        return copy
      }
    }
    return normalised(a) == normalised(b)
  }
}

/// Triggers from the host: each batch of PCI/VFIO uevents or ledger writes, and a look every
/// `resync` seconds (AER counts change without a uevent). A thread of its own waits on the
/// kernel; the stream keeps only the newest trigger, so a storm costs one republish and no
/// memory. The thread ends when the stream's consumer goes.
public func hostTriggers(monitor: HostChangeMonitor, resync: Double) -> AsyncStream<Void> {
  let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
  continuation.onTermination = { _ in monitor.stop() }
  let thread = Thread {
    while monitor.next(timeout: resync) != nil {
      if case .terminated = continuation.yield(()) { return }
    }
    continuation.finish()
  }
  thread.name = "vfio-host-changes"
  thread.start()
  return stream
}
