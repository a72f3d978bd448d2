import CVFIO
import Foundation
import PCI
import VFIO
import VFIOBrokerClient
import VFIOHost
import VFIOManager
import VFIOPolicy

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Descriptors opened for one grant, owned until they are sent; `keep` holds the objects that
/// close them. The broker keeps none of them after the send, so that once the client closes
/// its copies nothing holds the group and the lease can end.
public final class OpenedGrant: @unchecked Sendable {
  public let backend: Backend
  public let descriptors: [(GrantedDescriptor, Int32)]
  /// The kernel's device request (VFIO_PCI_REQ_IRQ_INDEX) lands here while the client has
  /// not registered its own; the broker relays it. Legacy only: an unbound cdev takes no IRQ setup.
  public let requestEvent: Descriptor?
  public let memlockAccounting: String
  let keep: [AnyObject]

  public init(
    backend: Backend, descriptors: [(GrantedDescriptor, Int32)], requestEvent: Descriptor?, memlockAccounting: String,
    keep: [AnyObject]
  ) {
    self.backend = backend
    self.descriptors = descriptors
    self.requestEvent = requestEvent
    self.memlockAccounting = memlockAccounting
    self.keep = keep
  }
}

/// How the reset after a lease went.
public enum LeaseReset: Sendable, Equatable {
  case done
  /// The device has no reset method (a group detached with `--allow-no-reset`).
  case impossible(String)
  case failed(String)

  /// The history's result and detail for it.
  var history: (result: String, detail: String) {
    switch self {
    case .done: ("reset", "reset after the lease")
    case .impossible(let why): ("no-reset", why)
    case .failed(let why): ("reset-failed", why)
    }
  }
}

/// Everything the broker asks of the kernel, so that tests and the load benchmark can run the
/// whole broker against a recording fake and the daemon against the host.
public protocol GrantSource: Sendable {
  /// Opens `devices` (endpoints of `group`) on `backend` (never `.auto` when called).
  func open(group: IOMMUGroupID, devices: [PCIAddress], backend: Backend) throws(BrokerError) -> OpenedGrant
  /// `.iommufd` when the devices have cdevs and the host has /dev/iommu, else `.legacy`.
  func resolve(_ backend: Backend, devices: [PCIAddress]) -> Backend
  /// Who has the groups' nodes open (the broker's own process excluded).
  func holders(of groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: [OpenHolder]]
  /// Resets the group after a lease.
  func reset(group: IOMMUGroupID) -> LeaseReset
  /// RLIMIT_MEMLOCK of `pid` in bytes, nil when unlimited.
  func memlockLimit(pid: Int) -> UInt64?
  /// The groups (with their devices) as the foundation assesses them now, for `list`.
  func assess(groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: GroupAssessment]
  /// Who `pid` is (with its start time) and its command name, for the lease.
  func identify(pid: Int) -> (identity: ProcessIdentity?, command: String)
  /// Ends a holder that did not release when revoked with force: exactly that process, or
  /// none (false) when it is gone or its pid now names another. `pidfd`, when the broker has
  /// one for it (the connection's SO_PEERPIDFD), is what the signal goes through.
  func terminate(_ process: ProcessIdentity, pidfd: Int32?) -> Bool
}

/// The host: the VFIO library opens, the manager resets, /proc tells holders and limits.
public struct LiveGrantSource: GrantSource {
  public let sysfs: Sysfs
  public let stateDirectory: String

  public init(sysfs: Sysfs, stateDirectory: String) {
    self.sysfs = sysfs
    self.stateDirectory = stateDirectory
  }

  var sysfsRoot: String { sysfs.path("/sys") }
  var devRoot: String { sysfs.path("/dev") }

  public func resolve(_ backend: Backend, devices: [PCIAddress]) -> Backend {
    guard backend == .auto else { return backend }
    let cdevs = devices.allSatisfy { Device.cdevPath(ofDevice: $0, sysfsRoot: sysfsRoot) != nil }
    return cdevs && sysfs.exists("/dev/iommu") ? .iommufd : .legacy
  }

