import PCI

/// Finds what the host is using below each PCI function: disks and their mounts, swap and
/// holders, network interfaces, consoles. Reads only class directories and procfs, never the
/// devices themselves.
struct HostUseScanner {
  let sysfs: Sysfs
  var view: HostView = .caller
  /// The functions whose uses are wanted; nil for all. Others' disks and interfaces are
  /// passed over after the one link that names their function.
  var owners: Set<PCIAddress>? = nil

  private func wanted(_ owner: PCIAddress) -> Bool { owners?.contains(owner) ?? true }

  func scan() -> [PCIAddress: [HostUse]] {
    var uses: [PCIAddress: [HostUse]] = [:]
    let mounts = MountTable(sysfs: sysfs, view: view)
    for (address, use) in blockUses(mounts: mounts) + networkUses() + displayUses() {
      uses[address, default: []].append(use)
    }
    return uses
  }

  // MARK: Block devices

  private func blockUses(mounts: MountTable) -> [(PCIAddress, HostUse)] {
    var result: [(PCIAddress, HostUse)] = []
    for disk in sysfs.list("/sys/block") {
      guard let target = sysfs.readLink("/sys/block/\(disk)"),
        let owner = owningFunction(resolve(link: target, in: "/sys/block")), wanted(owner)
      else { continue }
      let diskPath = "/sys/block/\(disk)"
      let partitions = sysfs.list(diskPath).filter { $0.hasPrefix(disk) && sysfs.exists("\(diskPath)/\($0)/partition") }
      var found: [HostUse] = []
      var budget = HolderBudget()
      for (name, path) in [(disk, diskPath)] + partitions.map({ ($0, "\(diskPath)/\($0)") }) {
        found += uses(ofBlock: name, at: path, mounts: mounts, depth: 0, budget: &budget)
      }
      if found.isEmpty {
        found.append(
          HostUse(kind: .disk, subject: disk, detail: "is a disk the host sees (not mounted, not swap)", active: false))
      }
      result += found.map { (owner, $0) }
    }
    return result
  }

  /// Bounds the holder walk of one disk: holders may name each other in a cycle or fan out,
  /// and a walk of depth 4 over a wide fan-out is exponential.
  struct HolderBudget {
    var visits = 256
    /// Holders on the current chain, so that a cycle ends.
    var chain: Set<String> = []
  }

  private func uses(
    ofBlock name: String, at path: String, mounts: MountTable, depth: Int, budget: inout HolderBudget
  ) -> [HostUse] {
    var found: [HostUse] = []
    if let dev = sysfs.readString("\(path)/dev") {
      for point in mounts.mountPoints(device: dev, name: name) {
        found.append(HostUse(kind: .mount, subject: name, detail: "is mounted at \(point)", active: true))
      }
    }
    if mounts.swaps.contains(name) {
      found.append(HostUse(kind: .swap, subject: name, detail: "is in use as swap", active: true))
    }
    // Holders (device mapper, md) stack further block devices on top; follow a few levels.
    guard depth < 4 else { return found }
    for holder in sysfs.list("\(path)/holders") {
      guard budget.visits > 0, holder != name, budget.chain.insert(holder).inserted else { continue }
      budget.visits -= 1
      let holderPath = "/sys/block/\(holder)"
      let label = sysfs.readString("\(holderPath)/dm/name").map { "\(holder) (\($0))" } ?? holder
      let above = uses(ofBlock: holder, at: holderPath, mounts: mounts, depth: depth + 1, budget: &budget)
      budget.chain.remove(holder)
      let detail =
        above.isEmpty
        ? "is held by \(label)" : "is held by \(label), which " + above.map(\.detail).joined(separator: ", ")
      found.append(HostUse(kind: .holder, subject: name, detail: detail, active: true))
    }
    return found
  }

  // MARK: Network

