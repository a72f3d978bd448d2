import Foundation
import JSONStream
import PCI

/// The broker's protocol, version 1 (docs/broker.md): each message is a 4-byte big-endian
/// length and that many bytes of one JSON object; descriptors ride along a message as
/// SCM_RIGHTS, in the order its `descriptors` list names them.
public enum Wire {
  /// Where the broker listens unless told otherwise (`vfioctl serve --socket`).
  public static let defaultSocket = "/run/swift-vfio/broker.sock"
  public static let version = 1
  /// The largest body either side accepts. Checked on the length word, before a byte of the
  /// body is read or a buffer for it allocated.
  public static let maximumMessage = 64 * 1024
  static let headerSize = 4

  /// Written by `JSONWriter` as the message's fields are encoded, in the order of its
  /// `CodingKeys`, which each message type lists sorted: the bytes docs/broker.md shows, without
  /// the tree of boxed values and the sort Foundation's encoder makes for every message.
  public static func encode<T: Encodable>(_ message: T) throws(BrokerError) -> [UInt8] {
    let body: [UInt8]
    do {
      body = try JSONWriter(compact: true).bytes(message)
    } catch {
      throw BrokerError(.internalError, "could not encode a message: \(error)")
    }
    guard body.count <= maximumMessage else {
      throw BrokerError(.oversized, "a \(body.count)-byte message is over the \(maximumMessage)-byte limit")
    }
    let n = UInt32(body.count)
    return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
  }

  public static func decode<T: Decodable>(_ type: T.Type, from body: [UInt8]) throws(BrokerError) -> T {
    do {
      return try JSONDecoder().decode(type, from: Data(body))
    } catch {
      throw BrokerError(.malformed, "not a \(T.self) message: \(describe(error))", next: "see docs/broker.md for the message shapes")
    }
  }

  /// DecodingError's description names Swift types; the wire speaks in JSON keys.
  private static func describe(_ error: any Error) -> String {
    switch error {
    case DecodingError.keyNotFound(let key, _): "missing \"\(key.stringValue)\""
    case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
      "wrong type at \"\(context.codingPath.map(\.stringValue).joined(separator: "."))\""
    case DecodingError.dataCorrupted(let context):
      context.codingPath.isEmpty
        ? "not JSON" : "bad value at \"\(context.codingPath.map(\.stringValue).joined(separator: "."))\""
    default: "unreadable"
    }
  }
}

/// Splits a byte stream into message bodies. Holds at most one partial message, never more
/// than the limit; an over-limit length word is an error the moment its four bytes are in.
public struct FrameDecoder: Sendable {
  public let limit: Int
  private var buffer: [UInt8] = []
  private var start = 0

  public init(limit: Int = Wire.maximumMessage) { self.limit = limit }

  /// Bytes of a message begun and not finished: a peer that stops here is stalled or truncated.
  public var pending: Int { buffer.count - start }

  /// Appends what the socket gave and returns every message it completed.
  public mutating func feed(_ bytes: some Collection<UInt8>) throws(BrokerError) -> [[UInt8]] {
    buffer.append(contentsOf: bytes)
    var messages: [[UInt8]] = []
    while buffer.count - start >= Wire.headerSize {
      let length =
        Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
      guard length <= limit else {
        buffer = []
        start = 0
        throw BrokerError(.oversized, "a message announced \(length) bytes; the limit is \(limit)")
      }
      guard buffer.count - start - Wire.headerSize >= length else { break }
      let bodyStart = start + Wire.headerSize
      messages.append(Array(buffer[bodyStart..<bodyStart + length]))
      start = bodyStart + length
    }
    // Drop consumed bytes once they are the larger part, so a long session stays bounded.
    if start > 0 && start * 2 >= buffer.count {
      buffer.removeFirst(start)
      start = 0
    }
    return messages
  }
}

// MARK: Messages

/// What a client asks. `id` is the client's own number, echoed in the answer.
public struct BrokerRequest: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable {
    /// Protocol version and who the broker thinks the caller is.
    case hello
    /// The groups the caller may use, with the foundation's verdicts.
    case list
    /// Descriptors for a group or one device of it.
    case open
    /// Give a grant back (close the descriptors first): answered once the group is free again.
    case release
    /// Events about the caller's grants from now on, on this connection.
    case watch
    /// Administrator only: ask the holder of a group's lease to release it.
    case revoke
  }

  public var type: Kind
  public var id: Int?
  public var version: Int?
  /// `open`: a PCI address (one device of the group) or an IOMMU group number (all its endpoints).
  public var target: String?
  /// `open`: legacy, iommufd or auto.
  public var backend: String?
  /// `open`: the guest the caller runs, which must be the group's reservation when it has one.
  public var guest: String?
  /// `release`, `revoke`: the group.
  public var group: IOMMUGroupID?
  /// `revoke`: seconds the holder has to release.
  public var wait: Double?
  /// `revoke`: kill the holder when it has not released in time.
  public var force: Bool?

  /// Sorted: the order `Wire.encode` writes them in.
  enum CodingKeys: String, CodingKey { case backend, force, group, guest, id, target, type, version, wait }

  public init(
    _ type: Kind, id: Int? = nil, version: Int? = nil, target: String? = nil, backend: String? = nil,
    guest: String? = nil, group: IOMMUGroupID? = nil, wait: Double? = nil, force: Bool? = nil
  ) {
    self.type = type
    self.id = id
    self.version = version
    self.target = target
    self.backend = backend
    self.guest = guest
    self.group = group
    self.wait = wait
    self.force = force
  }
}

