import PCI
import VFIOHost
import VFIOManager
import VFIOPolicy

/// Human-readable renderings of the reports: pure functions of the same values `--json` prints.
public enum HumanRenderer {
  public static func list(_ report: ListReport) -> String {
    var out = banner(report)
    var table = TextTable(header: ["GROUP", "ADDRESS", "CLASS", "DEVICE", "DRIVER", "VERDICT"])
    var lastGroup: IOMMUGroupID?? = .none
    let held = Dictionary(report.groups.compactMap { g in g.ledger.map { (g.id, $0) } }, uniquingKeysWith: { a, _ in a })
    for device in sortedByGroup(report.devices) {
      let group = device.iommuGroup
      let record = group.flatMap { held[$0] }.flatMap { r in r.originals.contains { $0.address == device.address } ? r : nil }
      table.rows.append([
        group != nil && lastGroup == .some(group) ? "" : group.map(\.description) ?? "-",
        short(device.address), clip(device.className ?? device.classCode, 22), clip(device.name, 48),
        device.driver ?? "-", record.map(ledgerVerdict) ?? device.verdict.label,
      ])
      lastGroup = .some(group)
    }
    out += table.render()
    out += summary(report)
    return out
  }

  public static func tree(_ report: ListReport) -> String {
    var out = banner(report)
    let present = Set(report.devices.map(\.address))
    var children: [PCIAddress: [DeviceSummary]] = [:]
    for device in report.devices {
      if let parent = device.parent, parent != device.address { children[parent, default: []].append(device) }
    }
    // Each device is printed once: a replayed tree may hold parent cycles or repeats, and
    // the walk must end on them.
    var printed: Set<PCIAddress> = []
    func walk(_ kids: [DeviceSummary], _ prefix: String) {
      var listed: Set<PCIAddress> = []
      let kids = kids.filter { !printed.contains($0.address) && listed.insert($0.address).inserted }
      for (i, device) in kids.enumerated() where printed.insert(device.address).inserted {
        let last = i == kids.count - 1
        let group = device.iommuGroup.map { "group \($0)" } ?? "no group"
        out +=
          "\(prefix)\(last ? "└─ " : "├─ ")\(short(device.address)) \(device.className ?? device.classCode): \(device.name)"
        out += " [\(group), \(device.driver ?? "no driver"), \(device.verdict.label)]\n"
        walk(children[device.address] ?? [], prefix + (last ? "   " : "│  "))
      }
    }
    // Roots: devices whose nearest bridge is absent from the listing (or none at all); then
    // whatever a parent cycle kept from being reached.
    walk(
      report.devices.filter { device in device.parent.map { !present.contains($0) || $0 == device.address } ?? true },
      "")
    walk(report.devices, "")
    out += summary(report)
    return out
  }

  public static func show(_ report: ShowReport) -> String {
    var out = ""
    if let group = report.group, report.devices.count != 1 {
      out += "IOMMU group \(group.id) (\(group.type ?? "type unknown")): \(group.verdict.label)\n"
      out += "  members: \(group.devices.map(short).joined(separator: ", "))\n\n"
    }
    for device in report.devices {
      out += deviceDetails(device, group: report.group) + "\n"
    }
    return out
  }

  public static func explain(_ report: ExplainReport) -> String {
    var out = "\(report.target): \(report.verdict.label.uppercased())"
    // A group target already names its group ("group 4: …").
    let groupTarget = report.target.hasPrefix("group ")
    out += report.group.map { groupTarget ? "\n" : " (IOMMU group \($0))\n" } ?? "\n"
    if let record = report.ledger { out += "\n" + ledgerLine(record) + "\n" }
    if report.reasons.isEmpty { out += "\nNothing stands in the way.\n" }
    for severity in [Reason.Severity.blocker, .condition] {
      let reasons = report.reasons.filter { $0.severity == severity }
      guard !reasons.isEmpty else { continue }
      out += severity == .blocker ? "\nWhy not:\n" : "\nConditions:\n"
      for reason in reasons {
        out += "  - [\(reason.code.rawValue)] \(reason.message)\n"
        if let remedy = reason.remedy { out += "    next: \(remedy)\n" }
      }
    }
    if !report.members.isEmpty {
      out += "\nGroup members:\n"
      var table = TextTable(header: ["  ADDRESS", "ROLE", "DRIVER", "RESET"])
      for member in report.members {
        let reset =
          member.reset.map { choice in
            guard let method = choice.method else { return "none" }
            let others = choice.affects.filter { $0 != member.address }
            return method.rawValue + (others.isEmpty ? "" : " (also hits \(others.map(short).joined(separator: ", ")))")
          } ?? "stays with the host"
        table.rows.append(["  " + short(member.address), member.role.rawValue, member.driver ?? "-", reset])
      }
      out += table.render()
    }
    if let plan = report.plan, let group = report.group, report.ledger != nil {
      out += "\nTo give it back to the host (`vfioctl attach \(group)`, dry run, nothing was changed):\n"
      out += plan.restore.isEmpty ? "  (nothing to restore)\n" : steps(plan.restore)
    } else if let plan = report.plan {
      out += "\nPlan (dry run, nothing was changed):\n"
      out += steps(plan.detach + plan.resets)
      out += "\nTo give it back to the host:\n"
      out += plan.restore.isEmpty ? "  (nothing to restore)\n" : steps(plan.restore)
    }
    return out
  }

