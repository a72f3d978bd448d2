import PCI

/// A PCI function's configuration space as read from sysfs `config`, parsed without trusting it.
///
/// sysfs returns 64 bytes to unprivileged readers, 256 for conventional devices and 4096 for
/// PCIe ones when read by root; capabilities beyond what was read are reported as unknown
/// rather than absent (`standardChainComplete`, `extendedChainComplete`).
public struct ConfigSpace: Sendable {
  public let bytes: [UInt8]
  /// Standard capabilities in chain order.
  public private(set) var capabilities: [CapabilityEntry] = []
  /// PCIe extended capabilities in chain order (needs 4096 readable bytes).
  public private(set) var extendedCapabilities: [CapabilityEntry] = []
  /// Defects found while walking the chains; the entries before a defect are kept.
  public private(set) var chainErrors: [ConfigSpaceError] = []
  public private(set) var standardChainComplete = false
  public private(set) var extendedChainComplete = false

  /// Parses a config space dump; throws when even the 64-byte header is missing or blank.
  public init(_ bytes: [UInt8]) throws(ConfigSpaceError) {
    guard bytes.count >= 64 else { throw .truncated(bytes.count) }
    self.bytes = bytes
    // All ones is what a missing or powered-off function returns. A lone 0xffff vendor ID is
    // not: SR-IOV VFs read it by design and the rest of their config space is real.
    if bytes.prefix(64).allSatisfy({ $0 == 0xFF }) || bytes.prefix(64).allSatisfy({ $0 == 0 }) {
      throw .notPresent(vendorID)
    }
    guard headerType <= 2 else { throw .unknownHeaderType(headerType) }
    walkStandardChain()
    walkExtendedChain()
  }

  // MARK: Header

  public var vendorID: UInt16 { u16(0x00) }
  public var deviceID: UInt16 { u16(0x02) }
  public var command: UInt16 { u16(0x04) }
  public var status: UInt16 { u16(0x06) }
  public var revision: UInt8 { bytes[0x08] }
  /// Base class, subclass and programming interface, as `0x020000`.
  public var classCode: UInt32 { UInt32(bytes[0x0B]) << 16 | UInt32(bytes[0x0A]) << 8 | UInt32(bytes[0x09]) }
  /// 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge.
  public var headerType: UInt8 { bytes[0x0E] & 0x7F }
  public var isMultifunction: Bool { bytes[0x0E] & 0x80 != 0 }
  public var subsystemVendorID: UInt16? { headerType == 0 ? u16(0x2C) : nil }
  public var subsystemID: UInt16? { headerType == 0 ? u16(0x2E) : nil }
  /// INTx pin: 0 none, 1 INTA … 4 INTD.
  public var interruptPin: UInt8 { bytes[0x3D] }
  public var interruptLine: UInt8 { bytes[0x3C] }
  public var secondaryBus: UInt8? { headerType == 1 ? bytes[0x19] : nil }
  public var subordinateBus: UInt8? { headerType == 1 ? bytes[0x1A] : nil }
  /// Command register bit 10 (PCI 2.3 Interrupt Disable) is currently set.
  public var intxDisabled: Bool { command & 0x0400 != 0 }

  // MARK: Capabilities

  public func capability(_ id: StandardCapabilityID) -> CapabilityEntry? {
    capabilities.first { $0.id == id.rawValue }
  }

  public func extendedCapability(_ id: ExtendedCapabilityID) -> CapabilityEntry? {
    extendedCapabilities.first { $0.id == id.rawValue }
  }

  public var powerManagement: PowerManagementCapability? {
    guard let cap = capability(.powerManagement), fits(cap.offset, 8) else { return nil }
    let pmcsr = u16(cap.offset + 4)
    return PowerManagementCapability(
      noSoftReset: pmcsr & 0x0008 != 0, powerState: UInt8(pmcsr & 0x3),
      supportsD1: u16(cap.offset + 2) & 0x0200 != 0, supportsD2: u16(cap.offset + 2) & 0x0400 != 0)
  }

  public var express: ExpressCapability? {
    guard let cap = capability(.pciExpress), fits(cap.offset, 12) else { return nil }
    let flags = u16(cap.offset + 2)
    return ExpressCapability(
      version: UInt8(flags & 0xF),
      portType: ExpressPortType(rawValue: UInt8((flags >> 4) & 0xF)) ?? .unknown,
      functionLevelReset: u32(cap.offset + 4) & (1 << 28) != 0)
  }

  /// Conventional PCI's Advanced Features capability, which can also advertise FLR.
  public var advancedFeatures: AdvancedFeaturesCapability? {
    guard let cap = capability(.advancedFeatures), fits(cap.offset, 6) else { return nil }
    let caps = bytes[cap.offset + 3]
    return AdvancedFeaturesCapability(transactionsPending: caps & 1 != 0, functionLevelReset: caps & 2 != 0)
  }

