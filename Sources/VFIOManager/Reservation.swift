import Foundation
import VFIOHost

/// A detached group kept for one guest (or job) while it is not running: nobody else may
/// detach, own or assign it, and `attach` refuses it until the reservation ends. A reservation
/// made by libvirt's hook lasts while the process that runs the guest (libvirtd) runs; one made
/// by `vfioctl reserve`, or kept by a domain's mark, lasts until it is ended.
public struct Reservation: Sendable, Equatable {
  public let guest: String
  public let since: Date
  /// The process whose life bounds the reservation, by pid and start time; nil: nothing does.
  public let runner: ProcessIdentity?

  public init(guest: String, since: Date = Date(), runner: ProcessIdentity? = nil) {
    self.guest = guest
    self.since = since
    self.runner = runner
  }

  /// Names a reservation may carry: they are printed in lists and written to udev rules.
  public static func isGuestName(_ name: String) -> Bool {
    !name.isEmpty && name.count <= 128
      && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }
  }

  static func validate(guest name: String) throws(ManagerError) {
    guard isGuestName(name) else {
      throw .usage("'\(printable(name))': a guest name of letters, digits and - _ . @ (at most 128)")
    }
  }
}

extension LedgerGroup {
  /// The group's reservation, as its row records it.
  public var reservation: Reservation? {
    get {
      reservedFor.map { guest in
        Reservation(
          guest: guest, since: reservedSince ?? since,
          runner: runnerPID.map { ProcessIdentity(pid: $0, startTime: runnerStart) })
      }
    }
    set {
      reservedFor = newValue?.guest
      reservedSince = newValue?.since
      runnerPID = newValue?.runner?.pid
      runnerStart = newValue?.runner?.startTime
    }
  }
}
