import ArgumentParser
import Foundation
import PCI

/// Builds a large sysfs tree by replicating a captured SR-IOV root port, PF and VF: `ports`
/// root ports on bus 0, each with one PF whose `vfs` VFs follow it in ARI numbering, every
/// function in its own IOMMU group (what the kernel does with ACS-capable root ports).
///
/// Only the layout is synthetic: every attribute file comes from the captured functions, with
/// the SR-IOV counts patched to the number of VFs generated.
struct SyntheticTree {
  let template: String
  let rootPort: String
  let physicalFunction: String
  let virtualFunction: String
  let ports: Int
  let vfs: Int

  private let fm = FileManager.default

  func write(to root: String) throws -> Int {
    precondition(ports <= 248 && vfs <= 255, "bus numbers and ARI functions run out")
    try? fm.removeItem(atPath: root)
    let rootPortFiles = try files(of: rootPort)
    let pfFiles = try files(of: physicalFunction)
    let vfFiles = try files(of: virtualFunction)
    var group = 0
    var count = 0
    for driver in ["pcieport", "nvme", "vfio-pci"] { try mkdir(root + "/sys/bus/pci/drivers/" + driver) }
    for i in 0..<ports {
      let port = String(format: "0000:00:%02x.%x", 1 + i / 8, i % 8)
      let portPath = "/sys/devices/pci0000:00/\(port)"
      try device(root, portPath, port, rootPortFiles, driver: "pcieport", group: group)
      group += 1
      let bus = i + 1
      let pf = String(format: "0000:%02x:00.0", bus)
      let pfPath = "\(portPath)/\(pf)"
      var pfPatched = pfFiles
      pfPatched["sriov_totalvfs"] = Data("\(vfs)\n".utf8)
      pfPatched["sriov_numvfs"] = Data("\(vfs)\n".utf8)
      pfPatched["config"] = patchSRIOVCounts(pfFiles["config"] ?? Data(), vfs: vfs)
      try device(root, pfPath, pf, pfPatched, driver: "nvme", group: group)
      group += 1
      for j in 1...max(vfs, 1) where vfs > 0 {
        let vf = String(format: "0000:%02x:%02x.%x", bus, j / 8, j % 8)
        let vfPath = "\(portPath)/\(vf)"
        try device(root, vfPath, vf, vfFiles, driver: "vfio-pci", group: group)
        try link(root + pfPath + "/virtfn\(j - 1)", to: "../\(vf)")
        try link(root + vfPath + "/physfn", to: "../\(pf)")
        group += 1
      }
      count += 2 + vfs
    }
    // The host's view as a capture has it (its routes and mounts), so that readers that refuse
    // to publish without one (the kubelet plugins' --print-slices) run here too. No network
    // interface: none of the synthetic functions is an uplink.
    for path in [
      "/proc/cmdline", "/proc/self/mountinfo", "/proc/swaps", "/proc/sys/kernel/osrelease", "/proc/interrupts",
      "/proc/net/route", "/proc/net/if_inet6", "/proc/net/fib_trie", "/proc/net/ipv6_route",
    ] {
      if let data = fm.contents(atPath: template + path) { try put(root + path, data) }
    }
    try mkdir(root + "/proc/net")
    try mkdir(root + "/sys/class/net")
    try mkdir(root + "/sys/devices/virtual/iommu/dmar0")
    try link(root + "/sys/class/iommu/dmar0", to: "../../devices/virtual/iommu/dmar0")
    return count
  }

