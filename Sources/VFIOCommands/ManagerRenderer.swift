import Foundation
import VFIOHost
import VFIOManager
import VFIOPolicy

/// Human text for what the assignment manager did; pure functions of the reports.
public enum ManagerRenderer {
  public static func change(_ report: ChangeReport) -> String {
    var out = report.recovered.map { "Recovered first: \($0)\n\n" } ?? ""
    let verb = report.action.rawValue
    switch report.outcome {
    case .dryRun: out += "\(verb) IOMMU group \(report.group) (dry run, nothing was changed):\n"
    case .alreadyDone: out += "IOMMU group \(report.group): nothing to do (already \(verb == "detach" ? "detached" : "done")).\n"
    case .done: out += "\(verb) IOMMU group \(report.group): done.\n"
    }
    if !report.steps.isEmpty {
      out += report.outcome == .dryRun ? "" : "Steps performed and verified:\n"
      out += HumanRenderer.steps(report.steps)
    }
    for note in report.notes { out += "note: \(note)\n" }
    if !report.members.isEmpty {
      var table = TextTable(header: ["  ADDRESS", "BEFORE", "NOW"])
      for member in report.members {
        table.rows.append([
          "  " + HumanRenderer.short(member.address), member.before?.description ?? "-",
          member.after?.description ?? "gone",
        ])
      }
      out += "\n" + table.render()
    }
    return out
  }

  public static func status(_ report: StatusReport) -> String {
    guard !report.groups.isEmpty else {
      return report.ledger == nil
        ? "No ledger yet: swift-vfio has changed nothing on this host.\n"
        : "Every group is with the host (ledger \(report.ledger ?? "")).\n"
    }
    var out = ""
    for group in report.groups {
      out += "IOMMU group \(group.group): \(group.state.rawValue)"
      if let driver = group.driver, group.state != .host { out += " to \(driver)" }
      if let since = group.since { out += " since \(since)" }
      if let uid = group.uid { out += " (uid \(uid))" }
      out += "\n"
      if let op = group.unfinished {
        out +=
          "  unfinished \(op.kind.rawValue) by pid \(op.pid) since \(op.started): \(op.stepsDone) of \(op.steps) steps done; the next vfioctl on this group (or `vfioctl recover`) puts it right\n"
      }
      if let lease = group.lease {
        out += "  leased by the broker to uid \(lease.uid), pid \(lease.pid) (\(printable(lease.command))), \(lease.backend)"
        out += (lease.guest.map { " for \(printable($0))" } ?? "") + " since \(lease.since)\n"
      }
      for holder in group.holders { out += "  open: \(printable(holder.description))\n" }
      if !group.members.isEmpty {
        var table = TextTable(header: ["  ADDRESS", "CARD", "ORIGINAL", "NOW"])
        for member in group.members {
          let card =
            member.identityNow.map { $0 == member.identity ? $0 : "\($0) (was \(member.identity))" } ?? "gone"
          table.rows.append([
            "  " + member.address, card, member.original.description, member.now?.description ?? "gone",
          ])
        }
        out += table.render()
      }
    }
    return out
  }

  public static func owner(_ report: OwnerReport) -> String { owners([report]) }

  public static func owners(_ reports: [OwnerReport]) -> String {
    guard !reports.isEmpty else { return "Every group is the host's: none is detached, owned or reserved.\n" }
    var table = TextTable(header: ["GROUP", "STATE", "OWNER", "SINCE", "RESERVED FOR", "PERSISTED", "OPEN"])
    for report in reports {
      table.rows.append([
        "\(report.group)", report.state.rawValue, report.owner?.description ?? "-", report.ownedSince ?? "-",
        report.reservedFor.map {
          "\($0) since \(report.reservedSince ?? "?")" + (report.reservedWhileRunning.map { " while pid \($0) runs" } ?? "")
        } ?? "-",
        report.persisted ? "yes" : "no",
        report.holders.isEmpty ? "no" : report.holders.map(\.description).joined(separator: "; "),
      ])
    }
    return table.render()
  }

  public static func virtualFunctions(_ report: VirtualFunctionReport) -> String {
    var out = "\(report.physicalFunction): \(report.before) -> \(report.after) VF\(report.after == 1 ? "" : "s")\n"
    for note in report.notes { out += "  \(note)\n" }
    if !report.virtualFunctions.isEmpty {
      var table = TextTable(header: ["  VF", "GROUP", "DRIVER", "OWNER"])
      for vf in report.virtualFunctions {
        table.rows.append([
          "  " + HumanRenderer.short(vf.address), vf.group.map(String.init) ?? "-", vf.driver ?? "-",
          vf.owner?.description ?? "-",
        ])
      }
      out += table.render()
    }
    return out
  }

  public static func refusals(_ refusals: [LedgerRefusal]) -> String {
    guard !refusals.isEmpty else { return "No refusals counted.\n" }
    var table = TextTable(header: ["GROUP", "UID", "CODE", "COUNT", "FIRST", "LAST", "LAST DETAIL"])
    for refusal in refusals {
      table.rows.append([
        "\(refusal.groupID)", "\(refusal.uid)", refusal.code, "\(refusal.count)", timestamp(refusal.first),
        timestamp(refusal.last), refusal.detail,
      ])
    }
    return table.render()
  }

  public static func history(_ entries: [HistoryLine]) -> String {
    guard !entries.isEmpty else { return "No history.\n" }
    var table = TextTable(header: ["WHEN", "UID", "GROUP", "RESULT", "COMMAND", "DETAIL"])
    for entry in entries {
      table.rows.append([
        entry.at, "\(entry.uid)", entry.group.map(String.init) ?? "-", entry.result, entry.command,
        entry.detail,
      ])
    }
    return table.render()
  }
}
