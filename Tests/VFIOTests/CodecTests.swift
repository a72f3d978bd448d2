import Testing

@testable import VFIO

/// Builds a region info buffer: the 32-byte fixed part, then capabilities at the given offsets.
func regionInfoBuffer(
  index: UInt32, flags: UInt32, size: UInt64, offset: UInt64, capOffset: UInt32, tail: [UInt8]
) -> [UInt8] {
  let total = 32 + tail.count
  return le32(UInt32(total)) + le32(flags) + le32(index) + le32(capOffset) + le64(size)
    + le64(offset) + tail
}

func capHeader(id: UInt16, version: UInt16 = 1, next: UInt32) -> [UInt8] {
  le16(id) + le16(version) + le32(next)
}

@Suite struct CapabilityChains {
  // Region 0 with caps: sparse mmap (2 areas) at 32, MSI-X mappable at 80, type at 88.
  static let bar0: [UInt8] = regionInfoBuffer(
    index: 0, flags: 0b1111, size: 0x100000, offset: 0, capOffset: 32,
    tail: capHeader(id: 1, next: 80) + le32(2) + le32(0)
      + le64(0) + le64(0x2000) + le64(0x3000) + le64(0xfd000)
      + capHeader(id: 3, next: 88)
      + capHeader(id: 2, next: 0) + le32(0x8000_0001) + le32(7))

  @Test func decodesRegionCapabilities() throws {
    let info = try RegionInfo.decode(Self.bar0)
    #expect(info.size == 0x100000)
    #expect(info.isMappable && info.isReadable && info.isWritable)
    #expect(
      info.capabilities == [
        .sparseMmap([
          SparseMmapArea(offset: 0, size: 0x2000), SparseMmapArea(offset: 0x3000, size: 0xfd000),
        ]),
        .msixMappable, .type(type: 0x8000_0001, subtype: 7),
      ])
    #expect(info.mappableAreas.count == 2)
    #expect(info.isMSIXMappable)
    #expect(info.allowsMapping(offset: 0x3000, length: 0x1000))
    #expect(!info.allowsMapping(offset: 0x2000, length: 0x1000), "the MSI-X hole is not mappable")
    #expect(!info.allowsMapping(offset: 0x1000, length: 0x2000), "straddles the hole")
  }

  @Test func capsIgnoredWithoutFlag() throws {
    var buffer = Self.bar0
    buffer.store(UInt32(0b0111), at: 4)
    #expect(try RegionInfo.decode(buffer).capabilities == [])
  }

  @Test func rejectsTruncatedHeader() {
    let buffer = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 32, tail: [1, 0, 1, 0])
    #expect(throws: VFIOError.self) { try RegionInfo.decode(buffer) }
    do {
      _ = try RegionInfo.decode(buffer)
    } catch {
      #expect(error.code == .malformedCapabilityChain)
      #expect(error.message.contains("truncated"))
    }
  }

  @Test func rejectsSparseListLongerThanBuffer() {
    let buffer = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 32,
      tail: capHeader(id: 1, next: 0) + le32(3) + le32(0) + le64(0) + le64(0x1000))
    #expect(throws: VFIOError.self) { try RegionInfo.decode(buffer) }
  }

  @Test func rejectsLoopBack() {
    let buffer = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 32,
      tail: capHeader(id: 3, next: 40) + capHeader(id: 3, next: 32))
    do {
      _ = try RegionInfo.decode(buffer)
      Issue.record("a looping chain was accepted")
    } catch {
      #expect(error.code == .malformedCapabilityChain)
      #expect(error.message.contains("loops"))
    }
  }

  @Test func rejectsSelfLoop() {
    let buffer = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 32, tail: capHeader(id: 3, next: 32))
    #expect(throws: VFIOError.self) { try RegionInfo.decode(buffer) }
  }

  @Test func rejectsOffsetInsideFixedStruct() {
    let buffer = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 8, tail: capHeader(id: 3, next: 0))
    #expect(throws: VFIOError.self) { try RegionInfo.decode(buffer) }
  }

  @Test func rejectsOverlongChain() {
    var tail: [UInt8] = []
    let n = CapabilityChain.maximumLength + 1
    for i in 0..<n {
      let next = i == n - 1 ? 0 : UInt32(32 + 8 * (i + 1))
      tail += capHeader(id: 3, next: next)
    }
    let buffer = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 32, tail: tail)
    #expect(throws: VFIOError.self) { try RegionInfo.decode(buffer) }
    // One fewer is fine.
    var ok = Array(tail[0..<(8 * (n - 1))])
    ok.store(UInt32(0), at: ok.count - 4)
    let fine = regionInfoBuffer(
      index: 0, flags: 0b1000, size: 0, offset: 0, capOffset: 32, tail: ok)
    #expect((try? RegionInfo.decode(fine))?.capabilities.count == n - 1)
  }

  /// A type1 info buffer as 6.1 returns it on q35 with VT-d: two IOVA ranges around the MSI
  /// window, migration, DMA_AVAIL.
  static func type1Info(dmaAvail: UInt32 = 65535) -> [UInt8] {
    let caps =
      capHeader(id: 1, next: 72) + le32(2) + le32(0)
      + le64(0) + le64(0xfedf_ffff) + le64(0xfef0_0000) + le64(0x7f_ffff_ffff)
      + capHeader(id: 2, next: 104) + le32(1) + le32(0) + le64(0x1000) + le64(0x1000_0000)
      + capHeader(id: 3, next: 0) + le32(dmaAvail)
    return le32(UInt32(24 + caps.count)) + le32(0b11) + le64(0x4020_1000) + le32(24) + le32(0)
      + caps
  }

  @Test func decodesType1Info() throws {
    let info = try Type1Info.decode(Self.type1Info())
    #expect(info.pageSizes == 0x4020_1000)
    #expect(
      info.iovaRanges == [
        IOVARange(start: 0, last: 0xfedf_ffff), IOVARange(start: 0xfef0_0000, last: 0x7f_ffff_ffff),
      ])
    #expect(info.dmaAvailable == 65535)
    #expect(
      info.capabilities.contains(
        .migration(flags: 1, pageSizes: 0x1000, maxDirtyBitmapSize: 0x1000_0000)))
  }

  @Test func rejectsTruncatedIOVARanges() {
    var buffer = Self.type1Info()
    buffer.store(UInt32(5), at: 32)  // claims 5 ranges where 2 fit
    #expect(throws: VFIOError.self) { try Type1Info.decode(buffer) }
  }

  @Test func rejectsTruncatedDMAAvail() {
    let buffer = Self.type1Info()
    #expect(throws: VFIOError.self) { try Type1Info.decode(Array(buffer[0..<(buffer.count - 2)])) }
  }
}

