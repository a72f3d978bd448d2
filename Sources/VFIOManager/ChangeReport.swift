import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// What a detach, attach, reset or recovery did (or, with `--dry-run`, would do).
public struct ChangeReport: Codable, Sendable, Equatable {
  public enum Outcome: String, Codable, Sendable {
    case done
    /// The group already was where it was asked to go; nothing was written.
    case alreadyDone = "already-done"
    case dryRun = "dry-run"
  }

  public let action: LedgerOperation.Kind
  public let group: IOMMUGroupID
  public let outcome: Outcome
  /// Numbered from 1, as `SWIFT_VFIO_FAULT_AFTER_STEP` counts them.
  public let steps: [PlanStep]
  /// What the command found unfinished from an earlier run and did about it first.
  public let recovered: String?
  public let members: [MemberChange]
  /// Overrides used (`--force`, `--allow-no-reset`), devices that disappeared, and the like.
  public internal(set) var notes: [String]

  public struct MemberChange: Codable, Sendable, Equatable {
    public let address: PCIAddress
    public let before: DriverBinding?
    /// nil when the device is gone.
    public let after: DriverBinding?
  }
}

/// What the ledger says of groups, with what sysfs shows now.
public struct StatusReport: Codable, Sendable, Equatable {
  public let ledger: String?
  public let groups: [GroupStatus]

  public struct GroupStatus: Codable, Sendable, Equatable {
    public let group: IOMMUGroupID
    public let state: GroupState
    public let driver: String?
    public let since: String?
    public let uid: Int?
    public let members: [MemberStatus]
    public let unfinished: UnfinishedOperation?
    public let holders: [OpenHolder]
    /// The broker's grant of the group, while it lasts.
    public let lease: LeaseStatus?
  }

  public struct LeaseStatus: Codable, Sendable, Equatable {
    public let uid: Int
    public let pid: Int
    public let command: String
    public let backend: String
    public let guest: String?
    public let since: String
  }

  public struct MemberStatus: Codable, Sendable, Equatable {
    public let address: String
    /// vendor:device recorded at detach, and what is in the slot now (nil: gone).
    public let identity: String
    public let identityNow: String?
    public let original: DriverBinding
    public let now: DriverBinding?
  }

  public struct UnfinishedOperation: Codable, Sendable, Equatable {
    public let kind: LedgerOperation.Kind
    public let stepsDone: Int
    public let steps: Int
    public let pid: Int
    public let started: String
  }
}

/// UTC, to the second: `2026-12-01T12:00:00Z`.
public func timestamp(_ date: Date) -> String {
  let formatter = ISO8601DateFormatter()
  formatter.formatOptions = [.withInternetDateTime]
  return formatter.string(from: date)
}

/// One history entry as `vfioctl history` prints it, times in UTC.
public struct HistoryLine: Codable, Sendable, Equatable {
  public let at: String
  public let uid: Int
  public let pid: Int
  public let group: IOMMUGroupID?
  public let command: String
  public let result: String
  public let detail: String

  public init(_ entry: HistoryEntry) {
    at = timestamp(entry.at)
    uid = entry.uid
    pid = entry.pid
    group = entry.groupID
    command = entry.command
    result = entry.result
    detail = entry.detail
  }
}
