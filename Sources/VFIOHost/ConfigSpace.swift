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
    let header = PCIConfigRegister.headerSize
    guard bytes.count >= header else { throw .truncated(bytes.count) }
    self.bytes = bytes
    // All ones is what a missing or powered-off function returns. A lone 0xffff vendor ID is
    // not: SR-IOV VFs read it by design and the rest of their config space is real.
    if bytes.prefix(header).allSatisfy({ $0 == 0xFF }) || bytes.prefix(header).allSatisfy({ $0 == 0 }) {
      throw .notPresent(vendorID)
    }
    guard headerType <= PCIHeaderType.cardBusBridge else { throw .unknownHeaderType(headerType) }
    walkStandardChain()
    walkExtendedChain()
  }

  // MARK: Header

  public var vendorID: UInt16 { u16(PCIConfigRegister.vendorID) }
  public var deviceID: UInt16 { u16(PCIConfigRegister.deviceID) }
  public var command: UInt16 { u16(PCIConfigRegister.command) }
  public var status: UInt16 { u16(PCIConfigRegister.status) }
  public var revision: UInt8 { bytes[PCIConfigRegister.revisionID] }
  /// Base class, subclass and programming interface, as `0x020000`.
  public var classCode: UInt32 {
    let at = PCIConfigRegister.classCode
    return UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at])
  }
  /// 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge.
  public var headerType: UInt8 { bytes[PCIConfigRegister.headerType] & PCIHeaderType.layoutMask }
  public var isMultifunction: Bool { bytes[PCIConfigRegister.headerType] & PCIHeaderType.multiFunction != 0 }
  public var subsystemVendorID: UInt16? {
    headerType == PCIHeaderType.endpoint ? u16(PCIConfigRegister.subsystemVendorID) : nil
  }
  public var subsystemID: UInt16? { headerType == PCIHeaderType.endpoint ? u16(PCIConfigRegister.subsystemID) : nil }
  /// INTx pin: 0 none, 1 INTA … 4 INTD.
  public var interruptPin: UInt8 { bytes[PCIConfigRegister.interruptPin] }
  public var interruptLine: UInt8 { bytes[PCIConfigRegister.interruptLine] }
  public var secondaryBus: UInt8? {
    headerType == PCIHeaderType.bridge ? bytes[PCIConfigRegister.secondaryBusNumber] : nil
  }
  public var subordinateBus: UInt8? {
    headerType == PCIHeaderType.bridge ? bytes[PCIConfigRegister.subordinateBusNumber] : nil
  }
  /// Command register bit 10 (PCI 2.3 Interrupt Disable) is currently set.
  public var intxDisabled: Bool { PCICommand(rawValue: command).contains(.interruptDisable) }

  // MARK: Capabilities

  public func capability(_ id: StandardCapabilityID) -> CapabilityEntry? {
    capabilities.first { $0.id == id.rawValue }
  }

  public func extendedCapability(_ id: ExtendedCapabilityID) -> CapabilityEntry? {
    extendedCapabilities.first { $0.id == id.rawValue }
  }

  public var powerManagement: PowerManagementCapability? {
    typealias R = PowerManagementRegister
    guard let cap = capability(.powerManagement), fits(cap.offset, R.length) else { return nil }
    let pmc = u16(cap.offset + R.capabilities)
    let pmcsr = u16(cap.offset + R.controlStatus)
    return PowerManagementCapability(
      noSoftReset: pmcsr & R.noSoftReset != 0, powerState: UInt8(pmcsr & R.powerStateMask),
      supportsD1: pmc & R.d1Support != 0, supportsD2: pmc & R.d2Support != 0)
  }

  public var express: ExpressCapability? {
    typealias R = PCIExpressRegister
    // Up to and including Device Status: every version of the capability has that much.
    guard let cap = capability(.pciExpress), fits(cap.offset, R.deviceStatus + 2) else { return nil }
    let flags = u16(cap.offset + R.capabilities)
    return ExpressCapability(
      version: UInt8(flags & R.versionMask),
      portType: ExpressPortType(rawValue: UInt8((flags >> R.portTypeShift) & R.portTypeMask)) ?? .unknown,
      functionLevelReset: u32(cap.offset + R.deviceCapabilities) & R.functionLevelResetCapable != 0)
  }

  /// Conventional PCI's Advanced Features capability, which can also advertise FLR.
  public var advancedFeatures: AdvancedFeaturesCapability? {
    typealias R = AdvancedFeaturesRegister
    guard let cap = capability(.advancedFeatures), fits(cap.offset, R.length) else { return nil }
    let caps = bytes[cap.offset + R.capabilities]
    return AdvancedFeaturesCapability(
      transactionsPending: caps & R.transactionsPendingCapable != 0,
      functionLevelReset: caps & R.functionLevelResetCapable != 0)
  }

  public var msi: MSICapability? {
    typealias R = MSIRegister
    guard let cap = capability(.msi), fits(cap.offset, R.messageControl + 2) else { return nil }
    let control = u16(cap.offset + R.messageControl)
    return MSICapability(
      vectors: 1 << Int((control >> R.multipleMessageCapableShift) & R.multipleMessageMask),
      enabledVectors: 1 << Int((control >> R.multipleMessageEnableShift) & R.multipleMessageMask),
      enabled: control & R.enable != 0, is64Bit: control & R.address64Bit != 0,
      perVectorMasking: control & R.perVectorMasking != 0)
  }

  public var msix: MSIXCapability? {
    typealias R = MSIXRegister
    guard let cap = capability(.msix), fits(cap.offset, R.length) else { return nil }
    let control = u16(cap.offset + R.messageControl)
    let table = u32(cap.offset + R.table)
    let pba = u32(cap.offset + R.pendingBitArray)
    return MSIXCapability(
      vectors: Int(control & R.tableSizeMask) + 1, enabled: control & R.enable != 0,
      tableBAR: Int(table & R.barIndicatorMask), tableOffset: table & ~R.barIndicatorMask,
      pbaBAR: Int(pba & R.barIndicatorMask), pbaOffset: pba & ~R.barIndicatorMask)
  }

  public var acs: ACSCapability? {
    guard let cap = extendedCapability(.acs), fits(cap.offset, ACSRegister.length) else { return nil }
    return ACSCapability(
      supported: ACSControls(rawValue: u16(cap.offset + ACSRegister.capability) & 0x7F),
      enabled: ACSControls(rawValue: u16(cap.offset + ACSRegister.control) & 0x7F))
  }

  public var sriov: SRIOVCapability? {
    typealias R = SRIOVRegister
    guard let cap = extendedCapability(.sriov), fits(cap.offset, R.length) else { return nil }
    let o = cap.offset
    return SRIOVCapability(
      vfEnabled: u16(o + R.control) & R.vfEnable != 0, initialVFs: Int(u16(o + R.initialVFs)),
      totalVFs: Int(u16(o + R.totalVFs)), numVFs: Int(u16(o + R.numVFs)), firstVFOffset: Int(u16(o + R.firstVFOffset)),
      vfStride: Int(u16(o + R.vfStride)), vfDeviceID: u16(o + R.vfDeviceID))
  }

  // MARK: Walking

  private mutating func walkStandardChain() {
    guard PCIStatus(rawValue: status).contains(.capabilitiesList) else {
      standardChainComplete = true
      return
    }
    let pointerOffset =
      headerType == PCIHeaderType.cardBusBridge
      ? PCIConfigRegister.cardBusCapabilitiesPointer : PCIConfigRegister.capabilitiesPointer
    var offset = Int(bytes[pointerOffset] & StandardCapabilityHeader.pointerMask)
    var seen = Set<Int>()
    // 48 is the most 4-byte capabilities that fit between 0x40 and 0x100.
    for _ in 0..<48 {
      if offset == 0 {
        standardChainComplete = true
        return
      }
      guard offset >= PCIConfigRegister.headerSize, offset <= PCIConfigRegister.extendedCapabilities - 4 else {
        chainErrors.append(.badPointer(offset))
        return
      }
      guard offset + 2 <= bytes.count else { return }  // not readable by this reader
      guard seen.insert(offset).inserted else {
        chainErrors.append(.loop(offset))
        return
      }
      let id = bytes[offset + StandardCapabilityHeader.id]
      capabilities.append(CapabilityEntry(id: UInt16(id), offset: offset))
      offset = Int(bytes[offset + StandardCapabilityHeader.next] & StandardCapabilityHeader.pointerMask)
    }
    chainErrors.append(.loop(offset))
  }

  private mutating func walkExtendedChain() {
    let first = PCIConfigRegister.extendedCapabilities
    guard bytes.count >= first + 4 else { return }
    var offset = first
    var seen = Set<Int>()
    // (4096 - 256) / 4: the most extended capabilities that fit.
    for _ in 0..<960 {
      let header = u32(offset)
      // An all-zero (or all-ones) header at 0x100 means no extended capabilities.
      if header == 0 || header == 0xFFFF_FFFF {
        if offset != first { chainErrors.append(.badPointer(offset)) }
        extendedChainComplete = true
        return
      }
      guard seen.insert(offset).inserted else {
        chainErrors.append(.loop(offset))
        return
      }
      extendedCapabilities.append(CapabilityEntry(id: ExtendedCapabilityHeader.id(header), offset: offset))
      let next = ExtendedCapabilityHeader.next(header)
      if next == 0 {
        extendedChainComplete = true
        return
      }
      guard next >= first, next + 4 <= bytes.count else {
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
