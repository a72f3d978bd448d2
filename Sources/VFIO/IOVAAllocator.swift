/// A span of IOVA space in use.
public struct IOVASpan: Sendable, Equatable, CustomStringConvertible {
  public var start: UInt64
  public var length: UInt64
  /// Inclusive; callers guarantee `length > 0` and no overflow.
  public var last: UInt64 { start + (length - 1) }
  public var description: String {
    "0x\(String(start, radix: 16))+0x\(String(length, radix: 16))"
  }
}

/// Hands out IOVAs inside the ranges the IOMMU reports, aligned to its minimum page size and
/// never overlapping. Pure bookkeeping: the kernel is told nothing until a mapping is made.
///
/// Occupied space is kept as merged, sorted intervals, so mapping a large buffer chunk by chunk
/// (and unmapping it in order) costs O(log n) per call instead of shifting an array of spans.
public struct IOVAAllocator: Sendable, Equatable {
  public private(set) var ranges: [IOVARange]
  /// Minimum alignment of every IOVA and length (the IOMMU's smallest page size).
  public let alignment: UInt64
  /// Occupied IOVA space: disjoint, non-adjacent intervals sorted by start.
  public private(set) var used: [IOVASpan] = []

  public init(ranges: [IOVARange], alignment: UInt64) {
    precondition(
      alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
    self.ranges = ranges.sorted { $0.start < $1.start }
    self.alignment = alignment
  }

  /// Claims `[iova, iova + length)`, which the caller chose.
  @inline(__always)
  public mutating func reserve(_ iova: UInt64, length: UInt64) throws(VFIOError) {
    let span = try validate(iova, length)
    // In-order fast path (a buffer mapped chunk by chunk): a span starting after the end of the
    // last interval overlaps nothing and can only join that last interval; this is the general
    // path below with its binary search answering `used.count`.
    let count = used.count
    if count == 0 || span.start > used[count - 1].last {
      insert(span, at: count)
      return
    }
    // Intervals are sorted and disjoint, so only the neighbours of the insertion point can clash.
    let index = insertionIndex(span.start)
    // Two explicit checks, not a loop over [index - 1, index]: that array literal was a heap
    // allocation on every map call.
    if index > 0 && span.start <= used[index - 1].last {
      throw overlap(span, used[index - 1])
    }
    if index < used.count && used[index].start <= span.last {
      throw overlap(span, used[index])
    }
    insert(span, at: index)
  }

  // Errors are built in separate, never-inlined functions so the checks on the hot path stay a
  // few compares and branches, without the stack frame string formatting needs.
  @inline(never)
  func overlap(_ span: IOVASpan, _ other: IOVASpan) -> VFIOError {
    VFIOError(
      .overlap, operation: "reserve IOVA",
      message: "IOVA \(span) overlaps mapped IOVA space \(other)",
      hint: "unmap the existing mapping first or choose another IOVA")
  }

  /// Finds, claims and returns a free IOVA for `length` bytes, aligned to at least `alignment`
  /// and, when `limit` is given, entirely below it (for devices with a narrow DMA mask).
  public mutating func allocate(
    length: UInt64, alignment: UInt64? = nil, below limit: UInt64? = nil
  )
    throws(VFIOError) -> UInt64
  {
    let align = max(self.alignment, alignment ?? 0)
    guard length > 0, length % self.alignment == 0 else {
      throw misaligned("length 0x\(String(length, radix: 16))")
    }
    guard align & (align - 1) == 0 else {
      throw VFIOError(
        .invalidArgument, operation: "allocate IOVA",
        message: "alignment \(align) is not a power of two")
    }
    for range in ranges {
      var last = range.last
      if let limit {
        guard limit > range.start else { continue }
        last = min(last, limit - 1)
      }
      guard var candidate = alignUp(range.start, align) else { continue }
      var exhausted = false
      // Disjoint sorted spans have sorted ends too: skip those ending before the candidate.
      var lo = 0
      var hi = used.count
      while lo < hi {
        let mid = (lo + hi) / 2
        if used[mid].last < candidate { lo = mid + 1 } else { hi = mid }
      }
      for span in used[lo...] {
        if span.start > last { break }
        if span.start > candidate && span.start - candidate >= length { break }
        guard span.last < UInt64.max, let next = alignUp(span.last + 1, align) else {
          exhausted = true
          break
        }
        candidate = next
      }
      if !exhausted && candidate <= last && last - candidate >= length - 1 {
        insert(IOVASpan(start: candidate, length: length))
        return candidate
      }
    }
    var scope = "in the IOVA ranges \(ranges.map(\.description).joined(separator: ", "))"
    if let limit { scope += " below 0x\(String(limit, radix: 16))" }
    throw VFIOError(
      .iovaExhausted, operation: "allocate IOVA",
      message: "no free 0x\(String(length, radix: 16))-byte span \(scope)",
      hint: "unmap something, map less, or coalesce buffers into fewer larger mappings")
  }

  /// Returns `[iova, iova + length)`, which must be wholly claimed, to the free space.
  @inline(__always)
  public mutating func release(_ iova: UInt64, length: UInt64) throws(VFIOError) {
    // Unmapping in order releases from the front of the first interval: that is the interval
    // the binary search would find (the next one starts after `iova`), so skip the search.
    let index = !used.isEmpty && used[0].start == iova ? 0 : insertionIndex(iova) - 1
    guard length > 0, used.indices.contains(index), UInt64.max - iova >= length - 1,
      iova + (length - 1) <= used[index].last
    else {
      throw notAllocated(iova, length)
    }
    let span = used[index]
    let last = iova + (length - 1)
    switch (span.start == iova, span.last == last) {
    case (true, true): used.remove(at: index)
    case (true, false): used[index] = IOVASpan(start: last + 1, length: span.last - last)
    case (false, true): used[index].length = iova - span.start
    case (false, false):
      used[index].length = iova - span.start
      used.insert(IOVASpan(start: last + 1, length: span.last - last), at: index + 1)
    }
  }

  @inline(__always)
  func validate(_ iova: UInt64, _ length: UInt64) throws(VFIOError) -> IOVASpan {
    guard length > 0, (iova | length) & (alignment - 1) == 0 else {
      throw misaligned(iova: iova, length: length)
    }
    guard UInt64.max - iova >= length - 1 else {
      throw outside(
        IOVASpan(start: iova, length: length), "wraps past the end of the address space")
    }
    let span = IOVASpan(start: iova, length: length)
    for range in ranges where range.start <= span.start && span.last <= range.last {
      return span
    }
    throw outsideRanges(span)
  }

  @inline(never)
  func notAllocated(_ iova: UInt64, _ length: UInt64) -> VFIOError {
    VFIOError(
      .invalidArgument, operation: "release IOVA",
      message: "0x\(String(iova, radix: 16))+0x\(String(length, radix: 16)) is not allocated",
      hint: "release exactly what was reserved or allocated")
  }

  @inline(never)
  func misaligned(iova: UInt64, length: UInt64) -> VFIOError {
    misaligned("IOVA 0x\(String(iova, radix: 16)) length 0x\(String(length, radix: 16))")
  }

  @inline(never)
  func outsideRanges(_ span: IOVASpan) -> VFIOError {
    outside(
      span,
      "is not inside the IOMMU's IOVA ranges \(ranges.map(\.description).joined(separator: ", "))")
  }

  @inline(never)
  func misaligned(_ what: String) -> VFIOError {
    VFIOError(
      .misaligned, operation: "IOVA check",
      message:
        "\(what) is not a non-zero multiple of the IOMMU page size 0x\(String(alignment, radix: 16))",
      hint: "align IOVA, address and length to 0x\(String(alignment, radix: 16))")
  }

  @inline(never)
  func outside(_ span: IOVASpan, _ why: String) -> VFIOError {
    VFIOError(
      .outsideIOVARanges, operation: "IOVA check", message: "IOVA \(span) \(why)",
      hint:
        "choose an IOVA inside the reported ranges (reserved regions such as the MSI window are excluded)"
    )
  }

  /// The index of the first span starting after `start` (binary search).
  @inline(__always)
  func insertionIndex(_ start: UInt64) -> Int {
    var lo = 0
    var hi = used.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if used[mid].start <= start { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }

  /// Inserts a free span, merging it with adjacent intervals.
  mutating func insert(_ span: IOVASpan) {
    insert(span, at: insertionIndex(span.start))
  }

  /// Inserts a free span at its insertion index, merging it with adjacent intervals.
  @inline(__always)
  mutating func insert(_ span: IOVASpan, at index: Int) {
    let joinsPrevious =
      index > 0 && used[index - 1].last &+ 1 == span.start && used[index - 1].last != .max
    let joinsNext = index < used.count && span.last &+ 1 == used[index].start && span.last != .max
    switch (joinsPrevious, joinsNext) {
    case (true, true):
      used[index - 1].length += span.length + used[index].length
      used.remove(at: index)
    case (true, false): used[index - 1].length += span.length
    case (false, true):
      used[index] = IOVASpan(start: span.start, length: span.length + used[index].length)
    case (false, false): used.insert(span, at: index)
    }
  }
}

/// `value` rounded up to a multiple of the power of two `alignment`, or nil on overflow.
func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64? {
  let mask = alignment - 1
  let (sum, overflow) = value.addingReportingOverflow(mask)
  return overflow ? nil : sum & ~mask
}
