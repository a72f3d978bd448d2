/// Reads one PCI function's sysfs directory into a `PCIDevice`.
struct DeviceReader {
  let sysfs: Sysfs
  let pageSize: UInt64

  func read(_ name: String) throws(DeviceReadError) -> PCIDevice {
    guard let address = try? PCIAddress(parsing: name) else { throw .badName(name) }
    let busPath = "/sys/bus/pci/devices/\(name)"
    let dir = sysfs.readLink(busPath).map { resolve(link: $0, in: "/sys/bus/pci/devices") } ?? busPath
    let bridges = dir.split(separator: "/").dropLast().reversed().filter(looksLikePCIAddress)
      .compactMap { try? PCIAddress(parsing: String($0)) }

    // Root reads 256 or 4096 bytes; others get the 64-byte header only.
    var config: ConfigSpace?
    var configError: String?
    if let bytes = sysfs.readBytes("\(dir)/config", limit: 4096) {
      do {
        config = try ConfigSpace(bytes)
      } catch {
        configError = error.description
      }
    } else {
      configError = "config space could not be read"
    }
    // SR-IOV VFs read 0xffff as vendor and device IDs; the kernel's attributes have the truth.
    let vendor = config.map(\.vendorID).flatMap { $0 == 0xFFFF ? nil : $0 } ?? attribute16("\(dir)/vendor")
    let deviceID = config.map(\.deviceID).flatMap { $0 == 0xFFFF ? nil : $0 } ?? attribute16("\(dir)/device")
    guard let vendor, let deviceID else { throw .unreadable(name, configError ?? "no vendor and device ID") }
    let classCode = config?.classCode ?? sysfs.readInteger("\(dir)/class").map { UInt32(truncatingIfNeeded: $0) } ?? 0

    var bars: [BAR] = []
    if let text = sysfs.readString("\(dir)/resource") {
      do {
        bars = try parseResources(text, pageSize: pageSize)
      } catch {
        throw .unreadable(name, error.description)
      }
    }

    let override = sysfs.readString("\(dir)/driver_override")
    let numa = sysfs.readInteger("\(dir)/numa_node")
    let resetMethods = sysfs.readString("\(dir)/reset_method").map {
      $0.split(separator: " ").map { ResetMethod(rawValue: String($0)) }
    }
    let pin = config?.interruptPin ?? 0
    let masking: INTxMasking = pin == 0 ? .noPin : (config?.express != nil ? .required : .untested)
    let physfn = sysfs.readLink("\(dir)/physfn").flatMap { owningFunction(resolve(link: $0, in: dir)) }

    return PCIDevice(
      address: address, sysfsPath: dir, vendorID: vendor, deviceID: deviceID,
      subsystemVendorID: config?.subsystemVendorID, subsystemID: config?.subsystemID, classCode: classCode,
      revision: config?.revision ?? 0, headerType: config?.headerType ?? 0,
      isMultifunction: config?.isMultifunction ?? false,
      driver: sysfs.linkName("\(dir)/driver"),
      driverOverride: override == "(null)" || override == "" ? nil : override,
      iommuGroup: sysfs.linkName("\(dir)/iommu_group").flatMap { Int($0) },
      numaNode: numa.flatMap { $0 < 0 ? nil : $0 },
      upstreamBridges: Array(bridges), bars: bars, config: config, configError: configError,
      kernelResetMethods: resetMethods, sriov: readSRIOV(dir, config: config),
      physicalFunction: physfn,
      interrupt: LegacyInterrupt(
        pin: pin, irq: pin == 0 ? nil : sysfs.readInteger("\(dir)/irq").flatMap { $0 == 0 ? nil : $0 }, masking: masking),
      bootVGA: classCode >> 16 == 0x03 && sysfs.readString("\(dir)/boot_vga") == "1")
  }

  private func readSRIOV(_ dir: String, config: ConfigSpace?) -> SRIOVState? {
    // Read the attributes only where the capability (or, for 64-byte reads, the file) is there.
    if let config, config.extendedChainComplete, config.sriov == nil { return nil }
    guard let total = sysfs.readInteger("\(dir)/sriov_totalvfs") else { return nil }
    let numVFs = sysfs.readInteger("\(dir)/sriov_numvfs") ?? 0
    let vfs = (0..<numVFs).compactMap { i in
      sysfs.readLink("\(dir)/virtfn\(i)").flatMap { owningFunction(resolve(link: $0, in: dir)) }
    }
    return SRIOVState(
      totalVFs: total, numVFs: numVFs, virtualFunctions: vfs,
      driversAutoprobe: sysfs.readInteger("\(dir)/sriov_drivers_autoprobe").map { $0 != 0 },
      vfDeviceID: sysfs.readInteger("\(dir)/sriov_vf_device").map { UInt16(truncatingIfNeeded: $0) }
        ?? config?.sriov?.vfDeviceID)
  }

  private func attribute16(_ path: String) -> UInt16? {
    sysfs.readInteger(path).map { UInt16(truncatingIfNeeded: $0) }
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
