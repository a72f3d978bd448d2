/// One entry of a VFIO capability chain (`struct vfio_info_cap_header` and what follows it).
public struct Capability: Sendable, Equatable {
  public var id: UInt16
  public var version: UInt16
  /// Offset of the header within the info buffer.
  public var offset: Int
  /// The capability's bytes from its header up to the next capability or the buffer's end.
  public var bytes: [UInt8]
}

/// Walks the capability chains that trail VFIO info structs (region info, IOMMU info, device
/// info). Pure, so canned kernel bytes test it; defensive because a chain that points outside
/// the buffer, backwards or in a loop must fail, not crash or spin.
public enum CapabilityChain {
  /// Chains the kernel builds hold a handful of entries; anything longer is corrupt.
  public static let maximumLength = 64
  static let headerSize = 8

  /// Parses the chain starting at `firstOffset` (0 means none) in `buffer`, whose fixed
  /// struct occupies the first `fixedSize` bytes.
  public static func parse(_ buffer: [UInt8], firstOffset: UInt32, fixedSize: Int) throws(VFIOError)
    -> [Capability]
  {
    var result: [Capability] = []
    var offset = Int(firstOffset)
    var previous = -1
    while offset != 0 {
      guard result.count < maximumLength else {
        throw malformed("more than \(maximumLength) capabilities; the chain loops")
      }
      guard offset > previous else {
        throw malformed("capability at \(offset) points back to an earlier one; the chain loops")
      }
      guard offset >= fixedSize else {
        throw malformed(
          "capability offset \(offset) lies inside the \(fixedSize)-byte fixed struct")
      }
      guard offset + headerSize <= buffer.count else {
        throw malformed(
          "capability header at \(offset) runs past the \(buffer.count)-byte buffer; the chain is truncated"
        )
      }
      let id = buffer.load(UInt16.self, at: offset)
      let version = buffer.load(UInt16.self, at: offset + 2)
      let next = Int(buffer.load(UInt32.self, at: offset + 4))
      guard next == 0 || next > offset else {
        throw malformed("capability \(id) at \(offset) points to \(next); the chain loops")
      }
      let end = next == 0 ? buffer.count : min(next, buffer.count)
      result.append(
        Capability(id: id, version: version, offset: offset, bytes: Array(buffer[offset..<end])))
      previous = offset
      offset = next
    }
    return result
  }

  static func malformed(_ message: String) -> VFIOError {
    VFIOError(
      .malformedCapabilityChain, operation: "capability chain", message: message,
      hint: "the kernel returned an inconsistent info buffer; report it with the kernel version")
  }

  /// Throws unless `capability` holds at least `size` bytes.
  static func require(_ capability: Capability, _ size: Int, _ what: String) throws(VFIOError) {
    guard capability.bytes.count >= size else {
      throw malformed(
        "\(what) capability needs \(size) bytes but \(capability.bytes.count) remain; the chain is truncated"
      )
    }
  }
}

/// A page-aligned window of a region that can be mmap'd (VFIO_REGION_INFO_CAP_SPARSE_MMAP).
public struct SparseMmapArea: Sendable, Equatable {
  public var offset: UInt64
  public var size: UInt64
  public init(offset: UInt64, size: UInt64) {
    self.offset = offset
    self.size = size
  }
}

/// What a region's capability chain says about it.
public enum RegionCapability: Sendable, Equatable {
  /// Only these areas of the region may be mmap'd.
  case sparseMmap([SparseMmapArea])
  /// A device-specific region: type and subtype (VFIO_REGION_INFO_CAP_TYPE).
  case type(type: UInt32, subtype: UInt32)
  /// The MSI-X table shares a page with mappable registers and may be mmap'd anyway.
  case msixMappable
  case unknown(id: UInt16, version: UInt16)

  static let sparseMmapID: UInt16 = 1
  static let typeID: UInt16 = 2
  static let msixMappableID: UInt16 = 3

