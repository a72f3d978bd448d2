import Foundation
import Synchronization
import VFIOHost
import VFIOPolicy

/// The host assignment manager: what its parts share (the host, the configuration, where the
/// time went) and the parts themselves, each a concept of its own:
/// - `groups` (`GroupTransitions`): detach, attach, reset and recovery, the crash-safe core;
/// - `access` (`GroupAccess`): who may open a detached group, and for which guest it is kept;
/// - `guests` (`GuestAssignment`): whole groups for a domain's devices (libvirt's hook);
/// - `persistence` (`BootPersistence`): detachments kept across boots and hot-plug;
/// - `virtualFunctions` (`VirtualFunctions`): SR-IOV VF counts, the VFs created detached;
/// - `records` (`ManagerRecords`): status, history and leases as the ledger has them.
public final class AssignmentManager: Sendable {
  public struct Configuration: Sendable {
    public var stateDirectory: String
    /// How long a command waits for another one's lock on the same group.
    public var lockTimeout: Double
    /// Test hook (the CLI's `SWIFT_VFIO_FAULT_AFTER_STEP=N`): SIGKILL right after performing
    /// step N of a detach, attach or reset, before it is marked done in the ledger.
    public var faultAfterStep: Int?
    /// What the ledger's history and operations record as the command (the CLI's arguments).
    public var command: String
    public var pageSize: UInt64?
    /// The vfioctl the generated boot unit runs (its path on the host); nil: the first of
    /// /usr/local/bin, /usr/bin, /usr/sbin that is root's and not writable by others.
    public var installedVfioctl: String?

    public init(
      stateDirectory: String = Ledger.defaultDirectory, lockTimeout: Double = 10,
      command: String, faultAfterStep: Int? = nil, pageSize: UInt64? = nil,
      installedVfioctl: String? = nil
    ) {
      self.stateDirectory = stateDirectory
      self.lockTimeout = lockTimeout
      self.faultAfterStep = faultAfterStep
      self.command = command
      self.pageSize = pageSize
      self.installedVfioctl = installedVfioctl
    }
  }

  public let sysfs: Sysfs
  public let host: any HostKernel
  public let configuration: Configuration
  let executor: PlanExecutor
  /// Where the last command's time went, for `SWIFT_VFIO_TIMINGS=1` and the benchmark; a
  /// batch's groups add to it from their own threads.
  public var timings: Timings { spent.withLock { $0 } }
  private let spent = Mutex(Timings())

  func addTime(_ change: (inout Timings) -> Void) { spent.withLock { change(&$0) } }

  public struct Timings: Sendable, CustomStringConvertible {
    /// Performing and verifying plan steps (the kernel's share).
    public var steps: Double = 0
    /// Write transactions of the ledger: their time, and how many.
    public var ledger: Double = 0
    public var ledgerTransactions = 0
    /// Reading the host model (sysfs, config space, host use).
    public var inventory: Double = 0
    public var description: String {
      func ms(_ seconds: Double) -> String { String(format: "%.1f", seconds * 1000) }
      return "steps \(ms(steps)) ms, ledger \(ms(ledger)) ms, inventory \(ms(inventory)) ms, \(ledgerTransactions) ledger transactions"
    }
  }

  public init(sysfs: Sysfs, host: (any HostKernel)? = nil, configuration: Configuration) {
    self.sysfs = sysfs
    self.host = host ?? LiveHost(sysfs: sysfs)
    self.configuration = configuration
    self.executor = PlanExecutor(sysfs: sysfs, host: self.host)
  }

  public var groups: GroupTransitions { GroupTransitions(manager: self) }
  public var access: GroupAccess { GroupAccess(manager: self) }
  public var guests: GuestAssignment { GuestAssignment(manager: self) }
  public var persistence: BootPersistence { BootPersistence(manager: self) }
  public var virtualFunctions: VirtualFunctions { VirtualFunctions(manager: self) }
  public var records: ManagerRecords { ManagerRecords(manager: self) }
}
