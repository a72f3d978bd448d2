import Foundation
import PCI
import Synchronization
import VFIOHost
import VFIOPolicy

/// What a batch did to one group: its report, or why it failed (the batch went on with the others).
public typealias GroupOutcome = Result<ChangeReport, ManagerError>

/// The groups of one `detach` or `attach` (`vfioctl detach A B …`; a single target is a batch of one):
/// - each target's group is taken once, whichever of its functions named it, and locked in
///   ascending order (so that two batches cannot deadlock), then recovered if a crashed process
///   left it half-changed;
/// - the host is read once, under the locks, and every group is planned from that reading
///   before any is touched: a refusal of any group refuses the call and changes nothing;
/// - then the groups run side by side, one thread per chain of groups (at most `width`), each
///   group step by step, recorded and crash-safe exactly as a single group is. Groups whose
///   steps touch a common function (a bus reset hits its neighbours) form one chain and run one
///   after the other;
/// - a group whose step failed is put back by itself; the others keep what was done to them;
/// - the boot persistence files are written once, after the last group.
final class GroupBatch {
  /// Threads at most: resets wait in the kernel (an FLR 100 ms), not on the CPU.
  static let width = 16

  /// Each group once, in the order the targets named it, with the first target that did.
  let targets: [(group: IOMMUGroupID, target: Selector)]
  /// Opened for writing; with `dryRun`, only if it exists.
  let ledger: Ledger?
  /// What recovery found and did, per group.
  let recovered: [IOMMUGroupID: String]
  private let locks: [GroupLock]
  private let manager: AssignmentManager

  var groups: [IOMMUGroupID] { targets.map(\.group) }

  init(_ targets: [Selector], part: some ManagerPart, dryRun: Bool) throws(ManagerError) {
    guard !targets.isEmpty else { throw .usage("name at least one PCI address or IOMMU group") }
    var seen = Set<IOMMUGroupID>()
    var named: [(group: IOMMUGroupID, target: Selector)] = []
    for target in targets {
      let group = try part.lockingGroup(target)
      if seen.insert(group).inserted { named.append((group, target)) }
    }
    self.targets = named
    manager = part.manager
    if dryRun {
      ledger = try Ledger.open(directory: part.configuration.stateDirectory, create: false)
      locks = []
      recovered = [:]
    } else {
      let session = try part.begin(groups: named.map(\.group))
      ledger = session.ledger
      locks = session.locks
      recovered = session.recovered
    }
  }

  /// A single group's refusal as that group's; in a batch of several, every refused group's
  /// reasons under "nothing was changed" (the groups not refused were not touched either).
  func throwIfRefused(_ refusals: [IOMMUGroupID: [ManagerError.Refusal]]) throws(ManagerError) {
    guard let (group, reasons) = refusals.first else { return }
    throw targets.count == 1 ? .refused(group: group, reasons) : .refusedGroups(refusals)
  }

  /// The functions a group's steps write to or reset: its own, and a bus reset's neighbours.
  static func touched(by steps: [PlanStep], members: [PCIAddress]) -> Set<PCIAddress> {
    var touched = Set(members)
    for step in steps {
      if let device = step.device { touched.insert(device) }
      touched.formUnion(step.affects ?? [])
    }
    return touched
  }

  /// Runs `body` for every planned group, as described above, and returns the outcomes in the
  /// order of `plans`; then writes the persistence files if any group changed.
  func run<Plan: Sendable>(
    _ plans: [Plan], touching: (Plan) -> Set<PCIAddress>,
    _ body: @escaping @Sendable (Plan) throws(ManagerError) -> ChangeReport
  ) throws(ManagerError) -> [GroupOutcome] {
    var outcomes = Self.schedule(plans, chains: Self.chains(plans.map(touching)), body)
    if let ledger, let first = outcomes.firstIndex(where: { (try? $0.get())?.outcome == .done }),
      case .success(var changed) = outcomes[first]
    {
      changed.notes += try manager.persistence.refreshPersistence(ledger: ledger)
      outcomes[first] = .success(changed)
    }
    return outcomes
  }

  /// Indices of the plans, in chains of plans that touch a common function (each chain in
  /// the plans' order); plans that share nothing are chains of their own.
  static func chains(_ touched: [Set<PCIAddress>]) -> [[Int]] {
    var root = Array(touched.indices)
    func find(_ index: Int) -> Int {
      var index = index
      while root[index] != index { index = root[index] }
      return index
    }
    for later in touched.indices {
      for earlier in touched.indices.prefix(later) where !touched[later].isDisjoint(with: touched[earlier]) {
        root[find(later)] = find(earlier)
      }
    }
    var chains: [Int: [Int]] = [:]
    for index in touched.indices { chains[find(index), default: []].append(index) }
    return chains.keys.sorted().compactMap { chains[$0] }
  }

  /// One chain runs on the calling thread; several on threads of their own, `width` at most.
  static func schedule<Plan: Sendable>(
    _ plans: [Plan], chains: [[Int]], _ body: @escaping @Sendable (Plan) throws(ManagerError) -> ChangeReport
  ) -> [GroupOutcome] {
    func outcome(_ plan: Plan) -> GroupOutcome { Result { () throws(ManagerError) in try body(plan) } }
    guard chains.count > 1 else { return plans.map(outcome) }
    let results = Mutex<[Int: GroupOutcome]>([:])
    let nextChain = Mutex(0)
    let finished = DispatchGroup()
    for _ in 0..<min(width, chains.count) {
      finished.enter()
      Thread {
        defer { finished.leave() }
        while true {
          let chain = nextChain.withLock { next in
            defer { next += 1 }
            return next
          }
          guard chain < chains.count else { return }
          for index in chains[chain] {
            let result = Result { () throws(ManagerError) in try body(plans[index]) }
            results.withLock { $0[index] = result }
          }
        }
      }.start()
    }
    finished.wait()
    return results.withLock { done in plans.indices.compactMap { done[$0] } }
  }
}