  public func open(group: IOMMUGroupID, devices: [PCIAddress], backend: Backend) throws(BrokerError) -> OpenedGrant {
    do {
      return backend == .iommufd ? try openIOMMUFD(devices) : try openLegacy(group: group, devices)
    } catch let error as VFIOError {
      throw BrokerError(.openFailed, error.description, next: error.hint)
    } catch let error as BrokerError {
      throw error
    } catch {
      throw BrokerError(.openFailed, "\(error)")
    }
  }

  private func openLegacy(group number: IOMMUGroupID, _ devices: [PCIAddress]) throws -> OpenedGrant {
    let container = try Container(path: "\(devRoot)/vfio/vfio")
    let group = try Group(number: number, devRoot: "\(devRoot)/vfio", sysfsRoot: sysfsRoot)
    try group.attach(to: container)
    var list: [(GrantedDescriptor, Int32)] = [
      (GrantedDescriptor(kind: .container, iommu: container.iommuType.map(wireName)), container.fileDescriptor),
      (GrantedDescriptor(kind: .group, group: number), group.fileDescriptor),
    ]
    var keep: [AnyObject] = [container, group]
    let request = try EventFD()
    var requestRegistered = false
    for address in devices {
      let device = try group.openDevice(address.description)
      keep.append(device)
      list.append((GrantedDescriptor(kind: .device, group: number, address: address.description), device.fileDescriptor))
      // One eventfd for every device of the group: any of them asked back is the group asked back.
      if let info = try? device.irqInfo(.req), info.count > 0,
        (try? device.setIRQs(.req, .trigger(eventfds: [request.fileDescriptor]))) != nil
      {
        requestRegistered = true
      }
    }
    // The eventfd outlives the grant's other descriptors: a dup the broker owns.
    let relay = requestRegistered ? Descriptor(dup(request.fileDescriptor)) : nil
    return OpenedGrant(
      backend: .legacy, descriptors: list, requestEvent: relay, memlockAccounting: "process", keep: keep + [request])
  }

  private func openIOMMUFD(_ devices: [PCIAddress]) throws -> OpenedGrant {
    let iommufd = try IOMMUFD(path: "\(devRoot)/iommu")
    // Per-process accounting needs CAP_SYS_RESOURCE, which the broker has and its clients do
    // not; it must be set before any object exists in this iommufd.
    let perProcess = (try? iommufd.setProcessBasedMemlockAccounting(true)) != nil
    var list: [(GrantedDescriptor, Int32)] = [(GrantedDescriptor(kind: .iommufd), iommufd.fileDescriptor)]
    var keep: [AnyObject] = [iommufd]
    for address in devices {
      guard let cdev = Device.cdevPath(ofDevice: address, sysfsRoot: sysfsRoot) else {
        throw BrokerError(
          .openFailed, "\(address) has no VFIO cdev", next: "open it with backend legacy, or use a kernel with iommufd")
      }
      let path = devRoot + cdev.dropFirst("/dev".count)
      let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
      guard fd >= 0 else {
        throw BrokerError(.openFailed, "open \(cdev): \(String(cString: strerror(errno)))", next: "`vfioctl status` shows who holds it")
      }
      let owned = Descriptor(fd)
      try verifyCharacterDevice(fd, sysfsDev: "/sys/bus/pci/devices/\(address)/vfio-dev/\(cdev.split(separator: "/").last ?? "")/dev", what: cdev)
      keep.append(owned)
      list.append(
        (
          GrantedDescriptor(kind: .device, address: address.description, cdev: String(cdev.split(separator: "/").last ?? "")),
          fd
        ))
    }
    return OpenedGrant(
      backend: .iommufd, descriptors: list, requestEvent: nil, memlockAccounting: perProcess ? "process" : "user",
      keep: keep)
  }

