import VFIOHost

/// Failures `vfioctl` reports, each with the exit code of sysexits(3) it maps to.
public enum CLIError: Error, Equatable, CustomStringConvertible {
  case noSuchDevice(String)
  case noSuchGroup(Int)
  case unavailable(String)
  case internalError(String)

  /// 66 no such device, 69 host data unavailable, 70 internal.
  public var exitCode: Int32 {
    switch self {
    case .noSuchDevice, .noSuchGroup: 66
    case .unavailable: 69
    case .internalError: 70
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
    }
  }
}
