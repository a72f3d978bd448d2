import CVFIO
import SystemPackage

/// A VFIO_DEVICE_FEATURE index (the low 16 bits of `vfio_device_feature.flags`).
public struct DeviceFeature: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
  public let rawValue: UInt16
  public init(rawValue: UInt16) { self.rawValue = rawValue }

  /// The VF token shared between a PF's and its VFs' users (SET, 16-byte UUID).
  public static let pciVFToken = Self(rawValue: 0)
  /// Migration flags the device supports (GET).
  public static let migration = Self(rawValue: 1)
  public static let migrationDeviceState = Self(rawValue: 2)
  /// Let the device be put into a low power state while unused (SET, no data).
  public static let lowPowerEntry = Self(rawValue: 3)
  public static let lowPowerEntryWithWakeup = Self(rawValue: 4)
  public static let lowPowerExit = Self(rawValue: 5)
  public static let dmaLoggingStart = Self(rawValue: 6)
  public static let dmaLoggingStop = Self(rawValue: 7)
  public static let dmaLoggingReport = Self(rawValue: 8)
  public static let migrationDataSize = Self(rawValue: 9)

  public var description: String {
    switch rawValue {
    case 0: "PCI_VF_TOKEN"
    case 1: "MIGRATION"
    case 2: "MIG_DEVICE_STATE"
    case 3: "LOW_POWER_ENTRY"
    case 4: "LOW_POWER_ENTRY_WITH_WAKEUP"
    case 5: "LOW_POWER_EXIT"
    case 6: "DMA_LOGGING_START"
    case 7: "DMA_LOGGING_STOP"
    case 8: "DMA_LOGGING_REPORT"
    case 9: "MIG_DATA_SIZE"
    default: "feature \(rawValue)"
    }
  }
}

/// What a VFIO_DEVICE_FEATURE call does with the feature.
public struct DeviceFeatureAccess: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  public static let get = Self(rawValue: 1 << 16)
  public static let set = Self(rawValue: 1 << 17)
  /// Ask whether the other bits would be accepted, without doing anything.
  public static let probe = Self(rawValue: 1 << 18)
}

/// Encodes `struct vfio_device_feature` with its trailing data. Pure, for tests.
public enum DeviceFeatureCodec {
  static let headerSize = 8

  public static func encode(
    _ feature: DeviceFeature, _ access: DeviceFeatureAccess, data: [UInt8] = []
  ) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: headerSize + data.count)
    bytes.store(UInt32(bytes.count), at: 0)
    bytes.store(UInt32(feature.rawValue) | access.rawValue, at: 4)
    bytes.replaceSubrange(headerSize..., with: data)
    return bytes
  }
}

extension Device {
  /// VFIO_DEVICE_FEATURE with PROBE: whether the device supports `access` on `feature`.
  /// The kernel answers ENOTTY for a feature the driver does not know and EINVAL for an
  /// operation it does not allow; both mean no. Other errors are thrown.
  public func supports(_ feature: DeviceFeature, _ access: DeviceFeatureAccess) throws(VFIOError)
    -> Bool
  {
    var bytes = DeviceFeatureCodec.encode(feature, access.union(.probe))
    let rc = handle.rawIoctl(.deviceFeature, bytes: &bytes)
    if rc == -Errno.inappropriateIOCTLForDevice.rawValue || rc == -Errno.invalidArgument.rawValue {
      return false
    }
    try handle.check(rc, .deviceFeature, hint: "feature \(feature)")
    return true
  }

  /// VFIO_DEVICE_FEATURE GET: `count` bytes of the feature's data.
  public func getFeature(_ feature: DeviceFeature, count: Int) throws(VFIOError) -> [UInt8] {
    var bytes = DeviceFeatureCodec.encode(feature, .get, data: [UInt8](repeating: 0, count: count))
    try handle.check(
      handle.rawIoctl(.deviceFeature, bytes: &bytes), .deviceFeature,
      hint: "probe first with supports(.\(feature), .get)")
    return Array(bytes[DeviceFeatureCodec.headerSize...])
  }

  /// VFIO_DEVICE_FEATURE SET with `data`.
  public func setFeature(_ feature: DeviceFeature, data: [UInt8] = []) throws(VFIOError) {
    var bytes = DeviceFeatureCodec.encode(feature, .set, data: data)
    try handle.check(
      handle.rawIoctl(.deviceFeature, bytes: &bytes), .deviceFeature,
      hint: "probe first with supports(.\(feature), .set)")
  }
}

/// One entry of the VFIO_DEVICE_GET_INFO capability chain.
public enum DeviceCapability: Sendable, Equatable {
  /// VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP (Linux 6.3+): which PCIe AtomicOp completer sizes
  /// the path to the root supports (bit 0: 32-bit, 1: 64-bit, 2: 128-bit CAS).
  case pciAtomicCompleter(flags: UInt32)
  /// s390 zPCI (ids 1-4) and anything newer: kept raw.
  case other(id: UInt16, version: UInt16, bytes: [UInt8])

  static let pciAtomicCompleterID: UInt16 = 5

  public static func decode(_ chain: [Capability]) throws(VFIOError) -> [DeviceCapability] {
    var result: [DeviceCapability] = []
    for cap in chain {
      switch cap.id {
      case pciAtomicCompleterID:
        try CapabilityChain.require(cap, 12, "PCI atomic completer")
        result.append(.pciAtomicCompleter(flags: cap.bytes.load(UInt32.self, at: 8)))
      default:
        result.append(.other(id: cap.id, version: cap.version, bytes: cap.bytes))
      }
    }
    return result
  }

  /// Decodes a whole VFIO_DEVICE_GET_INFO answer: its capabilities when VFIO_DEVICE_FLAGS_CAPS
  /// is set and `cap_offset` is not zero, else none.
  public static func decodeInfo(_ buffer: [UInt8]) throws(VFIOError) -> [DeviceCapability] {
    guard buffer.count >= 20 else {
      throw CapabilityChain.malformed("device info of \(buffer.count) bytes is shorter than 20")
    }
    let flags = buffer.load(UInt32.self, at: 4)
    guard flags & UInt32(VFIO_DEVICE_FLAGS_CAPS) != 0 else { return [] }
    let chain = try CapabilityChain.parse(
      buffer, firstOffset: buffer.load(UInt32.self, at: 16), fixedSize: 20)
    return try decode(chain)
  }
}

extension Device {
  /// VFIO_DEVICE_GET_INFO again, with room for the capability chain: asks with the fixed
  /// size, then with the size the kernel says it needs.
  public func capabilities() throws(VFIOError) -> [DeviceCapability] {
    let fixed = MemoryLayout<vfio_device_info>.size
    var buffer = [UInt8](repeating: 0, count: fixed)
    buffer.store(UInt32(fixed), at: 0)
    try handle.ioctl(.deviceGetInfo, bytes: &buffer)
    let needed = Int(buffer.load(UInt32.self, at: 0))
    if needed > fixed {
      guard needed <= 1 << 20 else {
        throw CapabilityChain.malformed("VFIO_DEVICE_GET_INFO asks for \(needed) bytes")
      }
      buffer = [UInt8](repeating: 0, count: needed)
      buffer.store(UInt32(needed), at: 0)
      try handle.ioctl(.deviceGetInfo, bytes: &buffer)
    }
    return try DeviceCapability.decodeInfo(buffer)
  }
}
