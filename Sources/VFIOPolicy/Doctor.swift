import PCI
import VFIOHost

/// One host-readiness check and, when it fails, the next step.
public struct Finding: Sendable, Codable, Equatable {
  public enum Status: String, Sendable, Codable {
    case ok
    case info
    case warning
    /// VFIO cannot work (or not safely) until this is fixed.
    case problem
  }

  public let check: String
  public let status: Status
  public let summary: String
  public let nextStep: String?

  public init(_ check: String, _ status: Status, _ summary: String, next: String? = nil) {
    self.check = check
    self.status = status
    self.summary = summary
    self.nextStep = next
  }
}

/// Checks the host for what device assignment needs: an IOMMU, interrupt remapping, the VFIO
/// modules and nodes, a sufficient memlock limit, and no command-line options that lie.
public struct Doctor: Sendable {
  public let inventory: HostInventory
  private let env: KernelEnvironment

  /// Groups given to users (from swift-vfio's ledger): what else those users need is checked.
  public let owners: [GroupOwner]

  /// A group's owner, as `vfioctl own` recorded it.
  public struct GroupOwner: Sendable, Equatable {
    public let group: IOMMUGroupID
    public let uid: Int
    public let gid: Int
    public init(group: IOMMUGroupID, uid: Int, gid: Int) {
      self.group = group
      self.uid = uid
      self.gid = gid
    }
  }

  public init(inventory: HostInventory, owners: [GroupOwner] = []) {
    self.inventory = inventory
    self.env = inventory.readEnvironment()
    self.owners = owners
  }

  public func run() -> [Finding] {
    [iommu(), interruptRemapping(), modules(), containerNode(), iommufd(), memlock(), acsOverride(), configAccess()]
      .compactMap { $0 } + ownerAccess()
  }

  /// An owner opens its group node, but a VMM also needs the container (`/dev/vfio/vfio`) or
  /// `/dev/iommu`, and a memlock limit for pinning guest RAM: say which of those it lacks.
  private func ownerAccess() -> [Finding] {
    var findings: [Finding] = []
    for uid in Set(owners.map(\.uid)).sorted() {
      let groups = owners.filter { $0.uid == uid }
      let list = groups.map(\.group.description).joined(separator: ", ")
      func canOpen(_ node: String) -> Bool? {
        guard let p = inventory.sysfs.permissions(node) else { return nil }
        if p.uid == uid { return p.mode & 0o600 == 0o600 }
        if groups.contains(where: { $0.gid == p.gid }) { return p.mode & 0o060 == 0o060 }
        return p.mode & 0o006 == 0o006
      }
      var lacks: [String] = []
      var next: [String] = []
      if canOpen("/dev/vfio/vfio") == false {
        lacks.append("/dev/vfio/vfio (the legacy container)")
        next.append("`chmod 0666 /dev/vfio/vfio` (the kernel's default)")
      }
      if canOpen("/dev/iommu") == false {
        lacks.append("/dev/iommu (iommufd)")
        next.append("a udev rule `KERNEL==\"iommu\", GROUP=\"<the owner's group>\", MODE=\"0660\"` (or use the legacy path)")
      }
      for group in groups where canOpen("/dev/vfio/\(group.group)") == false {
        lacks.append("/dev/vfio/\(group.group)")
        next.append("`vfioctl own \(group.group) --owner \(uid)` again (the node was recreated)")
      }
      if lacks.isEmpty {
        findings.append(Finding("owner-access", .ok, "uid \(uid) (groups \(list)) can open its group nodes and the container"))
      } else {
        findings.append(
          Finding(
            "owner-access", .warning, "uid \(uid) owns groups \(list) but cannot open " + lacks.joined(separator: ", "),
            next: next.joined(separator: "; ")))
      }
      findings.append(
        Finding(
          "owner-memlock", .info,
          "uid \(uid) pins every DMA-mapped page of its VMs; its RLIMIT_MEMLOCK is set where it logs in or is started, not here",
          next:
            "raise it for that user to what `vfioctl doctor --vm RAM` says its VMM needs: a `\(uid) hard memlock` line in /etc/security/limits.conf, LimitMEMLOCK= in the VMM's unit, or `prlimit --memlock=...`"
        ))
    }
    return findings
  }

  private func iommu() -> Finding {
    if inventory.iommuEnabled {
      let units = inventory.iommuUnits.map(\.name)
      let mode =
        env.commandLineOption("iommu") == "pt"
        ? "; iommu=pt keeps host devices in passthrough, which is fine for VFIO" : ""
      return Finding(
        "iommu", .ok,
        "\(plural(inventory.groups.count, "IOMMU group"))\(units.isEmpty ? "" : " on " + units.joined(separator: ", "))\(mode)"
      )
    }
    let next: String
    if env.isVirtualMachine {
      let machine = env.machineName.map { " (\($0))" } ?? ""
      next =
        "this is a virtual machine\(machine): the IOMMU must come from the hypervisor, not firmware or GRUB; give the VM a vIOMMU (QEMU: `-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on`, or `-device virtio-iommu-pci`; other hypervisors: their vIOMMU setting) and reboot it"
    } else if env.commandLineOption("intel_iommu") == "off" || env.commandLineOption("amd_iommu") == "off" {
      next = "remove intel_iommu=off / amd_iommu=off from the kernel command line and reboot"
    } else if env.cpuVendor == "GenuineIntel" {
      next =
        "enable VT-d in the firmware setup, add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub and reboot"
    } else if env.cpuVendor == "AuthenticAMD" {
      next =
        "enable AMD-Vi (IOMMU) in the firmware setup and reboot; amd_iommu is on by default once the firmware exposes it"
    } else {
      next =
        "enable the platform IOMMU in firmware and in the kernel (CONFIG_IOMMU_SUPPORT and the driver for your IOMMU), then reboot"
    }
    return Finding(
      "iommu", .problem, "no IOMMU groups: the IOMMU is off or absent, so no device can be assigned", next: next)
  }

