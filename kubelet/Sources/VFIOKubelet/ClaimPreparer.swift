import Foundation
import Logging
import PCI
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
  /// Written before the first detach and replaced once the claim is prepared: a plugin killed
  /// in between leaves this, and the retry (or the unprepare) knows every group to put right.
  var pending: Bool? = nil

  var isPending: Bool { pending == true }

  struct Group: Codable, Equatable {
    let group: IOMMUGroupID
    let detached: Bool
  }
}

/// The DRA driver's node side: prepares a claim by detaching each allocated group through
/// the assignment manager (the plan `explain` prints, owned as the claim asks, reset) and
/// writing its CDI spec; unprepare attaches the groups back and removes the spec.
/// Claims are serialised per group and per claim at the gate, parallel across groups; the
/// manager's group locks keep other processes (vfioctl, the broker) out in the same way.
public final class ClaimPreparer: @unchecked Sendable {
  public let manager: AssignmentManager
  public let cdi: CDIWriter
  /// KEP-5304's per-request device metadata and the specs that mount it; nil: none written.
  public let metadata: DeviceMetadataWriter?
  public let driver: String
  /// `<state>/kubelet-claims`: one checkpoint per prepared claim.
  public let checkpointDirectory: String
  /// Publish and prepare groups without a reset method (`--allow-no-reset`).
  public let allowNoReset: Bool
  /// Whose network and mounts say what the host uses (the host's init, from a pod).
  public let view: HostView
  let logger: Logger
  let gate = ClaimGate()

  public init(
    manager: AssignmentManager, cdi: CDIWriter, metadata: DeviceMetadataWriter? = nil, driver: String,
    allowNoReset: Bool = false, view: HostView = .hostInit, logger: Logger = Logger(label: "vfio.dra")
  ) {
    self.manager = manager
    self.metadata = metadata
    self.allowNoReset = allowNoReset
    self.view = view
    self.cdi = cdi
    self.driver = driver
    self.checkpointDirectory = manager.configuration.stateDirectory + "/kubelet-claims"
    self.logger = logger
  }

  /// Prepares `claim` for `allocation`. Every device is checked, and every detach planned,
  /// before the first is made: a bad claim is refused with nothing detached.
  /// Blocks (at the gate and on the kernel): call it on a host-work thread.
  public func prepare(_ claim: ClaimReference, _ allocation: ClaimAllocation) throws(KubeletError) -> [PreparedDevice] {
    // The groups a claim can touch are known from the device names alone, before anything is
    // read: the gate is taken first, and everything after it sees no other claim half-done.
    let groups = allocation.results.compactMap { PublishedDevice.group(named: $0.device) }
    return try gate.whileHolding(claim: claim.uid, groups: groups) { () throws(KubeletError) -> [PreparedDevice] in
      let earlier = try checkpoint(claim.uid)
      if let earlier, !earlier.isPending { return earlier.devices }
      // One read of the checkpoints: what every claim holds stays in the catalog, what another
      // claim holds is refused to this one.
      let held = try heldGroups()
      let taken = held.filter { $0.value != claim.uid }
      let catalog = try catalog(prepared: Set(held.keys))
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
      // The claim's groups are one batch: checked together (a refusal of one refuses all), then
      // detached side by side.
      let batch = chosen.map { device, _ in Selector.group(device.group) }
      do throws(ManagerError) {
        _ = try manager.groups.detach(batch, allowNoReset: allowNoReset, owner: allocation.ownership, dryRun: true)
      } catch {
        throw .manager(claim: claim.uid, error)
      }
      // Which groups this claim detaches (and gives back at unprepare): those not on VFIO by an
      // administrator's hand already; an earlier, interrupted try of this claim knows its own.
      let detachedByOthers = try detachedGroups()
      let groups = chosen.map { device, _ -> ClaimCheckpoint.Group in
        let ours = earlier?.groups.first { $0.group == device.group }?.detached ?? !detachedByOthers.contains(device.group)
        return ClaimCheckpoint.Group(group: device.group, detached: ours)
      }
      // Recorded before the first detach: killed at any step from here, the plugin leaves a
      // checkpoint naming every group it may have taken.
      try save(ClaimCheckpoint(claim: claim, groups: groups, devices: [], pending: true))
      do throws(ManagerError) {
        for outcome in try manager.groups.detach(
          batch, allowNoReset: allowNoReset, owner: allocation.ownership, detachedBy: "dra")
        {
          let report = try outcome.get()
          logger.info("prepared group \(report.group) for claim \(claim): \(report.outcome.rawValue)")
        }
      } catch {
        // What this claim detached goes back: a claim is prepared whole or not at all.
        _ = attach(groups)
        removeCheckpoint(claim.uid)
        throw .manager(claim: claim.uid, error)
      }
      let spec = cdi.spec(claimUID: claim.uid, devices: chosen.map(\.0), owner: allocation.ownership)
      // The nodes each group's containers get, as the spec names them (the host is read once):
      // the metadata names the cdevs among them, and an iommufd claim that got none is told why
      // (KubeVirt 1.9 on such a kernel fails the pod: kubevirt#18895).
      let nodes = spec.devices.map { ($0.containerEdits.deviceNodes ?? []).map(\.path) }
      for ((device, _), paths) in zip(chosen, nodes) where cdi.interface == .iommufd && !paths.contains("/dev/iommu") {
        logger.warning(
          "claim \(claim): \(device.name) gets the legacy nodes only (/dev/vfio/vfio, /dev/vfio/\(device.group)): this kernel has no /dev/iommu or no VFIO device cdev for every function (CONFIG_IOMMUFD, CONFIG_VFIO_DEVICE_CDEV)"
        )
      }
      do throws(KubeletError) {
        try cdi.write(spec, claimUID: claim.uid)
        let mounts = try writeMetadata(claim, allocation, chosen, nodes: nodes)
        let devices = zip(chosen, spec.devices).map { pair, cdiDevice in
          PreparedDevice(
            requestNames: pair.1.map(\.request), pool: pair.1[0].pool, device: pair.0.name,
            cdiDeviceIDs: [spec.qualifiedName(cdiDevice)] + Set(pair.1.map(\.request)).sorted().compactMap { mounts[$0] })
        }
        try save(ClaimCheckpoint(claim: claim, groups: groups, devices: devices))
        return devices
      } catch {
        _ = attach(groups)
        try? cdi.remove(claimUID: claim.uid)
        try? metadata?.remove(claim)
        removeCheckpoint(claim.uid)
        throw error
      }
    }
  }

