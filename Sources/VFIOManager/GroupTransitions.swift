import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// Moves whole IOMMU groups between the host and VFIO and always brings them back exactly as
/// they were: the plan `explain` prints is recorded in the ledger before the first write,
/// executed step by step with each step verified and marked, and undone on failure; a crash
/// at any step is finished or rolled back by the next command that touches the group.
public struct GroupTransitions: ManagerPart, Sendable {
  let manager: AssignmentManager

  // MARK: detach

  /// Moves every endpoint of the target's group to `driver`; bridges stay with the host.
  /// With `owner`, the group's nodes are then given to that user (a ledger fact from then on).
  public func detach(
    _ target: Selector, driver: String = "vfio-pci", force: [PCIAddress] = [], allowNoReset: Bool = false,
    owner: Ownership? = nil, brokerOnly: Bool = false, dryRun: Bool = false, detachedBy: String = "detach"
  ) throws(ManagerError) -> ChangeReport {
    try detach(
      [target], driver: driver, force: force, allowNoReset: allowNoReset, owner: owner, brokerOnly: brokerOnly,
      dryRun: dryRun, detachedBy: detachedBy)[0].get()
  }

  /// Detaches the groups of several targets in one call (`vfioctl detach A B …`), each as
  /// `detach` does one: see `GroupBatch` for how they are checked, run and reported.
  public func detach(
    _ targets: [Selector], driver: String = "vfio-pci", force: [PCIAddress] = [], allowNoReset: Bool = false,
    owner: Ownership? = nil, brokerOnly: Bool = false, dryRun: Bool = false, detachedBy: String = "detach"
  ) throws(ManagerError) -> [GroupOutcome] {
    guard ["vfio-pci", "pci-stub"].contains(driver) else {
      throw .usage("--driver must be vfio-pci or pci-stub, not '\(driver)'")
    }
    let batch = try GroupBatch(targets, part: self, dryRun: dryRun)
    defer { withExtendedLifetime(batch) {} }
    var forced: [IOMMUGroupID: [PCIAddress]] = [:]
    for address in force {
      let group = try lockingGroup(.device(address))
      guard batch.groups.contains(group) else {
        throw .usage("--force \(address): its IOMMU group \(group) is not one this command changes")
      }
      forced[group, default: []].append(address)
    }
    let named = batch.targets.compactMap { if case .device(let address) = $0.target { address } else { nil } }
    let inventory = try readInventory(forVerdictsOn: batch.groups, devices: named + force)
    var refusals: [IOMMUGroupID: [ManagerError.Refusal]] = [:]
    var plans: [DetachPlan] = []
    for (group, target) in batch.targets {
      do {
        plans.append(
          try planDetach(
            target, group: group, inventory: inventory, ledger: batch.ledger, driver: driver,
            force: forced[group] ?? [], allowNoReset: allowNoReset))
      } catch .refused(let refused, let reasons) {
        refusals[refused] = reasons
      }
    }
    try batch.throwIfRefused(refusals)
    guard let ledger = batch.ledger, !dryRun else {
      return plans.map {
        .success(report(.detach, $0.group, .dryRun, $0.plan.detach, nil, inventory, $0.notes, $0.addresses))
      }
    }
    let recovered = batch.recovered
    return try batch.run(plans, touching: { $0.touched }) { planned throws(ManagerError) in
      try runDetach(
        planned, ledger: ledger, driver: driver, owner: owner, brokerOnly: brokerOnly, detachedBy: detachedBy,
        recovered: recovered[planned.group])
    }
  }

