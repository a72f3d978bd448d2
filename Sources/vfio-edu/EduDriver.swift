import PCI
import VFIO

/// Registers of QEMU's edu device (docs/specs/edu.rst).
enum Edu {
  static let vendor: UInt16 = 0x1234
  static let device: UInt16 = 0x11e8
  static let identity: UInt64 = 0x00
  static let liveness: UInt64 = 0x04
  static let factorial: UInt64 = 0x08
  static let status: UInt64 = 0x20
  static let interruptStatus: UInt64 = 0x24
  static let raiseInterrupt: UInt64 = 0x60
  static let acknowledge: UInt64 = 0x64
  static let dmaSource: UInt64 = 0x80
  static let dmaDestination: UInt64 = 0x88
  static let dmaCount: UInt64 = 0x90
  static let dmaCommand: UInt64 = 0x98
  /// The device's internal 4 KiB buffer, as a DMA address.
  static let buffer: UInt64 = 0x40000
  static let expectedIdentity: UInt32 = 0x0100_00ed
  static let statusBusy: UInt32 = 1
  static let statusIRQAfterFactorial: UInt32 = 0x80
  static let commandStart: UInt64 = 1
  static let commandToRAM: UInt64 = 2
  static let commandIRQ: UInt64 = 4
  static let dmaInterrupt: UInt32 = 0x100
  /// edu's DMA mask is 28 bits.
  static let dmaLimit: UInt64 = 1 << 28
}

/// BAR0 access: mmap'd when the region allows it, else pread/pwrite.
struct Registers {
  let device: Device
  let region: RegionInfo
  let mapped: MappedRegion?

  func read32(_ offset: UInt64) throws(VFIOError) -> UInt32 {
    if let mapped { return mapped.load(UInt32.self, at: Int(offset)) }
    return try device.read(UInt32.self, region: region, offset: offset)
  }

  func write32(_ value: UInt32, _ offset: UInt64) throws(VFIOError) {
    if let mapped { return mapped.store(value, at: Int(offset)) }
    try device.write(value, region: region, offset: offset)
  }

  func write64(_ value: UInt64, _ offset: UInt64) throws(VFIOError) {
    if let mapped { return mapped.store(value, at: Int(offset)) }
    try device.write(value, region: region, offset: offset)
  }
}

struct EduOptions {
  var transferSize = 1024
  var timeout: Duration = .seconds(10)
  var interrupts: Set<String> = ["msi", "intx"]
  var useMmap = true
}

/// Exercises edu through VFIO and records each check; throws only on setup failures.
struct EduDriver {
  let opened: OpenedDevice
  let options: EduOptions
  var device: Device { opened.device }

  func run(into report: inout Report) async throws(VFIOError) {
    let vendor = try device.readConfig(UInt16.self, at: PCIConfigRegister.vendorID)
    let deviceID = try device.readConfig(UInt16.self, at: PCIConfigRegister.deviceID)
    // Only edu has edu's registers: writing them on another device could do anything.
    guard vendor == Edu.vendor && deviceID == Edu.device else {
      report.check(
        "pci id", false,
        "\(hex(vendor)):\(hex(deviceID)) is not QEMU's edu device (want 1234:11e8); nothing else was tried")
      return
    }
    report.check("pci id", true, "\(hex(vendor)):\(hex(deviceID))")
    let command = try device.enableBusMaster()
    report.check(
      "bus master", command.contains(.busMaster), "command register 0x\(hex(command.rawValue))")

    let bar0 = try device.regionInfo(PCIRegion.bar(0))
    let mapped = options.useMmap && bar0.isMappable ? try device.mapRegion(bar0, length: 4096) : nil
    let regs = Registers(device: device, region: bar0, mapped: mapped)
    report.notes.append(
      "BAR0: \(bar0.size) bytes, \(mapped == nil ? "pread/pwrite" : "mmap") access, \(bar0.capabilities.count) capabilities"
    )

    let identity = try regs.read32(Edu.identity)
    report.check("identity", identity == Edu.expectedIdentity, "0x\(hex(identity))")

    let probe: UInt32 = 0x1234_5678
    try regs.write32(probe, Edu.liveness)
    let inverted = try regs.read32(Edu.liveness)
    report.check("liveness", inverted == ~probe, "wrote 0x\(hex(probe)), read 0x\(hex(inverted))")

    try regs.write32(0, Edu.status)
    try regs.write32(10, Edu.factorial)
    try await waitIdle(regs)
    let factorial = try regs.read32(Edu.factorial)
    report.check("factorial", factorial == 3_628_800, "10! = \(factorial)")

    do {
      try device.reset()
      report.notes.append("VFIO_DEVICE_RESET succeeded")
    } catch {
      report.notes.append(
        "VFIO_DEVICE_RESET: \(error.errnoName ?? error.message) (edu has no reset method)")
    }

    if options.interrupts.contains("msi") {
      try await msiAndDMA(regs, &report)
    }
    if options.interrupts.contains("intx") {
      try await intx(regs, &report)
    }
    withExtendedLifetime(mapped) {}
  }