  private func interruptRemapping() -> Finding? {
    guard inventory.iommuEnabled else { return nil }
    guard let active = env.interruptRemappingActive else {
      return Finding("interrupt-remapping", .info, "unknown: /proc/interrupts could not be read")
    }
    if active {
      return Finding("interrupt-remapping", .ok, "interrupts are remapped (IR- chips in /proc/interrupts)")
    }
    if env.allowUnsafeInterrupts == true {
      return Finding(
        "interrupt-remapping", .warning,
        "no interrupt remapping, and vfio_iommu_type1 allow_unsafe_interrupts=Y: a device can inject interrupts into the host",
        next: "enable interrupt remapping (intremap=on, x2APIC in firmware) and drop allow_unsafe_interrupts")
    }
    let supported = inventory.iommuUnits.compactMap(\.interruptRemappingSupported)
    let hint =
      supported.contains(true)
      ? "the IOMMU supports it: check for intremap=off or nox2apic on the kernel command line" : "enable it in firmware"
    return Finding(
      "interrupt-remapping", .problem,
      "interrupt remapping is not active; vfio_iommu_type1 refuses to attach groups without it",
      next:
        "\(hint); or, knowing a device may then inject host interrupts, load vfio_iommu_type1 with allow_unsafe_interrupts=1"
    )
  }

  private func modules() -> Finding {
    let loaded = inventory.vfio.modules
    if inventory.vfio.vfioPCIDriver {
      return Finding(
        "modules", .ok,
        "vfio-pci is registered" + (loaded.isEmpty ? "" : " (modules: \(loaded.joined(separator: ", ")))"))
    }
    return Finding(
      "modules", .warning,
      "the vfio-pci driver is not registered" + (loaded.isEmpty ? "" : " (loaded: \(loaded.joined(separator: ", ")))"),
      next: "modprobe vfio-pci (it pulls in vfio and vfio_iommu_type1); vfioctl loads it when it detaches a group")
  }

  private func containerNode() -> Finding {
    if inventory.vfio.containerNode {
      let groups = inventory.vfio.groupNodes
      return Finding(
        "dev-vfio", .ok,
        "/dev/vfio/vfio present"
          + (groups.isEmpty
            ? "; no group is bound to vfio-pci yet"
            : "; group nodes: \(groups.map(String.init).joined(separator: ", "))"))
    }
    return Finding(
      "dev-vfio", .warning, "/dev/vfio/vfio is missing",
      next: "modprobe vfio (and check that devtmpfs is mounted on /dev)")
  }

  private func iommufd() -> Finding {
    if inventory.vfio.iommufdNode {
      return Finding("iommufd", .ok, "/dev/iommu present: the iommufd and VFIO device cdev path is available")
    }
    return Finding(
      "iommufd", .info,
      "/dev/iommu is absent: only the legacy container/group path is available (kernel without CONFIG_IOMMUFD, or module not loaded)"
    )
  }

  private func memlock() -> Finding? {
    guard let limit = env.memlockLimit else { return nil }
    if limit == Int.max { return Finding("memlock", .ok, "RLIMIT_MEMLOCK is unlimited") }
    let mib = limit / (1 << 20)
    if limit >= 1 << 30 { return Finding("memlock", .ok, "RLIMIT_MEMLOCK is \(mib) MiB") }
    return Finding(
      "memlock", .warning,
      "RLIMIT_MEMLOCK is \(limit >= 1 << 20 ? "\(mib) MiB" : "\(limit / 1024) KiB"): type1 pins every DMA-mapped page, so a guest's RAM must fit under it",
      next:
        "raise it for the VMM to what `vfioctl doctor --vm RAM` says it needs (its ulimit -l or LimitMEMLOCK= line), or a memlock line in /etc/security/limits.conf"
    )
  }

  private func acsOverride() -> Finding? {
    guard let value = env.commandLineOption("pcie_acs_override") else { return nil }
    return Finding(
      "acs-override", .warning,
      "pcie_acs_override=\(value) is on the command line: the kernel splits groups it cannot really isolate, so devices may reach each other's DMA",
      next: "remove pcie_acs_override unless you accept that risk")
  }

  private func configAccess() -> Finding? {
    let partial = inventory.devicesWithConfigHeaderOnly
    guard !partial.isEmpty else { return nil }
    return Finding(
      "config-access", .warning,
      "only the 64-byte config header was readable for \(plural(partial.count, "device")): capabilities (FLR, ACS, SR-IOV) are unknown",
      next: "run vfioctl as root")
  }
}
