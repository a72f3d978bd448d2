import Foundation
import PCI
import VFIOHost
import GRDB

/// A grant the broker made: the group's descriptors are in the hands of `pid` (uid `uid`).
/// It ends when that process no longer holds any of the group's nodes, and the group is then
/// reset and free for its owner again; a broker that restarts finds its leases here.
public struct LedgerLease: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "lease"
  public var groupID: IOMMUGroupID
  public var uid: Int
  public var gid: Int
  public var pid: Int
  public var command: String
  /// `legacy` or `iommufd`.
  public var backend: String
  /// The device the grant named (a group grant names every endpoint; this is the first).
  public var device: String
  /// The guest the grant was for, when the group is reserved.
  public var guest: String?
  public var started: Date
  public var bootID: String?
  /// The holder's start time (`/proc/PID/stat` field 22, clock ticks since boot): with the
  /// boot, what tells the process from a later one that got the same pid.
  public var pidStart: Int64? = nil

  public init(
    groupID: IOMMUGroupID, uid: Int, gid: Int, pid: Int, command: String, backend: String, device: String, guest: String?,
    started: Date = Date(), bootID: String?, pidStart: Int64? = nil
  ) {
    self.groupID = groupID
    self.uid = uid
    self.gid = gid
    self.pid = pid
    self.command = command
    self.backend = backend
    self.device = device
    self.guest = guest
    self.started = started
    self.bootID = bootID
    self.pidStart = pidStart
  }
}
