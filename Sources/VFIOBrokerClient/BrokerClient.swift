import CVFIO
import Foundation
import PCI
import VFIO

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A grant as it arrived: what each descriptor is, and its number in this process.
public struct Grant: Sendable {
  public let group: IOMMUGroupID
  public let backend: Backend
  public let descriptors: [(GrantedDescriptor, Int32)]
  public let memlock: MemlockBudget?

  public func first(_ kind: GrantedDescriptor.Kind) -> (GrantedDescriptor, Int32)? {
    descriptors.first { $0.0.kind == kind }
  }

  /// Closes every descriptor (a grant that is not used).
  public func close() { for (_, fd) in descriptors { Glibc.close(fd) } }
}

/// The client side of the broker's protocol: one connection, requests answered in order,
/// events kept for `nextEvent` when they arrive in between.
public final class BrokerClient: @unchecked Sendable {
  public let socketPath: String
  private let socket: Descriptor
  private var decoder = FrameDecoder()
  private var arrivedDescriptors: [Int32] = []
  private var events: [BrokerResponse] = []
  private var nextID = 1

  public init(socketPath: String = Wire.defaultSocket) throws(BrokerError) {
    self.socketPath = socketPath
    do {
      socket = Descriptor(try UnixSocket.connect(path: socketPath))
    } catch {
      throw BrokerError(
        .internalError, "cannot reach the broker at \(socketPath): \(error)",
        next: "is it running? `systemctl status swift-vfio-broker.socket`, or `vfioctl serve --socket \(socketPath)`")
    }
  }

  deinit { for fd in arrivedDescriptors { Glibc.close(fd) } }

  /// The connection's descriptor, to wait on for events.
  public var fileDescriptor: Int32 { socket.fd }

  public func hello() throws(BrokerError) -> BrokerResponse {
    try call(BrokerRequest(.hello, version: Wire.version))
  }

  public func list() throws(BrokerError) -> (groups: [BrokerGroup], memlock: MemlockBudget?) {
    let response = try call(BrokerRequest(.list))
    return (response.groups ?? [], response.memlock)
  }

  /// Asks for a group (`target` a group number) or one device of it (a PCI address).
  public func open(_ target: String, backend: Backend = .auto, guest: String? = nil) throws(BrokerError) -> Grant {
    let response = try call(BrokerRequest(.open, target: target, backend: backend.rawValue, guest: guest))
    let kinds = response.descriptors ?? []
    guard arrivedDescriptors.count >= kinds.count, let group = response.group,
      let backend = response.backend.flatMap(Backend.init(rawValue:))
    else {
      throw BrokerError(.internalError, "the grant named \(kinds.count) descriptors; \(arrivedDescriptors.count) arrived")
    }
    let fds = Array(arrivedDescriptors.prefix(kinds.count))
    arrivedDescriptors.removeFirst(kinds.count)
    return Grant(group: group, backend: backend, descriptors: Array(zip(kinds, fds)), memlock: response.memlock)
  }

  /// A device ready for DMA through the broker: the granted descriptors adopted by the VFIO
  /// library, each checked with the kernel first.
  public func openDevice(_ address: PCIAddress, backend: Backend = .auto, guest: String? = nil) throws(BrokerError)
    -> OpenedDevice
  {
    let grant = try open(address.description, backend: backend, guest: guest)
    do {
      return try Self.adopt(grant, device: address)
    } catch {
      throw BrokerError(.openFailed, "the granted descriptors are not usable: \(error)", next: error.hint)
    }
  }

  /// Turns a grant into an `OpenedDevice` for `device` (closing the rest of the grant).
  public static func adopt(_ grant: Grant, device address: PCIAddress) throws(VFIOError) -> OpenedDevice {
    var rest = grant.descriptors
    func take(_ match: (GrantedDescriptor) -> Bool) -> (GrantedDescriptor, Int32)? {
      guard let index = rest.firstIndex(where: { match($0.0) }) else { return nil }
      return rest.remove(at: index)
    }
    defer { for (_, fd) in rest { Glibc.close(fd) } }
    let device = take { $0.kind == .device && $0.address == address.description }
    switch grant.backend {
    case .iommufd:
      guard let device, let iommufd = take({ $0.kind == .iommufd }) else { throw missing(address) }
      return try OpenedDevice.adopting(iommufd: iommufd.1, cdev: device.1, name: address.description)
    default:
      guard let device, let container = take({ $0.kind == .container }), let group = take({ $0.kind == .group }),
        let number = group.0.group
      else { throw missing(address) }
      let iommu = IOMMUType.allCases.first { wireName($0) == container.0.iommu } ?? .type1v2
      return try OpenedDevice.adopting(
        container: container.1, iommu: iommu, group: group.1, number: number, device: device.1,
        name: address.description)
    }
  }