  /// One planned group of a detach, under its lock.
  func runDetach(
    _ planned: DetachPlan, ledger: Ledger, driver: String, owner: Ownership?, brokerOnly: Bool, detachedBy: String,
    recovered: String?
  ) throws(ManagerError) -> ChangeReport {
    let group = planned.group
    let inventory = planned.inventory
    if let record = try ledger.group(group), record.state == .detached,
      planned.addresses.allSatisfy({ inventory.device($0)?.driver == record.driver })
    {
      try history(ledger, group, "already-done", "already detached to \(record.driver ?? driver)")
      let notes = try manager.access.applyOwnership(
        group: group, ledger: ledger, setting: owner, brokerOnly: brokerOnly, devices: planned.addresses)
      return report(.detach, group, .alreadyDone, [], recovered, inventory, planned.notes + notes, planned.addresses)
    }
    let bootID = sysfs.readString("/proc/sys/kernel/random/boot_id")
    let steps = planned.plan.detach
    var operation = try ledger.beginDetach(
      newOperation(.detach, group: group, steps: steps), driver: driver, bootID: bootID, detachedBy: detachedBy,
      originals: planned.originals)
    do {
      try execute(steps, operation: &operation, ledger: ledger)
    } catch let failure {
      let rollback = converge(planned.originals, to: { $0.original })
      try finish(
        ledger, &operation, status: .rolledBack, groupState: .host, detail: failure.why,
        history: ("rolled-back", failure.why))
      throw .stepFailed(
        group: group, step: failure.step, description: failure.description, why: failure.why,
        restored: rollback.isEmpty, rollbackErrors: rollback)
    }
    try finish(
      ledger, &operation, status: .done, groupState: .detached, detail: nil,
      history: ("ok", "detached to \(driver): " + planned.addresses.map(\.description).joined(separator: ", ")))
    // The kernel made the nodes anew (root, 0600): what the ledger says of their owner holds.
    let notes = try manager.access.applyOwnership(
      group: group, ledger: ledger, setting: owner, brokerOnly: brokerOnly, devices: planned.addresses)
    return report(.detach, group, .done, steps, recovered, inventory, planned.notes + notes, planned.addresses)
  }

  struct DetachPlan: Sendable {
    let group: IOMMUGroupID
    let plan: AssignmentPlan
    let originals: [LedgerMember]
    let notes: [String]
    /// The host as it was read, under the lock, before anything changed.
    let inventory: HostInventory
    var addresses: [PCIAddress] { originals.compactMap(\.pciAddress) }
    var touched: Set<PCIAddress> { GroupBatch.touched(by: plan.detach, members: addresses) }
  }

  /// The same `AssignmentPlan` `explain` prints, after the checks that refuse it.
  func planDetach(
    _ target: Selector, group: IOMMUGroupID, inventory: HostInventory, ledger: Ledger?, driver: String,
    force: [PCIAddress], allowNoReset: Bool
  ) throws(ManagerError) -> DetachPlan {
    let assessor = Assessor(inventory: inventory)
    let assessment: Assessment
    switch target {
    case .device(let address):
      guard let found = assessor.assess(device: address) else { throw .noSuchDevice(address.description) }
      assessment = found
    case .group(let id): assessment = assessor.assess(group: id)
    }
    let endpoints = assessment.members.filter { $0.role == .endpoint }.map(\.address)
    if let stray = force.first(where: { !endpoints.contains($0) }) {
      throw .usage("--force \(stray): not an endpoint of IOMMU group \(group) (its endpoints: \(list(endpoints)))")
    }
    var refusals: [ManagerError.Refusal] = []
    var notes: [String] = []
    for reason in assessment.reasons where reason.severity == .blocker {
      if reason.code == .hostInUse, !reason.devices.isEmpty, reason.devices.allSatisfy(force.contains) {
        notes.append("forced (--force): " + reason.message)
      } else if reason.code == .noReset && allowNoReset {
        notes.append("without a reset (--allow-no-reset): " + reason.message)
      } else {
        refusals.append(ManagerError.Refusal(reason))
      }
    }
    guard refusals.isEmpty else { throw .refused(group: group, refusals) }
    // A ledger that cannot be read must stop the detach: guessing would record the VFIO
    // driver as a re-detached member's original and lose the real one.
    let recorded = try ledger?.members(of: group) ?? []
    let originals = endpoints.compactMap { address -> LedgerMember? in
      guard let device = inventory.device(address) else { return nil }
      // A member already recorded keeps its first original: re-detaching must not forget it.
      if let known = recorded.first(where: { $0.address == address.description }), known.isSameCard(as: device) {
        return known
      }
      let now = DriverBinding(device)
      return LedgerMember(
        groupID: group, address: address.description, vendorID: Int(device.vendorID), deviceID: Int(device.deviceID),
        originalDriver: now.driver, originalOverride: now.driverOverride)
    }
    let plan = AssignmentPlan(
      group: group, members: assessment.members, inventory: inventory,
      originals: originals.originalBindings, driver: driver)
    return DetachPlan(group: group, plan: plan, originals: originals, notes: notes, inventory: inventory)
  }

