import PCI
import VFIOBroker
import VFIOBrokerClient
import VFIOHost

/// Failures `vfioctl` reports, each with the exit code of sysexits(3) it maps to.
public enum CLIError: Error, Equatable, CustomStringConvertible {
  case noSuchDevice(String)
  case noSuchGroup(IOMMUGroupID)
  case unavailable(String)
  case internalError(String)
  case usage(String)
  /// The broker refused or failed.
  case broker(BrokerError)

  /// 66 no such device, 69 host data unavailable, 70 internal; the broker's refusals 1,
  /// a held group 75, its ledger 65, an unreachable broker 69.
  public var exitCode: Int32 {
    switch self {
    case .noSuchDevice, .noSuchGroup: 66
    case .unavailable: 69
    case .internalError: 70
    case .usage: 64
    case .broker(let error):
      switch error.code {
      case .notOwner, .notDetached, .reserved, .notPermitted, .openFailed: 1
      case .leased, .busy, .closing: 75
      case .ledger: 65
      case .invalidTarget, .malformed, .oversized, .version: 64
      case .internalError: 69
      }
    }
  }

  public var description: String {
    switch self {
    case .noSuchDevice(let address):
      return TargetNotFound.device(address)
    case .noSuchGroup(let id):
      return TargetNotFound.group(id)
    case .unavailable(let why): return why
    case .internalError(let why): return "internal error: \(why)"
    case .usage(let why): return why
    case .broker(let error): return "broker: [\(error.code.rawValue)] \(error.message)" + (error.next.map { "\n    next: \($0)" } ?? "")
    }
  }
}