@Suite struct IRQSetEncoding {
  @Test func triggerWithEventFDs() throws {
    let bytes = IRQSetCodec.encode(
      index: IRQIndex.msix.rawValue, start: 0, action: .trigger(eventfds: [7, 8, -1]))
    // argsz 32, flags DATA_EVENTFD|ACTION_TRIGGER = 0x24, index 2, start 0, count 3, fds.
    let expected =
      le32(32) + le32(0x24) + le32(2) + le32(0) + le32(3) + le32(7) + le32(8) + le32(0xffff_ffff)
    #expect(bytes == expected)
    let decoded = try IRQSetCodec.decode(bytes)
    #expect(decoded.count == 3 && decoded.index == 2 && decoded.data.count == 12)
  }

  @Test func disableIsDataNoneTriggerCountZero() {
    #expect(
      IRQSetCodec.encode(index: 1, action: .disable) == le32(20) + le32(0x21) + le32(1) + le32(0)
        + le32(0))
  }

  @Test func unmaskAndMaskINTx() {
    #expect(
      IRQSetCodec.encode(index: 0, action: .unmask(count: 1)) == le32(20) + le32(0x11) + le32(0)
        + le32(0) + le32(1))
    #expect(
      IRQSetCodec.encode(index: 0, action: .mask(count: 1)) == le32(20) + le32(0x09) + le32(0)
        + le32(0) + le32(1))
  }

  @Test func startOffsetIsEncoded() {
    let bytes = IRQSetCodec.encode(index: 2, start: 4, action: .trigger(eventfds: [9]))
    #expect(bytes.u32(12) == 4 && bytes.u32(16) == 1 && bytes.u32(20) == 9)
  }

  @Test func decodeRejectsBadArgsz() {
    var bytes = IRQSetCodec.encode(index: 0, action: .trigger(eventfds: [1]))
    bytes.store(UInt32(99), at: 0)
    #expect(throws: VFIOError.self) { try IRQSetCodec.decode(bytes) }
  }
}