  // MARK: attach

  /// Gives a group detached by swift-vfio back to the host: reset, then every endpoint on
  /// exactly the driver and driver_override the ledger recorded.
  /// A group reserved for a guest stays detached unless `release` ends the reservation.
  public func attach(
    _ target: Selector, release: Bool = false, dryRun: Bool = false,
    revoke: ((LedgerLease) throws(ManagerError) -> String)? = nil
  ) throws(ManagerError) -> ChangeReport {
    // A batch of one group runs on the calling thread (`GroupBatch.schedule`), so `revoke`
    // is called there and need not be Sendable.
    var sendable: (@Sendable (LedgerLease) throws(ManagerError) -> String)?
    if let revoke {
      let box = UncheckedRevoke(call: revoke)
      sendable = { lease throws(ManagerError) -> String in try box.call(lease) }
    }
    return try attach([target], release: release, dryRun: dryRun, revoke: sendable)[0].get()
  }

  private struct UncheckedRevoke: @unchecked Sendable {
    let call: (LedgerLease) throws(ManagerError) -> String
  }

  /// Gives the groups of several targets back in one call (`vfioctl attach A B …`), each as
  /// `attach` does one: see `GroupBatch` for how they are checked, run and reported.
  public func attach(
    _ targets: [Selector], release: Bool = false, dryRun: Bool = false,
    revoke: (@Sendable (LedgerLease) throws(ManagerError) -> String)? = nil
  ) throws(ManagerError) -> [GroupOutcome] {
    let batch = try GroupBatch(targets, part: self, dryRun: dryRun)
    defer { withExtendedLifetime(batch) {} }
    // The recorded members too: one that left its group is still found (and restored).
    var recorded: [PCIAddress] = []
    for group in batch.groups { recorded += try batch.ledger?.members(of: group).compactMap(\.pciAddress) ?? [] }
    let inventory = try readInventory(forVerdictsOn: batch.groups, devices: recorded)
    var refusals: [IOMMUGroupID: [ManagerError.Refusal]] = [:]
    var plans: [AttachPlan] = []
    var settled: [IOMMUGroupID: ChangeReport] = [:]
    var unleased: [IOMMUGroupID: [PCIAddress]] = [:]
    for group in batch.groups {
      if let recovered = batch.recovered[group], try batch.ledger?.group(group)?.state == .host {
        // Recovery already gave the group back (it finished an interrupted attach).
        settled[group] = report(.attach, group, .alreadyDone, [], recovered, inventory, [], [])
        continue
      }
      let planned = try planAttach(group: group, inventory: inventory, ledger: batch.ledger)
      if !dryRun, let ledger = batch.ledger {
        if let reserved = try ledger.group(group)?.reservedFor, !release {
          refusals[group] = [
            .init(
              code: "reserved",
              message: "IOMMU group \(group) is reserved for \(reserved): it stays detached while that guest is stopped",
              remedy: "`vfioctl attach \(group) --release` ends the reservation and gives the group back")
          ]
          continue
        }
        // A leased group's holders are looked for once the lease is taken back.
        if try ledger.lease(group: group) == nil { unleased[group] = planned.addresses }
      }
      plans.append(planned)
    }
    // Every group's holders from one walk of /proc.
    for (group, holders) in OpenHolderScanner(sysfs: sysfs).holders(of: unleased) {
      if let refusal = Self.openRefusal(holders) { refusals[group] = [refusal] }
    }
    try batch.throwIfRefused(refusals)
    guard let ledger = batch.ledger, !dryRun else {
      for planned in plans {
        settled[planned.group] = report(
          .attach, planned.group, .dryRun, planned.steps, nil, inventory, planned.notes, planned.addresses)
      }
      return batch.groups.compactMap { settled[$0].map { .success($0) } }
    }
    let recovered = batch.recovered
    let outcomes = try batch.run(plans, touching: { $0.touched }) { planned throws(ManagerError) in
      try runAttach(planned, ledger: ledger, revoke: revoke, recovered: recovered[planned.group])
    }
    let ran = Dictionary(uniqueKeysWithValues: zip(plans.map(\.group), outcomes))
    return batch.groups.compactMap { group in settled[group].map { .success($0) } ?? ran[group] }
  }