  /// Decodes region capabilities (struct vfio_region_info_cap_*).
  public static func decode(_ chain: [Capability]) throws(VFIOError) -> [RegionCapability] {
    var result: [RegionCapability] = []
    for cap in chain {
      switch cap.id {
      case sparseMmapID:
        try CapabilityChain.require(cap, 16, "sparse mmap")
        let count = Int(cap.bytes.load(UInt32.self, at: 8))
        guard count <= (cap.bytes.count - 16) / 16 else {
          throw CapabilityChain.malformed(
            "sparse mmap lists \(count) areas but holds room for \((cap.bytes.count - 16) / 16); the chain is truncated"
          )
        }
        let areas = (0..<count).map { i in
          SparseMmapArea(
            offset: cap.bytes.load(UInt64.self, at: 16 + i * 16),
            size: cap.bytes.load(UInt64.self, at: 24 + i * 16))
        }
        result.append(.sparseMmap(areas))
      case typeID:
        try CapabilityChain.require(cap, 16, "region type")
        result.append(.type(type: cap.bytes.load(at: 8), subtype: cap.bytes.load(at: 12)))
      case msixMappableID:
        result.append(.msixMappable)
      default:
        result.append(.unknown(id: cap.id, version: cap.version))
      }
    }
    return result
  }
}

/// An inclusive range of IOVAs the IOMMU can translate.
public struct IOVARange: Sendable, Equatable, CustomStringConvertible {
  public var start: UInt64
  /// Inclusive.
  public var last: UInt64
  public init(start: UInt64, last: UInt64) {
    self.start = start
    self.last = last
  }
  public var description: String {
    "0x\(String(start, radix: 16))-0x\(String(last, radix: 16))"
  }
}

/// What VFIO_IOMMU_GET_INFO's capability chain says about a type1 IOMMU.
public enum IOMMUCapability: Sendable, Equatable {
  /// VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE.
  case iovaRanges([IOVARange])
  /// VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION.
  case migration(flags: UInt32, pageSizes: UInt64, maxDirtyBitmapSize: UInt64)
  /// VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: how many more mappings the container accepts.
  case dmaAvailable(UInt32)
  case unknown(id: UInt16, version: UInt16)

  static let iovaRangeID: UInt16 = 1
  static let migrationID: UInt16 = 2
  static let dmaAvailID: UInt16 = 3

  /// Decodes type1 IOMMU info capabilities.
  public static func decode(_ chain: [Capability]) throws(VFIOError) -> [IOMMUCapability] {
    var result: [IOMMUCapability] = []
    for cap in chain {
      switch cap.id {
      case iovaRangeID:
        try CapabilityChain.require(cap, 16, "IOVA range")
        let count = Int(cap.bytes.load(UInt32.self, at: 8))
        guard count <= (cap.bytes.count - 16) / 16 else {
          throw CapabilityChain.malformed(
            "IOVA range capability lists \(count) ranges but holds room for \((cap.bytes.count - 16) / 16); the chain is truncated"
          )
        }
        var ranges: [IOVARange] = []
        for i in 0..<count {
          let start: UInt64 = cap.bytes.load(at: 16 + i * 16)
          let end: UInt64 = cap.bytes.load(at: 24 + i * 16)
          guard start <= end else {
            throw CapabilityChain.malformed("IOVA range \(i) starts after it ends")
          }
          ranges.append(IOVARange(start: start, last: end))
        }
        result.append(.iovaRanges(ranges))
      case migrationID:
        try CapabilityChain.require(cap, 32, "migration")
        result.append(
          .migration(
            flags: cap.bytes.load(at: 8), pageSizes: cap.bytes.load(at: 16),
            maxDirtyBitmapSize: cap.bytes.load(at: 24)))
      case dmaAvailID:
        try CapabilityChain.require(cap, 12, "DMA available")
        result.append(.dmaAvailable(cap.bytes.load(at: 8)))
      default:
        result.append(.unknown(id: cap.id, version: cap.version))
      }
    }
    return result
  }
}