  /// Gives the claim's groups back to the host and removes its CDI spec. A claim that is not
  /// prepared (never was, or already unprepared) is done.
  public func unprepare(_ claim: ClaimReference) throws(KubeletError) {
    guard let first = try checkpoint(claim.uid) else { return }
    try gate.whileHolding(claim: claim.uid, groups: first.groups.map(\.group)) { () throws(KubeletError) in
      // Read again at the gate: a prepare of the same claim may have finished meanwhile.
      guard let done = try checkpoint(claim.uid) else { return }
      // An interrupted prepare may not have reached every group: one never detached is fine.
      let failures = attach(done.groups).filter { error in
        guard done.isPending, case .notDetached = error else { return true }
        return false
      }
      if let failure = failures.first { throw .manager(claim: claim.uid, failure) }
      try cdi.remove(claimUID: claim.uid)
      try metadata?.remove(claim)
      do { try FileManager.default.removeItem(atPath: checkpointPath(claim.uid)) } catch {
        throw .checkpoint(path: checkpointPath(claim.uid), error.localizedDescription)
      }
      logger.info("unprepared claim \(claim)")
    }
  }

  /// Writes each request's device metadata (KEP-5304); returns request → the CDI ID that mounts it.
  /// `nodes`: each chosen group's device nodes in its CDI spec.
  private func writeMetadata(
    _ claim: ClaimReference, _ allocation: ClaimAllocation, _ chosen: [(PublishedDevice, [ClaimAllocation.Result])],
    nodes: [[String]]
  ) throws(KubeletError) -> [String: String] {
    guard let metadata else { return [:] }
    var byRequest: [String: [DeviceMetadata.Device]] = [:]
    let cdevDirectory = "/dev/vfio/devices/"
    for ((device, results), paths) in zip(chosen, nodes) {
      let cdevs = paths.filter { $0.hasPrefix(cdevDirectory) }.map { String($0.dropFirst(cdevDirectory.count)) }
      let attributes = DeviceMetadataWriter.attributes(
        device, sliceAttributes: SliceBuilder.attributes(device), cdevs: cdevs)
      for result in results {
        byRequest[result.request, default: []].append(
          DeviceMetadata.Device(driver: driver, pool: result.pool, name: device.name, attributes: attributes))
      }
    }
    var ids: [String: String] = [:]
    for (request, devices) in byRequest.sorted(by: { $0.key < $1.key }) {
      ids[request] = try metadata.write(claim, podClaimName: allocation.podClaimName, request: request, devices: devices)
    }
    return ids
  }

  /// The groups held for claims now, prepared or being prepared.
  public func preparedGroups() throws(KubeletError) -> Set<IOMMUGroupID> { Set(try heldGroups().keys) }

  /// The claims prepared now, as their checkpoints say.
  public func preparedClaims() throws(KubeletError) -> [ClaimReference] {
    try checkpoints().map(\.claim)
  }

  /// Attaches the groups this plugin detached; returns the failures.
  private func attach(_ groups: [ClaimCheckpoint.Group]) -> [ManagerError] {
    groups.filter(\.detached).compactMap { group -> ManagerError? in
      do throws(ManagerError) {
        _ = try manager.groups.attach(.group(group.group))
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
  private func heldGroups() throws(KubeletError) -> [IOMMUGroupID: String] {
    var held: [IOMMUGroupID: String] = [:]
    for checkpoint in try checkpoints() {
      for group in checkpoint.groups { held[group.group] = checkpoint.claim.uid }
    }
    return held
  }

  /// The publishable groups now, with those this driver holds for claims kept in.
  public func catalog(prepared: Set<IOMMUGroupID>) throws(KubeletError) -> DeviceCatalog {
    try NodeCatalog(
      sysfs: manager.sysfs, stateDirectory: manager.configuration.stateDirectory, view: view, allowNoReset: allowNoReset
    ).read(prepared: prepared)
  }

  /// The ledger's groups now; none when there is no ledger yet.
  public func ledgerGroups() throws(KubeletError) -> [IOMMUGroupID: LedgerGroup] {
    do throws(ManagerError) {
      guard let ledger = try Ledger.open(directory: manager.configuration.stateDirectory, create: false) else { return [:] }
      return Dictionary(try ledger.groups().map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    } catch {
      throw .checkpoint(path: manager.configuration.stateDirectory, "the ledger cannot be read: \(error)")
    }
  }

  /// The groups the ledger has on VFIO now.
  private func detachedGroups() throws(KubeletError) -> Set<IOMMUGroupID> {
    Set(try ledgerGroups().filter { $0.value.state == .detached }.keys)
  }


  private func removeCheckpoint(_ uid: String) { unlink(checkpointPath(uid)) }

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
