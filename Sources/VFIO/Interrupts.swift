import CVFIO
import SystemPackage

/// The VFIO-PCI interrupt indexes.
public enum IRQIndex: Int, Sendable, CaseIterable, CustomStringConvertible {
  case intx = 0
  case msi = 1
  case msix = 2
  /// AER error notification.
  case err = 3
  /// Device release request from the host.
  case req = 4

  public var description: String {
    switch self {
    case .intx: "INTx"
    case .msi: "MSI"
    case .msix: "MSI-X"
    case .err: "ERR"
    case .req: "REQ"
    }
  }
}

/// VFIO_DEVICE_GET_IRQ_INFO.
public struct IRQInfo: Sendable, Equatable {
  public var index: Int
  public var flags: UInt32
  public var count: Int

  public var supportsEventFD: Bool { flags & UInt32(VFIO_IRQ_INFO_EVENTFD) != 0 }
  public var isMaskable: Bool { flags & UInt32(VFIO_IRQ_INFO_MASKABLE) != 0 }
  /// Level-triggered: the kernel masks the line when it fires; unmask after servicing.
  public var isAutomasked: Bool { flags & UInt32(VFIO_IRQ_INFO_AUTOMASKED) != 0 }
  public var isNoResize: Bool { flags & UInt32(VFIO_IRQ_INFO_NORESIZE) != 0 }
}

/// What a VFIO_DEVICE_SET_IRQS call does to a range of vectors.
public enum IRQAction: Sendable, Equatable {
  /// Route vectors to eventfds (-1 leaves a vector unrouted).
  case trigger(eventfds: [Int32])
  /// Tear down all vectors of the index (DATA_NONE | TRIGGER with count 0).
  case disable
  /// Fire the vectors from userspace (loopback test).
  case fire(count: Int)
  case mask(count: Int)
  case unmask(count: Int)
}

/// Encodes `struct vfio_irq_set` with its trailing data array. Pure; tested byte for byte.
public enum IRQSetCodec {
  static let header = 20

  public static func encode(index: Int, start: Int = 0, action: IRQAction) -> [UInt8] {
    let (flags, count, data): (Int32, Int, [UInt8])
    switch action {
    case .trigger(let fds):
      flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
      count = fds.count
      data = fds.flatMap { withUnsafeBytes(of: $0, Array.init) }
    case .disable:
      (flags, count, data) = (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, [])
    case .fire(let n):
      (flags, count, data) = (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, n, [])
    case .mask(let n):
      (flags, count, data) = (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK, n, [])
    case .unmask(let n):
      (flags, count, data) = (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, n, [])
    }
    var bytes = [UInt8](repeating: 0, count: header)
    bytes.store(UInt32(header + data.count), at: 0)
    bytes.store(UInt32(flags), at: 4)
    bytes.store(UInt32(index), at: 8)
    bytes.store(UInt32(start), at: 12)
    bytes.store(UInt32(count), at: 16)
    return bytes + data
  }

  /// Decodes an encoded `vfio_irq_set` (for tests and traces).
  public static func decode(_ bytes: [UInt8]) throws(VFIOError) -> (
    flags: UInt32, index: Int, start: Int, count: Int, data: [UInt8]
  ) {
    guard bytes.count >= header, Int(bytes.load(UInt32.self, at: 0)) == bytes.count else {
      throw VFIOError(
        .invalidArgument, operation: "decode vfio_irq_set",
        message: "argsz does not match \(bytes.count) bytes")
    }
    return (
      bytes.load(at: 4), Int(bytes.load(UInt32.self, at: 8)), Int(bytes.load(UInt32.self, at: 12)),
      Int(bytes.load(UInt32.self, at: 16)), Array(bytes[header...])
    )
  }
}

extension Device {
  /// VFIO_DEVICE_GET_IRQ_INFO for one index.
  public func irqInfo(_ index: IRQIndex) throws(VFIOError) -> IRQInfo {
    var info = vfio_irq_info()
    info.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
    info.index = UInt32(index.rawValue)
    try handle.ioctl(.deviceGetIRQInfo, &info)
    return IRQInfo(index: index.rawValue, flags: info.flags, count: Int(info.count))
  }

  /// VFIO_DEVICE_SET_IRQS.
  public func setIRQs(_ index: IRQIndex, start: Int = 0, _ action: IRQAction) throws(VFIOError) {
    var bytes = IRQSetCodec.encode(index: index.rawValue, start: start, action: action)
    let hint: String? =
      switch action {
      case .trigger:
        "check irqInfo(.\(index)) for the vector count; MSI and MSI-X cannot be enabled together, nor with INTx"
      default: nil
      }
    try handle.check(handle.rawIoctl(.deviceSetIRQs, bytes: &bytes), .deviceSetIRQs, hint: hint)
  }

  /// Routes vectors `start...` of `index` to the given eventfds (one per vector).
  public func enableInterrupts(_ index: IRQIndex, eventFDs: [EventFD], start: Int = 0)
    throws(VFIOError)
  {
    try setIRQs(index, start: start, .trigger(eventfds: eventFDs.map(\.fileDescriptor)))
  }

  /// Tears down every vector of `index`.
  public func disableInterrupts(_ index: IRQIndex) throws(VFIOError) {
    try setIRQs(index, .disable)
  }

  /// Unmasks INTx after servicing; level-triggered INTx is masked by the kernel each time it fires.
  public func unmaskINTx() throws(VFIOError) { try setIRQs(.intx, .unmask(count: 1)) }

  /// Masks INTx.
  public func maskINTx() throws(VFIOError) { try setIRQs(.intx, .mask(count: 1)) }
}