  private func networkUses() -> [(PCIAddress, HostUse)] {
    let classNet = view.classNet
    let interfaces = sysfs.list(classNet)
    guard !interfaces.isEmpty else { return [] }
    let procNet = view.procNet
    // The routing tables are read once, and only when an interface of a wanted function is found.
    var facts: NetworkFacts?
    var result: [(PCIAddress, HostUse)] = []
    for interface in interfaces {
      guard let target = sysfs.readLink("\(classNet)/\(interface)"),
        let owner = owningFunction(resolve(link: target, in: classNet)), wanted(owner)
      else { continue }
      let net =
        facts
        ?? NetworkFacts(
          fibTrie: sysfs.readString(procNet + "/fib_trie"), route: sysfs.readString(procNet + "/route"),
          ifInet6: sysfs.readString(procNet + "/if_inet6"), ipv6Route: sysfs.readString(procNet + "/ipv6_route"))
      facts = net
      let flags = sysfs.readInteger("\(classNet)/\(interface)/flags") ?? 0
      let state = sysfs.readString("\(classNet)/\(interface)/operstate") ?? "unknown"
      let up = flags & 1 != 0  // IFF_UP
      let addresses = net.addresses[interface] ?? []
      let all = addresses + (net.linkLocal[interface] ?? [])
      let defaults = [("IPv4", net.ipv4Default), ("IPv6", net.ipv6Default)].filter { $0.1.contains(interface) }
        .map(\.0)
      var facts = [up ? (state == "up" ? "up" : "up (link \(state))") : "down"]
      if !all.isEmpty { facts.append("has \(all.count == 1 ? "address" : "addresses") " + all.joined(separator: ", ")) }
      if !defaults.isEmpty {
        facts.append(
          "carries the host's \(defaults.joined(separator: " and ")) default route\(defaults.count > 1 ? "s" : "")")
      } else if net.ipv4Routed.contains(interface) {
        facts.append("has IPv4 routes")
      }
      let carriesTraffic = !addresses.isEmpty || !defaults.isEmpty || net.ipv4Routed.contains(interface)
      result.append(
        (
          owner,
          HostUse(
            kind: .interface, subject: interface, detail: "is " + facts.joined(separator: ", "),
            active: up && carriesTraffic)
        ))
    }
    return result
  }

  // MARK: Display

  private func displayUses() -> [(PCIAddress, HostUse)] {
    // fbcon binds to every framebuffer once any vtconsole of its kind is bound.
    let fbconBound = sysfs.list("/sys/class/vtconsole").contains { con in
      (sysfs.readString("/sys/class/vtconsole/\(con)/name") ?? "").contains("frame buffer")
        && sysfs.readString("/sys/class/vtconsole/\(con)/bind") == "1"
    }
    var result: [(PCIAddress, HostUse)] = []
    for (classDir, prefix) in [("/sys/class/graphics", "fb"), ("/sys/class/drm", "card")] {
      for name in sysfs.list(classDir) where name.hasPrefix(prefix) && !name.contains("-") {
        guard let target = sysfs.readLink("\(classDir)/\(name)/device"),
          let owner = owningFunction(resolve(link: target, in: "\(classDir)/\(name)"))
            ?? owningFunction(resolve(link: sysfs.readLink("\(classDir)/\(name)") ?? "", in: classDir)),
          wanted(owner)
        else { continue }
        if prefix == "fb" && fbconBound {
          result.append(
            (
              owner,
              HostUse(kind: .console, subject: name, detail: "carries the host's text console (fbcon)", active: true)
            ))
        } else {
          result.append(
            (owner, HostUse(kind: .display, subject: name, detail: "is a display device of the host", active: false)))
        }
      }
    }
    return result
  }
}

/// The PCI function a sysfs path belongs to: its deepest `dddd:bb:dd.f` component.
func owningFunction(_ path: String) -> PCIAddress? {
  for component in path.split(separator: "/").reversed() where looksLikePCIAddress(component) {
    if let address = try? PCIAddress(parsing: String(component)) { return address }
  }
  return nil
}

/// A cheap shape test (`0000:00:1f.2`) before the full parse.
func looksLikePCIAddress<S: StringProtocol>(_ text: S) -> Bool {
  let utf8 = text.utf8
  guard utf8.count == 12 else { return false }
  let bytes = Array(utf8)
  return bytes[4] == UInt8(ascii: ":") && bytes[7] == UInt8(ascii: ":") && bytes[10] == UInt8(ascii: ".")
}