  /// One planned group of an attach, under its lock.
  func runAttach(
    _ planned: AttachPlan, ledger: Ledger, revoke: (@Sendable (LedgerLease) throws(ManagerError) -> String)?,
    recovered: String?
  ) throws(ManagerError) -> ChangeReport {
    let group = planned.group
    var notes = planned.notes
    if let lease = try ledger.lease(group: group) {
      notes.append(try takeBack(lease, group: group, ledger: ledger, revoke: revoke))
      let holders = OpenHolderScanner(sysfs: sysfs).holders(group: group, devices: planned.addresses)
      if let refusal = Self.openRefusal(holders) { throw .refused(group: group, [refusal]) }
    }
    let record = try ledger.group(group)
    var operation = try ledger.begin(newOperation(.attach, group: group, steps: planned.steps))
    do {
      try execute(planned.steps, operation: &operation, ledger: ledger)
    } catch let failure {
      // Half a group on the host is the one state that must not last: back to the VFIO driver.
      let assigned = DriverBinding.assigned(to: record?.driver ?? "vfio-pci")
      let rollback = converge(planned.members, to: { _ in assigned })
      try finish(
        ledger, &operation, status: .rolledBack, groupState: .detached, detail: failure.why,
        history: ("rolled-back", failure.why + "; the group stays detached"))
      throw .stepFailed(
        group: group, step: failure.step, description: failure.description,
        why: failure.why + " (the group was put back on \(assigned.driver ?? "vfio-pci"): still detached)",
        restored: rollback.isEmpty, rollbackErrors: rollback)
    }
    // Back with the host: the owner's claim, the reservation and persistence end with it.
    try finish(
      ledger, &operation, status: .done, groupState: .host, detail: nil,
      history: ("ok", "attached: " + planned.members.map { "\($0.address) \($0.original)" }.joined(separator: ", ")))
    if let owner = record?.ownership { notes.append("uid \(owner.uid) no longer owns IOMMU group \(group)") }
    return report(.attach, group, .done, planned.steps, recovered, planned.inventory, notes, planned.addresses)
  }

  /// The processes that have a group or one of its devices open, as a refusal; nil if none.
  static func openRefusal(_ holders: [OpenHolder]) -> ManagerError.Refusal? {
    guard !holders.isEmpty else { return nil }
    return ManagerError.Refusal(
      code: "open", message: holders.map(\.description).joined(separator: "; "),
      remedy: "stop the VMM or driver that uses it (or close the descriptors), then attach again")
  }

  /// The broker has the group leased: under the group's lock the group is marked closing (so
  /// no grant can slip in between), then `revoke` asks the holder to let go and waits. The
  /// lease must be gone from the ledger afterwards; otherwise the attach is refused and the
  /// mark cleared. Without `revoke` the attach is refused outright, naming the holder.
  func takeBack(
    _ lease: LedgerLease, group: IOMMUGroupID, ledger: Ledger,
    revoke: (@Sendable (LedgerLease) throws(ManagerError) -> String)?
  ) throws(ManagerError) -> String {
    guard let revoke else {
      throw .refused(
        group: group,
        [
          .init(
            code: "leased",
            message: "the broker has IOMMU group \(group) leased to pid \(lease.pid) (uid \(lease.uid), \(printable(lease.command)))",
            remedy: "`vfioctl attach \(group) --revoke-after SECONDS` asks it back first")
        ])
    }
    try ledger.setClosing(group: group, true)
    let outcome: String
    do {
      outcome = try revoke(lease)
    } catch {
      try ledger.setClosing(group: group, false)
      throw error
    }
    guard try ledger.lease(group: group) == nil else {
      try ledger.setClosing(group: group, false)
      throw .refused(
        group: group,
        [
          .init(
            code: "leased", message: "pid \(lease.pid) (uid \(lease.uid)) still holds IOMMU group \(group) (revoke: \(outcome))",
            remedy: "wait longer (--revoke-after), or add --revoke-force to end it")
        ])
    }
    return "the broker's lease (pid \(lease.pid)) was revoked: \(outcome)"
  }

