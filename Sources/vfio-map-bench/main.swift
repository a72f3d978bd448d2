// vfio-map-bench: the cost of DMA map/unmap through the VFIO library, per chunk size, on the
// legacy (type1) and iommufd backends, side by side with bench/map_bench.c, which issues the
// same ioctls bare. With --compare the two alternate in one boot (C, Swift, Swift, C, ...)
// and a table of medians, ratios and ioctls per GiB is printed.
//
// usage: vfio-map-bench BDF [--backend legacy|iommufd|auto] [--size MiB] [--chunks 4096,2097152,0]
//                           [--backing normal|thp|hugetlb] [--reps N] [--compare PATH-TO-map_bench]
//                           [--json] [--no-reserve] [--mapper-only] [--dry-run]
// A chunk of 0 maps the whole buffer in one call.
import PCI
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
  var reps = 1
  /// The C twin to interleave with.
  var compare: String?
  var json = false
  /// Skip `DMASpace.reserveCapacity`, so the table grows (and rehashes) while timed.
  var noReserve = false
  /// Call the mapper (Container or IOAS) directly, without DMASpace's bookkeeping: splits the
  /// library's cost into checks and the path to the ioctl.
  var mapperOnly = false
  /// Bookkeeping only: a mapper that never calls the kernel, to isolate the library's cost.
  var dryRun = false

  var backingName: String {
    switch backing {
    case .normal: "normal"
    case .transparentHugePages: "thp"
    case .hugeTLB: "hugetlb"
    }
  }

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
      case "--reps":
        guard let v = it.next(), let n = Int(v), n > 0 else { return nil }
        o.reps = n
      case "--compare":
        guard let v = it.next() else { return nil }
        o.compare = v
      case "--json": o.json = true
      case "--no-reserve": o.noReserve = true
      case "--mapper-only": o.mapperOnly = true
      case "--dry-run": o.dryRun = true
      default:
        guard !a.hasPrefix("-"), o.device.isEmpty else { return nil }
        o.device = a
      }
    }
    if o.dryRun && o.device.isEmpty { o.device = "none" }
    if o.dryRun && o.compare != nil { return nil }
    return o.device.isEmpty ? nil : o
  }
}

/// One chunk size's timings from one run of either program.
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

/// Maps the buffer chunk by chunk at `base`, then unmaps it in the same order: the loop
/// map_bench.c runs. The unmap loop rebuilds each mapping from the offsets, as the C program
/// does, instead of keeping an array of them; the library still checks each one exactly.
/// The same loop straight through the mapper's protocol, without DMASpace's checks.
func measureMapper(_ mapper: any DMAMapper, _ buffer: DMABuffer, chunk: Int, base: UInt64)
  throws(VFIOError) -> Row
{
  let length = UInt64(buffer.length)
  let step = chunk == 0 ? length : UInt64(chunk)
  let vaddr = buffer.vaddr
  var calls = 0
  let t0 = nanos()
  var offset: UInt64 = 0
  while offset < length {
    try mapper.map(
      DMAMapping(vaddr: vaddr + offset, iova: base + offset, length: min(step, length - offset)))
    offset += step
    calls += 1
  }
  let t1 = nanos()
  offset = 0
  while offset < length {
    try mapper.unmap(
      DMAMapping(vaddr: vaddr + offset, iova: base + offset, length: min(step, length - offset)))
    offset += step
  }
  let t2 = nanos()
  return Row(chunk: Int(step), calls: calls, mapNanos: t1 - t0, unmapNanos: t2 - t1)
}

func measure(_ dma: DMASpace, _ buffer: DMABuffer, chunk: Int, base: UInt64, reserve: Bool)
  throws(VFIOError)
  -> Row
{
  let length = UInt64(buffer.length)
  let step = chunk == 0 ? length : UInt64(chunk)
  let vaddr = buffer.vaddr
  // What a driver about to map a buffer page by page would do; untimed, like map_bench's
  // setup. --no-reserve shows the cost of growing instead.
  if reserve { dma.reserveCapacity(mappings: Int((length + step - 1) / step)) }
  var calls = 0
  let t0 = nanos()
  var offset: UInt64 = 0
  while offset < length {
    try dma.map(vaddr: vaddr + offset, length: min(step, length - offset), at: base + offset)
    offset += step
    calls += 1
  }
  let t1 = nanos()
  offset = 0
  while offset < length {
    try dma.unmap(
      DMAMapping(vaddr: vaddr + offset, iova: base + offset, length: min(step, length - offset)))
    offset += step
  }
  let t2 = nanos()
  return Row(chunk: Int(step), calls: calls, mapNanos: t1 - t0, unmapNanos: t2 - t1)
}