  private static func missing(_ address: PCIAddress) -> VFIOError {
    VFIOError(.invalidArgument, operation: "adopt", message: "the grant has no descriptors for \(address)")
  }

  /// Gives the grant back; returns once the group is free again (`released`), or `pending`
  /// when something still holds it after 10 s. Close the descriptors first.
  @discardableResult
  public func release(group: IOMMUGroupID) throws(BrokerError) -> String {
    try call(BrokerRequest(.release, group: group)).outcome ?? "released"
  }

  public func watch() throws(BrokerError) {
    _ = try call(BrokerRequest(.watch))
  }

  /// Root only: asks the holder of `group` to release it within `wait` seconds; `force` kills
  /// it after that. The outcome: released, forced, timeout or none (no lease).
  public func revoke(group: IOMMUGroupID, wait: Double, force: Bool) throws(BrokerError) -> String {
    let response = try call(BrokerRequest(.revoke, group: group, wait: wait, force: force), timeout: wait + 30)
    return response.outcome ?? "none"
  }

  /// The next event, waiting up to `timeout` seconds; nil when none came.
  public func nextEvent(timeout: Double) throws(BrokerError) -> BrokerResponse? {
    if !events.isEmpty { return events.removeFirst() }
    let deadline = ContinuousClock.now + .seconds(timeout)
    while events.isEmpty {
      let left = secondsLeft(until: deadline)
      guard left > 0, try readMore(timeout: left) else { return nil }
    }
    return events.removeFirst()
  }

  // MARK: Transport

  private func secondsLeft(until deadline: ContinuousClock.Instant) -> Double {
    let left = ContinuousClock.now.duration(to: deadline).components
    return Double(left.seconds) + Double(left.attoseconds) / 1e18
  }

  private func call(_ request: BrokerRequest, timeout: Double = 60) throws(BrokerError) -> BrokerResponse {
    var request = request
    request.id = nextID
    nextID += 1
    do {
      try UnixSocket.sendAll(socket.fd, try Wire.encode(request))
    } catch let error as SocketError {
      throw BrokerError(.internalError, "the broker hung up: \(error)")
    } catch let error as BrokerError {
      throw error
    } catch {
      throw BrokerError(.internalError, "\(error)")
    }
    let deadline = ContinuousClock.now + .seconds(timeout)
    while true {
      if let index = pending.firstIndex(where: { $0.id == request.id || ($0.type == .error && $0.id == nil) }) {
        let response = pending.remove(at: index)
        if let error = response.error { throw error }
        return response
      }
      let left = secondsLeft(until: deadline)
      guard left > 0 else { throw BrokerError(.internalError, "no answer from the broker in \(Int(timeout)) s") }
      guard try readMore(timeout: left) else { continue }
    }
  }

  private var pending: [BrokerResponse] = []

  /// Reads what the broker sent; false on timeout. Events go to `events`, answers to `pending`.
  private func readMore(timeout: Double) throws(BrokerError) -> Bool {
    var poll = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
    let ready = Glibc.poll(&poll, 1, Int32(min(timeout, 3600) * 1000))
    if ready == 0 { return false }
    if ready < 0 { return errno == EINTR ? false : true }
    var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    let got: (count: Int, descriptors: [Int32], truncated: Bool)
    do {
      got = try UnixSocket.receive(socket.fd, into: &buffer, maxDescriptors: UnixSocket.maximumDescriptors)
    } catch {
      throw BrokerError(.internalError, "reading from the broker: \(error)")
    }
    arrivedDescriptors += got.descriptors
    guard got.count > 0 else { throw BrokerError(.internalError, "the broker closed the connection") }
    let messages = try decoder.feed(buffer[0..<got.count])
    for body in messages {
      let message = try Wire.decode(BrokerResponse.self, from: body)
      if message.type == .event { events.append(message) } else { pending.append(message) }
    }
    return true
  }
}

/// The wire's names of the IOMMU models, shared by the broker and its client.
public func wireName(_ type: IOMMUType) -> String {
  switch type {
  case .type1: "type1"
  case .type1v2: "type1v2"
  case .spaprTCE: "spapr"
  case .spaprTCEv2: "spapr-v2"
  case .noIOMMU: "noiommu"
  }
}
