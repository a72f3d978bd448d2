import Foundation
import PCI
import Synchronization
import VFIOHost
import VFIOManager

/// The health of a published device (an IOMMU group), as the kubelet's health stream
/// (KEP-4680) and the slices' taints (KEP-5055) report it.
public struct DeviceHealth: Sendable, Equatable, CustomStringConvertible {
  public enum State: String, Sendable, Equatable {
    case healthy = "Healthy"
    case unhealthy = "Unhealthy"
    /// What says it cannot be read: no taint, and the kubelet shows Unknown.
    case unknown = "Unknown"
  }

  /// Why a device is unhealthy: the taint's value (a label value) and what to do.
  public enum Problem: String, Sendable, Equatable {
    /// A function of the group is no longer on the PCI bus (surprise removal, remove).
    case gone = "Gone"
    /// The fatal AER error count of a function went up.
    case fatalError = "FatalAERError"
    /// The ledger has the group on VFIO but a function is bound to a host driver.
    case hostDriver = "BoundToHostDriver"
    /// A detach, attach or reset of the group failed or was interrupted (the ledger's
    /// `changing` with nobody holding the group's lock).
    case interrupted = "OperationInterrupted"
    /// The group stopped being assignable (a member the host uses, a new member).
    case notAssignable = "NotAssignable"
  }

  public let state: State
  public let problem: Problem?
  public let detail: String

  public static let healthy = DeviceHealth(state: .healthy, problem: nil, detail: "")

  public static func unhealthy(_ problem: Problem, _ detail: String) -> DeviceHealth {
    DeviceHealth(state: .unhealthy, problem: problem, detail: detail)
  }

  public static func unknown(_ detail: String) -> DeviceHealth { DeviceHealth(state: .unknown, problem: nil, detail: detail) }

  public var description: String { problem.map { "\(state.rawValue) (\($0.rawValue): \(detail))" } ?? state.rawValue }
}

/// Judges each published device from the host and the ledger. Fatal AER counts are compared
/// with the count first seen since the group last entered its ledger state (a detach or an
/// attach starts it anew: the reset that goes with it is the recovery).
public final class HealthJudge: Sendable {
  public let sysfs: Sysfs
  public let stateDirectory: String
  /// Whether AER counts are read: a plugin that keeps looking compares each with the first it
  /// saw; a single look (--print-slices) has nothing to compare with and skips the reads.
  public let tracksFatalErrors: Bool
  private struct Baseline { let since: Date?; let fatal: Int }
  private let baselines = Mutex<[PCIAddress: Baseline]>([:])

  public init(sysfs: Sysfs, stateDirectory: String, tracksFatalErrors: Bool = true) {
    self.sysfs = sysfs
    self.stateDirectory = stateDirectory
    self.tracksFatalErrors = tracksFatalErrors
  }

  /// The devices of a catalog read just now (their functions were on the bus), by name.
  public func judge(_ devices: [PublishedDevice], ledger: [IOMMUGroupID: LedgerGroup]) -> [String: DeviceHealth] {
    var health: [String: DeviceHealth] = [:]
    for device in devices { health[device.name] = judge(device, record: ledger[device.group], present: true) }
    return health
  }

  /// One device; `present`: its functions were just seen on the bus (a catalog read a moment
  /// ago), so they are not looked up again. A group only remembered is.
  public func judge(_ device: PublishedDevice, record: LedgerGroup?, present: Bool = false) -> DeviceHealth {
    for function in device.functions {
      let directory = "/sys/bus/pci/devices/\(function)"
      guard present || sysfs.exists(directory) else { return .unhealthy(.gone, "\(function) is no longer on the PCI bus") }
      if tracksFatalErrors, let fatal = fatalCount(function) {
        let since = record?.since
        let baseline = baselines.withLock { table -> Baseline in
          if let known = table[function], known.since == since { return known }
          let fresh = Baseline(since: since, fatal: fatal)
          table[function] = fresh
          return fresh
        }
        if fatal > baseline.fatal {
          return .unhealthy(.fatalError, "\(function): \(fatal - baseline.fatal) fatal AER error(s); give the group back and detach it again to reset it")
        }
      }
      if record?.state == .detached {
        let driver = sysfs.linkName(directory + "/driver")
        if let driver, !PCIDevice.isVFIODriver(driver) {
          return .unhealthy(.hostDriver, "\(function) is on \(driver) behind the ledger's back; vfioctl detach \(device.group)")
        }
      }
    }
    if let record, record.state == .changing, !lockHeld(record.id) {
      return .unhealthy(.interrupted, "an operation on group \(device.group) failed or was interrupted; vfioctl recover")
    }
    return .healthy
  }

  /// `TOTAL_ERR_FATAL N` of `aer_dev_fatal`; nil without AER (most emulated devices).
  func fatalCount(_ function: PCIAddress) -> Int? {
    guard let text = sysfs.readString("/sys/bus/pci/devices/\(function)/aer_dev_fatal") else { return nil }
    for line in text.split(separator: "\n") {
      let fields = line.split(separator: " ")
      if fields.count == 2, fields[0] == "TOTAL_ERR_FATAL" { return Int(fields[1]) }
    }
    return nil
  }

  /// Whether a process holds the group's lock now (an operation in progress, not a failed one).
  func lockHeld(_ group: IOMMUGroupID) -> Bool {
    let fd = open(stateDirectory + "/locks/group-\(group).lock", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    guard flock(fd, LOCK_SH | LOCK_NB) == 0 else { return true }
    flock(fd, LOCK_UN)
    return false
  }
}
