import PCI

extension Device {
  /// The config-space region (cached after the first call).
  public func configRegion() throws(VFIOError) -> RegionInfo {
    if let cached = cachedConfigRegion.withLock({ $0 }) { return cached }
    let info = try regionInfo(PCIRegion.config)
    cachedConfigRegion.withLock { $0 = info }
    return info
  }

  /// Reads config space at `offset` (a `PCIConfigRegister` or a capability's offset plus its
  /// register's).
  public func readConfig<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int)
    throws(VFIOError) -> T
  {
    // A negative offset wraps to one past the region, which the bounds check rejects.
    try read(T.self, region: configRegion(), offset: UInt64(truncatingIfNeeded: offset))
  }

  /// Writes config space at `offset` (vfio-pci virtualizes some fields).
  public func writeConfig<T: FixedWidthInteger>(_ value: T, at offset: Int) throws(VFIOError) {
    try write(value, region: configRegion(), offset: UInt64(truncatingIfNeeded: offset))
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