  struct AttachPlan: Sendable {
    let group: IOMMUGroupID
    let steps: [PlanStep]
    let members: [LedgerMember]
    let notes: [String]
    /// The host as it was read, under the lock, before anything changed.
    let inventory: HostInventory
    var addresses: [PCIAddress] { members.compactMap(\.pciAddress) }
    var touched: Set<PCIAddress> { GroupBatch.touched(by: steps, members: addresses) }
  }

  func planAttach(group: IOMMUGroupID, inventory: HostInventory, ledger: Ledger?) throws(ManagerError) -> AttachPlan {
    guard let ledger, let record = try ledger.group(group), record.state == .detached else {
      let members = inventory.group(group)?.devices.compactMap(inventory.device).filter(\.isEndpoint) ?? []
      let now = members.map { "\($0.address) on \(DriverBinding($0))" }.joined(separator: ", ")
      throw .notDetached(
        group: group,
        why:
          "was not detached by swift-vfio (the ledger in \(configuration.stateDirectory) has no record of it), so nothing is recorded to restore; now: \(now). `vfioctl detach \(group)` takes it over; to hand it to a host driver yourself, clear driver_override and bind the driver")
    }
    var notes: [String] = []
    var present: [LedgerMember] = []
    for member in try ledger.members(of: group) {
      guard let address = member.pciAddress, let device = inventory.device(address) else {
        notes.append("\(member.address) (\(member.identity)) is gone from the host: nothing to restore for it")
        continue
      }
      guard member.isSameCard(as: device) else {
        notes.append(
          "\(member.address) is now \(device.cardIdentity), not the \(member.identity) that was detached: a different card; its binding was left alone"
        )
        continue
      }
      present.append(member)
    }
    let assessment = Assessor(inventory: inventory).assess(group: group)
    let kept = Set(present.compactMap(\.pciAddress))
    let members = assessment.members.filter { $0.role != .endpoint || kept.contains($0.address) }
    let plan = AssignmentPlan(
      group: group, members: members, inventory: inventory,
      originals: present.originalBindings, driver: record.driver ?? "vfio-pci")
    return AttachPlan(group: group, steps: plan.restore, members: present, notes: notes, inventory: inventory)
  }

  // MARK: reset

  /// Resets a device (or every endpoint of a group) now, through the kernel's `reset`
  /// attribute or, for a bus reset of several functions, one VFIO hot reset.
  public func reset(_ target: Selector, method: ResetMethod? = nil, dryRun: Bool = false) throws(ManagerError)
    -> ChangeReport
  {
    let group = try lockingGroup(target)
    if dryRun {
      let inventory = try readInventory()
      let ledger = try Ledger.open(directory: configuration.stateDirectory, create: false)
      let steps = try planReset(target, group: group, method: method, inventory: inventory, ledger: ledger)
      return report(.reset, group, .dryRun, steps, nil, inventory, [], steps.compactMap(\.device))
    }
    let (lock, ledger, recovered) = try begin(group: group)
    defer { withExtendedLifetime(lock) {} }
    let inventory = try readInventory()
    let steps = try planReset(target, group: group, method: method, inventory: inventory, ledger: ledger)
    let devices = Array(Set(steps.flatMap { $0.affects ?? [] } + steps.compactMap(\.device))).sorted()
    let holders = OpenHolderScanner(sysfs: sysfs).holders(group: group, devices: devices)
    guard holders.isEmpty else {
      throw .refused(
        group: group,
        [
          .init(
            code: "open", message: holders.map(\.description).joined(separator: "; "),
            remedy: "a device in use is reset by its user (VFIO_DEVICE_RESET); stop it first to reset from here")
        ])
    }
    var operation = try ledger.begin(newOperation(.reset, group: group, steps: steps))
    do {
      try execute(steps, operation: &operation, ledger: ledger)
    } catch let failure {
      try finish(
        ledger, &operation, status: .failed, groupState: nil, detail: failure.why,
        history: ("failed", failure.why))
      throw .stepFailed(
        group: group, step: failure.step, description: failure.description, why: failure.why, restored: true,
        rollbackErrors: [])
    }
    try finish(
      ledger, &operation, status: .done, groupState: nil, detail: nil,
      history: ("ok", steps.map(\.description).joined(separator: "; ")))
    return report(.reset, group, .done, steps, recovered, inventory, [], devices)
  }