@Suite struct HotResetEncoding {
  @Test func infoRequestHasRoom() {
    #expect(HotResetCodec.infoRequest(capacity: 0) == le32(12) + le32(0) + le32(0))
    #expect(HotResetCodec.infoRequest(capacity: 3).count == 36)
  }

  @Test func decodesDependentDevices() throws {
    // The bridge group of the test bed: two e1000 at 02:01.0 and 02:02.0 in group 7.
    let bytes =
      le32(28) + le32(0) + le32(2) + le32(7) + le16(0) + [2, 0x08] + le32(7) + le16(0) + [2, 0x10]
    let info = try HotResetCodec.decodeInfo(bytes)
    #expect(info.devices.map(\.address.description) == ["0000:02:01.0", "0000:02:02.0"])
    #expect(info.groups == [7])
    #expect(!info.byDeviceID)
  }

  @Test func rejectsCountBeyondBuffer() {
    let bytes = le32(20) + le32(0) + le32(2) + le32(7) + le16(0) + [2, 0x08]
    #expect(throws: VFIOError.self) { try HotResetCodec.decodeInfo(bytes) }
  }

  @Test func resetRequestCarriesFDs() {
    #expect(
      HotResetCodec.resetRequest(groupFDs: [5, 9]) == le32(20) + le32(0) + le32(2) + le32(5)
        + le32(9))
    #expect(HotResetCodec.resetRequest(groupFDs: []) == le32(12) + le32(0) + le32(0))
  }
}

@Suite struct SPAPREncoding {
  @Test func getInfo() {
    #expect(SPAPRCodec.getInfoRequest() == le32(32) + [UInt8](repeating: 0, count: 28))
  }

  @Test func decodeInfoWithDDW() {
    let bytes =
      le32(32) + le32(1) + le32(0) + le32(0x4000_0000) + le64(0x1_0101_1000) + le32(1) + le32(5)
    let info = SPAPRCodec.decodeInfo(bytes)
    #expect(info.dma32WindowStart == 0 && info.dma32WindowSize == 0x4000_0000)
    #expect(info.ddw == .init(pageSizes: 0x1_0101_1000, maxDynamicWindows: 1, levels: 5))
    var noDDW = bytes
    noDDW.store(UInt32(0), at: 4)
    #expect(SPAPRCodec.decodeInfo(noDDW).ddw == nil)
  }

  @Test func registerMemory() {
    #expect(
      SPAPRCodec.registerMemory(vaddr: 0x7f00_0000_0000, length: 0x20_0000)
        == le32(24) + le32(0) + le64(0x7f00_0000_0000) + le64(0x20_0000))
  }

  @Test func createWindow() {
    // page_shift 16 (64 KiB TCEs), 1 GiB window, 2 levels; start_addr is output.
    #expect(
      SPAPRCodec.createWindow(pageShift: 16, windowSize: 1 << 30, levels: 2)
        == le32(40) + le32(0) + le32(16) + le32(0) + le64(1 << 30) + le32(2) + le32(0) + le64(0))
    let reply =
      le32(40) + le32(0) + le32(16) + le32(0) + le64(1 << 30) + le32(2) + le32(0)
      + le64(0x800_0000_0000_0000)
    #expect(SPAPRCodec.decodeCreatedWindowStart(reply) == 0x800_0000_0000_0000)
  }

  @Test func removeWindow() {
    #expect(
      SPAPRCodec.removeWindow(start: 0x800_0000_0000_0000) == le32(16) + le32(0)
        + le64(0x800_0000_0000_0000))
  }

  @Test func eehOps() {
    #expect(SPAPRCodec.eehOp(.enable).prefix(12) == ArraySlice(le32(12) + le32(0) + le32(1)))
    #expect(SPAPRCodec.eehOp(.getState).prefix(12) == ArraySlice(le32(12) + le32(0) + le32(4)))
    #expect(SPAPRCodec.eehOp(.resetHot).prefix(12) == ArraySlice(le32(12) + le32(0) + le32(6)))
    let inject = SPAPRCodec.eehOp(.injectError(type: 1, function: 2, address: 0x1000, mask: 0xfff))
    #expect(
      inject == le32(40) + le32(0) + le32(9) + le32(0) + le32(1) + le32(2) + le64(0x1000)
        + le64(0xfff))
  }
}
