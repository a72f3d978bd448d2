import CVFIO
import PCI
import SystemPackage
import Testing

@testable import VFIO

let edu = PCIAddress(domain: 0, bus: 0, device: 3, function: 0)

/// A fake host with edu in IOMMU group 5, bound to vfio-pci, and a type1v2 IOMMU.
func legacyHost(viable: Bool = true) -> FakeKernel {
  let k = FakeKernel()
  k.links["/sys/bus/pci/devices/\(edu)/iommu_group"] = "../../../kernel/iommu_groups/5"
  k.directories["/sys/kernel/iommu_groups/5/devices"] = [edu.description, "0000:00:04.0"]
  k.links["/sys/kernel/iommu_groups/5/devices/\(edu)/driver"] = "../../../bus/pci/drivers/vfio-pci"
  k.links["/sys/kernel/iommu_groups/5/devices/0000:00:04.0/driver"] =
    viable ? "../../../bus/pci/drivers/vfio-pci" : "../../../bus/pci/drivers/e1000"
  k.on(.getAPIVersion) { _, _, _ in 0 }
  k.on(.checkExtension) { _, _, ext in ext == 3 || ext == 1 ? 1 : 0 }
  k.on(.groupGetStatus) { _, p, _ in
    withArgument(p, as: vfio_group_status.self) {
      $0.flags = viable ? UInt32(VFIO_GROUP_FLAGS_VIABLE) : 0
    }
    return 0
  }
  k.succeed(.groupSetContainer, .setIOMMU, .groupUnsetContainer)
  k.on(.groupGetDeviceFD) { _, _, _ in 20 }
  k.on(.deviceGetInfo) { _, p, _ in
    withArgument(p, as: vfio_device_info.self) {
      $0.flags = UInt32(VFIO_DEVICE_FLAGS_PCI)
      $0.num_regions = 9
      $0.num_irqs = 5
    }
    return 0
  }
  let info = CapabilityChains.type1Info()
  k.on(.iommuGetInfo) { _, p, _ in
    let argsz = Int(p!.load(as: UInt32.self))
    let n = min(argsz, info.count)
    info.withUnsafeBytes { p!.copyMemory(from: $0.baseAddress!, byteCount: n) }
    // Like the kernel: report the full size needed, clear the cap offset if it did not fit.
    p!.storeBytes(of: UInt32(info.count), as: UInt32.self)
    if argsz < info.count { p!.storeBytes(of: UInt32(0), toByteOffset: 16, as: UInt32.self) }
    return 0
  }
  return k
}

