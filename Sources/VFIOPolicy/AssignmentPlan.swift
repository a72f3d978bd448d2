import VFIOHost

/// The steps that move a group from the host to vfio-pci, and the steps that give it back.
/// A plan is data: `explain` prints it, and the assignment manager executes the same list.
public struct AssignmentPlan: Sendable, Codable, Equatable {
  public let group: Int
  public let detach: [PlanStep]
  /// What vfio-pci does at open and release of each device.
  public let resets: [PlanStep]
  /// Undoing `detach`: each endpoint back to the driver it had.
  public let restore: [PlanStep]

  init(group: Int, members: [Assessment.Member], inventory: HostInventory) {
    self.group = group
    var detach: [PlanStep] = []
    var resets: [PlanStep] = []
    var restore: [PlanStep] = []
    let endpoints = members.filter { $0.role == .endpoint }
    let needsBinding = endpoints.contains { member in member.driver.map { !PCIDevice.isVFIODriver($0) } ?? true }
    if needsBinding && !inventory.vfio.vfioPCIDriver {
      detach.append(PlanStep(action: .loadModule, module: "vfio-pci"))
    }
    for member in endpoints {
      let device = member.address
      if let driver = member.driver, PCIDevice.isVFIODriver(driver) {
        detach.append(PlanStep(action: .keep, device: device, driver: driver))
        continue
      }
      if let driver = member.driver {
        detach.append(PlanStep(action: .unbind, device: device, driver: driver))
      }
      detach.append(PlanStep(action: .setDriverOverride, device: device, driver: "vfio-pci"))
      detach.append(PlanStep(action: .probe, device: device, driver: "vfio-pci"))
      restore.append(PlanStep(action: .unbind, device: device, driver: "vfio-pci"))
      restore.append(PlanStep(action: .clearDriverOverride, device: device))
      restore.append(
        member.driver.map { PlanStep(action: .bind, device: device, driver: $0) }
          ?? PlanStep(action: .probe, device: device))
    }
    var busResets = Set<[PCIAddress]>()
    for member in endpoints {
      guard let reset = member.reset, let method = reset.method else { continue }
      // One bus reset serves every function on the bus: list it once.
      if method.affectsOtherFunctions && !busResets.insert(reset.affects).inserted { continue }
      resets.append(PlanStep(action: .reset, device: member.address, method: method, affects: reset.affects))
    }
    self.detach = detach
    self.resets = resets
    self.restore = restore
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
    case reset
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
    }
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
    }
  }
}