  public static func doctor(_ report: DoctorReport) -> String {
    var out = report.kernelRelease.map { "kernel \($0)\n" } ?? ""
    for finding in report.findings {
      let mark =
        switch finding.status {
        case .ok: "ok     "
        case .info: "info   "
        case .warning: "WARN   "
        case .problem: "PROBLEM"
        }
      out += "\(mark) \(finding.check): \(finding.summary)\n"
      if let next = finding.nextStep { out += "        next: \(next)\n" }
    }
    if let backends = report.backends {
      out += "\nWays into VFIO for a VMM:\n"
      for (name, backend) in [
        ("legacy container (type1/sPAPR)", backends.container), ("iommufd", backends.iommufd),
        ("VFIO device cdevs", backends.deviceCdev),
      ] {
        let offered = backend.offered.map { $0 ? "yes    " : "no     " } ?? "unknown"
        out += "  \(offered) \(name): \(backend.evidence)\n"
      }
      if backends.iommufd.offered == true && backends.deviceCdev.offered == false {
        out += "  (iommufd needs the device cdevs: without CONFIG_VFIO_DEVICE_CDEV a VMM can only use the legacy container)\n"
      }
    }
    if let memlock = report.memlock { out += "\n" + Self.memlock(memlock) }
    out +=
      report.ok
      ? "\nThis host can assign devices.\n" : "\nThis host cannot assign devices until the problems above are fixed.\n"
    return out
  }

  /// `doctor --vm`: the number, why, and the lines that set it.
  public static func memlock(_ report: MemlockReport) -> String {
    let budget = report.requirement
    let ram = byteCount(budget.guestRAM)
    let devices = "\(budget.devices) device\(budget.devices == 1 ? "" : "s")"
    var out = "A VMM with \(ram) of guest RAM and \(devices)\(budget.viommu ? " behind a vIOMMU" : ""):\n"
    let pinned =
      budget.copies == 1
      ? "the RAM pinned once (one container or IOAS serves every device)"
      : "the RAM pinned \(budget.copies) times (a vIOMMU gives each device its own address space)"
    out += "  locked memory: \(byteCount(report.bytes)) = \(pinned) + 1 GiB for ROMs and MMIO, as libvirt counts\n"
    out += "  type1: per process\n"
    out += "  iommufd: per process only with IOMMU_OPTION_RLIMIT_MODE=1; by default it charges the user, so\n"
    out += "    every VMM of one uid needs a limit that covers all of them together\n"
    out += "  not charged at all with CAP_IPC_LOCK (libvirt raises the limit of its QEMU itself)\n"
    out += "  systemd unit: \(report.systemd)\n"
    out += "  shell:        \(report.ulimit)\n"
    if let current = report.current {
      let now = current == Int.max ? "unlimited" : byteCount(UInt64(current))
      let enough = current == Int.max || UInt64(current) >= report.bytes
      out += "  this shell's limit: \(now)\(enough ? " (enough)" : " (too low for that VMM)")\n"
    }
    return out
  }