@Suite struct LegacyPath {
  @Test func openSequence() throws {
    let k = legacyHost()
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    #expect(opened.backend == .legacy)
    #expect(opened.device.info.regionCount == 9)
    #expect(
      k.ioctlLog == [
        "open /dev/vfio/vfio",
        "ioctl 3 VFIO_GET_API_VERSION",
        "open /dev/vfio/5",
        "ioctl 4 VFIO_GROUP_GET_STATUS",
        "ioctl 4 VFIO_GROUP_SET_CONTAINER",
        "ioctl 3 VFIO_CHECK_EXTENSION 3",
        "ioctl 3 VFIO_SET_IOMMU 3",
        "ioctl 4 VFIO_GROUP_GET_DEVICE_FD",
        "ioctl 20 VFIO_DEVICE_GET_INFO",
        "ioctl 3 VFIO_IOMMU_GET_INFO",
        "ioctl 3 VFIO_IOMMU_GET_INFO",
      ])
    // SET_CONTAINER gets the container fd; GET_DEVICE_FD the device name.
    #expect(k.ioctlInputs.first { $0.name == "VFIO_GROUP_SET_CONTAINER" }?.bytes == le32(3))
    #expect(k.ioctlInputs.first { $0.name == "VFIO_GROUP_GET_DEVICE_FD" }?.bytes == Array(edu.description.utf8))
    #expect(opened.dma.layout.dmaAvailable == 65535)
    #expect(opened.dma.layout.ranges.count == 2)
  }

  @Test func closesDeviceThenGroupThenContainer() throws {
    let k = legacyHost()
    do {
      let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
      _ = opened
    }
    #expect(k.closed == [20, 4, 3])
  }

  @Test func twoGroupsShareOneContainer() throws {
    let k = legacyHost()
    k.links["/sys/kernel/iommu_groups/6/devices"] = nil
    let container = try Container(kernel: k)
    let g5 = try Group(number: 5, kernel: k)
    let g6 = try Group(number: 6, kernel: k)
    try g5.attach(to: container)
    try g6.attach(to: container)
    #expect(
      k.ioctlLog.filter { $0.contains("SET_IOMMU") } == ["ioctl 3 VFIO_SET_IOMMU 3"],
      "SET_IOMMU once per container")
    try g6.detach()
    try g5.detach()
    #expect(container.iommuType == nil)
  }

  @Test func notViableNamesTheDevice() {
    let k = legacyHost(viable: false)
    do {
      _ = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
      Issue.record("opened a non-viable group")
    } catch {
      #expect(
        error.code == .groupNotViable(group: 5, blockers: ["0000:00:04.0 is still bound to e1000"]))
      #expect(
        error.description.contains(
          "IOMMU group 5 is not viable: 0000:00:04.0 is still bound to e1000"))
      #expect(error.description.contains("vfioctl detach 5"))
    }
  }

  @Test func busyGroupSaysAnotherProcessHoldsIt() {
    let k = legacyHost()
    k.openErrors["/dev/vfio/5"] = .resourceBusy
    do {
      _ = try Group(number: 5, kernel: k)
      Issue.record("opened")
    } catch { #expect(error.description.contains("another process")) }
  }

  @Test func nonViableGroupOpensForInspection() throws {
    let k = legacyHost(viable: false)
    let group = try Group(number: 5, kernel: k, requireViable: false)
    #expect(try !group.status().viable)
    #expect(group.blockers() == ["0000:00:04.0 is still bound to e1000"])
  }

  @Test func setContainerEBUSYIsNotViable() throws {
    let k = legacyHost()
    k.on(.groupSetContainer) { _, _, _ in -Errno.resourceBusy.rawValue }
    let container = try Container(kernel: k)
    let group = try Group(number: 5, kernel: k)
    do {
      try group.attach(to: container)
      Issue.record("attach succeeded")
    } catch {
      #expect(error.errno == .resourceBusy)
      #expect(error.operation == "VFIO_GROUP_SET_CONTAINER")
      #expect(error.message.contains("not viable"))
    }
  }

  @Test func setIOMMUENODEVSaysLoadType1() throws {
    let k = legacyHost()
    k.on(.setIOMMU) { _, _, _ in -Errno.operationNotSupportedByDevice.rawValue }
    let container = try Container(kernel: k)
    let group = try Group(number: 5, kernel: k)
    #expect(throws: VFIOError.self) { try group.attach(to: container) }
    do { try group.attach(to: container) } catch {
      #expect(error.description.contains("vfio_iommu_type1"))
      #expect(error.errno == .operationNotSupportedByDevice)
      #expect(error.path == "/dev/vfio/vfio")
    }
  }

  @Test func setIOMMUEPERMExplainsInterruptRemappingAndUndoes() throws {
    let k = legacyHost()
    k.on(.setIOMMU) { _, _, _ in -Errno.notPermitted.rawValue }
    let container = try Container(kernel: k)
    let group = try Group(number: 5, kernel: k)
    do {
      try group.attach(to: container)
      Issue.record("attached")
    } catch {
      #expect(error.description.contains("allow_unsafe_interrupts"))
    }
    #expect(group.container == nil)
    #expect(
      k.ioctlLog.last == "ioctl 4 VFIO_GROUP_UNSET_CONTAINER",
      "the group leaves the container again")
    #expect(container.groupCount == 0)
  }

  @Test func noIOMMUBackendAtAll() throws {
    let k = legacyHost()
    k.on(.checkExtension) { _, _, _ in 0 }
    let container = try Container(kernel: k)
    let group = try Group(number: 5, kernel: k)
    do {
      try group.attach(to: container)
      Issue.record("attached without an IOMMU backend")
    } catch {
      #expect(error.code == .unsupported)
      #expect(error.description.contains("vfio_iommu_type1"))
    }
  }

  @Test func missingGroupNodeSaysBind() {
    let k = legacyHost()
    k.openErrors["/dev/vfio/5"] = .noSuchFileOrDirectory
    do {
      _ = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
      Issue.record("opened a missing group")
    } catch {
      #expect(error.errno == .noSuchFileOrDirectory)
      #expect(error.path == "/dev/vfio/5")
      #expect(error.description.contains("vfio-pci"))
      #expect(error.description.contains("vfioctl detach 5"))
    }
  }

  @Test func noIOMMUGroupSaysEnableIOMMU() {
    let k = legacyHost()
    k.links["/sys/bus/pci/devices/\(edu)/iommu_group"] = nil
    k.links["/sys/bus/pci/devices/\(edu)"] = "../../../devices/pci0000:00/\(edu)"
    do {
      _ = try Group.number(ofDevice: edu, kernel: k)
      Issue.record("found a group")
    } catch {
      #expect(error.code == .notFound)
      #expect(error.description.contains("intel_iommu=on"))
    }
  }

  @Test func mapAndUnmapDMA() throws {
    let k = legacyHost()
    k.on(.iommuMapDMA) { _, _, _ in 0 }
    k.on(.iommuUnmapDMA) { _, _, _ in 0 }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let m = try opened.dma.map(vaddr: 0x7f12_3456_7000, length: 0x2000, at: 0x10_0000)
    try opened.dma.unmap(m)
    let map = try #require(k.ioctlInputs.first { $0.name == "VFIO_IOMMU_MAP_DMA" }?.bytes)
    // argsz 32, flags READ|WRITE, vaddr, iova, size.
    #expect(map == le32(32) + le32(3) + le64(0x7f12_3456_7000) + le64(0x10_0000) + le64(0x2000))
    let unmap = try #require(k.ioctlInputs.first { $0.name == "VFIO_IOMMU_UNMAP_DMA" }?.bytes)
    #expect(unmap == le32(24) + le32(0) + le64(0x10_0000) + le64(0x2000))
    #expect(opened.dma.mappings.isEmpty)
    do {
      try opened.dma.unmap(DMAMapping(vaddr: 0x7f12_3456_7000, iova: 0x10_0000, length: 0x1000))
      Issue.record("unmapped a mapping that does not exist")
    } catch { #expect(error.code == .invalidArgument) }
  }

  @Test func mapPicksIOVABelowLimitAndChecksOverlap() throws {
    let k = legacyHost()
    k.on(.iommuMapDMA) { _, _, _ in 0 }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let a = try opened.dma.map(vaddr: 0x7000_0000, length: 0x1000, below: 1 << 28)
    #expect(a.iova == 0)
    do {
      try opened.dma.map(vaddr: 0x7000_1000, length: 0x1000, at: 0)
      Issue.record("overlap accepted")
    } catch { #expect(error.code == .overlap) }
    #expect(
      k.ioctlLog.filter { $0.contains("MAP_DMA") }.count == 1,
      "the overlap never reached the kernel")
  }

  @Test func mapENOMEMNamesMemlock() throws {
    let k = legacyHost()
    k.memlock = 8 * 1024 * 1024
    k.on(.iommuMapDMA) { _, _, _ in -Errno.noMemory.rawValue }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    do {
      try opened.dma.map(vaddr: 0x7000_0000, length: 0x100_0000, at: 0x100_0000)
      Issue.record("mapped")
    } catch {
      #expect(error.code == .memlockLimit)
      #expect(error.description.contains("RLIMIT_MEMLOCK"))
      #expect(error.description.contains("8192 KiB"))
    }
    #expect(opened.dma.allocator.used.isEmpty, "a failed map releases its IOVA")
  }

  @Test func mapENOSPCNamesDMAEntryLimit() throws {
    let k = legacyHost()
    k.files["/sys/module/vfio_iommu_type1/parameters/dma_entry_limit"] = "65535\n"
    k.on(.iommuMapDMA) { _, _, _ in -Errno.noSpace.rawValue }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    do {
      try opened.dma.map(vaddr: 0x7000_0000, length: 0x1000, at: 0x1000)
      Issue.record("mapped")
    } catch {
      #expect(error.code == .dmaEntryLimit)
      #expect(error.description.contains("dma_entry_limit 65535"))
    }
  }

  @Test func dmaAvailIsEnforcedBeforeTheKernel() throws {
    let k = legacyHost()
    let info = CapabilityChains.type1Info(dmaAvail: 1)
    k.on(.iommuGetInfo) { _, p, _ in
      let argsz = Int(p!.load(as: UInt32.self))
      info.withUnsafeBytes {
        p!.copyMemory(from: $0.baseAddress!, byteCount: min(argsz, info.count))
      }
      p!.storeBytes(of: UInt32(info.count), as: UInt32.self)
      return 0
    }
    k.on(.iommuMapDMA) { _, _, _ in 0 }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    try opened.dma.map(vaddr: 0x7000_0000, length: 0x1000)
    do {
      try opened.dma.map(vaddr: 0x7000_1000, length: 0x1000)
      Issue.record("mapped past DMA_AVAIL")
    } catch { #expect(error.code == .dmaEntryLimit) }
  }

  @Test func coalescedSegmentsUseOneCall() throws {
    let k = legacyHost()
    k.on(.iommuMapDMA) { _, _, _ in 0 }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let pages = (0..<8).map {
      DMAMapping(
        vaddr: 0x7000_0000 + UInt64($0) * 0x1000, iova: 0x20_0000 + UInt64($0) * 0x1000,
        length: 0x1000)
    }
    let done = try opened.dma.map(segments: pages)
    #expect(done.count == 1)
    #expect(k.ioctlLog.filter { $0.contains("MAP_DMA") }.count == 1)
  }

  @Test func unalignedVaddrRejected() throws {
    let k = legacyHost()
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    do {
      try opened.dma.map(vaddr: 0x7000_0800, length: 0x1000)
      Issue.record("mapped")
    } catch { #expect(error.code == .misaligned) }
  }
}

@Suite struct HotReset {
  /// The bridge group of the test bed: two e1000 behind a pcie-pci-bridge, group 7.
  func bridgeHost() -> FakeKernel {
    let k = legacyHost()
    k.on(.deviceGetPCIHotResetInfo) { _, p, _ in
      let argsz = Int(p!.load(as: UInt32.self))
      p!.storeBytes(of: UInt32(2), toByteOffset: 8, as: UInt32.self)
      guard argsz >= 12 + 16 else { return -Errno.noSpace.rawValue }
      let entries = le32(7) + le16(0) + [2, 0x08] + le32(7) + le16(0) + [2, 0x10]
      entries.withUnsafeBytes { (p! + 12).copyMemory(from: $0.baseAddress!, byteCount: 16) }
      return 0
    }
    k.succeed(.devicePCIHotReset)
    return k
  }

  @Test func infoThenResetWithGroupFDs() throws {
    let k = bridgeHost()
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let info = try opened.device.hotResetInfo()
    #expect(info.devices.count == 2)
    #expect(info.groups == [7])
    let other = try Group(number: 7, kernel: k)
    try opened.device.hotReset(groups: [other])
    #expect(
      Array(k.ioctlLog.suffix(5)) == [
        "ioctl 20 VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        "ioctl 20 VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
        "open /dev/vfio/7",
        "ioctl 5 VFIO_GROUP_GET_STATUS",
        "ioctl 20 VFIO_DEVICE_PCI_HOT_RESET",
      ])
    let infoCalls = k.ioctlInputs.filter { $0.name == "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO" }
    #expect(infoCalls.map { $0.bytes.count } == [12, 28], "count 0 first, then room for both")
    let reset = try #require(k.ioctlInputs.last { $0.name == "VFIO_DEVICE_PCI_HOT_RESET" }?.bytes)
    // Own group fd 4 first, then group 7's fd 5.
    #expect(reset == le32(20) + le32(0) + le32(2) + le32(4) + le32(5))
  }

  @Test func resetEINVALExplainsOwnership() throws {
    let k = bridgeHost()
    k.on(.devicePCIHotReset) { _, _, _ in -Errno.invalidArgument.rawValue }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    do {
      try opened.device.hotReset()
      Issue.record("reset")
    } catch {
      #expect(error.operation == "VFIO_DEVICE_PCI_HOT_RESET")
      #expect(error.description.contains("every affected device"))
    }
  }

  @Test func functionResetEINVALSuggestsHotReset() throws {
    let k = legacyHost()
    k.on(.deviceReset) { _, _, _ in -Errno.invalidArgument.rawValue }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    do {
      try opened.device.reset()
      Issue.record("reset")
    } catch { #expect(error.description.contains("hot reset")) }
  }
}

/// A fake host with edu as /dev/vfio/devices/vfio0 and an iommufd.
func iommufdHost() -> FakeKernel {
  let k = legacyHost()
  k.directories["/sys/bus/pci/devices/\(edu)/vfio-dev"] = ["vfio0"]
  k.directories["/dev"] = ["iommu", "vfio"]
  k.on(.iommuIOASAlloc) { _, p, _ in
    withArgument(p, as: cvfio_iommu_ioas_alloc.self) { $0.out_ioas_id = 2 }
    return 0
  }
  k.on(.deviceBindIOMMUFD) { _, p, _ in
    withArgument(p, as: cvfio_device_bind_iommufd.self) { $0.out_devid = 1 }
    return 0
  }
  k.succeed(.deviceAttachIOMMUFDPT, .iommuIOASMap, .iommuIOASUnmap, .iommuOption)
  k.on(.iommuIOASIOVARanges) { _, p, _ in
    var result: Int32 = 0
    withArgument(p, as: cvfio_iommu_ioas_iova_ranges.self) { r in
      let capacity = r.num_iovas
      r.num_iovas = 2
      r.out_iova_alignment = 4096
      guard capacity >= 2 else {
        result = -Errno.messageTooLong.rawValue
        return
      }
      let out = UnsafeMutablePointer<cvfio_iommu_iova_range>(bitPattern: UInt(r.allowed_iovas))!
      out[0] = cvfio_iommu_iova_range(start: 0, last: 0xfedf_ffff)
      out[1] = cvfio_iommu_iova_range(start: 0xfef0_0000, last: 0x7f_ffff_ffff)
    }
    return result
  }
  return k
}

@Suite struct IOMMUFDPath {
  @Test func openSequence() throws {
    let k = iommufdHost()
    let opened = try OpenedDevice.open(edu, backend: .auto, kernel: k)
    #expect(opened.backend == .iommufd)
    #expect(
      k.ioctlLog == [
        "open /dev/iommu",
        "ioctl 3 IOMMU_IOAS_ALLOC",
        "open /dev/vfio/devices/vfio0",
        "ioctl 4 VFIO_DEVICE_BIND_IOMMUFD",
        "ioctl 4 VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        "ioctl 4 VFIO_DEVICE_GET_INFO",
        "ioctl 3 IOMMU_IOAS_IOVA_RANGES",
      ])
    let bind = try #require(k.ioctlInputs.first { $0.name == "VFIO_DEVICE_BIND_IOMMUFD" }?.bytes)
    #expect(bind == le32(16) + le32(0) + le32(3) + le32(0), "binds to the iommufd's fd 3")
    let attach = try #require(
      k.ioctlInputs.first { $0.name == "VFIO_DEVICE_ATTACH_IOMMUFD_PT" }?.bytes)
    #expect(attach == le32(12) + le32(0) + le32(2), "attaches to IOAS 2")
    #expect(opened.dma.layout.ranges.count == 2)
    #expect(opened.dma.layout.minimumPageSize == 4096)
    guard case .iommufd(_, let devid, _) = opened.device.binding else {
      Issue.record("not an iommufd binding")
      return
    }
    #expect(devid == 1)
  }

  @Test func autoFallsBackToLegacyWithoutDevIOMMU() throws {
    let k = iommufdHost()
    k.directories["/dev"] = ["vfio"]
    let opened = try OpenedDevice.open(edu, backend: .auto, kernel: k)
    #expect(opened.backend == .legacy)
  }

  @Test func explicitIOMMUFDWithoutCdevSaysWhy() {
    let k = legacyHost()
    do {
      _ = try OpenedDevice.open(edu, backend: .iommufd, kernel: k)
      Issue.record("opened")
    } catch {
      #expect(error.code == .notFound)
      #expect(error.description.contains("--backend legacy"))
    }
  }

  @Test func iovaRangesRetryOnEMSGSIZE() throws {
    let k = iommufdHost()
    k.on(.iommuIOASIOVARanges) { _, p, _ in
      var result: Int32 = 0
      withArgument(p, as: cvfio_iommu_ioas_iova_ranges.self) { r in
        let capacity = r.num_iovas
        r.num_iovas = 6
        guard capacity >= 6 else {
          result = -Errno.messageTooLong.rawValue
          return
        }
        let out = UnsafeMutablePointer<cvfio_iommu_iova_range>(bitPattern: UInt(r.allowed_iovas))!
        for i in 0..<6 {
          out[i] = cvfio_iommu_iova_range(start: UInt64(i) << 32, last: (UInt64(i) << 32) + 0xffff)
        }
      }
      return result
    }
    let iommufd = try IOMMUFD(kernel: k)
    let ioas = try iommufd.allocateIOAS()
    let (ranges, alignment) = try ioas.iovaRanges()
    #expect(ranges.count == 6)
    #expect(alignment == 1)
    #expect(k.ioctlLog.filter { $0.contains("IOVA_RANGES") }.count == 2)
  }

  @Test func mapUnmapBytes() throws {
    let k = iommufdHost()
    let opened = try OpenedDevice.open(edu, backend: .iommufd, kernel: k)
    let m = try opened.dma.map(
      vaddr: 0x7f00_0000_0000, length: 0x2000, at: 0x10_0000, access: .read)
    try opened.dma.unmap(m)
    let map = try #require(k.ioctlInputs.first { $0.name == "IOMMU_IOAS_MAP" }?.bytes)
    // size 40, flags FIXED_IOVA|READABLE = 5, ioas 2, reserved, user_va, length, iova.
    #expect(
      map == le32(40) + le32(5) + le32(2) + le32(0) + le64(0x7f00_0000_0000) + le64(0x2000)
        + le64(0x10_0000))
    let unmap = try #require(k.ioctlInputs.first { $0.name == "IOMMU_IOAS_UNMAP" }?.bytes)
    #expect(unmap == le32(24) + le32(2) + le64(0x10_0000) + le64(0x2000))
  }

  @Test func rlimitModeOption() throws {
    let k = iommufdHost()
    let iommufd = try IOMMUFD(kernel: k)
    try iommufd.setProcessBasedMemlockAccounting(true)
    let option = try #require(k.ioctlInputs.first { $0.name == "IOMMU_OPTION" }?.bytes)
    // size 24, RLIMIT_MODE 0, op SET 0, reserved, object 0, val64 1.
    #expect(option == le32(24) + le32(0) + le16(0) + le16(0) + le32(0) + le64(1))
  }

  @Test func rlimitModeGetReadsVal64() throws {
    let k = iommufdHost()
    k.on(.iommuOption) { _, p, _ in
      withArgument(p, as: cvfio_iommu_option.self) { $0.val64 = $0.op == 1 ? 1 : 0 }
      return 0
    }
    let iommufd = try IOMMUFD(kernel: k)
    #expect(try iommufd.processBasedMemlockAccounting())
    let option = try #require(k.ioctlInputs.last { $0.name == "IOMMU_OPTION" }?.bytes)
    #expect(option == le32(24) + le32(0) + le16(1) + le16(0) + le32(0) + le64(0))
  }

  @Test func rlimitModeEBUSYSaysSetItFirst() throws {
    let k = iommufdHost()
    k.on(.iommuOption) { _, _, _ in -Errno.resourceBusy.rawValue }
    let iommufd = try IOMMUFD(kernel: k)
    do {
      try iommufd.setProcessBasedMemlockAccounting(true)
      Issue.record("set")
    } catch { #expect(error.description.contains("before any IOAS")) }
  }

  @Test func cdevHotResetPassesNoFDs() throws {
    let k = iommufdHost()
    k.succeed(.devicePCIHotReset)
    let opened = try OpenedDevice.open(edu, backend: .iommufd, kernel: k)
    try opened.device.hotReset()
    let reset = try #require(k.ioctlInputs.last { $0.name == "VFIO_DEVICE_PCI_HOT_RESET" }?.bytes)
    #expect(reset == le32(12) + le32(0) + le32(0))
  }

  @Test func closesDeviceBeforeIOMMUFD() throws {
    let k = iommufdHost()
    do { _ = try OpenedDevice.open(edu, backend: .iommufd, kernel: k) }
    #expect(k.closed == [4, 3])
  }
}

