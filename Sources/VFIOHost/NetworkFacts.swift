/// The host's addresses and default routes per interface, from procfs (so a capture replays
/// them): `/proc/net/fib_trie` and `/proc/net/route` for IPv4, `/proc/net/if_inet6` and
/// `/proc/net/ipv6_route` for IPv6.
struct NetworkFacts {
  /// Addresses with prefix length (`192.0.2.2/24`, `fd00::2/64`), IPv4 first, per interface.
  var addresses: [String: [String]] = [:]
  /// Link-local IPv6 addresses per interface: every up interface has one, so they alone do
  /// not mean the host uses it.
  var linkLocal: [String: [String]] = [:]
  var ipv4Default: Set<String> = []
  var ipv6Default: Set<String> = []
  /// Interfaces with any IPv4 route.
  var ipv4Routed: Set<String> = []

  init(fibTrie: String?, route: String?, ifInet6: String?, ipv6Route: String?) {
    let routes = parseIPv4Routes(route ?? "")
    for route in routes {
      ipv4Routed.insert(route.interface)
      if route.destination == 0 && route.mask == 0 { ipv4Default.insert(route.interface) }
    }
    // An address belongs to the interface whose most specific on-link route covers it.
    for address in localIPv4Addresses(fibTrie ?? "") {
      let covering = routes.filter { $0.mask != 0 && address.value & $0.mask == $0.destination }
      guard let best = covering.max(by: { $0.mask.nonzeroBitCount < $1.mask.nonzeroBitCount }) else { continue }
      addresses[best.interface, default: []].append("\(address.text)/\(best.mask.nonzeroBitCount)")
    }
    // if_inet6: address, ifindex, prefix length, scope, flags, name; scope 0x20 is link-local.
    for line in (ifInet6 ?? "").split(separator: "\n") {
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      guard f.count >= 6, f[0].utf8.count == 32, f[0].utf8.allSatisfy({ hexDigitValue($0) != nil }) else { continue }
      let text = ipv6(String(f[0])) + "/" + String(Int(f[2], radix: 16) ?? 0)
      if f[3] == "20" {
        linkLocal[String(f[5]), default: []].append(text)
      } else {
        addresses[String(f[5]), default: []].append(text)
      }
    }
    // ipv6_route: dest, dest length, source, source length, next hop, metric, refcnt, use,
    // flags, interface. The kernel's own ::/0 reject route on lo is no default route.
    for line in (ipv6Route ?? "").split(separator: "\n") {
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      guard f.count >= 10, f[1] == "00", f[0].allSatisfy({ $0 == "0" }),
        let flags = UInt32(f[8], radix: 16), flags & 0x0200 == 0
      else { continue }
      ipv6Default.insert(String(f[9]))
    }
  }
}

struct IPv4Route {
  var interface: String
  /// Destination and mask as /proc/net/route prints them: the network-order bytes read as
  /// one host-order number, which `localIPv4Addresses` reproduces.
  var destination: UInt32
  var mask: UInt32
}

/// /proc/net/route: Iface, Destination, Gateway, Flags, RefCnt, Use, Metric, Mask, …
func parseIPv4Routes(_ text: String) -> [IPv4Route] {
  text.split(separator: "\n").dropFirst().compactMap { line in
    let f = line.split(separator: "\t", omittingEmptySubsequences: false).map { $0.trimmingSpaces }
    guard f.count >= 8, let destination = UInt32(f[1], radix: 16), let mask = UInt32(f[7], radix: 16) else {
      return nil
    }
    return IPv4Route(interface: f[0], destination: destination, mask: mask)
  }
}

/// The host's own IPv4 addresses: fib_trie leaves marked `/32 host LOCAL`, loopback left out.
func localIPv4Addresses(_ fibTrie: String) -> [(text: String, value: UInt32)] {
  var result: [(String, UInt32)] = []
  var seen: Set<String> = []
  var candidate: String?
  for line in fibTrie.split(separator: "\n") {
    let trimmed = line.trimmingSpaces
    if trimmed.hasPrefix("|-- ") {
      candidate = String(trimmed.dropFirst(4))
    } else if trimmed.hasPrefix("/32 host LOCAL"), let text = candidate, !text.hasPrefix("127."),
      let value = parseIPv4(text), seen.insert(text).inserted
    {
      result.append((text, value))
    }
  }
  return result
}

/// `a.b.c.d` as the bytes a, b, c, d read little-endian, the way /proc/net/route prints them
/// on the little-endian machines Linux VFIO hosts are (x86, arm64, ppc64le).
func parseIPv4(_ text: String) -> UInt32? {
  let parts = text.split(separator: ".", omittingEmptySubsequences: false).compactMap { UInt8($0) }
  guard parts.count == 4, text.split(separator: ".", omittingEmptySubsequences: false).count == 4 else { return nil }
  return parts.enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
}
