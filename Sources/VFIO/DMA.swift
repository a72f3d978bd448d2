import SystemPackage

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The rules an IOMMU address space imposes on mappings.
public struct IOVALayout: Sendable, Equatable {
  /// Ranges a mapping may use.
  public var ranges: [IOVARange]
  /// Bitmap of supported page sizes; the lowest set bit is the required alignment.
  public var pageSizes: UInt64
  /// How many more mappings the kernel accepts (type1's DMA_AVAIL), when it says.
  public var dmaAvailable: UInt32?

  public init(ranges: [IOVARange], pageSizes: UInt64, dmaAvailable: UInt32? = nil) {
    self.ranges = ranges
    self.pageSizes = pageSizes
    self.dmaAvailable = dmaAvailable
  }

  /// The smallest page size the IOMMU maps, which every IOVA and length must be a multiple of.
  public var minimumPageSize: UInt64 {
    pageSizes == 0 ? UInt64(systemPageSize) : pageSizes & (~pageSizes &+ 1)
  }
}

/// Whether the device may read and/or write a mapping.
public struct DMAAccess: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  /// The device reads the memory (RAM → device).
  public static let read = DMAAccess(rawValue: 1)
  /// The device writes the memory (device → RAM).
  public static let write = DMAAccess(rawValue: 2)
  public static let readWrite: DMAAccess = [.read, .write]
}

/// One IOVA → process-memory translation.
public struct DMAMapping: Sendable, Hashable, CustomStringConvertible {
  public var vaddr: UInt64
  public var iova: UInt64
  public var length: UInt64
  public var access: DMAAccess

  public init(vaddr: UInt64, iova: UInt64, length: UInt64, access: DMAAccess = .readWrite) {
    self.vaddr = vaddr
    self.iova = iova
    self.length = length
    self.access = access
  }

  public var description: String {
    "iova 0x\(String(iova, radix: 16)) -> va 0x\(String(vaddr, radix: 16)) (0x\(String(length, radix: 16)) bytes)"
  }

  /// Merges mappings that are contiguous in both IOVA and process memory with the same access,
  /// so the kernel sees one call per contiguous range (per-call cost dominates small mappings).
  public static func coalesce(_ mappings: [DMAMapping]) -> [DMAMapping] {
    var result: [DMAMapping] = []
    for m in mappings.sorted(by: { $0.iova < $1.iova }) {
      if var last = result.last, last.access == m.access,
        last.iova &+ last.length == m.iova, last.vaddr &+ last.length == m.vaddr,
        last.iova <= m.iova
      {
        last.length += m.length
        result[result.count - 1] = last
      } else {
        result.append(m)
      }
    }
    return result
  }
}

/// An IOMMU address space that can map process memory: a type1 `Container` or an iommufd `IOAS`.
public protocol DMAMapper: AnyObject, Sendable {
  /// The ranges, page sizes and mapping budget the kernel reports now.
  func iovaLayout() throws(VFIOError) -> IOVALayout
  /// VFIO_IOMMU_MAP_DMA or IOMMU_IOAS_MAP at a fixed IOVA.
  func map(_ mapping: DMAMapping) throws(VFIOError)
  /// VFIO_IOMMU_UNMAP_DMA or IOMMU_IOAS_UNMAP of exactly that range.
  func unmap(_ mapping: DMAMapping) throws(VFIOError)
}

/// Failure of a map call, with the limit it hit named.
func mapFailure(
  _ errno: Errno, request: IoctlRequest, path: String, mapping: DMAMapping,
  kernel: any KernelInterface
) -> VFIOError {
  switch errno {
  case .noMemory:
    let limit = kernel.memlockLimit().map { "\($0 / 1024) KiB" } ?? "unlimited"
    return VFIOError(
      .memlockLimit, errno: errno, operation: request.name, path: path,
      message:
        "pinning \(mapping.length) bytes exceeds the locked-memory limit (RLIMIT_MEMLOCK soft limit \(limit))",
      hint:
        "raise RLIMIT_MEMLOCK (`ulimit -l`, systemd LimitMEMLOCK=, or CAP_IPC_LOCK) to cover all mapped memory"
    )
  case .noSpace:
    let limit =
      kernel.readFile("/sys/module/vfio_iommu_type1/parameters/dma_entry_limit")?
      .trimmingWhitespace() ?? "65535"
    return VFIOError(
      .dmaEntryLimit, errno: errno, operation: request.name, path: path,
      message: "the container holds the maximum number of DMA mappings (dma_entry_limit \(limit))",
      hint:
        "coalesce contiguous buffers into fewer mappings or raise vfio_iommu_type1's dma_entry_limit module parameter"
    )
  case .fileExists, .addressInUse:
    return VFIOError(
      .overlap, errno: errno, operation: request.name, path: path,
      message: "\(mapping) overlaps an existing mapping",
      hint: "unmap the existing range first or choose another IOVA")
  case .invalidArgument:
    return VFIOError(
      .syscall, errno: errno, operation: request.name, path: path,
      message: "the kernel rejected \(mapping)",
      hint:
        "check alignment to the IOMMU page size, that the IOVA is inside the reported ranges, and that the memory is mapped read/write"
    )
  case .badAddress:
    return VFIOError(
      .syscall, errno: errno, operation: request.name, path: path,
      message: "the process memory of \(mapping) is not mapped",
      hint: "map memory from a live DMABuffer")
  default:
    return .syscall(
      errno, operation: request.name, path: path, message: "mapping \(mapping) failed")
  }
}

