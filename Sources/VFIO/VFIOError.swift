import PCI
import SystemPackage

/// Every failure of this library: what failed, the errno and request or path behind it, and
/// what to do next.
public struct VFIOError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The kind of failure, for callers that branch on it.
  public enum Code: Sendable, Equatable {
    /// A system call failed; `errno` says how.
    case syscall
    /// The IOMMU group has devices not bound to vfio-pci (or pci-stub); they are listed.
    case groupNotViable(group: IOMMUGroupID, blockers: [String])
    /// The kernel lacks an extension, backend or capability this call needs.
    case unsupported
    /// A capability chain points outside the buffer or loops.
    case malformedCapabilityChain
    /// An IOVA or length is not a multiple of the IOMMU's minimum page size.
    case misaligned
    /// An IOVA range is not inside the ranges the IOMMU reports.
    case outsideIOVARanges
    /// An IOVA range overlaps an existing mapping.
    case overlap
    /// No free IOVA range is large enough.
    case iovaExhausted
    /// The IOMMU's limit on the number of DMA mappings is reached.
    case dmaEntryLimit
    /// RLIMIT_MEMLOCK does not allow pinning more memory.
    case memlockLimit
    /// A caller-supplied value is out of range.
    case invalidArgument
    /// Nothing happened before the deadline.
    case timeout
    /// A device, group or file does not exist.
    case notFound
    /// Fewer bytes than requested were transferred.
    case shortTransfer
  }

  public var code: Code
  /// The errno of the failed system call, if one failed.
  public var errno: Errno?
  /// The request name (`VFIO_IOMMU_MAP_DMA`) or system call (`open`) that failed.
  public var operation: String
  /// The file the call was made on, when known.
  public var path: String?
  /// What happened.
  public var message: String
  /// What to do next.
  public var hint: String?

  public init(
    _ code: Code, errno: Errno? = nil, operation: String, path: String? = nil, message: String,
    hint: String? = nil
  ) {
    self.code = code
    self.errno = errno
    self.operation = operation
    self.path = path
    self.message = message
    self.hint = hint
  }

  /// The symbolic errno ("EBUSY"), if a system call failed.
  public var errnoName: String? { errno.map(VFIO.errnoName) }

  public var description: String {
    let place = path.map { "\(operation) on \($0)" } ?? operation
    var text: String
    if code == .syscall {
      text = "\(place) failed: \(message)"
      if let name = errnoName { text += " (\(name))" }
    } else {
      text = "\(message) (\(place)\(errnoName.map { ", \($0)" } ?? ""))"
    }
    if let hint { text += "; \(hint)" }
    return text
  }
}

/// The symbolic name of an errno ("EBUSY"), falling back to its number.
func errnoName(_ errno: Errno) -> String {
  let names: [Int32: String] = [
    1: "EPERM", 2: "ENOENT", 4: "EINTR", 5: "EIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM",
    13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 22: "EINVAL",
    25: "ENOTTY", 28: "ENOSPC", 34: "ERANGE", 75: "EOVERFLOW", 90: "EMSGSIZE", 95: "EOPNOTSUPP",
    98: "EADDRINUSE", 7: "E2BIG", 110: "ETIMEDOUT",
  ]
  return names[errno.rawValue] ?? "errno \(errno.rawValue)"
}

extension VFIOError {
  /// A failed system call, with the generic advice for its request and errno. Call sites with
  /// more context (a group number, the memlock limit) build their own hint instead.
  static func syscall(
    _ errno: Errno, operation: String, path: String?, message: String? = nil, hint: String? = nil
  ) -> VFIOError {
    VFIOError(
      .syscall, errno: errno, operation: operation, path: path,
      message: message ?? errno.description,
      hint: hint ?? defaultHint(operation: operation, errno: errno, path: path))
  }

  static func defaultHint(operation: String, errno: Errno, path: String?) -> String? {
    switch (operation, errno) {
    case ("open", .noSuchFileOrDirectory) where path == "/dev/vfio/vfio":
      return "load the vfio module (`modprobe vfio-pci`)"
    case ("open", .noSuchFileOrDirectory) where path == "/dev/iommu":
      return
        "this kernel has no iommufd (CONFIG_IOMMUFD); use the legacy backend (`--backend legacy`)"
    case ("open", .noSuchFileOrDirectory) where path?.hasPrefix("/dev/vfio/devices/") == true:
      return
        "the device is not bound to vfio-pci or the kernel lacks VFIO_DEVICE_CDEV; bind it or use the legacy backend"
    case ("open", .noSuchFileOrDirectory) where path?.hasPrefix("/dev/vfio/") == true:
      let group = path.map { String($0.dropFirst("/dev/vfio/".count)) } ?? "N"
      return "the group's devices are not bound to vfio-pci; run `vfioctl detach \(group)`"
    case ("open", .resourceBusy):
      return "another process (a VM or driver) holds it open; only one opener is allowed"
    case ("open", .permissionDenied), ("open", .notPermitted):
      return "run as root or give this user the device node (chown)"
    case ("VFIO_SET_IOMMU", .operationNotSupportedByDevice):
      return
        "no IOMMU driver accepted the container; load vfio_iommu_type1 (`modprobe vfio_iommu_type1`) and check that the IOMMU is enabled (intel_iommu=on)"
    case ("VFIO_SET_IOMMU", .notPermitted):
      // type1 refuses groups whose MSIs the IOMMU cannot isolate (no interrupt remapping).
      return
        "the IOMMU does not isolate MSIs (no interrupt remapping, e.g. virtio-iommu or intremap=off); enable interrupt remapping, or accept the risk with `echo Y > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts`"
    case ("VFIO_EEH_PE_OP", .operationNotSupportedByDevice):
      return "EEH is not available for this partitionable endpoint; check supports(.eeh) first"
    case ("VFIO_DEVICE_RESET", .invalidArgument):
      return
        "the device has no function-level reset method; use a hot reset of its bus (`hotReset`)"
    case ("VFIO_DEVICE_PCI_HOT_RESET", .invalidArgument),
      ("VFIO_DEVICE_PCI_HOT_RESET", .notPermitted):
      return
        "a bus reset needs proof of ownership of every affected device: bind all of them to vfio-pci and pass the fds of all their groups"
    case ("VFIO_GROUP_GET_DEVICE_FD", .invalidArgument),
      ("VFIO_GROUP_GET_DEVICE_FD", .operationNotSupportedByDevice):
      return
        "the device is not in this group or not bound to vfio-pci; check /sys/bus/pci/devices/BDF/iommu_group"
    case ("VFIO_DEVICE_BIND_IOMMUFD", .resourceBusy):
      return "the device is already bound, or opened through its group; close the other user"
    case (_, .operationNotSupportedByDevice) where operation.hasPrefix("VFIO_DEVICE"):
      return "the device was removed or unbound from vfio-pci"
    case (_, .inappropriateIOCTLForDevice):
      return "the running kernel does not implement \(operation)"
    default:
      return nil
    }
  }
}