@Suite struct Interrupts {
  @Test func irqInfoAndMSISetup() throws {
    let k = legacyHost()
    k.on(.deviceGetIRQInfo) { _, p, _ in
      withArgument(p, as: vfio_irq_info.self) { info in
        info.flags =
          UInt32(VFIO_IRQ_INFO_EVENTFD)
          | (info.index == 0
            ? UInt32(VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED)
            : UInt32(VFIO_IRQ_INFO_NORESIZE))
        info.count = info.index == 0 ? 1 : 1
      }
      return 0
    }
    k.succeed(.deviceSetIRQs)
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let intx = try opened.device.irqInfo(.intx)
    #expect(intx.isAutomasked && intx.isMaskable && intx.supportsEventFD)
    let msi = try opened.device.irqInfo(.msi)
    #expect(msi.isNoResize && !msi.isAutomasked)
    let ev = try EventFD(kernel: k)
    try opened.device.enableInterrupts(.msi, eventFDs: [ev])
    try opened.device.unmaskINTx()
    try opened.device.disableInterrupts(.msi)
    let sets = k.ioctlInputs.filter { $0.name == "VFIO_DEVICE_SET_IRQS" }.map(\.bytes)
    #expect(
      sets == [
        le32(24) + le32(0x24) + le32(1) + le32(0) + le32(1) + le32(UInt32(ev.fileDescriptor)),
        le32(20) + le32(0x11) + le32(0) + le32(0) + le32(1),
        le32(20) + le32(0x21) + le32(1) + le32(0) + le32(0),
      ])
  }
}

