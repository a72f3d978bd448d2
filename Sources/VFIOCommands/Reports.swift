import PCI
import VFIOHost
import VFIOManager
import VFIOPolicy

/// The JSON documents `vfioctl` prints. Field names are a public interface: see
/// docs/json.md, and `schemaVersion` changes when a field changes meaning or disappears.
public enum Schema {
  public static let version = 1
}

/// Everything known about one PCI function, as `show` and `list --json` print it.
public struct DeviceReport: Codable, Sendable, Equatable {
  public var address: PCIAddress
  public var vendorID: String
  public var deviceID: String
  public var subsystemVendorID: String?
  public var subsystemID: String?
  public var classCode: String
  public var revision: String
  public var vendorName: String?
  public var deviceName: String?
  public var className: String?
  /// Vendor and device names, or `vvvv:dddd` when pci.ids does not know them.
  public var name: String
  public var kind: PCIFunctionKind
  public var driver: String?
  public var driverOverride: String?
  public var iommuGroup: IOMMUGroupID?
  public var numaNode: Int?
  public var headerType: Int
  public var multifunction: Bool
  public var express: Express?
  public var upstreamBridges: [PCIAddress]
  public var resetMethods: [ResetMethod]
  public var resetMethodsSource: ResetChoice.Source
  public var bars: [BAR]
  public var capabilities: Capabilities
  public var sriov: SRIOVState?
  public var physicalFunction: PCIAddress?
  public var interrupt: Interrupt
  public var hostUse: [HostUse]
  public var bootVGA: Bool
  public var verdict: Verdict
  public var configError: String?
  /// What was wrong in the function's sysfs and was skipped (see `PCIDevice.warnings`).
  public var warnings: [String]

  public struct Express: Codable, Sendable, Equatable {
    public var portType: String
    public var version: Int
    public var flr: Bool
  }

  public struct Capabilities: Codable, Sendable, Equatable {
    /// Standard capability IDs in chain order, as two hex digits.
    public var standard: [String]
    /// Extended capability IDs in chain order, as four hex digits.
    public var extended: [String]
    /// False when config space was only partly readable (not root), so absence means unknown.
    public var complete: Bool
    public var powerManagement: PowerManagementCapability?
    public var advancedFeaturesFLR: Bool?
    public var msi: MSICapability?
    public var msix: MSIXCapability?
    public var acs: ACS?
  }

  public struct ACS: Codable, Sendable, Equatable {
    public var supported: [String]
    public var enabled: [String]
  }

  public struct Interrupt: Codable, Sendable, Equatable {
    public var pin: String?
    public var irq: Int?
    public var masking: INTxMasking
    public var sharedWith: [PCIAddress]
  }
}

/// The part of a device `list` prints: identity, placement, driver, reset, BARs, verdict.
/// `show` prints the whole `DeviceReport`.
public struct DeviceSummary: Codable, Sendable, Equatable {
  public var address: PCIAddress
  public var vendorID: String
  public var deviceID: String
  public var classCode: String
  public var className: String?
  public var name: String
  public var kind: PCIFunctionKind
  public var driver: String?
  public var driverOverride: String?
  public var iommuGroup: IOMMUGroupID?
  /// The nearest upstream bridge; nil on a root bus.
  public var parent: PCIAddress?
  public var resetMethods: [ResetMethod]
  public var bars: [BAR]
  public var sriov: SRIOVState?
  public var physicalFunction: PCIAddress?
  public var hostUse: [HostUse]
  public var verdict: Verdict
  public var warnings: [String]
}

/// One IOMMU group with its verdict.
public struct GroupReport: Codable, Sendable, Equatable {
  public var id: IOMMUGroupID
  public var type: String?
  public var devices: [PCIAddress]
  public var endpoints: [PCIAddress]
  public var otherMembers: [String]
  public var verdict: Verdict
  public var reasons: [Reason]
  /// What swift-vfio's ledger holds for the group (detached, or being changed); nil when the
  /// group is the host's.
  public var ledger: LedgerRecord?
}

/// `vfioctl list --json`.
public struct ListReport: Codable, Sendable {
  public var schemaVersion = Schema.version
  public var kernelRelease: String?
  public var iommu: IOMMUSummary
  public var vfio: VFIOSupport
  public var groups: [GroupReport]
  public var devices: [DeviceSummary]
  public var unreadable: [Unreadable]

  public struct IOMMUSummary: Codable, Sendable {
    public var enabled: Bool
    public var units: [IOMMUUnit]
  }

  public struct Unreadable: Codable, Sendable {
    public var name: String
    public var reason: String
  }
}

/// `vfioctl show --json`: one device, or one group with its devices.
public struct ShowReport: Codable, Sendable {
  public var schemaVersion = Schema.version
  public var group: GroupReport?
  public var devices: [DeviceReport]
}

/// `vfioctl explain --json`.
public struct ExplainReport: Codable, Sendable {
  public var schemaVersion = Schema.version
  /// The address or group number asked about.
  public var target: String
  public var group: IOMMUGroupID?
  public var verdict: Verdict
  public var reasons: [Reason]
  public var members: [Assessment.Member]
  /// For a group detached by swift-vfio, `plan.restore` gives back what the ledger recorded.
  public var plan: AssignmentPlan?
  public var ledger: LedgerRecord?
}

/// `vfioctl doctor --json`.
public struct DoctorReport: Codable, Sendable {
  public var schemaVersion = Schema.version
  public var kernelRelease: String?
  public var ok: Bool
  public var findings: [Finding]
  /// The ways into VFIO this kernel offers a VMM.
  public var backends: VFIOBackends?
  /// With `--vm`: the locked memory that VMM needs.
  public var memlock: MemlockReport?
}

/// `doctor --vm RAM [--devices N] [--viommu]`: the limit, and how to set it.
public struct MemlockReport: Codable, Sendable {
  public var requirement: MemlockRequirement
  public var bytes: UInt64
  /// `LimitMEMLOCK=…` for a systemd unit.
  public var systemd: String
  /// `ulimit -l …` (KiB) for a shell that starts the VMM.
  public var ulimit: String
  /// The current process's limit, to compare.
  public var current: Int?

  public init(_ requirement: MemlockRequirement, current: Int?) {
    self.requirement = requirement
    bytes = requirement.bytes
    systemd = "LimitMEMLOCK=\(requirement.systemdLimit)"
    ulimit = "ulimit -l \(requirement.ulimitKiB)"
    self.current = current
  }
}

/// What `detach`, `attach`, `reset`, `recover`, `status` and `history` print with `--json`
/// when they fail: the exit code, the message, and for a refusal each reason.
public struct ErrorReport: Codable, Sendable {
  public var schemaVersion = Schema.version
  public var error: Body

  public struct Body: Codable, Sendable {
    public var exitCode: Int32
    public var message: String
    public var refusals: [ManagerError.Refusal]?
  }

  public init(_ error: ManagerError) {
    var refusals: [ManagerError.Refusal]?
    if case .refused(_, let reasons) = error { refusals = reasons }
    if case .refusedGroups(let groups) = error { refusals = groups.keys.sorted().flatMap { groups[$0] ?? [] } }
    self.error = Body(exitCode: error.exitCode, message: error.description, refusals: refusals)
  }
}
