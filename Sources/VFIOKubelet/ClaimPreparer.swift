import Foundation
import Logging
import VFIOHost
import VFIOManager

/// A device handed to the kubelet for a prepared claim (NodePrepareResourceResponse.devices).
public struct PreparedDevice: Sendable, Equatable, Codable {
  public let requestNames: [String]
  public let pool: String
  public let device: String
  public let cdiDeviceIDs: [String]
}

/// What the plugin did for a claim, kept on disk so prepare and unprepare stay idempotent
/// across plugin restarts and unprepare knows the groups (the kubelet names only the claim).
struct ClaimCheckpoint: Codable, Equatable {
  let claim: ClaimReference
  /// The groups the claim holds; `detached` is false for a group that already was on VFIO
  /// (detached by an administrator): unprepare leaves it there.
  let groups: [Group]
  let devices: [PreparedDevice]

  struct Group: Codable, Equatable {
    let group: Int
    let detached: Bool
  }
}

/// The DRA driver's node side: prepares a claim by detaching each allocated group through
/// the assignment manager (the plan `explain` prints, owned as the claim asks, reset) and
/// writing its CDI spec; unprepare attaches the groups back and removes the spec.
/// One claim at a time: the manager's group locks would serialise them anyway.
public final class ClaimPreparer: @unchecked Sendable {
  public let manager: AssignmentManager
  public let cdi: CDIWriter
  public let driver: String
  /// `<state>/kubelet-claims`: one checkpoint per prepared claim.
  public let checkpointDirectory: String
  /// Publish and prepare groups without a reset method (`--allow-no-reset`).
  public let allowNoReset: Bool
  let logger: Logger
  private let lock = NSLock()

  public init(
    manager: AssignmentManager, cdi: CDIWriter, driver: String, allowNoReset: Bool = false,
    logger: Logger = Logger(label: "vfio.dra")
  ) {
    self.manager = manager
    self.allowNoReset = allowNoReset
    self.cdi = cdi
    self.driver = driver
    self.checkpointDirectory = manager.configuration.stateDirectory + "/kubelet-claims"
    self.logger = logger
  }

  /// Prepares `claim` for `allocation`. Every device is checked, and every detach planned,
  /// before the first is made: a bad claim is refused with nothing detached.
  public func prepare(_ claim: ClaimReference, _ allocation: ClaimAllocation) throws(KubeletError) -> [PreparedDevice] {
    try locked { () throws(KubeletError) -> [PreparedDevice] in
      if let done = try checkpoint(claim.uid) { return done.devices }
      let inventory: HostInventory
      do throws(InventoryError) { inventory = try HostInventory.read(manager.sysfs) } catch {
        throw .manager(claim: claim.uid, .unavailable(error.description))
      }
      let catalog = DeviceCatalog(inventory: inventory, allowNoReset: allowNoReset)
      let taken = try heldGroups()
      var chosen: [(PublishedDevice, [ClaimAllocation.Result])] = []
      for result in allocation.results {
        guard let device = catalog.device(named: result.device) else {
          throw .noSuchDevice(claim: claim.uid, device: result.device, published: catalog.published.map(\.name))
        }
        if let holder = taken[device.group] { throw .taken(claim: claim.uid, group: device.group, by: holder) }
        if let index = chosen.firstIndex(where: { $0.0 == device }) {
          chosen[index].1.append(result)
        } else {
          chosen.append((device, [result]))
        }
      }
      guard !chosen.isEmpty else {
        throw .claimUnknown(uid: claim.uid, why: "nothing in it is allocated to driver \(driver)")
      }
      for (device, _) in chosen {
        do throws(ManagerError) {
          _ = try manager.detach(
            .group(device.group), allowNoReset: allowNoReset, owner: allocation.ownership, dryRun: true)
        } catch {
          throw .manager(claim: claim.uid, error)
        }
      }
      var groups: [ClaimCheckpoint.Group] = []
      for (device, _) in chosen {
        do throws(ManagerError) {
          let report = try manager.detach(
            .group(device.group), allowNoReset: allowNoReset, owner: allocation.ownership, detachedBy: "dra")
          groups.append(.init(group: device.group, detached: report.outcome == .done))
          logger.info("prepared group \(device.group) for claim \(claim): \(report.outcome.rawValue)")
        } catch {
          // What this claim detached so far goes back: a claim is prepared whole or not at all.
          _ = attach(groups)
          throw .manager(claim: claim.uid, error)
        }
      }
      let spec = cdi.spec(claimUID: claim.uid, devices: chosen.map(\.0))
      let devices = zip(chosen, spec.devices).map { pair, cdiDevice in
        PreparedDevice(
          requestNames: pair.1.map(\.request), pool: pair.1[0].pool, device: pair.0.name,
          cdiDeviceIDs: [spec.qualifiedName(cdiDevice)])
      }
      do throws(KubeletError) {
        try cdi.write(spec, claimUID: claim.uid)
        try save(ClaimCheckpoint(claim: claim, groups: groups, devices: devices))
      } catch {
        _ = attach(groups)
        try? cdi.remove(claimUID: claim.uid)
        throw error
      }
      return devices
    }
  }