  private func device(
    _ root: String, _ path: String, _ name: String, _ files: [String: Data], driver: String, group: Int
  ) throws {
    try mkdir(root + path)
    for (file, data) in files { try put(root + path + "/" + file, data) }
    let up = String(repeating: "../", count: path.split(separator: "/").count - 1)
    try link(root + path + "/driver", to: up + "bus/pci/drivers/\(driver)")
    try link(root + path + "/iommu_group", to: up + "kernel/iommu_groups/\(group)")
    try link(root + "/sys/bus/pci/devices/\(name)", to: "../../.." + path.dropFirst("/sys".count))
    try mkdir(root + "/sys/kernel/iommu_groups/\(group)/devices")
    try put(root + "/sys/kernel/iommu_groups/\(group)/type", Data("DMA\n".utf8))
    try link(
      root + "/sys/kernel/iommu_groups/\(group)/devices/\(name)", to: "../../../../.." + path.dropFirst("/sys".count))
  }

  /// Regular files of a captured device directory (links and subdirectories are rebuilt).
  private func files(of device: String) throws -> [String: Data] {
    let dir = template + device
    var result: [String: Data] = [:]
    for name in try fm.contentsOfDirectory(atPath: dir) {
      var isDir: ObjCBool = false
      let path = dir + "/" + name
      guard (try? fm.destinationOfSymbolicLink(atPath: path)) == nil, fm.fileExists(atPath: path, isDirectory: &isDir),
        !isDir.boolValue,
        name != ".vfioctl-keep"
      else { continue }
      result[name] = fm.contents(atPath: path)
    }
    guard result["config"] != nil else { throw BenchError("\(dir) has no config file: not a captured PCI function") }
    return result
  }

  /// Sets TotalVFs, InitialVFs and NumVFs in the SR-IOV extended capability.
  private func patchSRIOVCounts(_ config: Data, vfs: Int) -> Data {
    var bytes = [UInt8](config)
    var offset = PCIConfigRegister.extendedCapabilities
    for _ in 0..<64 where offset + SRIOVRegister.numVFs + 2 <= bytes.count {
      let header =
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(
          bytes[offset + 3]) << 24
      if ExtendedCapabilityHeader.id(header) == ExtendedCapabilityID.sriov.rawValue {
        for field in [SRIOVRegister.initialVFs, SRIOVRegister.totalVFs, SRIOVRegister.numVFs] {
          bytes[offset + field] = UInt8(vfs & 0xFF)
          bytes[offset + field + 1] = UInt8(vfs >> 8)
        }
        break
      }
      offset = ExtendedCapabilityHeader.next(header)
      if offset == 0 { break }
    }
    return Data(bytes)
  }

  private func mkdir(_ path: String) throws { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) }

  private func put(_ path: String, _ data: Data) throws {
    try mkdir((path as NSString).deletingLastPathComponent)
    guard fm.createFile(atPath: path, contents: data) else { throw BenchError("cannot write \(path)") }
  }

  private func link(_ path: String, to target: String) throws {
    try mkdir((path as NSString).deletingLastPathComponent)
    try fm.createSymbolicLink(atPath: path, withDestinationPath: target)
  }
}

struct BenchError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// Where the templates come from unless told otherwise: the q35-sriov capture.
enum Templates {
  static let fixture = "Tests/Fixtures/q35-sriov"
  static let rootPort = "/sys/devices/pci0000:00/0000:00:02.0"
  static let physicalFunction = "/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0"
  static let virtualFunction = "/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.2"
}

struct GenerateCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "generate", abstract: "Write a synthetic tree of root ports, PFs and VFs (replicated from a capture).")

  @Argument(help: "Directory to (re)create.") var directory: String
  @Option(help: "Root ports, each with one PF.") var ports = 64
  @Option(help: "VFs per PF.") var vfs = 63
  @Option(help: "Capture holding the template functions.") var template = Templates.fixture

  func run() throws {
    let count = try SyntheticTree(
      template: template, rootPort: Templates.rootPort, physicalFunction: Templates.physicalFunction,
      virtualFunction: Templates.virtualFunction, ports: ports, vfs: vfs
    ).write(to: directory)
    print("wrote \(count) PFs and VFs plus \(ports) root ports (\(count + ports) functions) into \(directory)")
  }
}
