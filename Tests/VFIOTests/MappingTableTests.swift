import Testing

@testable import VFIO

@Suite struct MappingTables {
  func m(_ iova: UInt64, _ length: UInt64 = 0x1000, vaddr: UInt64 = 0x7000_0000) -> DMAMapping {
    DMAMapping(vaddr: vaddr, iova: iova, length: length)
  }

  @Test func insertFindRemove() {
    var t = MappingTable()
    t.insert(m(0x1000))
    t.insert(m(0x2000))
    #expect(t.count == 2)
    #expect(t.mapping(at: 0x1000) == m(0x1000))
    #expect(t.mapping(at: 0x3000) == nil)
    let first = t.remove(at: 0x1000)
    let again = t.remove(at: 0x1000)
    #expect(first == m(0x1000))
    #expect(again == nil, "removed once")
    #expect(t.mapping(at: 0x2000) == m(0x2000))
    #expect(t.count == 1)
  }

  @Test func removeExactlyComparesEveryField() {
    var t = MappingTable()
    t.insert(m(0x1000, 0x2000))
    let shorter = t.remove(exactly: m(0x1000, 0x1000))
    let otherAddress = t.remove(exactly: m(0x1000, 0x2000, vaddr: 0x5000_0000))
    let otherAccess = t.remove(
      exactly: DMAMapping(vaddr: 0x7000_0000, iova: 0x1000, length: 0x2000, access: .read))
    #expect(!shorter && !otherAddress && !otherAccess)
    let exact = t.remove(exactly: m(0x1000, 0x2000))
    #expect(exact)
    #expect(t.count == 0)
  }

  /// Against a Dictionary as the model, with strides that collide in a naive hash (4 KiB pages,
  /// 2 MiB and 1 GiB apart) and removals in every order, through several table doublings.
  @Test(arguments: [UInt64(0x1000), 0x20_0000, 0x4000_0000])
  func agreesWithADictionary(stride: UInt64) {
    var t = MappingTable()
    var model: [UInt64: DMAMapping] = [:]
    var rng = SystemRandomNumberGenerator()
    for i in 0..<3000 as Range<UInt64> {
      let x = m(i * stride, vaddr: 0x1000 * i)
      t.insert(x)
      model[x.iova] = x
      // Interleave removals: every third insert removes a random live mapping.
      if i % 3 == 2, let victim = model.keys.randomElement(using: &rng) {
        let removed = t.remove(at: victim)
        let expected = model.removeValue(forKey: victim)
        #expect(removed == expected)
      }
    }
    #expect(t.count == model.count)
    for (iova, x) in model { #expect(t.mapping(at: iova) == x) }
    #expect(t.sorted == model.values.sorted { $0.iova < $1.iova })
    for iova in model.keys.shuffled() {
      let removed = t.remove(at: iova)
      #expect(removed != nil)
    }
    #expect(t.count == 0 && t.sorted.isEmpty)
  }

  @Test func reserveCapacityKeepsContents() {
    var t = MappingTable()
    for i in 0..<10 as Range<UInt64> { t.insert(m(i << 12)) }
    t.reserveCapacity(100_000)
    #expect(t.count == 10)
    for i in 0..<10 as Range<UInt64> { #expect(t.mapping(at: i << 12) != nil) }
  }
}

/// A mapper that records calls and can be told to fail the next one.
final class ScriptedMapper: DMAMapper, @unchecked Sendable {
  var layout = IOVALayout(
    ranges: [
      IOVARange(start: 0, last: 0xfedf_ffff), IOVARange(start: 0xfef0_0000, last: 0x7f_ffff_ffff),
    ],
    pageSizes: 0x4020_1000, dmaAvailable: 3)
  var mapped: [DMAMapping] = []
  var failNext: VFIOError?

  func iovaLayout() throws(VFIOError) -> IOVALayout { layout }
  func map(_ mapping: DMAMapping) throws(VFIOError) {
    if let e = failNext {
      failNext = nil
      throw e
    }
    mapped.append(mapping)
  }
  func unmap(_ mapping: DMAMapping) throws(VFIOError) {
    if let e = failNext {
      failNext = nil
      throw e
    }
    mapped.removeAll { $0 == mapping }
  }
}

@Suite struct DMASpaceBookkeeping {
  func code(_ body: () throws -> Void) -> VFIOError.Code? {
    do {
      try body()
      return nil
    } catch { return (error as? VFIOError)?.code }
  }

  @Test func dmaAvailIsABudgetThatUnmapsGiveBack() throws {
    let mapper = ScriptedMapper()
    let dma = try DMASpace(mapper)
    let a = try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x10_0000)
    try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x20_0000)
    try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x30_0000)
    #expect(code { try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x40_0000) } == .dmaEntryLimit)
    try dma.unmap(a)
    #expect(code { try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x40_0000) } == nil)
    #expect(mapper.mapped.count == 3)
  }

  @Test func kernelRefusalLeavesNoTrace() throws {
    let mapper = ScriptedMapper()
    let dma = try DMASpace(mapper)
    mapper.failNext = VFIOError(.syscall, operation: "VFIO_IOMMU_MAP_DMA", message: "refused")
    #expect(code { try dma.map(vaddr: 0x1000, length: 0x2000, at: 0x10_0000) } == .syscall)
    #expect(dma.mappings.isEmpty && dma.allocator.used.isEmpty)
    // The same range maps afterwards, and the budget was not spent.
    for i in 0..<3 as Range<UInt64> {
      try dma.map(vaddr: 0x1000, length: 0x2000, at: 0x10_0000 + i << 20)
    }
  }

  @Test func failedUnmapKeepsTheMapping() throws {
    let mapper = ScriptedMapper()
    let dma = try DMASpace(mapper)
    let a = try dma.map(vaddr: 0x1000, length: 0x2000, at: 0x10_0000)
    mapper.failNext = VFIOError(.syscall, operation: "VFIO_IOMMU_UNMAP_DMA", message: "refused")
    #expect(code { try dma.unmap(a) } == .syscall)
    #expect(dma.mappings == [a])
    #expect(code { try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x10_1000) } == .overlap)
    try dma.unmap(a)
    #expect(dma.mappings.isEmpty && mapper.mapped.isEmpty)
  }

  @Test func unmapNeedsTheExactMapping() throws {
    let dma = try DMASpace(ScriptedMapper())
    let a = try dma.map(vaddr: 0x1000, length: 0x2000, at: 0x10_0000)
    #expect(
      code { try dma.unmap(DMAMapping(vaddr: 0x1000, iova: 0x10_0000, length: 0x1000)) }
        == .invalidArgument)
    #expect(
      code { try dma.unmap(DMAMapping(vaddr: 0x9000, iova: 0x10_0000, length: 0x2000)) }
        == .invalidArgument)
    try dma.unmap(a)
    #expect(code { try dma.unmap(a) } == .invalidArgument)
  }

  @Test func misalignedProcessAddress() throws {
    let dma = try DMASpace(ScriptedMapper())
    #expect(code { try dma.map(vaddr: 0x1800, length: 0x1000, at: 0x10_0000) } == .misaligned)
  }

  @Test func refreshKeepsMappingsAndResetsTheBudget() throws {
    let mapper = ScriptedMapper()
    let dma = try DMASpace(mapper)
    let a = try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x10_0000)
    mapper.layout.dmaAvailable = 1
    try dma.refreshLayout()
    #expect(dma.mappings == [a])
    try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x20_0000)
    #expect(code { try dma.map(vaddr: 0x1000, length: 0x1000, at: 0x30_0000) } == .dmaEntryLimit)
  }
}