/// Accepts every mapping without a system call.
final class NullMapper: DMAMapper {
  func iovaLayout() throws(VFIOError) -> IOVALayout {
    IOVALayout(ranges: [IOVARange(start: 0, last: (1 << 48) - 1)], pageSizes: 0x4020_1000)
  }
  func map(_ mapping: DMAMapping) throws(VFIOError) {}
  func unmap(_ mapping: DMAMapping) throws(VFIOError) {}
}

/// What one Swift run measured, and the ioctls per chunk size when counted.
struct SwiftRun {
  var backend: Backend
  var rows: [Row]
}

/// Opens the device (or, without one, the null mapper), allocates and touches a fresh buffer,
/// and measures every chunk size. Everything is closed on return, so map_bench can open the
/// device next.
func runSwift(_ o: Options, _ address: PCIAddress?, kernel: any KernelInterface = LinuxKernel()) throws(VFIOError)
  -> SwiftRun
{
  let dma: DMASpace
  var backend = o.backend
  var keep: OpenedDevice?
  if let address {
    let opened = try OpenedDevice.open(address, backend: o.backend, kernel: kernel)
    dma = opened.dma
    backend = opened.backend
    keep = opened
  } else {
    dma = try DMASpace(NullMapper())
  }
  let buffer = try DMABuffer(length: o.sizeMiB << 20, backing: o.backing, kernel: kernel)
  // Touch every page first: the first map would otherwise also pay for zero-filling.
  for i in stride(from: 0, to: buffer.length, by: 4096) { buffer.bytes[i] = 1 }
  // map_bench.c uses IOVA 4 MiB; so does this whenever the first range starts below it (q35).
  guard
    let range = dma.layout.ranges.first(where: {
      $0.last - $0.start >= UInt64(buffer.length) + (4 << 20)
    })
  else {
    throw VFIOError(
      .iovaExhausted, operation: "vfio-map-bench",
      message: "no IOVA range fits \(buffer.length) bytes", hint: "use a smaller --size")
  }
  let base = (range.start + (4 << 20)) & ~UInt64((2 << 20) - 1)
  var rows: [Row] = []
  for chunk in o.chunks {
    rows.append(
      o.mapperOnly
        ? try measureMapper(dma.mapper, buffer, chunk: chunk, base: base)
        : try measure(dma, buffer, chunk: chunk, base: base, reserve: !o.noReserve))
  }
  withExtendedLifetime(keep) {}
  return SwiftRun(backend: backend, rows: rows)
}

/// Runs map_bench and parses its one JSON line.
func runC(_ o: Options, path: String, backend: Backend) -> Result<[Row], VFIOError> {
  var args = [
    path, o.device, backend.rawValue, String(o.sizeMiB),
    o.chunks.map(String.init).joined(separator: ","),
  ]
  if o.backing == .transparentHugePages { args.append("thp") }
  var fds: [Int32] = [0, 0]
  guard pipe(&fds) == 0 else {
    return .failure(
      VFIOError(.syscall, operation: "pipe", message: "cannot create a pipe for map_bench"))
  }
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
  posix_spawn_file_actions_addclose(&actions, fds[0])
  var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
  var pid: pid_t = 0
  let rc = posix_spawn(&pid, path, &actions, nil, &argv, environ)
  posix_spawn_file_actions_destroy(&actions)
  for p in argv { free(p) }
  Glibc.close(fds[1])
  defer { Glibc.close(fds[0]) }
  guard rc == 0 else {
    return .failure(
      VFIOError(
        .syscall, operation: "posix_spawn", path: path,
        message: "cannot run the C twin: \(String(cString: strerror(rc)))",
        hint: "build it: gcc -O2 -static -o map_bench bench/map_bench.c"))
  }
  var output: [UInt8] = []
  var chunk = [UInt8](repeating: 0, count: 4096)
  while true {
    let n = chunk.withUnsafeMutableBytes { Glibc.read(fds[0], $0.baseAddress, $0.count) }
    if n < 0 && errno == EINTR { continue }
    guard n > 0 else { break }
    output += chunk[0..<n]
  }
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
  let text = String(decoding: output, as: UTF8.self)
  guard status == 0, let rows = parseRows(text), rows.count == o.chunks.count else {
    return .failure(
      VFIOError(
        .syscall, operation: "map_bench", path: path,
        message: "map_bench failed (wait status \(status)): \(text.prefix(300))",
        hint: "its error is on stderr above"))
  }
  return .success(rows)
}

