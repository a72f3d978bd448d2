import CVFIO
import SystemPackage
import Testing

@testable import VFIO

/// What the real kernel accepted: argument bytes of Tests/Integration/spapr/spapr_edu.c in a
/// pseries guest (Debian 6.12.95 ppc64el, QEMU 7.2, edu 0001:00:01.0 in group 1), copied from
/// its transcript ("IOCTL NAME in HEX" / "IOCTL NAME out HEX"). The Swift Container, driven
/// through the same steps against the fake kernel, must send the very same bytes.
enum PseriesCapture {
  static let inputs: [(String, String)] = [
    ("VFIO_GROUP_GET_STATUS", "0800000000000000"),
    (
      "VFIO_IOMMU_SPAPR_TCE_GET_INFO",
      "2000000000000000000000000000000000000000000000000000000000000000"
    ),
    ("VFIO_IOMMU_SPAPR_REGISTER_MEMORY", "180000000000000000e07790ff3f00000020000000000000"),
    (
      "VFIO_IOMMU_SPAPR_TCE_CREATE",
      "28000000000000000c00000000000000000000400000000001000000000000000000000000000000"
    ),
    ("VFIO_IOMMU_MAP_DMA", "200000000300000000e07790ff3f000000000000000000080020000000000000"),
    ("VFIO_IOMMU_UNMAP_DMA", "180000000000000000000000000000080020000000000000"),
    ("VFIO_IOMMU_SPAPR_TCE_REMOVE", "10000000000000000000000000000008"),
    ("VFIO_IOMMU_MAP_DMA", "200000000300000000e07790ff3f000000001000000000000020000000000000"),
    ("VFIO_DEVICE_SET_IRQS", "180000002400000001000000000000000100000006000000"),
    ("VFIO_IOMMU_UNMAP_DMA", "180000000000000000001000000000000020000000000000"),
    ("VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", "180000000000000000e07790ff3f00000020000000000000"),
    ("VFIO_EEH_PE_OP", "0c0000000000000004000000"),
  ]
  static let tceInfoOut = "2000000001000000000000000000004000102101000000000200000001000000"
  static let tceCreateOut =
    "28000000000000000c00000000000000000000400000000001000000000000000000000000000008"
  static let vaddr: UInt64 = 0x3fff_9077_e000
}

func hexBytes(_ s: String) -> [UInt8] {
  var out: [UInt8] = []
  var it = s.makeIterator()
  while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
  return out
}

/// Answers with canned kernel output bytes.
func reply(_ hex: String) -> FakeKernel.Handler {
  let bytes = hexBytes(hex)
  return { _, p, _ in
    bytes.withUnsafeBytes { p!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    return 0
  }
}

@Suite struct SPAPRAgainstPseriesGuest {
  @Test func swiftSendsTheBytesTheKernelAccepted() throws {
    let k = FakeKernel()
    k.on(.getAPIVersion) { _, _, _ in 0 }
    k.on(.groupGetStatus) { _, p, _ in
      withArgument(p, as: vfio_group_status.self) { $0.flags = UInt32(VFIO_GROUP_FLAGS_VIABLE) }
      return 0
    }
    k.on(.checkExtension) { _, _, ext in ext == 7 ? 1 : 0 }
    k.on(.groupGetDeviceFD) { _, _, _ in 5 }
    k.on(.spaprTCEGetInfo, reply(PseriesCapture.tceInfoOut))
    k.on(.spaprTCECreate, reply(PseriesCapture.tceCreateOut))
    k.on(.eehPEOp) { _, _, _ in -Errno.operationNotSupportedByDevice.rawValue }
    k.succeed(
      .groupSetContainer, .setIOMMU, .deviceGetInfo, .spaprRegisterMemory, .iommuMapDMA,
      .iommuUnmapDMA, .spaprTCERemove, .deviceSetIRQs, .spaprUnregisterMemory)

    let container = try Container(kernel: k)
    let group = try Group(number: 1, kernel: k)
    try group.attach(to: container)
    #expect(container.iommuType == .spaprTCEv2)
    let info = try container.spaprInfo()
    #expect(info.dma32WindowStart == 0 && info.dma32WindowSize == 0x4000_0000)
    #expect(info.ddw == .init(pageSizes: 0x121_1000, maxDynamicWindows: 2, levels: 1))
    let device = try group.openDevice("0001:00:01.0")
    let vaddr = PseriesCapture.vaddr
    try container.spaprRegisterMemory(vaddr: vaddr, length: 0x2000)
    let start = try container.spaprCreateWindow(pageShift: 12, windowSize: 1 << 30, levels: 1)
    #expect(start == 0x0800_0000_0000_0000)
    let space = try DMASpace(container)
    let high = try space.map(vaddr: vaddr, length: 0x2000, at: start)
    try space.unmap(high)
    try container.spaprRemoveWindow(start: start)
    let low = try space.map(vaddr: vaddr, length: 0x2000, at: 0x10_0000)
    try device.setIRQs(.msi, .trigger(eventfds: [6]))
    try space.unmap(low)
    try container.spaprUnregisterMemory(vaddr: vaddr, length: 0x2000)
    do {
      try container.eeh(.getState)
      Issue.record("EEH succeeded where the guest said ENODEV")
    } catch { #expect(error.errno == .operationNotSupportedByDevice) }

    // Compare, per request, the sequence of argument bytes.
    let names = Set(PseriesCapture.inputs.map(\.0))
    var sent = k.ioctlInputs.filter { names.contains($0.name) }
    // DMASpace reads the window layout once more (an identical GET_INFO); the C program did not.
    var seenInfo = false
    sent.removeAll { entry in
      guard entry.name == "VFIO_IOMMU_SPAPR_TCE_GET_INFO" else { return false }
      defer { seenInfo = true }
      return seenInfo
    }
    #expect(sent.map(\.name) == PseriesCapture.inputs.map(\.0))
    for (got, want) in zip(sent, PseriesCapture.inputs) {
      #expect(got.bytes == hexBytes(want.1), "\(want.0)")
    }
  }
}