  /// Gives the claim's groups back to the host and removes its CDI spec. A claim that is not
  /// prepared (never was, or already unprepared) is done.
  public func unprepare(_ claim: ClaimReference) throws(KubeletError) {
    try locked { () throws(KubeletError) in
      guard let done = try checkpoint(claim.uid) else { return }
      if let failure = attach(done.groups).first { throw .manager(claim: claim.uid, failure) }
      try cdi.remove(claimUID: claim.uid)
      do { try FileManager.default.removeItem(atPath: checkpointPath(claim.uid)) } catch {
        throw .checkpoint(path: checkpointPath(claim.uid), error.localizedDescription)
      }
      logger.info("unprepared claim \(claim)")
    }
  }

  /// The claims prepared now, as their checkpoints say.
  public func preparedClaims() throws(KubeletError) -> [ClaimReference] {
    try checkpoints().map(\.claim)
  }

  private func locked<R>(_ body: () throws(KubeletError) -> R) throws(KubeletError) -> R {
    lock.lock()
    defer { lock.unlock() }
    return try body()
  }

  /// Attaches the groups this plugin detached; returns the failures.
  private func attach(_ groups: [ClaimCheckpoint.Group]) -> [ManagerError] {
    groups.filter(\.detached).compactMap { group -> ManagerError? in
      do throws(ManagerError) {
        _ = try manager.attach(.group(group.group))
        return nil
      } catch { return error }
    }
  }

  func checkpointPath(_ uid: String) -> String { checkpointDirectory + "/" + cdiName(uid) + ".json" }

  func checkpoint(_ uid: String) throws(KubeletError) -> ClaimCheckpoint? {
    let path = checkpointPath(uid)
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    do { return try JSONDecoder().decode(ClaimCheckpoint.self, from: data) } catch {
      throw .checkpoint(path: path, "unreadable: \(error)")
    }
  }

  private func checkpoints() throws(KubeletError) -> [ClaimCheckpoint] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: checkpointDirectory)) ?? []
    var all: [ClaimCheckpoint] = []
    for name in names.sorted() where name.hasSuffix(".json") {
      if let found = try checkpoint(String(name.dropLast(5))) { all.append(found) }
    }
    return all
  }

  /// Group → the claim holding it.
  private func heldGroups() throws(KubeletError) -> [Int: String] {
    var held: [Int: String] = [:]
    for checkpoint in try checkpoints() {
      for group in checkpoint.groups { held[group.group] = checkpoint.claim.uid }
    }
    return held
  }

  private func save(_ checkpoint: ClaimCheckpoint) throws(KubeletError) {
    let path = checkpointPath(checkpoint.claim.uid)
    do {
      try FileManager.default.createDirectory(atPath: checkpointDirectory, withIntermediateDirectories: true)
      try Data(sortedJSON(checkpoint).utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
      throw .checkpoint(path: path, error.localizedDescription)
    }
  }
}
