/// Host-wide facts that decide whether VFIO can work at all: the kernel command line, the CPU
/// vendor, interrupt remapping, the memlock limit and vfio_iommu_type1's parameters.
public struct KernelEnvironment: Sendable, Equatable, Codable {
  public let commandLine: String?
  /// `GenuineIntel`, `AuthenticAMD`, … (nil on architectures without `vendor_id`).
  public let cpuVendor: String?
  /// `/proc/interrupts` shows IR- (remapped) interrupt chips; nil when it could not be read.
  public let interruptRemappingActive: Bool?
  /// RLIMIT_MEMLOCK soft limit in bytes from `/proc/self/limits`; nil when unknown, `Int.max`
  /// when unlimited.
  public let memlockLimit: Int?
  /// vfio_iommu_type1's `allow_unsafe_interrupts` (Y/N), when the module is loaded.
  public let allowUnsafeInterrupts: Bool?
  /// vfio_iommu_type1's `dma_entry_limit`: the most DMA mappings one container may hold.
  public let dmaEntryLimit: Int?
  /// The CPU reports the `hypervisor` flag: this kernel runs in a virtual machine.
  public let hypervisorFlag: Bool
  /// DMI's system vendor and product (`QEMU`, `Standard PC (Q35 + ICH9, 2009)`), when present.
  public let dmiVendor: String?
  public let dmiProduct: String?

  /// DMI system vendors and products that are hypervisors, for CPUs without the flag (arm64).
  static let virtualVendors = ["QEMU", "KVM", "VMware", "innotek", "Xen", "Amazon EC2", "Google", "Parallels", "bhyve"]

  /// Runs in a virtual machine, so an IOMMU can only come from the hypervisor (a vIOMMU).
  public var isVirtualMachine: Bool {
    hypervisorFlag
      || [dmiVendor, dmiProduct].compactMap { $0 }.contains { text in
        Self.virtualVendors.contains { text.hasPrefix($0) } || text == "Virtual Machine"
      }
  }

  /// "QEMU Standard PC (Q35 + ICH9, 2009)", or nil when DMI says nothing.
  public var machineName: String? {
    let parts = [dmiVendor, dmiProduct].compactMap { $0 }.filter { !$0.isEmpty }
    return parts.isEmpty ? nil : parts.joined(separator: " ")
  }

  public static func read(_ sysfs: Sysfs) -> KernelEnvironment {
    // The first CPU's lines say it for all; a large host's cpuinfo is cut at the read cap.
    let cpuinfo = sysfs.readString("/proc/cpuinfo")?.split(separator: "\n", maxSplits: 64) ?? []
    let vendor = cpuinfo.first { $0.hasPrefix("vendor_id") }
      .flatMap { $0.split(separator: ":").last?.trimmingSpaces }
    let flags = cpuinfo.first { $0.hasPrefix("flags") }.map { $0.split(separator: " ") } ?? []
    let interrupts = sysfs.readString("/proc/interrupts")
    let parameters = "/sys/module/vfio_iommu_type1/parameters"
    return KernelEnvironment(
      commandLine: sysfs.readString("/proc/cmdline"),
      cpuVendor: vendor,
      interruptRemappingActive: interrupts.map { $0.contains("IR-") },
      memlockLimit: sysfs.readString("/proc/self/limits").flatMap(parseMemlock),
      allowUnsafeInterrupts: sysfs.readString("\(parameters)/allow_unsafe_interrupts").map { $0 == "Y" },
      dmaEntryLimit: sysfs.readInteger("\(parameters)/dma_entry_limit"),
      hypervisorFlag: flags.contains("hypervisor"),
      dmiVendor: sysfs.readString("/sys/class/dmi/id/sys_vendor"),
      dmiProduct: sysfs.readString("/sys/class/dmi/id/product_name"))
  }

  /// The value of `name=` on the command line, or "" for a bare flag; nil when absent.
  public func commandLineOption(_ name: String) -> String? {
    for word in (commandLine ?? "").split(separator: " ") {
      if word == name { return "" }
      if word.hasPrefix(name + "=") { return String(word.dropFirst(name.count + 1)) }
    }
    return nil
  }
}

/// "Max locked memory  8388608  8388608  bytes" → 8388608 (the soft limit).
func parseMemlock(_ limits: String) -> Int? {
  guard let line = limits.split(separator: "\n").first(where: { $0.hasPrefix("Max locked memory") }) else { return nil }
  let fields = line.dropFirst("Max locked memory".count).split(separator: " ")
  guard let soft = fields.first else { return nil }
  return soft == "unlimited" ? Int.max : Int(soft)
}
