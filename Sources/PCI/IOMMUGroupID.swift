/// The number the kernel files an IOMMU group under (`/sys/kernel/iommu_groups/N`,
/// `/dev/vfio/N`): how swift-vfio names the unit it hands out. A name, not a quantity, so it
/// has no arithmetic; it reads and prints as the decimal the kernel uses, and encodes as that
/// number in JSON (and in the ledger), so reports stay as they were.
public struct IOMMUGroupID: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible,
  ExpressibleByIntegerLiteral
{
  public let rawValue: Int

  public init(rawValue: Int) { self.rawValue = rawValue }
  public init(_ rawValue: Int) { self.rawValue = rawValue }
  public init(integerLiteral value: Int) { self.rawValue = value }

  /// The decimal name sysfs and `/dev/vfio` give a group: digits only, no sign, no spaces.
  public init?(_ text: some StringProtocol) {
    guard !text.isEmpty, text.utf8.count <= 10, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
      let value = Int(text)
    else { return nil }
    rawValue = value
  }

  public init(from decoder: any Decoder) throws {
    rawValue = try decoder.singleValueContainer().decode(Int.self)
  }

  public func encode(to encoder: any Encoder) throws {
    var container = encoder.singleValueContainer()
    try container.encode(rawValue)
  }

  public var description: String { String(rawValue) }
  public static func < (a: IOMMUGroupID, b: IOMMUGroupID) -> Bool { a.rawValue < b.rawValue }
}