extension String {
  func trimmingWhitespace() -> String {
    var s = Substring(self)
    while let c = s.first, c.isWhitespace { s.removeFirst() }
    while let c = s.last, c.isWhitespace { s.removeLast() }
    return String(s)
  }
}

let systemPageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

/// Page-aligned anonymous memory owned by this object, for a device to DMA into or out of.
public final class DMABuffer: @unchecked Sendable {
  /// How the buffer's pages are backed.
  public enum Backing: Sendable {
    /// Base pages.
    case normal
    /// Base pages with MADV_HUGEPAGE on a 2 MiB-aligned range, so the kernel may use THP.
    case transparentHugePages
    /// MAP_HUGETLB from the hugetlbfs pool (vm.nr_hugepages must be set).
    case hugeTLB
  }

  static let hugePageSize = 2 << 20

  public let address: UnsafeMutableRawPointer
  public let length: Int
  public let backing: Backing
  let kernel: any KernelInterface
  // What was mmap'd, which for THP is larger than `length` to allow aligning.
  let mappedBase: UnsafeMutableRawPointer
  let mappedLength: Int

  /// Allocates at least `length` bytes, rounded up to the page size of `backing`.
  public init(length: Int, backing: Backing = .normal, kernel: any KernelInterface = LinuxKernel())
    throws(VFIOError)
  {
    guard length > 0 else {
      throw VFIOError(
        .invalidArgument, operation: "mmap", message: "a DMA buffer needs a length > 0")
    }
    let unit = backing == .normal ? systemPageSize : Self.hugePageSize
    let rounded = (length + unit - 1) / unit * unit
    var flags = MAP_PRIVATE | MAP_ANONYMOUS
    var request = rounded
    switch backing {
    case .normal: break
    case .hugeTLB: flags |= MAP_HUGETLB
    case .transparentHugePages: request = rounded + Self.hugePageSize
    }
    let base: UnsafeMutableRawPointer
    switch kernel.mmap(
      length: request, protection: PROT_READ | PROT_WRITE, flags: flags, fd: -1, offset: 0)
    {
    case .success(let p): base = p
    case .failure(let errno):
      throw VFIOError(
        errno == .noMemory && backing == .hugeTLB ? .unsupported : .syscall, errno: errno,
        operation: "mmap", message: "cannot allocate \(rounded) bytes of DMA memory",
        hint: backing == .hugeTLB
          ? "reserve huge pages (`echo N > /proc/sys/vm/nr_hugepages`) or use .transparentHugePages"
          : nil)
    }
    var start = base
    if backing == .transparentHugePages {
      let misalignment = Int(bitPattern: base) % Self.hugePageSize
      if misalignment != 0 { start = base + (Self.hugePageSize - misalignment) }
      // Advisory: without THP the buffer still works, with base pages.
      _ = kernel.madvise(start, length: rounded, advice: MADV_HUGEPAGE)
    }
    self.address = start
    self.length = rounded
    self.backing = backing
    self.kernel = kernel
    self.mappedBase = base
    self.mappedLength = request
  }

  deinit { kernel.munmap(mappedBase, length: mappedLength) }

  public var bytes: UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(start: address, count: length)
  }

  /// The buffer's address as the kernel's `vaddr`/`user_va` fields want it.
  public var vaddr: UInt64 { UInt64(UInt(bitPattern: address)) }
}

/// An IOMMU address space with its IOVA bookkeeping: picks IOVAs inside the kernel's ranges,
/// rejects overlaps and misalignment before the kernel does, and names the limit hit.
public final class DMASpace: @unchecked Sendable {
  public let mapper: any DMAMapper
  /// The mapper's concrete type, found once, so map and unmap call the library's own mappers
  /// directly rather than through the protocol's witness table.
  let container: Container?
  let ioas: IOAS?
  /// The same, unretained: `mapper` keeps the object alive for the space's lifetime, and calling
  /// through a guaranteed reference spares the retain/release (atomic, so dear under emulation)
  /// Swift otherwise puts around each call through `container` or `ioas`.
  let containerRef: Unmanaged<Container>?
  let ioasRef: Unmanaged<IOAS>?
  /// All bookkeeping in one value: Swift checks exclusive access to a class's stored properties
  /// at run time, per property and per access, so one value means one check per map or unmap.
  @exclusivity(unchecked) var book: DMABook

