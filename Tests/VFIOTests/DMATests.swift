import Testing

@testable import VFIO

@Suite struct IOVAAllocation {
  // The two q35/VT-d ranges around the MSI window.
  static let ranges = [
    IOVARange(start: 0, last: 0xfedf_ffff), IOVARange(start: 0xfef0_0000, last: 0x7f_ffff_ffff),
  ]

  func code(_ body: () throws -> Void) -> VFIOError.Code? {
    do {
      try body()
      return nil
    } catch { return (error as? VFIOError)?.code }
  }

  @Test func allocatesAlignedFirstFit() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    #expect(try a.allocate(length: 0x2000) == 0)
    #expect(try a.allocate(length: 0x1000) == 0x2000)
    #expect(try a.allocate(length: 0x1000, alignment: 0x10000) == 0x10000)
    #expect(try a.allocate(length: 0x1000) == 0x3000, "fills the gap left by the aligned one")
  }

  @Test func rejectsUnaligned() {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    #expect(code { try a.reserve(0x1800, length: 0x1000) } == .misaligned)
    #expect(code { try a.reserve(0x1000, length: 0x800) } == .misaligned)
    #expect(code { try a.reserve(0x1000, length: 0) } == .misaligned)
    #expect(code { _ = try a.allocate(length: 0x1234) } == .misaligned)
  }

  @Test func rejectsOverlap() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    try a.reserve(0x10_0000, length: 0x2000)
    #expect(code { try a.reserve(0x10_1000, length: 0x1000) } == .overlap)
    #expect(code { try a.reserve(0xff000, length: 0x2000) } == .overlap)
    #expect(code { try a.reserve(0xf_f000, length: 0x1000) } == nil, "adjacent below is fine")
    #expect(code { try a.reserve(0x10_2000, length: 0x1000) } == nil, "adjacent above is fine")
  }

  /// The in-order fast paths (appending after the last interval, releasing from the front of
  /// the first) give the same intervals and refuse the same overlaps as the general path.
  @Test func inOrderFastPathsKeepEveryCheck() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    for i in 0..<8 as Range<UInt64> { try a.reserve(0x40_0000 + i * 0x1000, length: 0x1000) }
    #expect(a.used == [IOVASpan(start: 0x40_0000, length: 0x8000)], "merged into one interval")
    try a.reserve(0x50_0000, length: 0x1000)
    #expect(a.used.count == 2, "a gap starts a new interval")
    #expect(code { try a.reserve(0x50_0000, length: 0x1000) } == .overlap, "the last itself")
    #expect(code { try a.reserve(0x40_7000, length: 0x1000) } == .overlap, "an inner one")
    #expect(code { try a.reserve(0x80_0000_0000, length: 0x1000) } == .outsideIOVARanges)
    #expect(code { try a.reserve(0x60_0800, length: 0x1000) } == .misaligned)
    try a.release(0x40_0000, length: 0x1000)
    #expect(a.used.first == IOVASpan(start: 0x40_1000, length: 0x7000))
    #expect(code { try a.release(0x40_0000, length: 0x1000) } == .invalidArgument, "released")
    #expect(code { try a.release(0x40_1000, length: 0x8000) } == .invalidArgument, "too long")
    try a.release(0x40_1000, length: 0x7000)
    #expect(a.used == [IOVASpan(start: 0x50_0000, length: 0x1000)])
  }

  @Test func rejectsOutsideRanges() {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    // Inside the MSI window, straddling it, and beyond the top.
    #expect(code { try a.reserve(0xfee0_0000, length: 0x1000) } == .outsideIOVARanges)
    #expect(code { try a.reserve(0xfedf_f000, length: 0x2000) } == .outsideIOVARanges)
    #expect(code { try a.reserve(0x80_0000_0000, length: 0x1000) } == .outsideIOVARanges)
    #expect(
      code { try a.reserve(0xffff_ffff_ffff_f000, length: 0x2000) } == .outsideIOVARanges, "wraps")
  }

  @Test func allocationSkipsExcludedWindow() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    try a.reserve(0, length: 0xfed0_0000)
    // 1 MiB left below the MSI window; 2 MiB must go above it.
    #expect(try a.allocate(length: 0x20_0000) == 0xfef0_0000)
    #expect(try a.allocate(length: 0x10_0000) == 0xfed0_0000)
  }

  @Test func allocationBelowLimit() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    try a.reserve(0, length: 0x0fff_e000)
    #expect(try a.allocate(length: 0x2000, below: 0x1000_0000) == 0x0fff_e000)
    #expect(code { _ = try a.allocate(length: 0x1000, below: 0x1000_0000) } == .iovaExhausted)
    #expect(try a.allocate(length: 0x1000) == 0x1000_0000)
  }

  @Test func exhaustionAtTopOfAddressSpace() throws {
    var a = IOVAAllocator(
      ranges: [IOVARange(start: 0xffff_ffff_ffff_e000, last: .max)], alignment: 0x1000)
    #expect(try a.allocate(length: 0x1000) == 0xffff_ffff_ffff_e000)
    #expect(try a.allocate(length: 0x1000) == 0xffff_ffff_ffff_f000)
    #expect(code { _ = try a.allocate(length: 0x1000) } == .iovaExhausted)
  }

  @Test func releaseReturnsSpace() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    let iova = try a.allocate(length: 0x4000)
    #expect(
      code { try a.release(iova + 0x4000, length: 0x1000) } == .invalidArgument, "never allocated")
    try a.release(iova, length: 0x4000)
    #expect(a.used.isEmpty)
    #expect(code { try a.release(iova, length: 0x4000) } == .invalidArgument, "double release")
  }

  @Test func contiguousSpansMergeAndSplit() throws {
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    for i in 0..<8 { try a.reserve(0x10_0000 + UInt64(i) * 0x1000, length: 0x1000) }
    #expect(a.used == [IOVASpan(start: 0x10_0000, length: 0x8000)])
    try a.release(0x10_3000, length: 0x1000)
    #expect(
      a.used == [
        IOVASpan(start: 0x10_0000, length: 0x3000), IOVASpan(start: 0x10_4000, length: 0x4000),
      ])
    #expect(try a.allocate(length: 0x1000, below: 0x20_0000) == 0, "first fit from the bottom")
    try a.reserve(0x10_3000, length: 0x1000)
    #expect(
      a.used == [IOVASpan(start: 0, length: 0x1000), IOVASpan(start: 0x10_0000, length: 0x8000)])
    try a.release(0x10_0000, length: 0x1000)
    try a.release(0x10_7000, length: 0x1000)
    #expect(a.used.last == IOVASpan(start: 0x10_1000, length: 0x6000))
    #expect(code { try a.reserve(0x10_6000, length: 0x2000) } == .overlap)
  }

  @Test func manySpansInOrderStayCheap() throws {
    // 65,536 page mappings (type1's default dma_entry_limit) mapped and unmapped in order.
    var a = IOVAAllocator(ranges: Self.ranges, alignment: 0x1000)
    for i in 0..<65536 { try a.reserve(0x100_0000 + UInt64(i) * 0x1000, length: 0x1000) }
    #expect(a.used.count == 1)
    for i in 0..<65536 { try a.release(0x100_0000 + UInt64(i) * 0x1000, length: 0x1000) }
    #expect(a.used.isEmpty)
  }

  @Test func minimumPageSizeFromBitmap() {
    #expect(IOVALayout(ranges: [], pageSizes: 0x4020_1000).minimumPageSize == 0x1000)
    #expect(IOVALayout(ranges: [], pageSizes: 0x20_0000).minimumPageSize == 0x20_0000)
  }
}

