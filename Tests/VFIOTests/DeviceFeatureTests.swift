import CVFIO
import SystemPackage
import Testing

@testable import VFIO

@Suite struct DeviceFeatures {
  @Test func encodesHeaderAndData() {
    let bytes = DeviceFeatureCodec.encode(.pciVFToken, [.set, .probe], data: [1, 2, 3, 4])
    #expect(bytes.count == 12)
    #expect(bytes.load(UInt32.self, at: 0) == 12, "argsz covers the data")
    #expect(bytes.load(UInt32.self, at: 4) == 0 | 1 << 17 | 1 << 18)
    #expect(Array(bytes[8...]) == [1, 2, 3, 4])
    #expect(
      DeviceFeatureCodec.encode(.lowPowerEntry, .get).load(UInt32.self, at: 4) == 3 | 1 << 16)
  }

  /// The kernel's answers to PROBE map to yes/no, except errors that mean something else.
  @Test func probeMapsENOTTYAndEINVALToNo() throws {
    let k = legacyHost()
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    var seen: [UInt32] = []
    k.on(.deviceFeature) { _, arg, _ in
      let flags = arg!.load(fromByteOffset: 4, as: UInt32.self)
      seen.append(flags)
      switch flags & 0xffff {
      case 3: return flags & (1 << 17) != 0 ? 0 : -Errno.invalidArgument.rawValue
      case 1: return -Errno.inappropriateIOCTLForDevice.rawValue
      default: return -Errno.badFileDescriptor.rawValue
      }
    }
    #expect(try opened.device.supports(.lowPowerEntry, .set))
    #expect(try !opened.device.supports(.lowPowerEntry, .get))
    #expect(try !opened.device.supports(.migration, .get))
    #expect(seen.allSatisfy { $0 & (1 << 18) != 0 }, "every call is a PROBE")
    do {
      _ = try opened.device.supports(.pciVFToken, .set)
      Issue.record("EBADF is not a no")
    } catch {
      #expect(error.errno == .badFileDescriptor)
      #expect(error.operation == "VFIO_DEVICE_FEATURE")
    }
  }

  @Test func getReturnsTheDataAfterTheHeader() throws {
    let k = legacyHost()
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    k.on(.deviceFeature) { _, arg, _ in
      arg!.storeBytes(of: UInt64(0x3), toByteOffset: 8, as: UInt64.self)
      return 0
    }
    #expect(try opened.device.getFeature(.migration, count: 8) == [3, 0, 0, 0, 0, 0, 0, 0])
  }
}

@Suite struct DeviceInfoCapabilities {
  /// A vfio_device_info (20 bytes) with the given flags and chain appended at offset 20.
  func info(flags: UInt32, caps: [[UInt8]]) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: 20)
    b.store(flags, at: 4)
    var offset = 20
    var chain: [UInt8] = []
    for (i, cap) in caps.enumerated() {
      var c = cap
      let next = i == caps.count - 1 ? 0 : offset + c.count
      c.store(UInt32(next), at: 4)
      chain += c
      offset += c.count
    }
    if !caps.isEmpty { b.store(UInt32(20), at: 16) }
    b += chain
    b.store(UInt32(b.count), at: 0)
    return b
  }

  func cap(id: UInt16, version: UInt16 = 1, payload: [UInt8]) -> [UInt8] {
    var c = [UInt8](repeating: 0, count: 8)
    c.store(id, at: 0)
    c.store(version, at: 2)
    return c + payload
  }

  let caps = UInt32(VFIO_DEVICE_FLAGS_CAPS) | UInt32(VFIO_DEVICE_FLAGS_PCI)

  @Test func noCapsFlagMeansNoChain() throws {
    // cap_offset left non-zero on purpose: without the flag it must be ignored.
    var b = info(flags: UInt32(VFIO_DEVICE_FLAGS_PCI), caps: [])
    b.store(UInt32(20), at: 16)
    #expect(try DeviceCapability.decodeInfo(b).isEmpty)
  }

  @Test func decodesAtomicCompleterAndKeepsOthersRaw() throws {
    let b = info(
      flags: caps,
      caps: [
        cap(id: 5, payload: [0b101, 0, 0, 0, 0, 0, 0, 0]),
        cap(id: 1, payload: [9, 9, 9, 9]),
      ])
    let decoded = try DeviceCapability.decodeInfo(b)
    #expect(decoded.count == 2)
    #expect(decoded[0] == .pciAtomicCompleter(flags: 0b101))
    guard case .other(let id, _, let bytes) = decoded[1] else {
      Issue.record("zPCI kept raw")
      return
    }
    #expect(id == 1 && bytes.suffix(4) == [9, 9, 9, 9])
  }

  @Test func rejectsLoopsTruncationAndShortCaps() {
    // A capability pointing to itself.
    var looping = info(flags: caps, caps: [cap(id: 5, payload: [1, 0, 0, 0, 0, 0, 0, 0])])
    looping.store(UInt32(20), at: 24)
    // cap_offset past the end.
    var truncated = info(flags: caps, caps: [])
    truncated.store(UInt32(64), at: 16)
    // An atomic-completer capability without its flags word.
    let short = info(flags: caps, caps: [cap(id: 5, payload: [])])
    for (name, b) in [("loop", looping), ("truncated", truncated), ("short", short)] {
      do {
        _ = try DeviceCapability.decodeInfo(b)
        Issue.record("\(name) accepted")
      } catch {
        #expect(error.code == .malformedCapabilityChain, "\(name)")
      }
    }
    #expect(throws: VFIOError.self) { try DeviceCapability.decodeInfo([0, 0, 0]) }
  }

  /// The kernel first answers with the size it needs, then fills the chain.
  @Test func asksAgainWithTheSizeTheKernelNeeds() throws {
    let k = legacyHost()
    let opened = try OpenedDevice.open(edu, backend: .legacy, kernel: k)
    let full = info(flags: caps, caps: [cap(id: 5, payload: [1, 0, 0, 0, 0, 0, 0, 0])])
    var sizes: [UInt32] = []
    k.on(.deviceGetInfo) { _, arg, _ in
      let argsz = arg!.load(as: UInt32.self)
      sizes.append(argsz)
      if argsz < full.count {
        arg!.storeBytes(of: UInt32(full.count), as: UInt32.self)
        arg!.storeBytes(of: self.caps, toByteOffset: 4, as: UInt32.self)
      } else {
        full.withUnsafeBytes { arg!.copyMemory(from: $0.baseAddress!, byteCount: full.count) }
      }
      return 0
    }
    #expect(try opened.device.capabilities() == [.pciAtomicCompleter(flags: 1)])
    #expect(sizes == [20, UInt32(full.count)])
  }
}