  /// 4 GiB, 1.5 GiB, 512 MiB, 8 KiB.
  static func byteCount(_ bytes: UInt64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] as [(String, UInt64)] where bytes >= 1 << shift {
      let value = Double(bytes) / Double(UInt64(1) << shift)
      return value == value.rounded() ? "\(UInt64(value)) \(unit)" : String(format: "%.1f %@", value, unit)
    }
    return "\(bytes) bytes"
  }

  // MARK: Pieces

  private static func banner(_ report: ListReport) -> String {
    guard !report.iommu.enabled else { return "" }
    return "No IOMMU groups: the IOMMU is off or absent, so no device can be assigned. Run `vfioctl doctor`.\n\n"
  }

  private static func summary(_ report: ListReport) -> String {
    let count = { (verdict: Verdict) in report.groups.filter { $0.verdict == verdict }.count }
    var out = "\n\(plural(report.devices.count, "device"))"
    if report.iommu.enabled {
      out +=
        " in \(plural(report.groups.count, "IOMMU group")): \(count(.assignable)) assignable, \(count(.conditional)) with conditions, \(count(.notAssignable)) not assignable"
    }
    out += ". `vfioctl explain ADDRESS|GROUP` says why.\n"
    for item in report.unreadable { out += "unreadable: \(item.name): \(item.reason)\n" }
    for device in report.devices {
      for warning in device.warnings { out += "warning: \(short(device.address)): \(warning)\n" }
    }
    return out
  }

  private static func sortedByGroup(_ devices: [DeviceSummary]) -> [DeviceSummary] {
    devices.enumerated().sorted { a, b in
      switch (a.element.iommuGroup, b.element.iommuGroup) {
      case (let x?, let y?) where x != y: return x < y
      case (nil, _?): return false
      case (_?, nil): return true
      default: return a.offset < b.offset
      }
    }.map(\.element)
  }

  /// The verdict column of a device swift-vfio holds: "detached", "reserved for vm1 (owner 1000)".
  static func ledgerVerdict(_ record: LedgerRecord) -> String {
    if let name = record.reservedFor { return "reserved for \(name)" + (record.owner.map { " (owner \($0.uid))" } ?? "") }
    if let owner = record.owner, record.state == .detached { return "detached, owner \(owner.uid)" }
    return "\(record.state.rawValue) by swift-vfio"
  }

  /// "detached by swift-vfio on DATE (uid 0) to vfio-pci; original drivers: 00:02.0 e1000e"
  static func ledgerLine(_ record: LedgerRecord) -> String {
    let originals = record.originals.map { "\(short($0.address)) \($0.binding)" }.joined(separator: ", ")
    var parts: [String] = []
    switch record.state {
    case .detached:
      parts.append("detached by swift-vfio on \(record.since) (uid \(record.uid)) to \(record.driver ?? "vfio-pci"); original drivers: \(originals)")
    case .changing:
      parts.append("being changed by swift-vfio since \(record.since) (unfinished: run `vfioctl recover`)")
    case .host:
      parts.append("with the host")
    }
    if let name = record.reservedFor {
      parts.append("reserved for \(name)" + (record.owner.map { " (owner \($0.uid))" } ?? ""))
    } else if let owner = record.owner {
      parts.append("owned by \(owner)")
    }
    if record.persisted { parts.append("persisted across reboots") }
    return parts.joined(separator: "; ")
  }

  private static func deviceDetails(_ d: DeviceReport, group: GroupReport?) -> String {
    var lines = ["\(d.address)  \(d.className ?? "class \(d.classCode)"): \(d.name)"]
    func add(_ key: String, _ value: String) { lines.append("  " + key.padding(18) + value) }
    add(
      "ids",
      "vendor \(d.vendorID) device \(d.deviceID)"
        + (d.subsystemVendorID.map { " subsystem \($0):\(d.subsystemID ?? "?")" } ?? "")
        + " class \(d.classCode) rev \(d.revision)")
    add(
      "kind",
      d.kind.rawValue
        + (d.express.map { ", PCIe \($0.portType)" } ?? (d.capabilities.complete ? ", conventional PCI" : ""))
        + (d.multifunction ? ", multifunction" : ""))
    add("driver", (d.driver ?? "none") + (d.driverOverride.map { " (driver_override \($0))" } ?? ""))
    if let record = group?.ledger, record.originals.contains(where: { $0.address == d.address }) {
      add("swift-vfio", ledgerLine(record))
    }
    add(
      "iommu group",
      d.iommuGroup.map {
        "\($0)"
          + (group.map { g in
            g.devices.count > 1
              ? " with \(g.devices.filter { $0 != d.address }.map(short).joined(separator: ", "))" : " (alone)"
          } ?? "")
      } ?? "none")
    if !d.upstreamBridges.isEmpty { add("behind", d.upstreamBridges.map(short).joined(separator: " → ")) }
    if let numa = d.numaNode { add("numa node", String(numa)) }
    add(
      "reset",
      d.resetMethods.isEmpty
        ? "none"
        : d.resetMethods.map(\.rawValue).joined(separator: " ")
          + (d.resetMethodsSource == .capabilities ? " (inferred from capabilities)" : ""))
    for bar in d.bars {
      var flags = [bar.kind == .io ? "I/O" : bar.is64Bit ? "64-bit" : "32-bit"]
      if bar.prefetchable { flags.append("prefetchable") }
      if bar.subPage {
        flags.append("SUB-PAGE")
      } else if !bar.pageAligned && bar.kind == .mmio {
        flags.append("UNALIGNED")
      }
      let name =
        bar.role == .bar
        ? "BAR\(bar.index)"
        : bar.role == .rom ? "ROM" : bar.role == .vfBAR ? "VF BAR\(bar.index - 7)" : "window \(bar.index - 13)"
      add(name, "0x\(String(bar.start, radix: 16)) size \(sizeText(bar.size)) " + flags.joined(separator: ", "))
    }
    let caps = d.capabilities
    var capText: [String] = []
    if let pm = caps.powerManagement {
      capText.append("PM (D\(pm.powerState)\(pm.noSoftReset ? ", No_Soft_Reset" : ""))")
    }
    if d.express?.flr == true || caps.advancedFeaturesFLR == true { capText.append("FLR") }
    if let msi = caps.msi { capText.append("MSI \(msi.vectors)") }
    if let msix = caps.msix { capText.append("MSI-X \(msix.vectors)") }
    if let acs = caps.acs {
      capText.append("ACS (enabled: \(acs.enabled.isEmpty ? "none" : acs.enabled.joined(separator: " ")))")
    }
    add(
      "capabilities",
      capText.isEmpty
        ? (caps.complete ? "none" : "unknown (config space not fully readable)") : capText.joined(separator: ", "))
    if let pin = d.interrupt.pin {
      add(
        "INTx",
        "\(pin)" + (d.interrupt.irq.map { ", IRQ \($0)" } ?? "") + ", masking \(d.interrupt.masking.rawValue)"
          + (d.interrupt.sharedWith.isEmpty
            ? "" : ", shared with " + d.interrupt.sharedWith.map(short).joined(separator: ", ")))
    }
    if let sriov = d.sriov {
      add(
        "SR-IOV",
        "\(sriov.numVFs) of \(sriov.totalVFs) VFs enabled"
          + (sriov.virtualFunctions.isEmpty ? "" : ": " + sriov.virtualFunctions.map(short).joined(separator: ", ")))
    }
    if let pf = d.physicalFunction { add("SR-IOV", "virtual function of \(pf)") }
    for use in d.hostUse { add(use.active ? "host use" : "host sees", use.description) }
    if d.bootVGA { add("boot VGA", "yes: the firmware's console") }
    if let error = d.configError { add("config", error) }
    for warning in d.warnings { add("warning", warning) }
    add("verdict", d.verdict.label + " (`vfioctl explain \(short(d.address))`)")
    return lines.joined(separator: "\n") + "\n"
  }

  static func steps(_ steps: [PlanStep]) -> String {
    var out = ""
    for (i, step) in steps.enumerated() {
      out += "  \(i + 1). \(step.description)\n"
      for command in step.commands { out += "       $ \(command)\n" }
    }
    return out
  }

  /// `01:00.0` for domain 0, the full address otherwise (as lspci prints them).
  static func short(_ address: PCIAddress) -> String {
    address.domain == 0 ? String(address.description.dropFirst(5)) : address.description
  }

  static func sizeText(_ size: UInt64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] as [(String, UInt64)]
    where size >= 1 << shift && size % (1 << shift) == 0 {
      return "\(size >> shift)\(unit)"
    }
    return "\(size)"
  }
}

extension String {
  fileprivate func padding(_ width: Int) -> String {
    count >= width ? self + " " : self + String(repeating: " ", count: width - count)
  }
}