@Suite struct Coalescing {
  @Test func mergesContiguousRuns() {
    let pages = (0..<4).map {
      DMAMapping(
        vaddr: 0x7000_0000 + UInt64($0) * 0x1000, iova: 0x10_0000 + UInt64($0) * 0x1000,
        length: 0x1000)
    }
    #expect(
      DMAMapping.coalesce(pages.shuffled()) == [
        DMAMapping(vaddr: 0x7000_0000, iova: 0x10_0000, length: 0x4000)
      ])
  }

  @Test func keepsGapsAndDifferentAccessApart() {
    let a = DMAMapping(vaddr: 0x1000, iova: 0x1000, length: 0x1000)
    let gapInVA = DMAMapping(vaddr: 0x3000, iova: 0x2000, length: 0x1000)
    let readOnly = DMAMapping(vaddr: 0x4000, iova: 0x3000, length: 0x1000, access: .read)
    #expect(DMAMapping.coalesce([a, gapInVA, readOnly]).count == 3)
  }
}

@Suite struct Buffers {
  @Test func pageAlignedAndRounded() throws {
    let buffer = try DMABuffer(length: 5000)
    #expect(buffer.length == 8192)
    #expect(buffer.vaddr % 4096 == 0)
    buffer.bytes[buffer.length - 1] = 0xAB
    #expect(buffer.bytes[buffer.length - 1] == 0xAB)
  }

  @Test func transparentHugePagesAreAligned() throws {
    let buffer = try DMABuffer(length: 3 << 20, backing: .transparentHugePages)
    #expect(buffer.vaddr % (2 << 20) == 0)
    #expect(buffer.length == 4 << 20)
  }

  @Test func zeroLengthRejected() {
    #expect(throws: VFIOError.self) { try DMABuffer(length: 0) }
  }
}