/// RFC 5952 text for an address from /proc/net/if_inet6 (32 hex digits): the longest run of
/// two or more zero groups becomes `::`.
func ipv6(_ hex32: String) -> String {
  let chars = Array(hex32)
  let groups = stride(from: 0, to: 32, by: 4).map { i -> String in
    let group = String(chars[i..<i + 4]).drop(while: { $0 == "0" })
    return group.isEmpty ? "0" : String(group)
  }
  var best = (start: -1, length: 0)
  var i = 0
  while i < groups.count {
    var j = i
    while j < groups.count, groups[j] == "0" { j += 1 }
    if j - i > best.length && j - i >= 2 { best = (i, j - i) }
    i = max(j, i + 1)
  }
  guard best.start >= 0 else { return groups.joined(separator: ":") }
  let head = groups[..<best.start].joined(separator: ":")
  let tail = groups[(best.start + best.length)...].joined(separator: ":")
  return head + "::" + tail
}

/// Mounts by device number (from mountinfo, which also covers `/dev/root`) and active swap.
struct MountTable {
  var byDevice: [String: [String]] = [:]
  var byName: [String: [String]] = [:]
  var swaps: Set<String> = []

  init(sysfs: Sysfs, view: HostView = .caller) {
    // mountinfo: id parent major:minor root mountpoint options... - fstype source superoptions
    if let text = sysfs.readString(view.mountinfo) {
      for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count > 4 else { continue }
        byDevice[String(f[2]), default: []].append(unescapeMountPath(String(f[4])))
        if let dash = f.firstIndex(of: "-"), dash + 2 < f.count {
          byName[lastComponent(String(f[dash + 2])), default: []].append(unescapeMountPath(String(f[4])))
        }
      }
    } else if let text = sysfs.readString("/proc/mounts") {
      for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count > 2, f[0].hasPrefix("/dev/") else { continue }
        byName[lastComponent(String(f[0])), default: []].append(unescapeMountPath(String(f[1])))
      }
    }
    for line in (sysfs.readString("/proc/swaps") ?? "").split(separator: "\n").dropFirst() {
      if let first = line.split(separator: " ").first, first.hasPrefix("/dev/") {
        swaps.insert(lastComponent(String(first)))
      }
    }
  }

  func mountPoints(device: String, name: String) -> [String] {
    let points = (byDevice[device] ?? []) + (byName[name] ?? [])
    var seen: Set<String> = []
    return points.filter { seen.insert($0).inserted }
  }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
private func unescapeMountPath(_ text: String) -> String {
  guard text.contains("\\") else { return text }
  var out: [UInt8] = []
  let bytes = Array(text.utf8)
  var i = 0
  while i < bytes.count {
    if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
      let value = UInt8(String(decoding: bytes[i + 1...i + 3], as: UTF8.self), radix: 8)
    {
      out.append(value)
      i += 4
    } else {
      out.append(bytes[i])
      i += 1
    }
  }
  return String(decoding: out, as: UTF8.self)
}

/// Whose network and mounts decide what the host uses: the calling process's (a command run on
/// the host), or those of process 1 (the host's init), for a caller that may run in its own
/// network and mount namespaces, as the kubelet plugins do in a pod: there its own view hides
/// the node's uplink and the disks mounted outside the pod, and it would publish them.
public struct HostView: Sendable, Equatable {
  /// The process's network facts (`route`, `fib_trie`, `if_inet6`, `ipv6_route`).
  public let procNet: String
  /// Its mount table.
  public let mountinfo: String
  /// The network class directory as that process sees it (sysfs lists a netns's own devices).
  public let classNet: String

  public static let caller = HostView(procNet: "/proc/net", mountinfo: "/proc/self/mountinfo", classNet: "/sys/class/net")
  /// The host's init (needs the host's PID namespace: `hostPID: true` in a pod).
  public static let hostInit = HostView(
    procNet: "/proc/1/net", mountinfo: "/proc/1/mountinfo", classNet: "/proc/1/root/sys/class/net")

  /// What of this view cannot be read under `sysfs` (empty when all of it can).
  public func unreadable(_ sysfs: Sysfs) -> [String] {
    var missing: [String] = []
    if !sysfs.isDirectory(procNet) { missing.append(procNet) }
    if sysfs.readString(mountinfo) == nil { missing.append(mountinfo) }
    if !sysfs.isDirectory(classNet) { missing.append(classNet) }
    return missing
  }
}
