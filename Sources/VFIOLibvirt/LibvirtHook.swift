import Foundation
import VFIOHost
import VFIOManager

/// libvirt's QEMU hook (`/etc/libvirt/hooks/qemu.d/…`), called by libvirtd as
/// `HOOK DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain's XML on stdin: at
/// `prepare begin` the whole IOMMU groups of the domain's PCI host devices are detached through
/// the manager, given to libvirt's QEMU user and reserved for the domain (or, on any refusal,
/// nothing changes and libvirt shows our reasons); at `release end` they go back to the host
/// exactly, or stay reserved when the domain asks; a libvirtd that reconnects changes nothing.
public struct LibvirtHook {
  /// What the hook does for one libvirt operation.
  public enum Action: String, Sendable, Equatable {
    case assign, release, confirm, none

    /// libvirt runs `prepare begin` before it prepares host devices on every start (also of a
    /// restore or an incoming migration), `release end` after it has let go of them on every
    /// stop (also of a start that failed), and `reconnect begin` / `attach begin` when a
    /// restarted libvirtd finds a running QEMU.
    public init(operation: String, subOperation: String) {
      switch (operation, subOperation) {
      case ("prepare", "begin"): self = .assign
      case ("release", "end"): self = .release
      case ("reconnect", "begin"), ("attach", "begin"): self = .confirm
      default: self = .none
      }
    }
  }

  /// What the ledger records as having detached a group for a domain.
  public static let detachedBy = "libvirt"

  public let manager: AssignmentManager
  /// The owner of the nodes while the domain runs: libvirt's QEMU user (qemu.conf), resolved
  /// only when a domain has PCI host devices.
  public let qemuOwner: () throws(LibvirtHookError) -> Ownership?
  /// The process that called the hook (libvirtd): the groups of a domain not marked to keep
  /// them are its only while it lives (`vfioctl reconcile` gives them back after it died).
  public let runner: ProcessIdentity?

  public init(
    manager: AssignmentManager, runner: ProcessIdentity?, qemuOwner: @escaping () throws(LibvirtHookError) -> Ownership?
  ) {
    self.manager = manager
    self.runner = runner
    self.qemuOwner = qemuOwner
  }

  /// One line per group changed or found, for stderr (libvirt logs it; on failure it shows the
  /// error instead).
  public struct Outcome: Sendable, Equatable {
    public let action: Action
    public let lines: [String]
  }

  public func run(domain: String, operation: String, subOperation: String, xml: Data) throws(LibvirtHookError)
    -> Outcome
  {
    let action = Action(operation: operation, subOperation: subOperation)
    guard action != .none else { return Outcome(action: action, lines: []) }
    let definition: DomainDefinition
    do {
      definition = try DomainDefinition.parse(xml)
    } catch {
      throw .definition(error)
    }
    guard definition.name == domain else {
      throw .usage("the XML on stdin describes domain '\(printable(definition.name))', not '\(printable(domain))'")
    }
    let guest = definition.reservationName
    let devices = definition.pciAddresses
    if devices.isEmpty && action != .release { return Outcome(action: action, lines: []) }
    let owner = action == .assign ? try qemuOwner() : nil
    let groups: [GuestAssignment.GuestGroup]
    do {
      switch action {
      case .assign:
        groups = try manager.guests.assign(
          devices, to: guest, owner: owner, detachedBy: Self.detachedBy,
          runner: definition.keepReserved ? nil : runner)
      case .release:
        groups = try manager.guests.release(
          guest: guest, devices: devices, keep: definition.keepReserved, detachedBy: Self.detachedBy)
      case .confirm:
        groups = try manager.guests.confirm(
          guest: guest, devices: devices, detachedBy: Self.detachedBy, runner: definition.keepReserved ? nil : runner)
      case .none: groups = []
      }
    } catch {
      throw .manager(error)
    }
    let lines = groups.map { group in
      "swift-vfio: IOMMU group \(group.group) (\(group.devices.map(\.description).joined(separator: ", "))): \(group.outcome)"
    }
    return Outcome(action: action, lines: lines)
  }
}

extension DomainDefinition {
  /// The name the domain's groups are reserved under: its own when `vfioctl reserve` accepts
  /// it (letters, digits, - _ . @), otherwise `libvirt-UUID`.
  public var reservationName: String {
    if Reservation.isGuestName(name) { return name }
    return "libvirt-" + (uuid ?? "").lowercased().filter { $0.isHexDigit || $0 == "-" }
  }
}

/// Why the hook refused or failed; libvirt shows the text and does not start the domain.
public enum LibvirtHookError: Error, CustomStringConvertible {
  case definition(DomainDefinitionError)
  case qemuConfig(QEMUDriverConfigError)
  case manager(ManagerError)
  case usage(String)

  public var description: String {
    switch self {
    case .definition(let error): return error.description
    case .qemuConfig(let error): return error.description
    case .manager(let error): return error.description
    case .usage(let why): return why
    }
  }

  /// The manager's codes (1 refused, 74 a step failed, 75 busy…), 64 for input it cannot use.
  public var exitCode: Int32 {
    switch self {
    case .manager(let error): return error.exitCode
    case .definition, .usage: return 64
    case .qemuConfig: return 78
    }
  }
}