/// One descriptor of a grant, in the order they travel.
public struct GrantedDescriptor: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable {
    /// /dev/vfio/vfio with the group attached and the IOMMU model set.
    case container
    /// /dev/vfio/N, attached to the container.
    case group
    /// A device taken from the group (legacy) or its cdev, not yet bound (iommufd).
    case device
    /// /dev/iommu, in per-process memlock accounting when the broker could set it.
    case iommufd
  }

  public var kind: Kind
  public var group: IOMMUGroupID?
  public var address: String?
  /// The container's IOMMU model (`type1v2`, ...).
  public var iommu: String?
  /// The cdev the device descriptor came from (`vfio2`), iommufd only.
  public var cdev: String?

  /// Sorted: the order `Wire.encode` writes them in.
  enum CodingKeys: String, CodingKey { case address, cdev, group, iommu, kind }

  public init(kind: Kind, group: IOMMUGroupID? = nil, address: String? = nil, iommu: String? = nil, cdev: String? = nil) {
    self.kind = kind
    self.group = group
    self.address = address
    self.iommu = iommu
    self.cdev = cdev
  }
}

/// How much the caller may pin, as the broker sees it.
public struct MemlockBudget: Codable, Sendable, Equatable {
  /// `process` (iommufd in per-process mode, and type1, which charges the mapping process) or
  /// `user` (iommufd's default: every process of the user shares one budget).
  public var accounting: String
  /// The caller's RLIMIT_MEMLOCK in bytes, from /proc/PID/limits; nil when unlimited.
  public var limit: UInt64?

  public init(accounting: String, limit: UInt64?) {
    self.accounting = accounting
    self.limit = limit
  }
}

/// A group as `list` shows it to its owner.
public struct BrokerGroup: Codable, Sendable, Equatable {
  public var group: IOMMUGroupID
  public var devices: [String]
  public var owner: Int
  public var reservedFor: String?
  /// Who holds it now, if anyone.
  public var leasedTo: Int?
  /// `usable`, `leased`, or why not (`not-viable` ...), from the host's view now.
  public var verdict: String
  public var reasons: [String]
  public var backends: [String]

  /// Sorted: the order `Wire.encode` writes them in.
  enum CodingKeys: String, CodingKey { case backends, devices, group, leasedTo, owner, reasons, reservedFor, verdict }

  public init(
    group: IOMMUGroupID, devices: [String], owner: Int, reservedFor: String?, leasedTo: Int?, verdict: String,
    reasons: [String], backends: [String]
  ) {
    self.group = group
    self.devices = devices
    self.owner = owner
    self.reservedFor = reservedFor
    self.leasedTo = leasedTo
    self.verdict = verdict
    self.reasons = reasons
    self.backends = backends
  }
}

/// What the broker answers, or tells a watcher.
public struct BrokerResponse: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable {
    case hello, groups, granted, released, watching, revoked, event, error
  }

  public enum Event: String, Codable, Sendable {
    /// The kernel (VFIO request interrupt) or the administrator wants the device back.
    case deviceRequest = "device-request"
    /// The group was reset after its lease ended.
    case resetDone = "reset-done"
    case leaseEnded = "lease-ended"
  }

  public var type: Kind
  public var id: Int?
  public var version: Int?
  public var server: String?
  public var uid: Int?
  public var gid: Int?
  public var groups: [BrokerGroup]?
  public var group: IOMMUGroupID?
  public var backend: String?
  public var descriptors: [GrantedDescriptor]?
  public var memlock: MemlockBudget?
  public var event: Event?
  /// `revoked`: released, forced, timeout or none; `released`: released, or pending when the
  /// group is still held after 10 s (the lease then ends when its holders close it).
  public var outcome: String?
  public var detail: String?
  public var error: BrokerError?

  /// Sorted: the order `Wire.encode` writes them in.
  enum CodingKeys: String, CodingKey {
    case backend, descriptors, detail, error, event, gid, group, groups, id, memlock, outcome, server, type, uid, version
  }

  public init(_ type: Kind, id: Int? = nil) {
    self.type = type
    self.id = id
  }

  public static func failure(_ error: BrokerError, id: Int?) -> BrokerResponse {
    var response = BrokerResponse(.error, id: id)
    response.error = error
    return response
  }
}
