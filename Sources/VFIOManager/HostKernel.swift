import CVFIO
import Foundation
import PCI
import VFIO
import VFIOHost

/// A change the kernel did not make, with its errno where it gave one.
public struct HostChangeError: Error, Equatable, CustomStringConvertible {
  public let operation: String
  public let errno: Int32?
  public let detail: String?

  public init(_ operation: String, errno: Int32? = nil, detail: String? = nil) {
    self.operation = operation
    self.errno = errno
    self.detail = detail
  }

  public var description: String {
    var text = operation
    if let errno { text += ": " + String(cString: strerror(errno)) + " (errno \(errno))" }
    if let detail { text += ": " + detail }
    return text
  }
}

/// The one seam through which the manager changes the host: sysfs writes, module loading,
/// and a bus reset through VFIO. `LiveHost` is the real kernel; tests pass a simulation of
/// sysfs on a scratch copy of a captured tree, and the guests of `lab/` prove the real one.
public protocol HostKernel: Sendable {
  /// Writes `value` to the sysfs attribute at `hostPath` (e.g. `/sys/bus/pci/drivers_probe`).
  func write(_ value: String, to hostPath: String) throws(HostChangeError)
  func loadModule(_ name: String) throws(HostChangeError)
  /// One VFIO_DEVICE_PCI_HOT_RESET covering every function in `functions` (all on vfio-pci).
  func busReset(_ functions: [PCIAddress]) throws(HostChangeError)
  /// Gives a VFIO node (`/dev/vfio/N`, `/dev/vfio/devices/vfioX`) to an owner with a mode.
  func setOwner(_ hostPath: String, _ ownership: Ownership) throws(HostChangeError)
}

/// The running kernel under `sysfs.root` (`/` on a live host).
public struct LiveHost: HostKernel {
  public let sysfs: Sysfs
  /// A driver's remove or probe can block for a long time; writes give up after this.
  public let writeTimeout: Double

  public init(sysfs: Sysfs, writeTimeout: Double = 30) {
    self.sysfs = sysfs
    self.writeTimeout = writeTimeout
  }

  public func write(_ value: String, to hostPath: String) throws(HostChangeError) {
    let root = sysfs.root
    let outcome = BoundedCall.run(timeout: writeTimeout) { () -> Int32 in
      // Beneath the root: under --root no link (planted or not) takes a write out of the tree.
      let fd = RootedFiles.open(root: root, hostPath, O_WRONLY | O_NOFOLLOW)
      guard fd >= 0 else { return -fd }
      defer { close(fd) }
      // A sysfs store takes the whole value in one write; a newline is what echo sends.
      let bytes = Array((value + "\n").utf8)
      let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
      return written < 0 ? errno : 0
    }
    switch outcome {
    case .finished(0): return
    case .finished(let code): throw HostChangeError("write '\(value)' to \(hostPath)", errno: code)
    case .timedOut:
      throw HostChangeError(
        "write '\(value)' to \(hostPath)",
        detail:
          "no answer after \(formatSeconds(writeTimeout)) (a driver's remove or probe is blocked; see dmesg). The write may still complete later")
    }
  }

  public func loadModule(_ name: String) throws(HostChangeError) {
    let candidates: [String] = ["/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe", "/bin/modprobe"]
    guard let modprobe = candidates.first(where: { path in access(path, X_OK) == 0 })
    else { throw HostChangeError("modprobe \(name)", detail: "no modprobe found (install kmod)") }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: modprobe)
    process.arguments = [name]
    do {
      try process.run()
    } catch {
      throw HostChangeError("modprobe \(name)", detail: error.localizedDescription)
    }
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
      throw HostChangeError("modprobe \(name)", detail: "exit status \(process.terminationStatus)")
    }
  }

  /// Through an O_PATH descriptor opened without following links, so a link planted where a
  /// node should be is refused rather than followed; on the live host only character devices.
  public func setOwner(_ hostPath: String, _ ownership: Ownership) throws(HostChangeError) {
    let what = "give \(hostPath) to \(ownership)"
    let fd = RootedFiles.open(root: sysfs.root, hostPath, cvfio_O_PATH | O_NOFOLLOW)
    guard fd >= 0 else { throw HostChangeError(what, errno: -fd) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw HostChangeError(what, errno: errno) }
    let kind = info.st_mode & S_IFMT
    guard kind == S_IFCHR || (!sysfs.isLiveHost && kind == S_IFREG) else {
      throw HostChangeError(what, detail: "not a character device (a link or a file where the kernel's node should be)")
    }
    guard fchownat(fd, "", uid_t(ownership.uid), gid_t(ownership.gid), cvfio_AT_EMPTY_PATH) == 0 else {
      throw HostChangeError(what, errno: errno)
    }
    guard chmod("/proc/self/fd/\(fd)", mode_t(ownership.mode)) == 0 else { throw HostChangeError(what, errno: errno) }
  }

  public func busReset(_ functions: [PCIAddress]) throws(HostChangeError) {
    guard let first = functions.first else { return }
    let sysRoot = sysfs.path("/sys")
    let devRoot = sysfs.path("/dev")
    do {
      let opened = try OpenedDevice.open(first, backend: .auto, sysfsRoot: sysRoot, devRoot: devRoot)
      var others: [OpenedDevice] = []
      for function in functions.dropFirst() {
        others.append(try OpenedDevice.open(function, sharing: opened, sysfsRoot: sysRoot, devRoot: devRoot))
      }
      try opened.device.hotReset(groups: others.compactMap(\.group))
      withExtendedLifetime(others) {}
    } catch {
      throw HostChangeError(
        "bus reset of \(functions.map(\.description).joined(separator: ", ")) (VFIO_DEVICE_PCI_HOT_RESET)",
        errno: error.errno?.rawValue, detail: error.description)
    }
  }
}

/// Runs a blocking call on its own thread and stops waiting after a timeout. The call itself
/// cannot be cancelled (a write blocked in the kernel stays blocked), so its thread is left
/// to finish on its own; the caller gets an answer in bounded time.
enum BoundedCall {
  enum Outcome<T> {
    case finished(T)
    case timedOut
  }

  static func run<T: Sendable>(timeout: Double, _ body: @escaping @Sendable () -> T) -> Outcome<T> {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
      box.value = body()
      done.signal()
    }
    thread.start()
    guard done.wait(timeout: .now() + timeout) == .success, let value = box.value else { return .timedOut }
    return .finished(value)
  }

  /// Written by the worker before it signals, read by the waiter after: the semaphore orders them.
  final class ResultBox<T>: @unchecked Sendable {
    var value: T?
  }
}
