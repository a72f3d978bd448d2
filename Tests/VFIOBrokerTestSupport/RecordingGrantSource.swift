import Foundation
import PCI
import Synchronization
import VFIO
import VFIOBroker
import VFIOBrokerClient
import VFIOHost
import VFIOManager

#if canImport(Glibc)
  import Glibc
#endif

/// The kernel as the broker sees it, recorded: grants are descriptors of /dev/null (real
/// descriptors that really travel), holders are what the test says, resets are counted.
public final class RecordingGrantSource: GrantSource, @unchecked Sendable {
  public let state = Mutex(Recorded())
  public struct Recorded {
    public var opens: [(group: IOMMUGroupID, devices: [String], backend: Backend)] = []
    public var resets: [IOMMUGroupID] = []
    public var held: [IOMMUGroupID: [OpenHolder]] = [:]
    public var terminated: [Int] = []
    /// How often the host was assessed for `list`.
    public var assessments = 0
    /// How often a caller's process and memlock limit were read (/proc, for the live source).
    public var identified = 0
    public var memlockReads = 0
  }
  public let backend: Backend

  public init(backend: Backend = .legacy) { self.backend = backend }

  public func resolve(_ backend: Backend, devices: [PCIAddress]) -> Backend { backend == .auto ? self.backend : backend }

  public func open(group: IOMMUGroupID, devices: [PCIAddress], backend: Backend) throws(BrokerError) -> OpenedGrant {
    state.withLock { $0.opens.append((group, devices.map(\.description), backend)) }
    var kinds: [GrantedDescriptor] =
      backend == .iommufd
      ? [GrantedDescriptor(kind: .iommufd)] : [GrantedDescriptor(kind: .container, iommu: "type1v2"), GrantedDescriptor(kind: .group, group: group)]
    kinds += devices.map { GrantedDescriptor(kind: .device, group: group, address: $0.description) }
    let fds = kinds.map { _ in Descriptor(Glibc.open("/dev/null", O_RDWR | O_CLOEXEC)) }
    return OpenedGrant(
      backend: backend, descriptors: Array(zip(kinds, fds.map(\.fd))), requestEvent: nil, memlockAccounting: "process",
      keep: fds)
  }

  public func holders(of groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: [OpenHolder]] {
    state.withLock { recorded in recorded.held.filter { groups.keys.contains($0.key) } }
  }

  public func reset(group: IOMMUGroupID) -> LeaseReset {
    state.withLock { $0.resets.append(group) }
    return .done
  }

  public func memlockLimit(pid: Int) -> UInt64? {
    state.withLock { $0.memlockReads += 1 }
    return 64 << 20
  }
  public func assess(groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: GroupAssessment] {
    state.withLock { $0.assessments += 1 }
    return groups.mapValues { _ in GroupAssessment(verdict: "assignable", reasons: [], backends: [backend.rawValue]) }
  }
  public func identify(pid: Int) -> (identity: ProcessIdentity?, command: String) {
    state.withLock { $0.identified += 1 }
    return (ProcessIdentity(pid: pid, startTime: 1), "test")
  }
  public func terminate(_ process: ProcessIdentity, pidfd: Int32?) -> Bool {
    state.withLock { $0.terminated.append(process.pid) }
    return true
  }

  public func hold(_ group: IOMMUGroupID, _ held: Bool) {
    state.withLock {
      $0.held[group] = held ? [OpenHolder(pid: 4242, command: "qemu", node: "/dev/vfio/\(group)", startTime: 7)] : nil
    }
  }
}

