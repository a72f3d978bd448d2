import PCI
import VFIOHost

/// The answer to "can this be given to a guest or a userspace driver?".
public enum Verdict: String, Sendable, Codable, Comparable {
  case assignable
  /// Assignable once the listed conditions are accepted (companions detached with it, a bus
  /// reset that also hits other functions, …).
  case conditional
  case notAssignable = "not-assignable"

  private var rank: Int {
    switch self {
    case .assignable: 0
    case .conditional: 1
    case .notAssignable: 2
    }
  }

  public static func < (a: Verdict, b: Verdict) -> Bool { a.rank < b.rank }

  public var label: String {
    switch self {
    case .assignable: "assignable"
    case .conditional: "assignable with conditions"
    case .notAssignable: "not assignable"
    }
  }
}

/// One fact behind a verdict, with the devices it is about and what to do about it.
public struct Reason: Sendable, Codable, Equatable {
  public enum Code: String, Sendable, Codable {
    case noIOMMU = "no-iommu"
    case noGroup = "no-group"
    case noEndpoint = "no-endpoint"
    case notEndpoint = "not-endpoint"
    case platformDevice = "platform-device"
    case hostInUse = "host-in-use"
    case hostUse = "host-use"
    case companions
    case behindPCIBridge = "behind-pci-bridge"
    case acsMissing = "acs-missing"
    case subPageBAR = "sub-page-bar"
    case sharedBARPage = "shared-bar-page"
    case noReset = "no-reset"
    case busReset = "bus-reset"
    case sharedINTx = "shared-intx"
    case sriovVFs = "sriov-vfs"
    case configUnreadable = "config-unreadable"
    /// Kept by swift-vfio for a guest that is not running.
    case reserved
  }

  public enum Severity: String, Sendable, Codable, Comparable {
    /// Assignment must not happen.
    case blocker
    /// Assignment is possible with this consequence.
    case condition

    public static func < (a: Severity, b: Severity) -> Bool { a == .blocker && b == .condition }
  }

  public let code: Code
  public let severity: Severity
  public let message: String
  /// The devices the reason is about.
  public let devices: [PCIAddress]
  /// The next step for the user, when there is one.
  public let remedy: String?

  public init(_ code: Code, _ severity: Severity, _ message: String, devices: [PCIAddress] = [], remedy: String? = nil)
  {
    self.code = code
    self.severity = severity
    self.message = message
    self.devices = devices
    self.remedy = remedy
  }
}

extension [Reason] {
  /// The verdict these reasons add up to.
  public var verdict: Verdict {
    if contains(where: { $0.severity == .blocker }) { return .notAssignable }
    return isEmpty ? .assignable : .conditional
  }
}
