import PCI
import VFIOHost

/// What a function is bound to: its driver and its `driver_override`, the two facts detach
/// changes and restore must put back exactly.
public struct DriverBinding: Sendable, Codable, Equatable, CustomStringConvertible {
  public var driver: String?
  /// nil when unset (sysfs shows "(null)"); an empty string is never stored.
  public var driverOverride: String?

  public init(driver: String?, driverOverride: String?) {
    self.driver = driver
    self.driverOverride = driverOverride.flatMap { $0.isEmpty ? nil : $0 }
  }

  public init(_ device: PCIDevice) { self.init(driver: device.driver, driverOverride: device.driverOverride) }

  /// Bound to a VFIO driver and kept there by a driver_override naming it: a detached device.
  public static func assigned(to driver: String) -> DriverBinding { DriverBinding(driver: driver, driverOverride: driver) }

  public var description: String {
    (driver ?? "no driver") + (driverOverride.map { " (driver_override \($0))" } ?? "")
  }
}

/// The steps that move a group from the host to a VFIO driver, and the steps that give it back.
/// A plan is data: `explain` prints it, `detach --dry-run` prints the same list, the assignment
/// manager records it in its ledger, executes it step by step and, to undo, runs `restore`.
public struct AssignmentPlan: Sendable, Codable, Equatable {
  public let group: IOMMUGroupID
  /// Executed by `vfioctl detach`, in order: bind every endpoint to the VFIO driver, then
  /// reset it (the previous user may have left it in any state).
  public let detach: [PlanStep]
  /// What vfio-pci does at open and release of each device (not executed by us).
  public let resets: [PlanStep]
  /// Executed by `vfioctl attach`: reset, then each endpoint back to exactly the driver and
  /// `driver_override` it had.
  public let restore: [PlanStep]

  /// - Parameters:
  ///   - originals: what each endpoint was bound to before it was detached (the ledger's
  ///     record); endpoints not in it are taken as they are now.
  ///   - driver: the VFIO driver to detach to (`vfio-pci`, or `pci-stub` to only park them).
  public init(
    group: IOMMUGroupID, members: [Assessment.Member], inventory: HostInventory,
    originals: [PCIAddress: DriverBinding] = [:], driver target: String = "vfio-pci"
  ) {
    self.group = group
    var detach: [PlanStep] = []
    var restore: [PlanStep] = []
    let endpoints = members.filter { $0.role == .endpoint }
    let current = Dictionary(
      endpoints.map { member in
        (member.address, inventory.device(member.address).map(DriverBinding.init) ?? DriverBinding(driver: member.driver, driverOverride: nil))
      }, uniquingKeysWith: { first, _ in first })
    let assigned = DriverBinding.assigned(to: target)
    let needsLoading = target == "vfio-pci" && !inventory.vfio.vfioPCIDriver
    if needsLoading && endpoints.contains(where: { current[$0.address]?.driver != target }) {
      detach.append(PlanStep(action: .loadModule, module: target))
    }
    for member in endpoints {
      let now = current[member.address] ?? assigned
      let steps = PlanStep.rebinding(member.address, from: now, to: assigned)
      detach += steps.isEmpty ? [PlanStep(action: .keep, device: member.address, driver: target)] : steps
      // A detached group's restore starts from what sysfs shows (normally the VFIO driver, but
      // someone may have rebound a member since); a host group's, from after the detach.
      let original = originals[member.address] ?? now
      restore += PlanStep.rebinding(member.address, from: originals.isEmpty ? assigned : now, to: original)
    }
    let resetsNow = Self.resetSteps(endpoints, now: true, through: target)
    self.detach = detach + resetsNow
    self.resets = Self.resetSteps(endpoints, now: false, through: target)
    // Reset while still on the VFIO driver, which a bus reset of several functions needs.
    self.restore = restore.isEmpty && originals.isEmpty ? [] : resetsNow + restore
  }

  /// One reset per function, and one bus reset for all the functions a bus reset hits.
  static func resetSteps(_ endpoints: [Assessment.Member], now: Bool, through driver: String) -> [PlanStep] {
    var steps: [PlanStep] = []
    var busResets = Set<[PCIAddress]>()
    for member in endpoints {
      guard let reset = member.reset, let method = reset.method else { continue }
      if method.affectsOtherFunctions && !busResets.insert(reset.affects).inserted { continue }
      steps.append(
        PlanStep(
          action: now ? .resetNow : .reset, device: member.address, driver: now ? driver : nil, method: method,
          affects: reset.affects))
    }
    return steps
  }
}