  public var layout: IOVALayout { book.layout }
  public var allocator: IOVAAllocator { book.allocator }
  /// Live mappings, in IOVA order.
  public var mappings: [DMAMapping] { book.table.sorted }

  public init(_ mapper: any DMAMapper) throws(VFIOError) {
    self.mapper = mapper
    container = mapper as? Container
    ioas = mapper as? IOAS
    containerRef = container.map { Unmanaged.passUnretained($0) }
    ioasRef = ioas.map { Unmanaged.passUnretained($0) }
    self.book = DMABook(layout: try mapper.iovaLayout())
  }

  /// Maps `length` bytes of process memory at `vaddr`; at `iova` if given, else at a free IOVA
  /// (below `limit` if given).
  @discardableResult
  public func map(
    vaddr: UInt64, length: UInt64, at iova: UInt64? = nil, below limit: UInt64? = nil,
    access: DMAAccess = .readWrite
  ) throws(VFIOError) -> DMAMapping {
    // Claimed before the kernel call and given back if it fails, so the bookkeeping is touched
    // once on success and nothing is held while the mapper runs.
    let mapping = try book.claim(
      vaddr: vaddr, length: length, at: iova, below: limit, access: access)
    let rc: Int32
    if let containerRef {
      rc = containerRef._withUnsafeGuaranteedRef { $0.mapRaw(mapping) }
    } else if let ioasRef {
      rc = ioasRef._withUnsafeGuaranteedRef { $0.mapRaw(mapping) }
    } else {
      do {
        try mapper.map(mapping)
      } catch {
        book.giveBack(mapping)
        throw error
      }
      return mapping
    }
    guard rc >= 0 else { throw mapFailed(rc, mapping) }
    return mapping
  }

  /// Gives the claim back after the kernel refused a map and names the failure.
  @inline(never)
  func mapFailed(_ rc: Int32, _ mapping: DMAMapping) -> VFIOError {
    book.giveBack(mapping)
    return container?.mapError(rc, mapping) ?? ioas!.mapError(rc, mapping)
  }

  /// Maps a whole `DMABuffer`.
  @discardableResult
  public func map(
    _ buffer: DMABuffer, at iova: UInt64? = nil, below limit: UInt64? = nil,
    access: DMAAccess = .readWrite
  ) throws(VFIOError) -> DMAMapping {
    try map(
      vaddr: buffer.vaddr, length: UInt64(buffer.length), at: iova, below: limit, access: access)
  }

  /// Maps many fixed-IOVA segments with one kernel call per contiguous run.
  @discardableResult
  public func map(segments: [DMAMapping]) throws(VFIOError) -> [DMAMapping] {
    var done: [DMAMapping] = []
    for m in DMAMapping.coalesce(segments) {
      done.append(try map(vaddr: m.vaddr, length: m.length, at: m.iova, access: m.access))
    }
    return done
  }

  /// Unmaps a mapping made by this space.
  public func unmap(_ mapping: DMAMapping) throws(VFIOError) {
    try book.release(mapping)
    var unmapped: UInt64 = 0
    let rc: Int32
    if let containerRef {
      rc = containerRef._withUnsafeGuaranteedRef { $0.unmapRaw(mapping, unmapped: &unmapped) }
    } else if let ioasRef {
      rc = ioasRef._withUnsafeGuaranteedRef { $0.unmapRaw(mapping, unmapped: &unmapped) }
    } else {
      do {
        try mapper.unmap(mapping)
      } catch {
        book.restore(mapping)
        throw error
      }
      return
    }
    guard rc >= 0, unmapped == mapping.length else {
      throw unmapFailed(rc, unmapped: unmapped, mapping)
    }
  }

  /// Restores the bookkeeping after the kernel refused an unmap (or unmapped a different
  /// length) and names the failure.
  @inline(never)
  func unmapFailed(_ rc: Int32, unmapped: UInt64, _ mapping: DMAMapping) -> VFIOError {
    book.restore(mapping)
    return container?.unmapError(rc, unmapped: unmapped, mapping)
      ?? ioas!.unmapError(rc, unmapped: unmapped, mapping)
  }

  /// Makes room for `count` live mappings up front, so the bookkeeping of a large page-by-page
  /// mapping never pauses to rehash (as `Array.reserveCapacity` does for appends).
  public func reserveCapacity(mappings count: Int) {
    book.table.reserveCapacity(count)
  }

