import CVFIO
import Foundation

/// A kernel uevent: `ACTION@DEVPATH` and its `KEY=VALUE` properties, as the kernel multicasts
/// them on NETLINK_KOBJECT_UEVENT (Documentation/ABI/testing/sysfs-uevent).
public struct Uevent: Sendable, Equatable {
  /// `add`, `remove`, `bind`, `unbind`, `change`, `move`, `online`, `offline`.
  public let action: String
  /// Below /sys: `/devices/pci0000:00/0000:00:04.0/0000:01:01.0`.
  public let devpath: String
  public let properties: [String: String]

  public var subsystem: String? { properties["SUBSYSTEM"] }

  /// nil for what is not a kernel uevent (udev's own messages start `libudev`, and a message
  /// without `@` or without ACTION is not one).
  public init?(message: some Collection<UInt8>) {
    let fields = message.split(separator: 0, omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
    guard let header = fields.first, let at = header.firstIndex(of: "@") else { return nil }
    var properties: [String: String] = [:]
    for field in fields.dropFirst() {
      guard let equals = field.firstIndex(of: "=") else { continue }
      properties[String(field[..<equals])] = String(field[field.index(after: equals)...])
    }
    action = String(header[..<at])
    devpath = String(header[header.index(after: at)...])
    guard properties["ACTION"] == action else { return nil }
    self.properties = properties
  }
}

/// What may have changed the host's assignable devices.
public enum HostChange: Sendable, Equatable {
  /// A PCI or VFIO uevent: a function added or removed, bound or unbound, VFs made or gone.
  case uevent(Uevent)
  /// Something was written in a watched directory (the ledger's: a detach, an owner, a lease).
  case directory(String)
  /// The kernel dropped uevents (its socket buffer was full, a storm): anything may have changed.
  case eventsLost
}

/// Waits for host changes: the kernel's PCI and VFIO uevents and writes into watched
/// directories (inotify). Changes are triggers, never data: whoever is woken reads the host
/// again, so a lost or forged event costs one read, never a wrong answer. Blocking: run it
/// on a thread of its own.
public final class HostChangeMonitor: @unchecked Sendable {
  public enum Failure: Error, Equatable, CustomStringConvertible {
    case uevents(errno: Int32)
    case inotify(path: String, errno: Int32)

    public var description: String {
      switch self {
      case .uevents(let errno):
        "the kernel's uevents cannot be read (netlink: \(String(cString: strerror(errno)))); run as root in the host's user namespace"
      case .inotify(let path, let errno):
        "\(path) cannot be watched (inotify: \(String(cString: strerror(errno)))); check that it exists"
      }
    }
  }

  /// The subsystems whose events can change what is assignable.
  public static let subsystems: Set<String> = ["pci", "vfio"]

  private let uevents: Int32
  private let inotify: Int32
  private let wake: Int32
  private var watched: [Int32: String] = [:]
  /// At most this many messages are read per wake-up: a storm cannot keep a caller here.
  private let batch = 256

  public init(watching directories: [String]) throws(Failure) {
    let socket = cvfio_uevent_socket()
    guard socket >= 0 else { throw .uevents(errno: -socket) }
    let inotify = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
    guard inotify >= 0 else {
      let error = errno
      close(socket)
      throw .uevents(errno: error)
    }
    let wake = cvfio_eventfd(0, cvfio_EFD_NONBLOCK)
    guard wake >= 0 else {
      close(socket)
      close(inotify)
      throw .uevents(errno: -wake)
    }
    (uevents, self.inotify, self.wake) = (socket, inotify, wake)
    let mask = UInt32(IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE)
    for directory in directories {
      let descriptor = inotify_add_watch(inotify, directory, mask)
      guard descriptor >= 0 else {
        let error = errno
        close(socket)
        close(inotify)
        close(wake)
        throw .inotify(path: directory, errno: error)
      }
      watched[descriptor] = directory
    }
  }

  deinit {
    close(uevents)
    close(inotify)
    close(wake)
  }

  /// Wakes a caller blocked in `next`, which then returns nil (and every later call too).
  public func stop() {
    var one: UInt64 = 1
    _ = write(wake, &one, 8)
  }

  /// Blocks until something changed (the changes), `timeout` seconds passed ([]), or `stop`
  /// was called (nil). Only PCI and VFIO uevents are returned.
  public func next(timeout: Double) -> [HostChange]? {
    var fds = [
      pollfd(fd: uevents, events: Int16(POLLIN), revents: 0), pollfd(fd: inotify, events: Int16(POLLIN), revents: 0),
      pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
    ]
    let ready = poll(&fds, nfds_t(fds.count), Int32(max(0, min(timeout, 86_400)) * 1000))
    guard ready >= 0 || errno == EINTR else { return nil }
    if fds[2].revents != 0 { return nil }
    var changes: [HostChange] = []
    if fds[0].revents != 0 { changes += readUevents() }
    if fds[1].revents != 0 { changes += readInotify() }
    return changes
  }

  private func readUevents() -> [HostChange] {
    var changes: [HostChange] = []
    var buffer = [UInt8](repeating: 0, count: 8192)
    for _ in 0..<batch {
      var sender = sockaddr_storage()
      var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
      let got = buffer.withUnsafeMutableBytes { bytes in
        withUnsafeMutablePointer(to: &sender) {
          $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            recvfrom(uevents, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, &length)
          }
        }
      }
      if got < 0 && errno == ENOBUFS {
        if !changes.contains(.eventsLost) { changes.append(.eventsLost) }
        continue
      }
      guard got > 0 else { break }
      guard let event = Uevent(message: buffer[..<got]), let subsystem = event.subsystem,
        Self.subsystems.contains(subsystem)
      else { continue }
      changes.append(.uevent(event))
    }
    return changes
  }

  private func readInotify() -> [HostChange] {
    var changes: [HostChange] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    for _ in 0..<batch {
      let got = buffer.withUnsafeMutableBytes { read(inotify, $0.baseAddress, $0.count) }
      guard got > 0 else { break }
      var offset = 0
      while offset + MemoryLayout<inotify_event>.size <= got {
        let (descriptor, nameLength) = buffer.withUnsafeBytes { bytes in
          let event = bytes.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
          return (event.wd, Int(event.len))
        }
        if let directory = watched[descriptor], !changes.contains(.directory(directory)) {
          changes.append(.directory(directory))
        }
        offset += MemoryLayout<inotify_event>.size + nameLength
      }
    }
    return changes
  }
}
