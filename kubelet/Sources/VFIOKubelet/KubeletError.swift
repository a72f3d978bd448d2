import Foundation
import PCI
import VFIOHost
import VFIOManager

/// Why a kubelet plugin could not do what it was asked; each case says what to do next.
/// A claim's error is answered in the gRPC response (the kubelet retries and shows it on the
/// pod); a plugin that cannot start exits with it.
public enum KubeletError: Error, Equatable, CustomStringConvertible {
  /// The claim's allocation could not be found or read.
  case claimUnknown(uid: String, why: String)
  /// The claim names a device this node does not publish.
  case noSuchDevice(claim: String, device: String, published: [String])
  /// The claim's configuration for this driver is not what we take.
  case badConfiguration(claim: String, why: String)
  /// The group is prepared for another claim.
  case taken(claim: String, group: IOMMUGroupID, by: String)
  /// The assignment manager refused or failed; nothing of this claim stays detached.
  case manager(claim: String, ManagerError)
  case cdi(path: String, String)
  case metadata(path: String, String)
  case checkpoint(path: String, String)
  case socket(path: String, String)
  case apiServer(String)
  /// The host's own network or mount view cannot be read: the plugin publishes nothing.
  case hostViewUnavailable([String])
  case usage(String)

  /// sysexits(3), as vfioctl's other errors: 64 usage, 69 unavailable, 73 cannot create.
  public var exitCode: Int32 {
    switch self {
    case .usage: 64
    case .apiServer, .claimUnknown, .hostViewUnavailable: 69
    case .cdi, .metadata, .checkpoint, .socket: 73
    case .manager(_, let error): error.exitCode
    case .noSuchDevice, .badConfiguration, .taken: 1
    }
  }

  public var description: String {
    switch self {
    case .claimUnknown(let uid, let why):
      "claim \(uid): its allocation cannot be read: \(why); check that the plugin can read ResourceClaims (RBAC) or that --claims holds <uid>.json"
    case .noSuchDevice(let claim, let device, let published):
      "claim \(claim) asks for \(device), which this node does not publish (it has: \(published.isEmpty ? "none" : published.joined(separator: ", "))); reallocate the claim"
    case .badConfiguration(let claim, let why):
      "claim \(claim): \(why); fix the opaque parameters of the claim's config for this driver"
    case .taken(let claim, let group, let by):
      "claim \(claim): IOMMU group \(group) is prepared for claim \(by); unprepare that claim first"
    case .manager(let claim, let error):
      "claim \(claim): \(error)"
    case .cdi(let path, let why):
      "CDI spec \(path): \(why); check that the CDI directory is writable (--cdi-dir)"
    case .metadata(let path, let why):
      "device metadata \(path): \(why); check that the kubelet's plugin directory is writable (--kubelet-dir)"
    case .checkpoint(let path, let why):
      "checkpoint \(path): \(why); check the state directory (--state)"
    case .socket(let path, let why):
      "socket \(path): \(why); check --kubelet-dir and that no other plugin serves there"
    case .apiServer(let why):
      "API server: \(why)"
    case .hostViewUnavailable(let paths):
      "the host's network and mounts cannot be read (\(paths.joined(separator: ", "))): nothing is published, since a device the host uses could not be told apart; run the plugin in the host's PID namespace (hostPID: true) as root"
    case .usage(let why): why
    }
  }
}