@Suite struct Regions {
  @Test func regionInfoRetriesWithCapabilityRoom() throws {
    let k = legacyHost()
    let full = CapabilityChains.bar0
    k.on(.deviceGetRegionInfo) { _, p, _ in
      let argsz = Int(p!.load(as: UInt32.self))
      full.withUnsafeBytes {
        p!.copyMemory(from: $0.baseAddress!, byteCount: min(argsz, full.count))
      }
      if argsz < full.count { p!.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self) }
      return 0
    }
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let info = try opened.device.regionInfo(0)
    #expect(info.mappableAreas.count == 2)
    let calls = k.ioctlInputs.filter { $0.name == "VFIO_DEVICE_GET_REGION_INFO" }.map {
      $0.bytes.count
    }
    #expect(calls == [32, full.count])
    let mapped = try opened.device.mapRegion(info, offset: 0x3000, length: 0x1000)
    #expect(mapped.length == 0x1000)
    #expect(k.mmaps.last?.offset == 0x3000)
    #expect(throws: VFIOError.self) {
      try opened.device.mapRegion(info, offset: 0x2000, length: 0x1000)
    }
  }

  @Test func typedReadWriteUsesRegionOffset() throws {
    let k = legacyHost()
    let configOffset: UInt64 = 7 << 40
    k.on(.deviceGetRegionInfo) { _, p, _ in
      withArgument(p, as: vfio_region_info.self) { r in
        r.flags = 0b11
        r.size = 256
        r.offset = UInt64(r.index) << 40
      }
      return 0
    }
    k.registers[configOffset + 4] = le16(0x0400)
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let cmd = try opened.device.enableBusMaster()
    #expect(k.registers[configOffset + 4] == le16(0x0406))
    #expect(cmd.contains(.busMaster) && cmd.contains(.interruptDisable))
    let bar0 = try opened.device.regionInfo(0)
    try opened.device.write(UInt32(0x1234_5678), region: bar0, offset: 4)
    #expect(k.registers[4] == le32(0x1234_5678))
    #expect(throws: VFIOError.self) {
      try opened.device.read(UInt32.self, region: bar0, offset: 254)
    }
  }
}

