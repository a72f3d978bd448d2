/// The locked-memory limit (RLIMIT_MEMLOCK) a VMM needs to map its guest's RAM for the devices
/// it is given, per VFIO backend. Every page a device may reach by DMA is pinned and charged:
/// - type1 charges each container's pins to the process; one container serves every device of
///   a guest without a vIOMMU, while a vIOMMU gives each device its own address space and so
///   its own container, each pinning all of the RAM (libvirt's arithmetic since 8.7.0, which
///   KubeVirt 1.8 adopted after multi-device guests failed with "cannot limit locked memory");
/// - iommufd charges each IOAS mapping the same way, but to the user by default: all VMMs of
///   one uid share one limit, unless the VMM's iommufd switched to per-process accounting
///   (IOMMU_OPTION_RLIMIT_MODE = 1, which needs CAP_SYS_RESOURCE);
/// - a process with CAP_IPC_LOCK is not charged at all.
/// On top of the RAM both add what libvirt adds: 1 GiB for ROMs and the emulated devices' RAM
/// regions (the measured floor is far lower: 512 KiB of BIOS for a 128 MiB q35 guest).
public struct MemlockRequirement: Sendable, Equatable, Codable {
  public static let margin: UInt64 = 1 << 30

  public let guestRAM: UInt64
  public let devices: Int
  public let viommu: Bool

  public init(guestRAM: UInt64, devices: Int, viommu: Bool) {
    self.guestRAM = guestRAM
    self.devices = max(devices, 1)
    self.viommu = viommu
  }

  /// How many times the RAM is pinned: once, or once per device behind a vIOMMU.
  public var copies: Int { viommu ? devices : 1 }

  /// Bytes, saturating rather than overflowing on absurd sizes.
  public var bytes: UInt64 {
    let (product, overflow) = guestRAM.multipliedReportingOverflow(by: UInt64(copies))
    guard !overflow else { return .max }
    let (total, overflow2) = product.addingReportingOverflow(Self.margin)
    return overflow2 ? .max : total
  }

  /// `LimitMEMLOCK=` for a systemd unit: bytes, or K/M/G when exact (systemd's suffixes are
  /// powers of 1024).
  public var systemdLimit: String {
    for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] as [(String, UInt64)] where bytes % (1 << shift) == 0 {
      return "\(bytes >> shift)\(suffix)"
    }
    return "\(bytes)"
  }

  /// `ulimit -l` takes KiB, rounded up.
  public var ulimitKiB: UInt64 { bytes == .max ? .max : (bytes + 1023) / 1024 }

  /// `4G`, `4096M`, `512MiB`, `1T`, or a plain number of MiB as QEMU's `-m` takes it.
  public static func parseSize(_ text: String) -> UInt64? {
    var digits = Substring(text)
    var shift: UInt64 = 20
    for (suffixes, value) in [(["TIB", "TB", "T"], 40), (["GIB", "GB", "G"], 30), (["MIB", "MB", "M"], 20), (["KIB", "KB", "K"], 10)]
      as [([String], UInt64)]
    {
      if let suffix = suffixes.first(where: { digits.uppercased().hasSuffix($0) }) {
        digits = digits.dropLast(suffix.count)
        shift = value
        break
      }
    }
    guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let number = UInt64(digits), number > 0,
      number <= UInt64.max >> shift
    else { return nil }
    return number << shift
  }
}

