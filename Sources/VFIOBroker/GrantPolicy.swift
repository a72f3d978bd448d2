import PCI
import VFIOHost
import Foundation
import VFIOBrokerClient
import VFIOManager

/// Who may have a group's descriptors: the one decision the broker makes, from the ledger alone.
/// The socket itself grants nothing; a caller is its SO_PEERCRED uid, and a group goes to it
/// only where the ledger says that uid owns the group (and, for a reserved group, only for the
/// guest it is reserved for), and only while nobody holds it.
public enum GrantPolicy {
  public static func decide(
    caller: PeerCredentials, group id: IOMMUGroupID, record: LedgerGroup?, lease: LedgerLease?, pending: Bool = false,
    guest: String?
  ) throws(BrokerError) {
    guard let record, record.state == .detached else {
      throw BrokerError(
        .notDetached, "IOMMU group \(id) is not detached by swift-vfio",
        next: "an administrator runs `vfioctl detach \(id) --owner \(caller.uid) --broker-only`")
    }
    guard let owner = record.ownership, owner.uid == caller.uid else {
      // Whose it is stays unsaid: a refusal tells the caller nothing about other users' groups.
      throw BrokerError(
        .notOwner, "IOMMU group \(id) is not yours (uid \(caller.uid))",
        next: "an administrator gives it to you: `vfioctl own \(id) --owner \(caller.uid) --broker-only`")
    }
    if let reserved = record.reservedFor, guest != reserved {
      throw BrokerError(
        .reserved,
        guest.map { "IOMMU group \(id) is reserved for another guest than \($0)" }
          ?? "IOMMU group \(id) is reserved for a guest; say which one you run",
        next: "open it with the guest's name (`--guest NAME`)")
    }
    // An administrator is taking it back (attach under the group's lock): no grant may slip in.
    if record.closing {
      throw BrokerError(
        .closing, "IOMMU group \(id) is being given back to the host by the administrator",
        next: "ask the administrator; `vfioctl status \(id)` shows it")
    }
    if pending {
      throw BrokerError(.leased, "IOMMU group \(id) is being granted to another request right now", next: "try again later")
    }
    if let lease {
      throw BrokerError(
        .leased, "IOMMU group \(id) is held by pid \(lease.pid) since \(lease.started.formatted(.iso8601))",
        next: "wait until that process ends, or close its descriptors; `vfioctl status \(id)` shows the holder")
    }
  }
}