  public func holders(of groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: [OpenHolder]] {
    OpenHolderScanner(sysfs: sysfs).holders(of: groups)
  }

  /// The descriptor is the kernel's node for the device: a character device whose number is the
  /// one sysfs gives it (`MAJOR:MINOR` in `dev`), whatever a path under /dev names now; a node
  /// planted or replaced there is never handed over.
  private func verifyCharacterDevice(_ fd: Int32, sysfsDev: String, what: String) throws(BrokerError) {
    var info = stat()
    guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFCHR, let text = sysfs.readString(sysfsDev),
      let number = DeviceNumber(text), number.rawValue == UInt64(info.st_rdev)
    else {
      throw BrokerError(
        .openFailed, "\(what) is not the kernel's node for the device (its device number is not the one sysfs gives)",
        next: "check /dev/vfio/devices: udev (or devtmpfs) makes these nodes")
    }
  }

  public func reset(group: IOMMUGroupID) -> LeaseReset {
    let manager = AssignmentManager(
      sysfs: sysfs, configuration: .init(stateDirectory: stateDirectory, command: "vfioctl serve (lease ended)"))
    do {
      _ = try manager.groups.reset(.group(group))
      return .done
    } catch .refused(_, let refusals) where refusals.allSatisfy({ $0.code == "no-reset" }) {
      return .impossible(refusals.map(\.message).joined(separator: "; "))
    } catch {
      return .failed(Broker.oneLine(error.description))
    }
  }

  public func memlockLimit(pid: Int) -> UInt64? {
    guard let limits = sysfs.readString("/proc/\(pid)/limits") else { return nil }
    for line in limits.split(separator: "\n") where line.hasPrefix("Max locked memory") {
      // "Max locked memory   8388608   8388608   bytes": the soft limit is the first number.
      let fields = line.dropFirst("Max locked memory".count).split(separator: " ")
      return fields.first.flatMap { UInt64($0) }
    }
    return nil
  }

  public func assess(groups: [IOMMUGroupID: [PCIAddress]]) -> [IOMMUGroupID: GroupAssessment] {
    guard let inventory = try? HostInventory.read(sysfs) else { return [:] }
    let assessor = Assessor(inventory: inventory)
    var result: [IOMMUGroupID: GroupAssessment] = [:]
    for (group, devices) in groups {
      let assessment = assessor.assess(group: group)
      result[group] = GroupAssessment(
        verdict: assessment.verdict.rawValue, reasons: assessment.reasons.map(\.message),
        backends: [Backend.legacy, .iommufd].filter { resolve($0, devices: devices) == $0 }.map(\.rawValue))
    }
    return result
  }

  public func identify(pid: Int) -> (identity: ProcessIdentity?, command: String) {
    let command = sysfs.readString("/proc/\(pid)/comm").map { String($0.prefix(64)) } ?? "?"
    return (ProcessIdentity.current(pid: pid, sysfs: sysfs), command)
  }

  public func terminate(_ process: ProcessIdentity, pidfd: Int32?) -> Bool {
    if let pidfd { return cvfio_pidfd_send_signal(pidfd, SIGKILL) == 0 }
    return process.signal(SIGKILL, sysfs: sysfs)
  }
}

/// A device number as sysfs writes it (`MAJOR:MINOR` in a device's `dev`), encoded as glibc's
/// `makedev` encodes `st_rdev`.
struct DeviceNumber: Equatable {
  let major: UInt64
  let minor: UInt64

  init?(_ text: String) {
    let parts = text.split(separator: ":")
    guard parts.count == 2, let major = UInt64(parts[0]), let minor = UInt64(parts[1]) else { return nil }
    self.major = major
    self.minor = minor
  }

  var rawValue: UInt64 {
    (major & 0xffff_f000) << 32 | (major & 0x0000_0fff) << 8 | (minor & 0xffff_ff00) << 12 | (minor & 0x0000_00ff)
  }
}