  func planReset(_ target: Selector, group: IOMMUGroupID, method: ResetMethod?, inventory: HostInventory, ledger: Ledger?)
    throws(ManagerError) -> [PlanStep]
  {
    let planner = ResetPlanner(inventory: inventory)
    let devices: [PCIDevice]
    switch target {
    case .device(let address):
      guard let device = inventory.device(address) else { throw .noSuchDevice(address.description) }
      guard device.isEndpoint else {
        throw .refused(group: group, [.init(code: "not-endpoint", message: "\(address) is a bridge; bridges are not reset from here")])
      }
      devices = [device]
    case .group(let id):
      devices = inventory.group(id)?.devices.compactMap(inventory.device).filter(\.isEndpoint) ?? []
    }
    let detached = Set((try ledger?.groups() ?? []).filter { $0.state == .detached }.map(\.id))
    var steps: [PlanStep] = []
    var refusals: [ManagerError.Refusal] = []
    var covered = Set<PCIAddress>()
    for device in devices where !covered.contains(device.address) {
      let choice = planner.choose(for: device)
      let (available, _) = planner.methods(of: device)
      let chosen = method ?? choice.method
      guard let chosen else {
        refusals.append(.init(code: "no-reset", message: "\(device.address) has no reset method the kernel can use"))
        continue
      }
      if let method, !available.contains(method), !(method.affectsOtherFunctions && choice.method?.affectsOtherFunctions == true) {
        refusals.append(
          .init(
            code: "no-such-method",
            message: "\(device.address) does not support \(method.rawValue) (it has: \(available.map(\.rawValue).joined(separator: " ")))"))
        continue
      }
      var affects = [device.address]
      if chosen.affectsOtherFunctions {
        let scope = inventory.busResetScope(of: device)
        // A reset that hits a function the host is using would pull it out from under its driver.
        let busy = scope.filter { other in
          let onVFIO = other.driver.map(PCIDevice.isVFIODriver) ?? true
          let inUse = inventory.uses(of: other.address).contains(where: \.active)
          return inUse || !(onVFIO || other.iommuGroup.map(detached.contains) == true)
        }
        guard busy.isEmpty else {
          refusals.append(
            .init(
              code: "bus-reset-busy",
              message:
                "a \(chosen.rawValue) reset of \(device.address) also hits \(busy.map { "\($0.address) (on \($0.driver ?? "no driver"))" }.joined(separator: ", ")), which the host still uses",
              remedy: "detach those functions' groups first (`vfioctl detach`), or pick a function-level method"))
          continue
        }
        affects = scope.map(\.address)
      }
      covered.formUnion(affects)
      steps.append(PlanStep(action: .resetNow, device: device.address, method: chosen, affects: affects))
    }
    guard refusals.isEmpty else { throw .refused(group: group, refusals) }
    return steps
  }

  // MARK: recovery

  /// Finishes or rolls back every operation a crashed process left unfinished.
  public func recover() throws(ManagerError) -> [ChangeReport] {
    guard let ledger = try recordedLedger() else { return [] }
    var reports: [ChangeReport] = []
    for group in Set(try ledger.unfinishedOperations().map(\.groupID)).sorted() {
      let lock = try lock(group: group)
      defer { withExtendedLifetime(lock) {} }
      // Read under the lock: the operation another process may have finished meanwhile.
      guard let kind = try ledger.unfinishedOperation(group: group)?.kind,
        let note = try recoverIfNeeded(group: group, ledger: ledger)
      else { continue }
      let members = try ledger.members(of: group).compactMap(\.pciAddress)
      reports.append(report(kind, group, .done, [], note, try readInventory(), [], members))
    }
    return reports
  }

