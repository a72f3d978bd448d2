import PCI

/// Reads one PCI function's sysfs directory into a `PCIDevice`.
struct DeviceReader {
  let sysfs: Sysfs
  let pageSize: UInt64

  func read(_ name: String) throws(DeviceReadError) -> PCIDevice {
    guard let address = try? PCIAddress(parsing: name) else { throw .badName(name) }
    let busPath = "/sys/bus/pci/devices/\(name)"
    let path = sysfs.readLink(busPath).map { resolve(link: $0, in: "/sys/bus/pci/devices") } ?? busPath
    guard let dir = sysfs.directory(path) else { throw .unreadable(name, "its sysfs directory cannot be opened") }
    var warnings: [String] = []
    let bridges = upstreamBridges(path, of: address, &warnings)

    // Root reads 256 or 4096 bytes; others get the 64-byte header only.
    var config: ConfigSpace?
    var configError: String?
    if let bytes = dir.readBytes("config", limit: 4096) {
      do {
        config = try ConfigSpace(bytes)
      } catch {
        configError = error.description
      }
    } else {
      configError = "config space could not be read"
    }
    var physfn = dir.readLink("physfn").flatMap { owningFunction($0) }
    if physfn == address {
      warnings.append("physfn points at the function itself; link ignored")
      physfn = nil
    }
    // SR-IOV VFs read 0xffff as vendor and device IDs. The kernel gives them the PF's vendor
    // and VF device ID, which `HostInventory` copies from the PF; other functions reading
    // 0xffff fall back to the kernel's attributes.
    let vfIDsFromPF = physfn != nil && config?.vendorID == 0xFFFF
    let vendor =
      config.map(\.vendorID).flatMap { $0 == 0xFFFF && !vfIDsFromPF ? nil : $0 } ?? attribute16(dir, "vendor")
    let deviceID =
      config.map(\.deviceID).flatMap { $0 == 0xFFFF && !vfIDsFromPF ? nil : $0 } ?? attribute16(dir, "device")
    guard let vendor, let deviceID else { throw .unreadable(name, configError ?? "no vendor and device ID") }
    let classCode = config?.classCode ?? dir.readInteger("class").map { UInt32(truncatingIfNeeded: $0) } ?? 0

    var bars: [BAR] = []
    if let bytes = dir.readBytes("resource") {
      let table = parseResources(bytes, pageSize: pageSize)
      bars = table.bars
      warnings += table.problems.map(\.description)
    }

    let override = dir.readString("driver_override")
    let numa = dir.readInteger("numa_node")
    let resetMethods = dir.readString("reset_method").map {
      $0.split(separator: " ").map { ResetMethod(rawValue: String($0)) }
    }
    let pin = config?.interruptPin ?? 0
    let masking: INTxMasking = pin == 0 ? .noPin : (config?.express != nil ? .required : .untested)
    let irq = pin == 0 ? nil : dir.readInteger("irq").flatMap { $0 == 0 ? nil : $0 }

    return PCIDevice(
      address: address, sysfsPath: path, vendorID: vendor, deviceID: deviceID,
      subsystemVendorID: config?.subsystemVendorID, subsystemID: config?.subsystemID, classCode: classCode,
      revision: config?.revision ?? 0, headerType: config?.headerType ?? 0,
      isMultifunction: config?.isMultifunction ?? false,
      driver: dir.linkName("driver"),
      driverOverride: override == "(null)" || override == "" ? nil : override,
      iommuGroup: dir.linkName("iommu_group").flatMap { IOMMUGroupID($0) },
      numaNode: numa.flatMap { $0 < 0 ? nil : $0 },
      upstreamBridges: Array(bridges), bars: bars, config: config, configError: configError,
      kernelResetMethods: resetMethods, sriov: readSRIOV(dir, config: config, address: address, &warnings),
      physicalFunction: physfn,
      interrupt: LegacyInterrupt(pin: pin, irq: irq, masking: masking),
      bootVGA: classCode >> 16 == 0x03 && dir.readString("boot_vga") == "1", warnings: warnings)
  }

  /// The PCI addresses before this one in the canonical path, nearest first. A path naming
  /// the function itself or a bridge twice cannot come from the kernel; those are dropped so
  /// that walks up the tree end.
  private func upstreamBridges(_ path: String, of address: PCIAddress, _ warnings: inout [String]) -> [PCIAddress] {
    var seen: Set<PCIAddress> = [address]
    var bridges: [PCIAddress] = []
    for component in path.split(separator: "/").dropLast().reversed() where looksLikePCIAddress(component) {
      guard let bridge = try? PCIAddress(parsing: String(component)) else { continue }
      if seen.insert(bridge).inserted {
        bridges.append(bridge)
      } else {
        let what = bridge == address ? "the function itself as a bridge above it" : "bridge \(bridge) twice"
        warnings.append("sysfs path \(path) names \(what); ignored")
      }
    }
    return bridges
  }

  /// The most VFs a PF can have: TotalVFs is a 16-bit field of the SR-IOV capability.
  static let maximumVFs = 0xFFFF

  private func readSRIOV(
    _ dir: SysfsDirectory, config: ConfigSpace?, address: PCIAddress, _ warnings: inout [String]
  ) -> SRIOVState? {
    // Read the attributes only where the capability (or, for 64-byte reads, the file) is there.
    if let config, config.extendedChainComplete, config.sriov == nil { return nil }
    guard var total = dir.readInteger("sriov_totalvfs") else { return nil }
    if !(0...Self.maximumVFs).contains(total) {
      warnings.append("sriov_totalvfs is \(total), outside 0–\(Self.maximumVFs); taken as 0")
      total = 0
    }
    var numVFs = dir.readInteger("sriov_numvfs") ?? 0
    if !(0...total).contains(numVFs) {
      warnings.append("sriov_numvfs is \(numVFs), outside 0–\(total) (sriov_totalvfs); taken as 0")
      numVFs = 0
    }
    var vfs: [PCIAddress] = []
    var seen: Set<PCIAddress> = [address]
    for i in 0..<numVFs {
      guard let vf = dir.readLink("virtfn\(i)").flatMap({ owningFunction($0) }) else { continue }
      if seen.insert(vf).inserted {
        vfs.append(vf)
      } else {
        warnings.append("virtfn\(i) names \(vf), \(vf == address ? "the PF itself" : "already listed"); ignored")
      }
    }
    return SRIOVState(
      totalVFs: total, numVFs: numVFs, virtualFunctions: vfs,
      driversAutoprobe: dir.readInteger("sriov_drivers_autoprobe").map { $0 != 0 },
      // The kernel prints sriov_vf_device in hex without "0x" ("10" is 0x10).
      vfDeviceID: dir.readString("sriov_vf_device").flatMap { UInt16($0, radix: 16) }
        ?? config?.sriov?.vfDeviceID)
  }

  private func attribute16(_ dir: SysfsDirectory, _ name: String) -> UInt16? {
    dir.readInteger(name).map { UInt16(truncatingIfNeeded: $0) }
  }
}

/// Why one PCI function could not be read.
enum DeviceReadError: Error, CustomStringConvertible {
  case badName(String)
  case unreadable(String, String)

  var description: String {
    switch self {
    case .badName(let name): return "'\(name)' under /sys/bus/pci/devices is not a PCI address"
    case .unreadable(let name, let why): return "\(name): \(why)"
    }
  }
}
