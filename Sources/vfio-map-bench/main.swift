// vfio-map-bench: the cost of DMA map/unmap through the VFIO library, per chunk size, on the
// legacy (type1) and iommufd backends. bench/map_bench.c does the same with raw ioctls, so the
// two together show what the library adds.
//
// usage: vfio-map-bench BDF [--backend legacy|iommufd|auto] [--size MiB] [--chunks 4096,2097152,0]
//                           [--backing normal|thp] [--json] [--dry-run]
// A chunk of 0 maps the whole buffer in one call.
import VFIO

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

struct Options {
  var device = ""
  var backend = Backend.auto
  var sizeMiB = 64
  var chunks: [Int] = [4096, 2 << 20, 0]
  var backing = DMABuffer.Backing.normal
  var json = false
  /// Bookkeeping only: a mapper that never calls the kernel, to isolate the library's cost.
  var dryRun = false

  static func parse(_ args: [String]) -> Options? {
    var o = Options()
    var it = args.makeIterator()
    while let a = it.next() {
      switch a {
      case "--backend":
        guard let v = it.next(), let b = Backend(rawValue: v) else { return nil }
        o.backend = b
      case "--size":
        guard let v = it.next(), let n = Int(v), n > 0 else { return nil }
        o.sizeMiB = n
      case "--chunks":
        guard let v = it.next() else { return nil }
        let c = v.split(separator: ",").compactMap { Int($0) }
        guard !c.isEmpty, c.allSatisfy({ $0 == 0 || ($0 >= 4096 && $0 % 4096 == 0) }) else {
          return nil
        }
        o.chunks = c
      case "--backing":
        switch it.next() {
        case "normal": o.backing = .normal
        case "thp": o.backing = .transparentHugePages
        case "hugetlb": o.backing = .hugeTLB
        default: return nil
        }
      case "--json": o.json = true
      case "--dry-run": o.dryRun = true
      default:
        guard !a.hasPrefix("-"), o.device.isEmpty else { return nil }
        o.device = a
      }
    }
    if o.dryRun && o.device.isEmpty { o.device = "none" }
    return o.device.isEmpty ? nil : o
  }
}

struct Row {
  var chunk: Int
  var calls: Int
  var mapNanos: UInt64
  var unmapNanos: UInt64
}

func nanos() -> UInt64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func measure(_ dma: DMASpace, _ buffer: DMABuffer, chunk: Int, base: UInt64) throws(VFIOError)
  -> Row
{
  let length = buffer.length
  let step = chunk == 0 ? length : chunk
  var mappings: [DMAMapping] = []
  mappings.reserveCapacity(length / step)
  let t0 = nanos()
  var offset = 0
  while offset < length {
    let n = min(step, length - offset)
    mappings.append(
      try dma.map(
        vaddr: buffer.vaddr + UInt64(offset), length: UInt64(n), at: base + UInt64(offset)))
    offset += n
  }
  let t1 = nanos()
  for m in mappings { try dma.unmap(m) }
  let t2 = nanos()
  return Row(chunk: step, calls: mappings.count, mapNanos: t1 - t0, unmapNanos: t2 - t1)
}

func ms(_ n: UInt64) -> String {
  let tenths = (n + 50_000) / 100_000
  return "\(tenths / 10).\(tenths % 10)"
}

func render(_ o: Options, _ backend: Backend, _ rows: [Row]) -> String {
  let backing = "\(o.backing)"
  if o.json {
    let items = rows.map {
      "{\"chunk\":\($0.chunk),\"calls\":\($0.calls),\"map_ns\":\($0.mapNanos),\"unmap_ns\":\($0.unmapNanos)}"
    }
    return
      "{\"tool\":\"vfio-map-bench\",\"device\":\"\(o.device)\",\"backend\":\"\(backend.rawValue)\",\"size\":\(o.sizeMiB << 20),\"backing\":\"\(backing)\",\"results\":[\(items.joined(separator: ","))]}"
  }
  var lines = [
    "vfio-map-bench \(o.device) \(backend.rawValue) \(o.sizeMiB) MiB \(backing)",
    "chunk      calls   map ms   unmap ms   map ns/call",
  ]
  for r in rows {
    let per = r.mapNanos / UInt64(max(r.calls, 1))
    lines.append(
      [String(r.chunk), String(r.calls), ms(r.mapNanos), ms(r.unmapNanos), String(per)]
        .enumerated().map { i, s in i == 0 ? s.padding(9) : s.padding(i == 4 ? 0 : 9, left: true) }
        .joined(separator: "  "))
  }
  return lines.joined(separator: "\n")
}

extension String {
  func padding(_ width: Int, left: Bool = false) -> String {
    let pad = String(repeating: " ", count: max(0, width - count))
    return left ? pad + self : self + pad
  }
}

guard let options = Options.parse(Array(CommandLine.arguments.dropFirst())) else {
  print(
    "usage: vfio-map-bench BDF [--backend legacy|iommufd|auto] [--size MiB] [--chunks 4096,2097152,0] [--backing normal|thp|hugetlb] [--json] [--dry-run]"
  )
  exit(2)
}

/// Accepts every mapping without a system call.
final class NullMapper: DMAMapper {
  func iovaLayout() throws(VFIOError) -> IOVALayout {
    IOVALayout(ranges: [IOVARange(start: 0, last: (1 << 48) - 1)], pageSizes: 0x4020_1000)
  }
  func map(_ mapping: DMAMapping) throws(VFIOError) {}
  func unmap(_ mapping: DMAMapping) throws(VFIOError) {}
}

do {
  let dma: DMASpace
  var backend = options.backend
  var keep: OpenedDevice?
  if options.dryRun {
    dma = try DMASpace(NullMapper())
  } else {
    let opened = try OpenedDevice.open(options.device, backend: options.backend)
    dma = opened.dma
    backend = opened.backend
    keep = opened
  }
  let buffer = try DMABuffer(length: options.sizeMiB << 20, backing: options.backing)
  // Touch every page first: the first map would otherwise also pay for zero-filling.
  for i in stride(from: 0, to: buffer.length, by: 4096) { buffer.bytes[i] = 1 }
  // A 2 MiB-aligned IOVA inside the first range, so hugepage-backed chunks can use large IOPTEs.
  guard
    let range = dma.layout.ranges.first(where: {
      $0.last - $0.start >= UInt64(buffer.length) + (4 << 20)
    })
  else {
    print("no IOVA range fits \(buffer.length) bytes")
    exit(1)
  }
  let base = (range.start + (4 << 20)) & ~UInt64((2 << 20) - 1)
  var rows: [Row] = []
  for chunk in options.chunks { rows.append(try measure(dma, buffer, chunk: chunk, base: base)) }
  print(render(options, backend, rows))
  withExtendedLifetime(keep) {}
} catch {
  print("vfio-map-bench: \(error)")
  exit(1)
}