  public var msi: MSICapability? {
    guard let cap = capability(.msi), fits(cap.offset, 4) else { return nil }
    let control = u16(cap.offset + 2)
    return MSICapability(
      vectors: 1 << Int((control >> 1) & 0x7), enabledVectors: 1 << Int((control >> 4) & 0x7),
      enabled: control & 1 != 0, is64Bit: control & 0x80 != 0, perVectorMasking: control & 0x100 != 0)
  }

  public var msix: MSIXCapability? {
    guard let cap = capability(.msix), fits(cap.offset, 12) else { return nil }
    let control = u16(cap.offset + 2)
    let table = u32(cap.offset + 4)
    let pba = u32(cap.offset + 8)
    return MSIXCapability(
      vectors: Int(control & 0x7FF) + 1, enabled: control & 0x8000 != 0,
      tableBAR: Int(table & 7), tableOffset: table & ~7, pbaBAR: Int(pba & 7), pbaOffset: pba & ~7)
  }

  public var acs: ACSCapability? {
    guard let cap = extendedCapability(.acs), fits(cap.offset, 8) else { return nil }
    return ACSCapability(
      supported: ACSControls(rawValue: u16(cap.offset + 4) & 0x7F),
      enabled: ACSControls(rawValue: u16(cap.offset + 6) & 0x7F))
  }

  public var sriov: SRIOVCapability? {
    guard let cap = extendedCapability(.sriov), fits(cap.offset, 0x40) else { return nil }
    let o = cap.offset
    return SRIOVCapability(
      vfEnabled: u16(o + 0x08) & 1 != 0, initialVFs: Int(u16(o + 0x0C)), totalVFs: Int(u16(o + 0x0E)),
      numVFs: Int(u16(o + 0x10)), firstVFOffset: Int(u16(o + 0x14)), vfStride: Int(u16(o + 0x16)),
      vfDeviceID: u16(o + 0x1A))
  }

  // MARK: Walking

  private mutating func walkStandardChain() {
    // Status bit 4: the function implements a capability list at 0x34.
    guard status & 0x0010 != 0 else {
      standardChainComplete = true
      return
    }
    let pointerOffset = headerType == 2 ? 0x14 : 0x34
    var offset = Int(bytes[pointerOffset] & 0xFC)
    var seen = Set<Int>()
    // 48 is the most 4-byte capabilities that fit between 0x40 and 0x100.
    for _ in 0..<48 {
      if offset == 0 {
        standardChainComplete = true
        return
      }
      guard offset >= 0x40, offset <= 0xFC else {
        chainErrors.append(.badPointer(offset))
        return
      }
      guard offset + 2 <= bytes.count else { return }  // not readable by this reader
      guard seen.insert(offset).inserted else {
        chainErrors.append(.loop(offset))
        return
      }
      capabilities.append(CapabilityEntry(id: UInt16(bytes[offset]), offset: offset))
      offset = Int(bytes[offset + 1] & 0xFC)
    }
    chainErrors.append(.loop(offset))
  }

  private mutating func walkExtendedChain() {
    guard bytes.count >= 0x104 else { return }
    var offset = 0x100
    var seen = Set<Int>()
    // (4096 - 256) / 4: the most extended capabilities that fit.
    for _ in 0..<960 {
      let header = u32(offset)
      // An all-zero (or all-ones) header at 0x100 means no extended capabilities.
      if header == 0 || header == 0xFFFF_FFFF {
        if offset != 0x100 { chainErrors.append(.badPointer(offset)) }
        extendedChainComplete = true
        return
      }
      guard seen.insert(offset).inserted else {
        chainErrors.append(.loop(offset))
        return
      }
      extendedCapabilities.append(CapabilityEntry(id: UInt16(header & 0xFFFF), offset: offset))
      let next = Int(header >> 20) & 0xFFC
      if next == 0 {
        extendedChainComplete = true
        return
      }
      guard next >= 0x100, next + 4 <= bytes.count else {
        chainErrors.append(.badPointer(next))
        return
      }
      offset = next
    }
    chainErrors.append(.loop(offset))
  }

  private func fits(_ offset: Int, _ length: Int) -> Bool { offset + length <= bytes.count }
  func u16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
  func u32(_ offset: Int) -> UInt32 { UInt32(u16(offset)) | UInt32(u16(offset + 2)) << 16 }
}

/// Why a config space dump cannot be used.
public enum ConfigSpaceError: Error, Equatable, Sendable, CustomStringConvertible {
  case truncated(Int)
  case notPresent(UInt16)
  case unknownHeaderType(UInt8)
  case badPointer(Int)
  case loop(Int)