  /// Re-reads the layout (iommufd narrows ranges as devices attach).
  public func refreshLayout() throws(VFIOError) {
    let fresh = try mapper.iovaLayout()
    var next = DMABook(layout: fresh)
    for m in book.table.sorted { try next.adopt(m) }
    book = next
  }
}

/// What a `DMASpace` knows: the kernel's rules, the occupied IOVA space and the live mappings.
/// Every check here is O(1) or O(log n) and allocates nothing, because it runs on every map and
/// unmap and page-by-page mapping makes hundreds of thousands of those.
struct DMABook: ~Copyable, Sendable {
  let layout: IOVALayout
  var allocator: IOVAAllocator
  var table = MappingTable()
  /// IOMMU page size - 1: every process address must have these bits clear.
  let alignmentMask: UInt64
  /// Mappings the kernel still accepts by DMA_AVAIL as read with `layout`; Int.max when the
  /// kernel does not say.
  var budget: Int

  init(layout: IOVALayout) {
    self.layout = layout
    let align = layout.minimumPageSize
    self.allocator = IOVAAllocator(ranges: layout.ranges, alignment: align)
    self.alignmentMask = align - 1
    self.budget = layout.dmaAvailable.map { Int($0) } ?? Int.max
  }

  /// Checks a mapping against every rule and records it.
  @inline(__always)
  mutating func claim(
    vaddr: UInt64, length: UInt64, at iova: UInt64?, below limit: UInt64?, access: DMAAccess
  ) throws(VFIOError) -> DMAMapping {
    guard vaddr & alignmentMask == 0 else { throw misalignedAddress(vaddr) }
    guard budget > 0 else { throw budgetExhausted() }
    let chosen: UInt64
    if let iova {
      if let limit, iova >= limit || limit - iova < length {
        throw aboveLimit(iova, length, limit)
      }
      try allocator.reserve(iova, length: length)
      chosen = iova
    } else {
      chosen = try allocator.allocate(length: length, below: limit)
    }
    let mapping = DMAMapping(vaddr: vaddr, iova: chosen, length: length, access: access)
    table.insert(mapping)
    budget -= 1
    return mapping
  }

  // Errors are built out of line: string formatting would otherwise give every map call a
  // large stack frame.
  @inline(never)
  func misalignedAddress(_ vaddr: UInt64) -> VFIOError {
    VFIOError(
      .misaligned, operation: "map DMA",
      message:
        "process address 0x\(String(vaddr, radix: 16)) is not aligned to the IOMMU page size 0x\(String(alignmentMask + 1, radix: 16))",
      hint: "map memory from a DMABuffer, which is page-aligned")
  }

  @inline(never)
  func budgetExhausted() -> VFIOError {
    VFIOError(
      .dmaEntryLimit, operation: "map DMA",
      message:
        "the container accepts \(layout.dmaAvailable ?? 0) more mappings (DMA_AVAIL) and all are used",
      hint:
        "coalesce contiguous buffers into fewer mappings or raise vfio_iommu_type1's dma_entry_limit"
    )
  }

  @inline(never)
  func aboveLimit(_ iova: UInt64, _ length: UInt64, _ limit: UInt64) -> VFIOError {
    VFIOError(
      .outsideIOVARanges, operation: "map DMA",
      message:
        "IOVA 0x\(String(iova, radix: 16))+0x\(String(length, radix: 16)) is not below the device's limit 0x\(String(limit, radix: 16))",
      hint: "let the library choose the IOVA (omit `at:`) or pick one below the limit")
  }

  @inline(never)
  func notMapped(_ mapping: DMAMapping) -> VFIOError {
    VFIOError(
      .invalidArgument, operation: "unmap DMA",
      message: "\(mapping) was not mapped by this DMA space",
      hint: "unmap the DMAMapping value that map returned, once")
  }

  /// Undoes `claim` after the kernel refused the mapping.
  mutating func giveBack(_ mapping: DMAMapping) {
    table.remove(at: mapping.iova)
    try? allocator.release(mapping.iova, length: mapping.length)
    budget += 1
  }

  /// Forgets a mapping, which must be exactly one this book recorded.
  @inline(__always)
  mutating func release(_ mapping: DMAMapping) throws(VFIOError) {
    guard table.remove(exactly: mapping) else { throw notMapped(mapping) }
    try allocator.release(mapping.iova, length: mapping.length)
    budget += 1
  }

  /// Undoes `release` after the kernel refused the unmap: the mapping is still live.
  mutating func restore(_ mapping: DMAMapping) {
    try? allocator.reserve(mapping.iova, length: mapping.length)
    table.insert(mapping)
    budget -= 1
  }

  /// Records a mapping made under an earlier layout; DMA_AVAIL already counted it.
  mutating func adopt(_ mapping: DMAMapping) throws(VFIOError) {
    try allocator.reserve(mapping.iova, length: mapping.length)
    table.insert(mapping)
  }
}