/// One action on the host, with the sysfs writes that carry it out.
public struct PlanStep: Sendable, Codable, Equatable, CustomStringConvertible {
  public enum Action: String, Sendable, Codable {
    case loadModule = "load-module"
    /// Already bound to a VFIO driver; nothing to do.
    case keep
    case unbind
    case setDriverOverride = "set-driver-override"
    case clearDriverOverride = "clear-driver-override"
    /// Ask the kernel to probe drivers for the device (honouring `driver_override`).
    case probe
    case bind
    /// What vfio-pci does when the device is opened and released (described, not executed).
    case reset
    /// Reset now: the kernel's `reset` attribute for one function, or one
    /// VFIO_DEVICE_PCI_HOT_RESET for every function a bus reset hits.
    case resetNow = "reset-now"
  }

  public let action: Action
  public let device: PCIAddress?
  public let driver: String?
  public let module: String?
  public let method: ResetMethod?
  /// For a reset: every function it hits.
  public let affects: [PCIAddress]?

  public init(
    action: Action, device: PCIAddress? = nil, driver: String? = nil, module: String? = nil,
    method: ResetMethod? = nil, affects: [PCIAddress]? = nil
  ) {
    self.action = action
    self.device = device
    self.driver = driver
    self.module = module
    self.method = method
    self.affects = affects
  }

  /// The file writes (or command) that perform the step, as a shell user would type them.
  public var commands: [String] {
    let dev = device.map(\.description) ?? ""
    switch action {
    case .loadModule: return ["modprobe \(module ?? "")"]
    case .keep: return []
    case .unbind: return ["echo \(dev) > /sys/bus/pci/devices/\(dev)/driver/unbind"]
    case .setDriverOverride: return ["echo \(driver ?? "") > /sys/bus/pci/devices/\(dev)/driver_override"]
    case .clearDriverOverride: return ["echo > /sys/bus/pci/devices/\(dev)/driver_override"]
    case .probe: return ["echo \(dev) > /sys/bus/pci/drivers_probe"]
    case .bind: return ["echo \(dev) > /sys/bus/pci/drivers/\(driver ?? "")/bind"]
    case .reset: return []
    case .resetNow:
      guard let affects, affects.count > 1 else { return ["echo 1 > /sys/bus/pci/devices/\(dev)/reset"] }
      return []
    }
  }

  /// The steps that take `device` from one binding to another: unbind, set or clear
  /// `driver_override`, then bind. A driver_override naming the driver binds it through
  /// `drivers_probe` (so the kernel's own matching is honoured); with no override the driver
  /// is bound by name, and an override naming something else is written last, because the
  /// kernel refuses to bind any other driver while it is set. Empty when nothing changes.
  public static func rebinding(_ device: PCIAddress, from now: DriverBinding, to wanted: DriverBinding) -> [PlanStep] {
    var steps: [PlanStep] = []
    func setOverride(_ value: String?) {
      steps.append(
        value.map { PlanStep(action: .setDriverOverride, device: device, driver: $0) }
          ?? PlanStep(action: .clearDriverOverride, device: device))
    }
    guard now.driver != wanted.driver else {
      if now.driverOverride != wanted.driverOverride { setOverride(wanted.driverOverride) }
      return steps
    }
    if let driver = now.driver { steps.append(PlanStep(action: .unbind, device: device, driver: driver)) }
    guard let driver = wanted.driver else {
      if now.driverOverride != wanted.driverOverride { setOverride(wanted.driverOverride) }
      return steps
    }
    if wanted.driverOverride == driver {
      if now.driverOverride != driver { setOverride(driver) }
      steps.append(PlanStep(action: .probe, device: device, driver: driver))
      return steps
    }
    if now.driverOverride != nil { setOverride(nil) }
    steps.append(PlanStep(action: .bind, device: device, driver: driver))
    if let other = wanted.driverOverride { setOverride(other) }
    return steps
  }

  public var description: String {
    let dev = device.map(\.description) ?? ""
    switch action {
    case .loadModule: return "load kernel module \(module ?? "")"
    case .keep: return "keep \(dev) on \(driver ?? "")"
    case .unbind: return "unbind \(dev) from \(driver ?? "its driver")"
    case .setDriverOverride: return "set driver_override of \(dev) to \(driver ?? "")"
    case .clearDriverOverride: return "clear driver_override of \(dev)"
    case .probe:
      return driver.map { "bind \(dev) to \($0) (drivers_probe)" } ?? "let the kernel probe a driver for \(dev)"
    case .bind: return "bind \(dev) to \(driver ?? "")"
    case .reset:
      if method?.affectsOtherFunctions == true, let affects, affects.count > 1 {
        return
          "reset \(list(affects)) together by a \(method?.rawValue ?? "bus") reset (VFIO_DEVICE_PCI_HOT_RESET) when opened and released"
      }
      return "reset \(dev) by \(method?.rawValue ?? "?") when opened and released"
    case .resetNow:
      if let affects, affects.count > 1 {
        return "reset \(list(affects)) now, together, by one \(method?.rawValue ?? "bus") reset (VFIO_DEVICE_PCI_HOT_RESET)"
      }
      return "reset \(dev) now by \(method?.rawValue ?? "its reset method")"
    }
  }
}
