/// The live mappings of a `DMASpace`, keyed by IOVA.
///
/// Open addressing with linear probing and backward-shift deletion: insert, lookup and remove
/// are O(1) with no allocation except when the table doubles. `Dictionary` did the same job but
/// spent most of a map call's bookkeeping in SipHash and rehashing, which under QEMU's TCG made
/// page-by-page mapping through the library twice as slow as the bare ioctl.
///
/// The slots are memory the table owns, not an `Array`: every write to an array runs a
/// uniqueness check (a runtime call) first, two or three per map+unmap. The table is
/// noncopyable instead, so the compiler rules out the sharing those checks guard against, and it
/// frees the slots in `deinit`.
struct MappingTable: ~Copyable, @unchecked Sendable {
  /// A slot with length 0 is empty: a live mapping never has length 0.
  private var slots: UnsafeMutablePointer<DMAMapping>
  /// Number of slots, a power of two.
  private var capacity: Int
  /// 64 - log2(capacity): Fibonacci hashing takes the product's top bits.
  private var shift: UInt64
  private(set) var count = 0

  private static let empty = DMAMapping(vaddr: 0, iova: 0, length: 0, access: [])

  init() {
    capacity = 16
    shift = 60
    slots = .allocate(capacity: 16)
    slots.initialize(repeating: Self.empty, count: 16)
  }

  deinit {
    slots.deinitialize(count: capacity)
    slots.deallocate()
  }

  /// Fibonacci hashing (multiplying by 2^64/φ, keeping the top bits) of the IOVA's 8-page
  /// block, with the page's place in its block XORed into the low 3 bits: 8 consecutive pages
  /// land in one aligned group of 8 slots (256 bytes), so mapping a buffer page by page keeps
  /// touching the same memory page of the table (each new page touched after a kernel call is
  /// a TLB refill, dear under emulation), while IOVAs 2 MiB or 1 GiB apart, whose low bits
  /// are all zero, still spread over the whole table.
  @inline(__always)
  private func home(_ iova: UInt64) -> Int {
    let page = iova &>> 12
    let block = ((page &>> 3) &* 0x9E37_79B9_7F4A_7C15) &>> shift
    return Int(truncatingIfNeeded: block ^ (page & 7)) & (capacity - 1)
  }

  /// The slot holding the mapping at `iova`, or nil.
  @inline(__always)
  private func slot(of iova: UInt64) -> Int? {
    let mask = capacity - 1
    var i = home(iova)
    while slots[i].length != 0 {
      if slots[i].iova == iova { return i }
      i = (i + 1) & mask
    }
    return nil
  }

  /// The mapping that starts at `iova`, if any.
  func mapping(at iova: UInt64) -> DMAMapping? {
    slot(of: iova).map { slots[$0] }
  }

  /// Adds a mapping whose IOVA is not in the table (the allocator has ruled out overlaps).
  @inline(__always)
  mutating func insert(_ mapping: DMAMapping) {
    precondition(mapping.length != 0, "a mapping has a length")
    // At most half full, so probe runs stay short.
    if (count + 1) * 2 > capacity { grow() }
    let mask = capacity - 1
    var i = home(mapping.iova)
    while slots[i].length != 0 { i = (i + 1) & mask }
    slots[i] = mapping
    count += 1
  }

  /// Removes the mapping at `iova`, if there is one, and returns it.
  @discardableResult
  mutating func remove(at iova: UInt64) -> DMAMapping? {
    guard let i = slot(of: iova) else { return nil }
    let removed = slots[i]
    vacate(i)
    return removed
  }

  /// Removes `mapping` if the table holds exactly it (same IOVA, length, address and access).
  @inline(__always)
  mutating func remove(exactly mapping: DMAMapping) -> Bool {
    guard let i = slot(of: mapping.iova), slots[i] == mapping else { return false }
    vacate(i)
    return true
  }

  @inline(__always)
  private mutating func vacate(_ slot: Int) {
    var hole = slot
    let mask = capacity - 1
    var j = hole
    // Backward shift: move each later entry of the run into the hole unless that would put it
    // before its home slot, so lookups never need tombstones.
    while true {
      j = (j + 1) & mask
      let entry = slots[j]
      if entry.length == 0 { break }
      if (j &- home(entry.iova)) & mask >= (j &- hole) & mask {
        slots[hole] = entry
        hole = j
      }
    }
    slots[hole] = Self.empty
    count -= 1
  }

  /// Sizes the table for `mappings` live mappings, so adding that many never rehashes.
  mutating func reserveCapacity(_ mappings: Int) {
    var size = capacity
    var shift = self.shift
    while mappings * 2 > size {
      size *= 2
      shift -= 1
    }
    if size != capacity { rehash(size: size, shift: shift) }
  }

  /// Every live mapping, in IOVA order.
  var sorted: [DMAMapping] {
    UnsafeBufferPointer(start: slots, count: capacity).filter { $0.length != 0 }
      .sorted { $0.iova < $1.iova }
  }

  private mutating func grow() { rehash(size: capacity * 2, shift: shift - 1) }

  private mutating func rehash(size: Int, shift: UInt64) {
    let old = slots
    let oldCapacity = capacity
    slots = .allocate(capacity: size)
    slots.initialize(repeating: Self.empty, count: size)
    capacity = size
    self.shift = shift
    count = 0
    for i in 0..<oldCapacity where old[i].length != 0 { insert(old[i]) }
    old.deinitialize(count: oldCapacity)
    old.deallocate()
  }
}
