import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// Why the assignment manager did not (or could not fully) do what was asked. Each case says
/// what happened to the devices and what to do next, and maps to a sysexits(3) code.
public enum ManagerError: Error, Equatable, CustomStringConvertible {
  case noSuchDevice(String)
  case noSuchGroup(IOMMUGroupID)
  /// The device exists but no IOMMU isolates it: there is no group to move.
  case noGroup(String)
  case unavailable(String)
  /// The host's state does not allow it; nothing was changed.
  case refused(group: IOMMUGroupID, [Refusal])
  /// Several groups asked for at once (a guest's devices), each with its reasons; nothing was changed.
  case refusedGroups([IOMMUGroupID: [Refusal]])
  /// Another process holds the group's lock.
  case busy(group: IOMMUGroupID, holder: String, waited: Double)
  /// A step failed; `restored` says whether every device was put back as it was.
  case stepFailed(group: IOMMUGroupID, step: Int, description: String, why: String, restored: Bool, rollbackErrors: [String])
  case notDetached(group: IOMMUGroupID, why: String)
  case ledger(path: String, String)
  case ledgerTooNew(path: String, unknown: [String])
  case stateDirectory(path: String, errno: Int32)
  /// The state directory is not safe to keep the ledger in (others may write it, or it is a link).
  case unsafeStateDirectory(path: String, why: String)
  case usage(String)

  /// One reason a command was refused, with the next step.
  public struct Refusal: Equatable, Sendable, Codable, CustomStringConvertible {
    public let code: String
    public let message: String
    public let remedy: String?
    public init(code: String, message: String, remedy: String? = nil) {
      self.code = code
      self.message = message
      self.remedy = remedy
    }
    public init(_ reason: Reason) { self.init(code: reason.code.rawValue, message: reason.message, remedy: reason.remedy) }
    public var description: String { "[\(code)] \(message)" + (remedy.map { "\n    next: \($0)" } ?? "") }
  }

  /// 1 refused, 64 usage, 65 ledger unreadable or newer, 66 no such device, 69 host data
  /// unavailable, 73 state directory, 74 a step failed, 75 group busy.
  public var exitCode: Int32 {
    switch self {
    case .refused, .refusedGroups, .notDetached, .noGroup: 1
    case .usage: 64
    case .ledger, .ledgerTooNew: 65
    case .noSuchDevice, .noSuchGroup: 66
    case .unavailable: 69
    case .stateDirectory, .unsafeStateDirectory: 73
    case .stepFailed: 74
    case .busy: 75
    }
  }

  public var description: String {
    switch self {
    case .noSuchDevice(let address):
      return TargetNotFound.device(address)
    case .noSuchGroup(let id):
      return TargetNotFound.group(id)
    case .noGroup(let address):
      return "\(address) has no IOMMU group, so there is nothing VFIO could be given; `vfioctl explain \(address)` says why"
    case .unavailable(let why):
      return why
    case .refused(let group, let refusals):
      return "IOMMU group \(group) was left as it is:\n" + refusals.map { "  - \($0)" }.joined(separator: "\n")
    case .refusedGroups(let groups):
      return "nothing was changed:\n"
        + groups.keys.sorted().map { group in
          "IOMMU group \(group):\n" + (groups[group] ?? []).map { "  - \($0)" }.joined(separator: "\n")
        }.joined(separator: "\n")
    case .busy(let group, let holder, let waited):
      return
        "IOMMU group \(group) is being changed by \(holder); gave up after \(formatSeconds(waited)). Wait for it to finish and try again (a crashed holder releases its lock at once)"
    case .stepFailed(let group, let step, let description, let why, let restored, let rollbackErrors):
      var text = "IOMMU group \(group): step \(step) (\(description)) failed: \(why)"
      if restored {
        text += "\nEvery device of the group was put back on its original driver and driver_override."
      } else {
        text += "\nPutting the group back failed too:\n" + rollbackErrors.map { "  - \($0)" }.joined(separator: "\n")
        text += "\nnext: `vfioctl status \(group)` shows each device; `vfioctl recover` tries again"
      }
      return text
    case .notDetached(let group, let why):
      return "IOMMU group \(group) \(why)"
    case .ledger(let path, let why):
      return "the ledger \(path) cannot be used: \(why); check the file (or move it aside) and try again"
    case .ledgerTooNew(let path, let unknown):
      return
        "the ledger \(path) was written by a newer swift-vfio (schema \(unknown.joined(separator: ", "))): upgrade vfioctl; this version changes nothing in it"
    case .stateDirectory(let path, let code):
      return
        "cannot use the state directory \(path): \(String(cString: strerror(code))); run as root or pass --state DIR"
    case .unsafeStateDirectory(let path, let why):
      return
        "refusing the state directory \(path): \(why); the ledger decides who gets devices, so only its owner may write there: `chmod 0700 \(path)` (and chown it to root), or pass --state DIR"
    case .usage(let why):
      return why
    }
  }
}

func formatSeconds(_ seconds: Double) -> String {
  seconds < 1 ? "\(Int(seconds * 1000)) ms" : String(format: "%.1f s", seconds)
}
