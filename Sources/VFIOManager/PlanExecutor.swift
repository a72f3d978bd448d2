import Foundation
import PCI
import VFIOHost
import VFIOPolicy

/// Performs one `PlanStep` through the `HostKernel` seam and reads sysfs back to check that
/// the kernel did what the step promised.
struct PlanExecutor: Sendable {
  let sysfs: Sysfs
  let host: any HostKernel
  /// A probe can finish a little after the write returns (asynchronous probing); the driver
  /// link is polled this long before the step counts as failed.
  var settleTime: Double = 5

  static func devicePath(_ address: PCIAddress) -> String { "/sys/bus/pci/devices/\(address)" }

  /// The device's driver and driver_override now; nil when the device is gone.
  func binding(of address: PCIAddress) -> DriverBinding? { DriverBinding.current(of: address, sysfs: sysfs) }

  func perform(_ step: PlanStep) throws(HostChangeError) {
    let dev = step.device?.description ?? ""
    let path = step.device.map(Self.devicePath) ?? ""
    switch step.action {
    case .keep, .reset: return
    case .loadModule: try host.loadModule(step.module ?? "vfio-pci")
    case .unbind: try host.write(dev, to: path + "/driver/unbind")
    case .setDriverOverride: try host.write(step.driver ?? "", to: path + "/driver_override")
    case .clearDriverOverride: try host.write("", to: path + "/driver_override")
    case .probe: try host.write(dev, to: "/sys/bus/pci/drivers_probe")
    case .bind: try host.write(dev, to: "/sys/bus/pci/drivers/\(step.driver ?? "")/bind")
    case .resetNow:
      if let affects = step.affects, affects.count > 1 {
        try host.busReset(affects)
      } else {
        try resetFunction(path, method: step.method)
      }
    }
  }

  /// The kernel's `reset` attribute uses the first method of `reset_method`; another method is
  /// selected for this one reset and the previous list written back afterwards.
  private func resetFunction(_ path: String, method: ResetMethod?) throws(HostChangeError) {
    let methods = sysfs.readString(path + "/reset_method")
    guard let method, let methods, methods.split(separator: " ").first.map(String.init) != method.rawValue else {
      try host.write("1", to: path + "/reset")
      return
    }
    try host.write(method.rawValue, to: path + "/reset_method")
    var failure: HostChangeError?
    do { try host.write("1", to: path + "/reset") } catch { failure = error }
    // Put the kernel's list back whether or not the reset worked; a failure to do so is said.
    try host.write(methods, to: path + "/reset_method")
    if let failure { throw failure }
  }

  func verify(_ step: PlanStep) throws(HostChangeError) {
    guard let device = step.device else {
      if step.action == .loadModule, sysfs.directory("/sys/bus/pci/drivers/\(step.module ?? "")") == nil {
        throw HostChangeError("verify \(step)", detail: "/sys/bus/pci/drivers/\(step.module ?? "") did not appear")
      }
      return
    }
    let deadline = Date().addingTimeInterval(settleTime)
    while true {
      guard let now = binding(of: device) else {
        throw HostChangeError("verify \(step)", detail: "\(device) is gone from /sys/bus/pci/devices")
      }
      guard let problem = mismatch(step, now) else { return }
      if Date() >= deadline { throw HostChangeError("verify \(step)", detail: problem) }
      usleep(20_000)
    }
  }

  /// What sysfs shows that the step did not promise; nil when it matches.
  private func mismatch(_ step: PlanStep, _ now: DriverBinding) -> String? {
    let driverNow = now.driver ?? "no driver"
    switch step.action {
    case .unbind:
      return now.driver.map { "its driver link still names \($0)" }
    case .setDriverOverride:
      return now.driverOverride == step.driver ? nil : "driver_override reads \(now.driverOverride ?? "(null)")"
    case .clearDriverOverride:
      return now.driverOverride.map { "driver_override still reads \($0)" }
    case .probe, .bind, .keep:
      guard let wanted = step.driver else { return nil }
      return now.driver == wanted ? nil : "it is on \(driverNow), not \(wanted)"
    case .loadModule, .reset, .resetNow:
      return nil
    }
  }
}

extension DriverBinding {
  /// What sysfs shows `address` bound to now; nil when the device is gone.
  public static func current(of address: PCIAddress, sysfs: Sysfs) -> DriverBinding? {
    let path = PlanExecutor.devicePath(address)
    var info = stat()
    guard stat(sysfs.path(path), &info) == 0 else { return nil }
    let override = sysfs.readString(path + "/driver_override").flatMap { $0 == "(null)" ? nil : $0 }
    return DriverBinding(driver: sysfs.linkName(path + "/driver"), driverOverride: override)
  }
}