  /// DMA RAM → edu → RAM through a fresh mapping, each completion signalled by MSI.
  func msiAndDMA(_ regs: Registers, _ report: inout Report) async throws(VFIOError) {
    let info = try device.irqInfo(.msi)
    report.check(
      "msi info", info.count >= 1 && info.supportsEventFD,
      "\(info.count) vector(s), flags 0x\(hex(info.flags))")
    let event = try EventFD()
    try device.enableInterrupts(.msi, eventFDs: [event])
    defer { try? device.disableInterrupts(.msi) }

    let buffer = try DMABuffer(length: 2 * 4096)
    let mapping = try opened.dma.map(buffer, below: Edu.dmaLimit)
    report.check(
      "dma map", mapping.iova + mapping.length <= Edu.dmaLimit,
      "\(buffer.length) bytes at iova 0x\(hex(mapping.iova)) (\(opened.dma.layout.ranges.count) IOVA ranges, page 0x\(hex(opened.dma.layout.minimumPageSize)))"
    )

    let n = options.transferSize
    let source = buffer.bytes[0..<4096]
    for i in 0..<4096 { buffer.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 0x5a) }
    for i in 4096..<8192 { buffer.bytes[i] = 0 }

    try await dma(regs, from: mapping.iova, to: Edu.buffer, count: n, toRAM: false, event: event)
    report.check(
      "dma ram->edu (msi)", true, "\(n) bytes from iova 0x\(hex(mapping.iova)), MSI received")
    let destination = mapping.iova + 4096
    try await dma(regs, from: Edu.buffer, to: destination, count: n, toRAM: true, event: event)
    let back = buffer.bytes[4096..<(4096 + n)]
    let mismatches = zip(source.prefix(n), back).filter { $0 != $1 }.count
    let untouched = buffer.bytes[(4096 + n)..<8192].allSatisfy { $0 == 0 }
    report.check(
      "dma edu->ram (msi)", mismatches == 0 && untouched,
      mismatches == 0
        ? "\(n) bytes identical at iova 0x\(hex(destination))\(untouched ? "" : ", but bytes past the transfer changed")"
        : "\(mismatches) of \(n) bytes differ")

    try opened.dma.unmap(mapping)
    // After unmap the IOMMU must stop the device: the same DMA faults instead of landing.
    for i in 4096..<8192 { buffer.bytes[i] = 0 }
    try await dma(regs, from: Edu.buffer, to: destination, count: n, toRAM: true, event: event)
    let landed = buffer.bytes[4096..<(4096 + n)].contains { $0 != 0 }
    report.check(
      "unmapped iova blocked", !landed,
      landed ? "the device wrote memory after UNMAP" : "DMA to the unmapped iova did not land")
  }

  /// INTx: level-triggered and auto-masked, so a second interrupt arrives only after unmask.
  func intx(_ regs: Registers, _ report: inout Report) async throws(VFIOError) {
    let info = try device.irqInfo(.intx)
    guard info.count >= 1 else {
      report.check("intx", false, "the device has no INTx line (pin 0)")
      return
    }
    report.check(
      "intx info", info.isAutomasked && info.isMaskable,
      "flags 0x\(hex(info.flags)) (automasked, maskable)")
    let event = try EventFD()
    try device.enableInterrupts(.intx, eventFDs: [event])
    defer { try? device.disableInterrupts(.intx) }

    try regs.write32(0x1, Edu.raiseInterrupt)
    let first = try await EventLoop.shared.wait(for: event, timeout: options.timeout)
    let status = try regs.read32(Edu.interruptStatus)
    try regs.write32(status, Edu.acknowledge)
    try device.unmaskINTx()
    report.check(
      "intx raise", status & 1 == 1, "eventfd count \(first), interrupt status 0x\(hex(status))")

    try regs.write32(Edu.statusIRQAfterFactorial, Edu.status)
    try regs.write32(5, Edu.factorial)
    let second = try await EventLoop.shared.wait(for: event, timeout: options.timeout)
    let value = try regs.read32(Edu.factorial)
    let status2 = try regs.read32(Edu.interruptStatus)
    try regs.write32(status2, Edu.acknowledge)
    try device.unmaskINTx()
    try regs.write32(0, Edu.status)
    report.check(
      "intx after unmask", value == 120,
      "factorial 5! = \(value) signalled by INTx (count \(second))")
  }

  func dma(_ regs: Registers, from: UInt64, to: UInt64, count: Int, toRAM: Bool, event: EventFD)
    async throws(VFIOError)
  {
    try regs.write64(from, Edu.dmaSource)
    try regs.write64(to, Edu.dmaDestination)
    try regs.write64(UInt64(count), Edu.dmaCount)
    try regs.write64(
      Edu.commandStart | Edu.commandIRQ | (toRAM ? Edu.commandToRAM : 0), Edu.dmaCommand)
    _ = try await EventLoop.shared.wait(for: event, timeout: options.timeout)
    let status = try regs.read32(Edu.interruptStatus)
    try regs.write32(status, Edu.acknowledge)
    guard status & Edu.dmaInterrupt != 0 else {
      throw VFIOError(
        .invalidArgument, operation: "edu DMA",
        message: "interrupt status 0x\(hex(status)) lacks the DMA bit 0x100")
    }
  }

  func waitIdle(_ regs: Registers) async throws(VFIOError) {
    for _ in 0..<1000 {
      if try regs.read32(Edu.status) & Edu.statusBusy == 0 { return }
      try? await Task.sleep(for: .milliseconds(2))
    }
    throw VFIOError(.timeout, operation: "edu factorial", message: "status stayed busy for 2 s")
  }
}

func hex<T: BinaryInteger>(_ v: T) -> String { String(v, radix: 16) }
