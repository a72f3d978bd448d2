import Foundation
import GRDB
import PCI
import VFIOHost
import VFIOPolicy

/// Where a group stands, as far as swift-vfio knows.
public enum GroupState: String, Codable, Sendable, DatabaseValueConvertible {
  /// Host drivers may bind; nothing of ours is in force.
  case host
  /// Every endpoint is on the VFIO driver by our hand; `members` says what to restore.
  case detached
  /// A plan is being executed (or was interrupted: see the group's unfinished operation).
  case changing
}

/// A group the ledger knows: the unit swift-vfio moves between the host and VFIO.
public struct LedgerGroup: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "iommu_group"
  public var id: IOMMUGroupID
  public var state: GroupState
  /// The VFIO driver it was detached to.
  public var driver: String?
  /// When it entered `state`.
  public var since: Date
  public var uid: Int
  /// Who may open the group's nodes (`/dev/vfio/N` and its devices' cdevs): a ledger fact
  /// that outlives an attach and is applied again after every bind, until `disown`.
  public var ownerUID: Int? = nil
  public var ownerGID: Int? = nil
  public var mode: Int? = nil
  public var ownedSince: Date? = nil
  /// The guest (or job) the group is kept for while it is not running.
  public var reservedFor: String? = nil
  public var reservedSince: Date? = nil
  /// Kept across reboots and hot-plug by generated udev rules and `vfioctl reconcile`.
  public var persisted: Bool = false
  /// `/proc/sys/kernel/random/boot_id` when it was detached: a detachment that was not
  /// persisted ends with the boot it was made in.
  public var bootID: String? = nil
  /// `detach` or `vfs` (SR-IOV VFs created detached, which lowering the VF count may attach).
  public var detachedBy: String? = nil
  /// The owner reaches the group only through descriptors the broker grants: the nodes stay
  /// root's, mode 0600, whatever `ownership` says.
  public var brokerOnly: Bool = false
  /// An administrator is taking the group back (`attach` while the broker has it leased):
  /// set under the group's lock before the holder is asked to let go, so no new grant can
  /// slip in between the revoke and the attach.
  public var closing: Bool = false
  /// The process whose life bounds the reservation (libvirtd, for a domain its hook took the
  /// group for), by pid and start time: when it is gone and nothing holds the group's nodes,
  /// nobody will give the group back but `reconcile`. nil for a reservation that outlives its
  /// guest (`reserve`, or a domain marked to keep its groups).
  public var runnerPID: Int? = nil
  public var runnerStart: Int64? = nil

  /// The group's row, changed by `change`; a new row (state host) when there is none yet, so
  /// that what other commands recorded (owner, reservation) is never lost by a rewrite.
  static func update(_ db: Database, group: IOMMUGroupID, _ change: (inout LedgerGroup) -> Void) throws {
    var record =
      try LedgerGroup.fetchOne(db, key: group)
      ?? LedgerGroup(id: group, state: .host, driver: nil, since: Date(), uid: Int(getuid()))
    change(&record)
    try record.save(db)
  }

  /// nil without an owner, and for values no uid, gid or mode can have (a tampered ledger
  /// must not reach chown with them).
  public var ownership: Ownership? {
    let ids = 0..<Int(UInt32.max)
    guard let ownerUID, ids.contains(ownerUID), ids.contains(ownerGID ?? 0), (0...0o777).contains(mode ?? 0) else {
      return nil
    }
    return Ownership(uid: ownerUID, gid: ownerGID ?? 0, mode: mode ?? Ownership.defaultMode)
  }

  /// What the group's nodes carry: the owner's, or root's 0600 for a broker-only owner.
  public var nodeOwnership: Ownership? {
    guard let ownership else { return nil }
    return brokerOnly ? .rootOnly : ownership
  }
}