@Suite struct SPAPRSequence {
  @Test func windowsRegistrationAndMapping() throws {
    let k = legacyHost()
    k.on(.checkExtension) { _, _, ext in ext == 7 || ext == 2 || ext == 5 ? 1 : 0 }
    k.on(.spaprTCEGetInfo) { _, p, _ in
      withArgument(p, as: vfio_iommu_spapr_tce_info.self) {
        $0.flags = UInt32(VFIO_IOMMU_SPAPR_INFO_DDW)
        $0.dma32_window_start = 0
        $0.dma32_window_size = 0x4000_0000
        $0.ddw.pgsizes = 0x1_0101_1000
        $0.ddw.max_dynamic_windows_supported = 1
        $0.ddw.levels = 5
      }
      return 0
    }
    k.on(.spaprTCECreate) { _, p, _ in
      withArgument(p, as: vfio_iommu_spapr_tce_create.self) { $0.start_addr = 0x800_0000_0000_0000 }
      return 0
    }
    k.succeed(
      .spaprRegisterMemory, .spaprUnregisterMemory, .spaprTCERemove, .iommuMapDMA, .iommuUnmapDMA,
      .eehPEOp)
    let container = try Container(kernel: k)
    let group = try Group(number: 5, kernel: k)
    try group.attach(to: container)
    #expect(container.iommuType == .spaprTCEv2)
    #expect(container.supports(.eeh))
    let info = try container.spaprInfo()
    #expect(info.ddw?.maxDynamicWindows == 1)
    try container.spaprRegisterMemory(vaddr: 0x7fff_0000_0000, length: 0x10_0000)
    let start = try container.spaprCreateWindow(pageShift: 16, windowSize: 1 << 30, levels: 1)
    let space = try DMASpace(container)
    #expect(
      space.layout.ranges == [
        IOVARange(start: 0, last: 0x3fff_ffff),
        IOVARange(start: start, last: start + (1 << 30) - 1),
      ])
    let m = try space.map(vaddr: 0x7fff_0000_0000, length: 0x10_0000, at: start)
    try space.unmap(m)
    try container.spaprRemoveWindow(start: start)
    try container.spaprUnregisterMemory(vaddr: 0x7fff_0000_0000, length: 0x10_0000)
    try container.eeh(.enable)
    let tail = k.ioctlLog.drop { !$0.contains("SET_CONTAINER") }
    #expect(
      Array(tail) == [
        "ioctl 4 VFIO_GROUP_SET_CONTAINER",
        "ioctl 3 VFIO_CHECK_EXTENSION 3",
        "ioctl 3 VFIO_CHECK_EXTENSION 7",
        "ioctl 3 VFIO_SET_IOMMU 7",
        "ioctl 3 VFIO_CHECK_EXTENSION 5",
        "ioctl 3 VFIO_IOMMU_SPAPR_TCE_GET_INFO",
        "ioctl 3 VFIO_IOMMU_SPAPR_REGISTER_MEMORY",
        "ioctl 3 VFIO_IOMMU_SPAPR_TCE_CREATE",
        "ioctl 3 VFIO_IOMMU_SPAPR_TCE_GET_INFO",
        "ioctl 3 VFIO_IOMMU_MAP_DMA",
        "ioctl 3 VFIO_IOMMU_UNMAP_DMA",
        "ioctl 3 VFIO_IOMMU_SPAPR_TCE_REMOVE",
        "ioctl 3 VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY",
        "ioctl 3 VFIO_EEH_PE_OP",
      ])
    let create = try #require(
      k.ioctlInputs.first { $0.name == "VFIO_IOMMU_SPAPR_TCE_CREATE" }?.bytes)
    #expect(
      create == le32(40) + le32(0) + le32(16) + le32(0) + le64(1 << 30) + le32(1) + le32(0)
        + le64(0))
    let remove = try #require(
      k.ioctlInputs.first { $0.name == "VFIO_IOMMU_SPAPR_TCE_REMOVE" }?.bytes)
    #expect(remove == le32(16) + le32(0) + le64(0x800_0000_0000_0000))
  }
}
