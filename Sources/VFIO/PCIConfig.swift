/// Registers of the PCI configuration header this library touches.
public enum PCIConfigRegister {
  public static let vendorID: UInt64 = 0x00
  public static let deviceID: UInt64 = 0x02
  public static let command: UInt64 = 0x04
  public static let status: UInt64 = 0x06
}

/// Bits of the PCI command register.
public struct PCICommand: OptionSet, Sendable, Hashable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  public static let ioSpace = PCICommand(rawValue: 1 << 0)
  public static let memorySpace = PCICommand(rawValue: 1 << 1)
  /// The device may initiate DMA (and MSI writes, which are DMA).
  public static let busMaster = PCICommand(rawValue: 1 << 2)
  public static let interruptDisable = PCICommand(rawValue: 1 << 10)
}

extension Device {
  /// The config-space region (cached after the first call).
  public func configRegion() throws(VFIOError) -> RegionInfo {
    if let cached = cachedConfigRegion.withLock({ $0 }) { return cached }
    let info = try regionInfo(PCIRegion.config)
    cachedConfigRegion.withLock { $0 = info }
    return info
  }

  /// Reads config space at `offset`.
  public func readConfig<T: FixedWidthInteger>(_: T.Type = T.self, at offset: UInt64)
    throws(VFIOError) -> T
  {
    try read(T.self, region: configRegion(), offset: offset)
  }

  /// Writes config space at `offset` (vfio-pci virtualizes some fields).
  public func writeConfig<T: FixedWidthInteger>(_ value: T, at offset: UInt64) throws(VFIOError) {
    try write(value, region: configRegion(), offset: offset)
  }

  /// The command register.
  public func command() throws(VFIOError) -> PCICommand {
    PCICommand(rawValue: try readConfig(UInt16.self, at: PCIConfigRegister.command))
  }

  /// Sets and clears command bits with a read-modify-write; returns the new value.
  @discardableResult
  public func updateCommand(set: PCICommand = [], clear: PCICommand = []) throws(VFIOError)
    -> PCICommand
  {
    var cmd = try command()
    cmd.formUnion(set)
    cmd.subtract(clear)
    try writeConfig(cmd.rawValue, at: PCIConfigRegister.command)
    return try command()
  }

  /// Turns on memory decoding and bus mastering; a device cannot DMA (or send MSI) without it,
  /// and vfio-pci leaves it to the driver.
  @discardableResult
  public func enableBusMaster() throws(VFIOError) -> PCICommand {
    try updateCommand(set: [.memorySpace, .busMaster])
  }
}