  public var description: String {
    switch self {
    case .truncated(let count):
      return "config space is truncated: \(count) bytes, the header alone is 64"
    case .notPresent(let vendor):
      return
        "config space reads vendor ID 0x\(hex(vendor, width: 4)): the device is absent, powered off or not responding"
    case .unknownHeaderType(let type):
      return "config space has header type \(type), which no PCI specification defines"
    case .badPointer(let offset):
      return "capability pointer 0x\(hex(offset, width: 3)) points outside the capability area; the chain was cut there"
    case .loop(let offset):
      return "capability chain loops back to 0x\(hex(offset, width: 3)); the chain was cut there"
    }
  }
}

/// One entry of a capability chain: its ID and where it sits in config space.
public struct CapabilityEntry: Sendable, Equatable {
  public let id: UInt16
  public let offset: Int
}

public struct PowerManagementCapability: Sendable, Equatable, Codable {
  /// Set when a D3hot→D0 transition does not reset the function, so a PM reset is useless.
  public let noSoftReset: Bool
  /// Current power state, 0 (D0) to 3 (D3hot).
  public let powerState: UInt8
  public let supportsD1: Bool
  public let supportsD2: Bool
}

public enum ExpressPortType: UInt8, Sendable, Codable {
  case endpoint = 0
  case legacyEndpoint = 1
  case rcIntegratedEndpoint = 9
  case rcEventCollector = 10
  case rootPort = 4
  case upstreamPort = 5
  case downstreamPort = 6
  case pcieToPCIBridge = 7
  case pciToPCIeBridge = 8
  case unknown = 0xFF

  public var name: String {
    switch self {
    case .endpoint: "endpoint"
    case .legacyEndpoint: "legacy-endpoint"
    case .rcIntegratedEndpoint: "root-complex-integrated-endpoint"
    case .rcEventCollector: "root-complex-event-collector"
    case .rootPort: "root-port"
    case .upstreamPort: "switch-upstream-port"
    case .downstreamPort: "switch-downstream-port"
    case .pcieToPCIBridge: "pcie-to-pci-bridge"
    case .pciToPCIeBridge: "pci-to-pcie-bridge"
    case .unknown: "unknown"
    }
  }
}

public struct ExpressCapability: Sendable, Equatable {
  public let version: UInt8
  public let portType: ExpressPortType
  /// Device Capabilities bit 28: Function Level Reset supported.
  public let functionLevelReset: Bool
}

public struct AdvancedFeaturesCapability: Sendable, Equatable {
  public let transactionsPending: Bool
  public let functionLevelReset: Bool
}

public struct MSICapability: Sendable, Equatable, Codable {
  public let vectors: Int
  public let enabledVectors: Int
  public let enabled: Bool
  public let is64Bit: Bool
  public let perVectorMasking: Bool
}

public struct MSIXCapability: Sendable, Equatable, Codable {
  public let vectors: Int
  public let enabled: Bool
  public let tableBAR: Int
  public let tableOffset: UInt32
  public let pbaBAR: Int
  public let pbaOffset: UInt32
}

/// The ACS control bits, as defined for the ACS Capability and Control registers.
public struct ACSControls: OptionSet, Sendable, Hashable {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }
  public static let sourceValidation = ACSControls(rawValue: 1 << 0)
  public static let translationBlocking = ACSControls(rawValue: 1 << 1)
  public static let requestRedirect = ACSControls(rawValue: 1 << 2)
  public static let completionRedirect = ACSControls(rawValue: 1 << 3)
  public static let upstreamForwarding = ACSControls(rawValue: 1 << 4)
  public static let egressControl = ACSControls(rawValue: 1 << 5)
  public static let directTranslatedP2P = ACSControls(rawValue: 1 << 6)
  /// What the kernel requires on a path to isolate functions (REQ_ACS_FLAGS in drivers/pci).
  public static let isolation: ACSControls = [
    .sourceValidation, .requestRedirect, .completionRedirect, .upstreamForwarding,
  ]

  public var names: [String] {
    let all: [(ACSControls, String)] = [
      (.sourceValidation, "SV"), (.translationBlocking, "TB"), (.requestRedirect, "RR"),
      (.completionRedirect, "CR"), (.upstreamForwarding, "UF"), (.egressControl, "EC"),
      (.directTranslatedP2P, "DT"),
    ]
    return all.filter { contains($0.0) }.map(\.1)
  }
}

public struct ACSCapability: Sendable, Equatable {
  public let supported: ACSControls
  public let enabled: ACSControls
  /// The controls the kernel needs for isolation that are not enabled.
  public var missingForIsolation: ACSControls { ACSControls.isolation.subtracting(enabled) }
}

public struct SRIOVCapability: Sendable, Equatable, Codable {
  public let vfEnabled: Bool
  public let initialVFs: Int
  public let totalVFs: Int
  public let numVFs: Int
  public let firstVFOffset: Int
  public let vfStride: Int
  public let vfDeviceID: UInt16
}