  /// With the group's lock held (so whoever started it is gone), puts an interrupted
  /// operation right: a detach is rolled back, an attach finished — either way the host gets
  /// its devices back as the ledger recorded them. Returns what was done, or nil.
  func recoverIfNeeded(group: IOMMUGroupID, ledger: Ledger) throws(ManagerError) -> String? {
    guard var operation = try ledger.unfinishedOperation(group: group) else { return nil }
    let members = try ledger.members(of: group)
    let progress = "\(operation.stepsDone) of \(operation.steps.count) steps were marked done by pid \(operation.pid)"
    let what: String
    let groupState: GroupState?
    switch operation.kind {
    case .detach:
      what = "rolled back the interrupted detach (\(progress)): every device is on its original driver"
      groupState = .host
    case .attach:
      what = "finished the interrupted attach (\(progress)): every device is on its original driver"
      groupState = .host
    case .reset:
      what = "the interrupted reset (\(progress)) was not repeated"
      groupState = nil
    }
    let errors = operation.kind == .reset ? [] : converge(members, to: { $0.original })
    guard errors.isEmpty else {
      try finish(
        ledger, &operation, status: .failed, groupState: .changing, detail: errors.joined(separator: "; "),
        history: ("failed", "recovery failed: " + errors.joined(separator: "; ")))
      throw .stepFailed(
        group: group, step: operation.stepsDone + 1, description: "recovery of an interrupted \(operation.kind.rawValue)",
        why: "the devices could not all be put back", restored: false, rollbackErrors: errors)
    }
    try finish(
      ledger, &operation, status: .recovered, groupState: groupState, detail: what,
      history: ("recovered", what))
    return "IOMMU group \(group): " + what
  }

  // MARK: Steps

  struct StepFailure: Error {
    let step: Int
    let description: String
    let why: String
  }

  /// Performs, verifies and marks each step (the last by `finish`); the fault hook fires
  /// between performing a step and marking it.
  func execute(_ steps: [PlanStep], operation: inout LedgerOperation, ledger: Ledger) throws(StepFailure) {
    defer { noteLedgerTime(ledger) }
    for (index, step) in steps.enumerated() {
      let number = index + 1
      let start = monotonicSeconds()
      defer { manager.addTime { $0.steps += monotonicSeconds() - start } }
      do {
        try executor.perform(step)
        try executor.verify(step)
      } catch {
        throw StepFailure(step: number, description: step.description, why: error.description)
      }
      if configuration.faultAfterStep == number { kill(getpid(), SIGKILL) }
      operation.stepsDone = number
      // The last step is marked by `finish`, in the transaction that ends the operation: a
      // crash before it finds the step unmarked, as a crash just before any mark does.
      guard number < steps.count else { break }
      do {
        try ledger.markStep(operation)
      } catch {
        throw StepFailure(step: number, description: "record step \(number) in the ledger", why: error.description)
      }
    }
  }

  /// Brings each member to a binding, from whatever sysfs shows now; returns what failed.
  func converge(_ members: [LedgerMember], to wanted: (LedgerMember) -> DriverBinding) -> [String] {
    var errors: [String] = []
    for member in members {
      guard let address = member.pciAddress, let now = executor.binding(of: address) else { continue }
      for step in PlanStep.rebinding(address, from: now, to: wanted(member)) {
        do {
          try executor.perform(step)
          try executor.verify(step)
        } catch {
          errors.append("\(step): \(error)")
          break
        }
      }
    }
    return errors
  }

  func newOperation(_ kind: LedgerOperation.Kind, group: IOMMUGroupID, steps: [PlanStep]) -> LedgerOperation {
    LedgerOperation(starting: kind, group: group, steps: steps, command: configuration.command)
  }

  /// What the ledger has cost so far, into the manager's timings.
  func noteLedgerTime(_ ledger: Ledger) {
    manager.addTime {
      $0.ledger = ledger.secondsWriting
      $0.ledgerTransactions = ledger.writeTransactions
    }
  }

  /// Records how the operation ended, its group's state and the history entry in one
  /// transaction (with the last step's mark: `execute` leaves it to this).
  func finish(
    _ ledger: Ledger, _ operation: inout LedgerOperation, status: LedgerOperation.Status, groupState: GroupState?,
    detail: String?, history: (result: String, detail: String)
  ) throws(ManagerError) {
    defer { noteLedgerTime(ledger) }
    try ledger.finish(
      &operation, status, detail: detail, groupState: groupState,
      history: historyEntry(operation.groupID, history.result, history.detail))
  }
}
