import Foundation
import PCI
import VFIOHost
import VFIOManager

/// What this node may publish to the cluster, read the way a plugin in a pod must read it:
/// the host's network and mounts as the host's init sees them (a pod's own namespaces hide the
/// node's uplink and the disks mounted outside it), and never a group the ledger gives to a
/// user, keeps for a guest or has leased through the broker; groups this driver prepared for
/// its own claims stay (they are allocated, not free).
public struct NodeCatalog: Sendable {
  public let sysfs: Sysfs
  public let stateDirectory: String
  public let view: HostView
  public let allowNoReset: Bool

  public init(sysfs: Sysfs, stateDirectory: String, view: HostView = .hostInit, allowNoReset: Bool = false) {
    self.sysfs = sysfs
    self.stateDirectory = stateDirectory
    self.view = view
    self.allowNoReset = allowNoReset
  }

  /// The catalog now. `prepared`: groups this driver holds for claims.
  public func read(prepared: Set<IOMMUGroupID> = []) throws(KubeletError) -> DeviceCatalog {
    let hidden = view.unreadable(sysfs)
    guard hidden.isEmpty else { throw .hostViewUnavailable(hidden.map(sysfs.path)) }
    let inventory: HostInventory
    do throws(InventoryError) { inventory = try HostInventory.read(sysfs, view: view) } catch {
      throw .usage("the host cannot be read: \(error.description)")
    }
    return DeviceCatalog(inventory: inventory, allowNoReset: allowNoReset, withheld: try withheld(excepting: prepared))
  }

  /// Groups the ledger gives to a user, reserves or has leased, and why, less `prepared`.
  public func withheld(excepting prepared: Set<IOMMUGroupID> = []) throws(KubeletError) -> [IOMMUGroupID: String] {
    var reasons: [IOMMUGroupID: String] = [:]
    do throws(ManagerError) {
      guard let ledger = try Ledger.open(directory: stateDirectory, create: false) else { return [:] }
      for group in try ledger.groups() where !prepared.contains(group.id) {
        if let owner = group.ownerUID { reasons[group.id] = "owned by uid \(owner)" }
        if let guest = group.reservedFor { reasons[group.id] = "reserved for \(guest)" }
        if group.closing { reasons[group.id] = "being given back to the host" }
      }
      for lease in try ledger.leases() where !prepared.contains(lease.groupID) {
        reasons[lease.groupID] = "leased through the broker to uid \(lease.uid)"
      }
    } catch {
      throw .usage("the ledger in \(stateDirectory) cannot be read: \(error.description)")
    }
    return reasons
  }
}