/// One endpoint of a detached group and exactly what it had before.
public struct LedgerMember: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "member"
  public var groupID: IOMMUGroupID
  public var address: String
  /// The card that was in the slot, so a different one in its place is noticed.
  public var vendorID: Int
  public var deviceID: Int
  public var originalDriver: String?
  public var originalOverride: String?

  public init(
    groupID: IOMMUGroupID, address: String, vendorID: Int, deviceID: Int, originalDriver: String?, originalOverride: String?
  ) {
    self.groupID = groupID
    self.address = address
    self.vendorID = vendorID
    self.deviceID = deviceID
    self.originalDriver = originalDriver
    self.originalOverride = originalOverride
  }

  public var pciAddress: PCIAddress? { try? PCIAddress(parsing: address) }
  public var original: DriverBinding { DriverBinding(driver: originalDriver, driverOverride: originalOverride) }
  public var identity: String { cardIdentity(vendorID: vendorID, deviceID: deviceID) }
  /// The card in the slot is the one that was detached (a different card keeps its binding).
  public func isSameCard(as device: PCIDevice) -> Bool {
    vendorID == Int(device.vendorID) && deviceID == Int(device.deviceID)
  }
}

/// `vendor:device` as lspci prints it: how the ledger names the card that was in a slot.
public func cardIdentity(vendorID: Int, deviceID: Int) -> String {
  hex(UInt16(truncatingIfNeeded: vendorID), width: 4) + ":" + hex(UInt16(truncatingIfNeeded: deviceID), width: 4)
}

extension PCIDevice {
  var cardIdentity: String { VFIOManager.cardIdentity(vendorID: Int(vendorID), deviceID: Int(deviceID)) }
}

extension Array where Element == LedgerMember {
  /// What each member was bound to before it was detached, as plans take it.
  var originalBindings: [PCIAddress: DriverBinding] {
    Dictionary(compactMap { member in member.pciAddress.map { ($0, member.original) } }, uniquingKeysWith: { a, _ in a })
  }
}

/// A plan being (or having been) executed on a group, and how far it got.
public struct LedgerOperation: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
  public static let databaseTableName = "operation"
  public enum Kind: String, Codable, Sendable, DatabaseValueConvertible {
    case detach, attach, reset
  }
  public enum Status: String, Codable, Sendable, DatabaseValueConvertible {
    case running
    case done
    /// A step failed and every device was put back.
    case rolledBack = "rolled-back"
    /// Interrupted, then finished or rolled back by the next command (see `detail`).
    case recovered
    /// Neither done nor undone: the devices need a look (the history says which).
    case failed
  }

  public var id: Int64?
  public var groupID: IOMMUGroupID
  public var kind: Kind
  /// JSON of the `[PlanStep]` executed, numbered from 1 as `detach --dry-run` prints them.
  public var plan: String
  /// Steps performed and verified.
  public var stepsDone: Int
  public var status: Status
  public var started: Date
  public var finished: Date?
  public var pid: Int
  public var uid: Int
  public var command: String
  public var detail: String?

  public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

  public var steps: [PlanStep] { (try? JSONDecoder().decode([PlanStep].self, from: Data(plan.utf8))) ?? [] }
}

extension LedgerOperation {
  /// An operation this process starts now with `steps` as its plan, none of them done yet.
  public init(starting kind: Kind, group: IOMMUGroupID, steps: [PlanStep], command: String) {
    let plan = (try? JSONEncoder().encode(steps)).map { String(decoding: $0, as: UTF8.self) } ?? "[]"
    self.init(
      id: nil, groupID: group, kind: kind, plan: plan, stepsDone: 0, status: .running, started: Date(), finished: nil,
      pid: Int(getpid()), uid: Int(getuid()), command: command, detail: nil)
  }
}

/// One line of the append-only history: who did what to which group, and how it ended.
public struct HistoryEntry: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
  public static let databaseTableName = "history"
  public var id: Int64?
  public var at: Date
  public var uid: Int
  public var pid: Int
  public var groupID: IOMMUGroupID?
  public var command: String
  /// `ok`, `refused`, `failed`, `rolled-back`, `recovered`, `dry-run`.
  public var result: String
  public var detail: String

  public init(at: Date = Date(), uid: Int, pid: Int, groupID: IOMMUGroupID?, command: String, result: String, detail: String) {
    self.at = at
    self.uid = uid
    self.pid = pid
    self.groupID = groupID
    self.command = HistoryEntry.bounded(command)
    self.result = result
    self.detail = HistoryEntry.bounded(detail)
  }

  public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}