/// The value after `"key":` in `text`, as an integer.
func number(_ key: String, in text: Substring) -> UInt64? {
  guard let r = text.firstRange(of: "\"\(key)\":") else { return nil }
  return UInt64(text[r.upperBound...].prefix(while: \.isNumber))
}

/// The rows of a map_bench or vfio-map-bench --json line: each `{"chunk":..}` object.
func parseRows(_ text: String) -> [Row]? {
  guard let start = text.firstRange(of: "\"results\":[") else { return nil }
  var rows: [Row] = []
  for object in text[start.upperBound...].split(separator: "}") where object.contains("chunk") {
    guard let chunk = number("chunk", in: object), let calls = number("calls", in: object),
      let map = number("map_ns", in: object), let unmap = number("unmap_ns", in: object)
    else { return nil }
    rows.append(Row(chunk: Int(chunk), calls: Int(calls), mapNanos: map, unmapNanos: unmap))
  }
  return rows
}

func median(_ values: [UInt64]) -> UInt64 {
  let s = values.sorted()
  return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func ms(_ n: UInt64) -> String {
  let hundredths = (n + 5_000) / 10_000
  let frac = hundredths % 100
  return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
}

func ratio(_ a: UInt64, _ b: UInt64) -> String {
  guard b > 0 else { return "-" }
  let r = (a * 100 + b / 2) / b
  return "\(r / 100).\(r % 100 < 10 ? "0" : "")\(r % 100)x"
}

func json(_ o: Options, tool: String, backend: Backend, rep: Int, _ rows: [Row]) -> String {
  let items = rows.map {
    "{\"chunk\":\($0.chunk),\"calls\":\($0.calls),\"map_ns\":\($0.mapNanos),\"unmap_ns\":\($0.unmapNanos)}"
  }
  return
    "{\"tool\":\"\(tool)\",\"device\":\"\(o.device)\",\"backend\":\"\(backend.rawValue)\",\"size\":\(o.sizeMiB << 20),\"backing\":\"\(o.backingName)\",\"rep\":\(rep),\"results\":[\(items.joined(separator: ","))]}"
}

extension String {
  func padded(_ width: Int, left: Bool = true) -> String {
    let pad = String(repeating: " ", count: max(0, width - count))
    return left ? pad + self : self + pad
  }
}

func table(_ headers: [String], _ rows: [[String]]) -> String {
  let widths = headers.indices.map { i in
    max(headers[i].count, rows.map { $0[i].count }.max() ?? 0)
  }
  return ([headers] + rows).map { cells in
    cells.enumerated().map { i, c in c.padded(widths[i], left: i > 1) }.joined(separator: "  ")
  }.joined(separator: "\n")
}

guard let options = Options.parse(Array(CommandLine.arguments.dropFirst())) else {
  print(
    "usage: vfio-map-bench BDF [--backend legacy|iommufd|auto] [--size MiB] [--chunks 4096,2097152,0] [--backing normal|thp|hugetlb] [--reps N] [--compare PATH-TO-map_bench] [--json] [--no-reserve] [--mapper-only] [--dry-run]"
  )
  exit(2)
}

do {
  // Parsed here, at the edge, so a mistyped BDF is named as such; --dry-run opens nothing.
  let address = options.dryRun ? nil : try PCIAddress(parsing: options.device)
  var swiftRuns: [[Row]] = []
  var cRuns: [[Row]] = []
  var backend = options.backend
  if backend == .auto, let address {
    // map_bench needs a concrete backend: the one the library picks.
    backend = try OpenedDevice.open(address).backend
  }
  for rep in 0..<options.reps {
    // C first on even repetitions, Swift first on odd ones, so neither always runs second.
    for swiftTurn in rep % 2 == 0 ? [false, true] : [true, false] {
      if swiftTurn {
        let run = try runSwift(options, address)
        backend = run.backend
        swiftRuns.append(run.rows)
        if options.json {
          print(json(options, tool: "vfio-map-bench", backend: backend, rep: rep, run.rows))
        }
      } else if let path = options.compare {
        let rows = try runC(options, path: path, backend: backend).get()
        cRuns.append(rows)
        if options.json {
          print(json(options, tool: "map_bench.c", backend: backend, rep: rep, rows))
        }
      }
    }
  }
  // One more, untimed, pass through a counting kernel: the ioctls the library really issued.
  var perGiB: [String] = options.chunks.map { _ in "-" }
  if !options.dryRun {
    var counted: [Int] = []
    for chunk in options.chunks {
      let kernel = IoctlCountingKernel()
      var single = options
      single.backend = backend
      // Setup ioctls (open, GET_INFO, ...) are counted by a run with no chunks and subtracted.
      single.chunks = []
      _ = try runSwift(single, address, kernel: kernel)
      let setup = kernel.counts.total
      kernel.counts.reset()
      single.chunks = [chunk]
      _ = try runSwift(single, address, kernel: kernel)
      counted.append(kernel.counts.total - setup)
    }
    let size = UInt64(options.sizeMiB) << 20
    perGiB = counted.map { String(UInt64($0) * (1 << 30) / size) }
  }
  var lines: [[String]] = []
  for (i, chunk) in options.chunks.enumerated() {
    let sMap = median(swiftRuns.map { $0[i].mapNanos })
    let sUnmap = median(swiftRuns.map { $0[i].unmapNanos })
    let calls = swiftRuns[0][i].calls
    let chunkName =
      chunk == 0 ? "whole" : chunk >= 1 << 20 ? "\(chunk >> 20) MiB" : "\(chunk >> 10) KiB"
    if cRuns.isEmpty {
      lines.append([backend.rawValue, chunkName, String(calls), ms(sMap), ms(sUnmap), perGiB[i]])
    } else {
      let cMap = median(cRuns.map { $0[i].mapNanos })
      let cUnmap = median(cRuns.map { $0[i].unmapNanos })
      let cPerGiB = String(
        UInt64(cRuns[0][i].calls) * 2 * (1 << 30) / (UInt64(options.sizeMiB) << 20))
      lines.append([
        backend.rawValue, chunkName, String(calls), ms(cMap), ms(sMap), ratio(sMap, cMap),
        ms(cUnmap), ms(sUnmap), ratio(sUnmap, cUnmap), ratio(sMap + sUnmap, cMap + cUnmap),
        cPerGiB, perGiB[i],
      ])
    }
  }
  print(
    "vfio-map-bench \(options.device) (ioctls/GiB: map + unmap calls for 1 GiB mapped in this chunk size)"
  )
  print(
    "vfio-map-bench \(options.device) \(backend.rawValue) \(options.sizeMiB) MiB \(options.backingName), median of \(options.reps)\(options.noReserve ? ", no reserveCapacity" : "")\(options.mapperOnly ? ", mapper only (no DMASpace checks)" : "")"
  )
  if cRuns.isEmpty {
    print(table(["backend", "chunk", "calls", "map ms", "unmap ms", "ioctls/GiB"], lines))
  } else {
    print(
      table(
        [
          "backend", "chunk", "calls", "C map ms", "Swift map ms", "ratio", "C unmap ms",
          "Swift unmap ms", "ratio", "total ratio", "C ioctls/GiB", "Swift ioctls/GiB",
        ], lines))
  }
} catch {
  print("vfio-map-bench: \(error)")
  exit(1)
}
