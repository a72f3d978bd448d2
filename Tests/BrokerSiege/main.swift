import CVFIO
import Foundation
import VFIOBroker
import VFIOBrokerClient
import VFIOHost
import VFIOManager
import VFIOManagerTestSupport
import VFIOTestSupport

#if canImport(Glibc)
  import Glibc
#endif

// The hostile-client harness: a real `vfioctl serve` (on a scratch copy of a captured tree,
// with groups detached and owned as the manager leaves them) under attack by clients of
// another uid, while an honest client of a third uid measures hello + list. Each attack runs
// for a few seconds; the figures (latency percentiles, the broker's descriptors, memory and
// ledger size) are printed, and the run fails when the honest p99 passes 50 ms, the broker's
// descriptors or memory do not come back, the ledger grows with refusals, or SIGTERM does not
// stop it. Runs as root (it drops to the attackers' and the honest client's uids itself).
//
//   vfio-broker-siege --vfioctl PATH [--seconds S] [--empty-ledger]
//   vfio-broker-siege probe|attack ... (its own children)

let honestUID: UInt32 = 4001
let attackerUID: UInt32 = 4002
let p99Limit = 0.050

func monotonic() -> Double { monotonicSeconds() }

func fail(_ message: String) -> Never {
  FileHandle.standardError.write(Data("vfio-broker-siege: \(message)\n".utf8))
  exit(1)
}

func dropPrivileges(to uid: UInt32) {
  guard getuid() == 0 else { return }
  guard setgroups(0, nil) == 0, setgid(uid) == 0, setuid(uid) == 0 else { fail("cannot become uid \(uid)") }
}

func argument(_ name: String, in arguments: [String]) -> String? {
  guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
  return arguments[index + 1]
}

// MARK: Children

/// `probe SOCKET COUNT INTERVAL`: the honest client; prints one latency (seconds) per line.
func probe(socket: String, count: Int, interval: Double) {
  dropPrivileges(to: honestUID)
  var lines = ""
  for _ in 0..<count {
    let start = monotonic()
    do {
      let client = try BrokerClient(socketPath: socket)
      _ = try client.hello()
      _ = try client.list()
      lines += String(format: "%.6f\n", monotonic() - start)
    } catch {
      lines += "error \(error)\n"
    }
    usleep(useconds_t(interval * 1e6))
  }
  print(lines, terminator: "")
}

func frame(_ body: [UInt8]) -> [UInt8] {
  let n = UInt32(body.count)
  return [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + body
}

func request(_ json: String) -> [UInt8] { frame(Array(json.utf8)) }

func nonBlockingConnect(_ socket: String) -> Int32? {
  guard let fd = try? UnixSocket.connect(path: socket) else { return nil }
  _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
  return fd
}

func sendRaw(_ fd: Int32, _ bytes: [UInt8]) {
  _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
}

/// `attack KIND SOCKET SECONDS`: one kind of hostile client, as another uid, until the time is up.
func attack(_ kind: String, socket: String, seconds: Double) {
  dropPrivileges(to: attackerUID)
  let deadline = monotonic() + seconds
  var generator = SplitMix64(seed: 0xbad)
  switch kind {
  case "descriptors":
    // Lingering sockets with unsent data, over and over: a broker that closes them in its loop
    // waits 30 s each time.
    while monotonic() < deadline {
      guard let fd = try? UnixSocket.connect(path: socket), let tcp = lingeringTCPSocket() else {
        usleep(10_000)
        continue
      }
      _ = try? UnixSocket.sendAll(fd, request(#"{"type":"hello","id":1}"#), descriptors: [tcp.socket])
      close(tcp.socket)
      close(fd)
      // The listener keeps the connection unaccepted (and the data unsent) a while longer.
      DispatchQueue.global().asyncAfter(deadline: .now() + 5) { close(tcp.listener) }
      usleep(50_000)
    }
  case "idle":
    // As many connections as the broker lets this uid have, and more, held silent.
    var held: [Int32] = []
    while monotonic() < deadline {
      if held.count < 5000, let fd = nonBlockingConnect(socket) { held.append(fd) } else { usleep(20_000) }
    }
    held.forEach { close($0) }
  case "pipeline":
    // 64 connections pipelining every request type, never reading an answer.
    let requests = [
      #"{"type":"hello","id":1}"#, #"{"type":"list","id":2}"#, #"{"type":"open","id":3,"target":"2"}"#,
      #"{"type":"release","id":4,"group":2}"#, #"{"type":"watch","id":5}"#, #"{"type":"revoke","id":6,"group":2}"#,
    ].flatMap(request)
    var sockets = (0..<64).compactMap { _ in nonBlockingConnect(socket) }
    while monotonic() < deadline {
      for (index, fd) in sockets.enumerated() {
        let sent = requests.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        if sent < 0 && errno != EAGAIN, let fresh = nonBlockingConnect(socket) {
          close(fd)
          sockets[index] = fresh
        }
      }
      usleep(2_000)
    }
    sockets.forEach { close($0) }
  case "refusals":
    // Opens of a group the ledger gives to someone else, and of groups that do not exist.
    var sockets = (0..<32).compactMap { _ in nonBlockingConnect(socket) }
    var n = 0
    while monotonic() < deadline {
      for (index, fd) in sockets.enumerated() {
        n += 1
        let target = n % 2 == 0 ? "2" : String(100 + n % 5000)
        sendRaw(fd, request(#"{"type":"open","id":\#(n),"target":"\#(target)"}"#))
        var sink = [UInt8](repeating: 0, count: 65536)
        while recv(fd, &sink, sink.count, Int32(MSG_DONTWAIT)) > 0 {}
        if n % 997 == 0, let fresh = nonBlockingConnect(socket) {
          close(fd)
          sockets[index] = fresh
        }
      }
    }
    sockets.forEach { close($0) }
  case "garbage":
    // Random bytes, plausible headers with random bodies, truncated messages, and clients that
    // vanish mid-message, on many short connections.
    while monotonic() < deadline {
      guard let fd = nonBlockingConnect(socket) else {
        usleep(5_000)
        continue
      }
      var bytes = (0..<Int(generator.next() % 700)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
      switch generator.next() % 4 {
      case 0: bytes = frame(Array(bytes.prefix(300))) + bytes
      case 1: bytes = [0, 0, 0x40, 0] + Array(bytes.prefix(100))  // announces 16 KiB, sends less, leaves
      case 2: bytes = [0x7f, 0xff, 0xff, 0xff]
      default: break
      }
      sendRaw(fd, bytes)
      close(fd)
    }
  default:
    fail("unknown attack \(kind)")
  }
}


// MARK: The conductor

func spawn(_ arguments: [String], output: Int32? = nil) -> pid_t {
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  if let output { posix_spawn_file_actions_adddup2(&actions, output, 1) }
  let argv = arguments.map { strdup($0) } + [nil]
  defer { argv.forEach { free($0) } }
  var pid: pid_t = 0
  let rc = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
  guard rc == 0 else { fail("cannot run \(arguments[0]): \(String(cString: strerror(rc)))") }
  return pid
}

func wait(_ pid: pid_t) -> Int32 {
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
  return status
}

struct Figures {
  var latencies: [Double] = []
  var errors = 0
  var descriptors = 0
  var rssKiB = 0
  var ledgerKiB = 0

  func percentile(_ p: Double) -> Double {
    guard !latencies.isEmpty else { return .infinity }
    let sorted = latencies.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
  }
}

func descriptorCount(_ pid: pid_t) -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1 }

func rssKiB(_ pid: pid_t) -> Int {
  let status = Sysfs().readString("/proc/\(pid)/status") ?? ""
  let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
  return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
}

/// The ledger's database file (its write-ahead log is reused and truncated at checkpoints).
func ledgerKiB(_ state: String) -> Int {
  var info = stat()
  return stat(state + "/" + Ledger.fileName, &info) == 0 ? Int(info.st_size) / 1024 : -1
}

/// Runs the honest probe during `attack` (nil: no attack) and gathers the figures.
func measure(_ attack: String?, self executable: String, socket: String, broker: pid_t, state: String, seconds: Double)
  -> Figures
{
  var attackers: [pid_t] = []
  if let attack {
    attackers = (0..<2).map { _ in spawn([executable, "attack", attack, socket, String(seconds + 1)]) }
    usleep(500_000)  // let it build up
  }
  var pipe: [Int32] = [0, 0]
  _ = Glibc.pipe(&pipe)
  let count = Int(seconds / 0.025)
  let prober = spawn([executable, "probe", socket, String(count), "0.02"], output: pipe[1])
  close(pipe[1])
  let output = FileHandle(fileDescriptor: pipe[0], closeOnDealloc: true).readDataToEndOfFile()
  _ = wait(prober)
  var figures = Figures()
  figures.descriptors = descriptorCount(broker)
  figures.rssKiB = rssKiB(broker)
  attackers.forEach { _ = wait($0) }
  for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
    if let seconds = Double(line) { figures.latencies.append(seconds) } else { figures.errors += 1 }
  }
  figures.ledgerKiB = ledgerKiB(state)
  return figures
}

func conduct(_ arguments: [String]) {
  guard getuid() == 0 else {
    print("vfio-broker-siege: needs root (it runs the attackers and the honest client as other uids)")
    exit(77)
  }
  guard let vfioctl = argument("--vfioctl", in: arguments) else { fail("usage: vfio-broker-siege --vfioctl PATH [--seconds S]") }
  let seconds = Double(argument("--seconds", in: arguments) ?? "6") ?? 6
  let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? arguments[0]

  // A captured host with the e1000e's group given to the honest uid and the bridge group to
  // the attacker, both through the broker only, as `vfioctl detach --owner --broker-only` does.
  let tree: TemporaryTree
  let state: TemporaryTree
  do {
    tree = try TemporaryTree(copying: Fixtures.root("q35-vtd"))
    state = try TemporaryTree()
    let manager = AssignmentManager(
      sysfs: Sysfs(root: tree.path), host: SimulatedKernel(root: tree.path),
      configuration: .init(stateDirectory: state.path, command: "siege setup"))
    // --empty-ledger: no group detached (a broker of an older ledger schema can be measured so).
    if !arguments.contains("--empty-ledger") {
      _ = try manager.groups.detach(.group(2), owner: Ownership(uid: Int(honestUID), gid: Int(honestUID)), brokerOnly: true)
      _ = try manager.groups.detach(.group(4), owner: Ownership(uid: Int(attackerUID), gid: Int(attackerUID)), brokerOnly: true)
    }
  } catch {
    fail("setting up the host: \(error)")
  }
  // The socket where the other uids can reach it (the state directory is 0700, as it must be).
  guard let socketDirectory = try? TemporaryTree() else { fail("no scratch directory") }
  chmod(socketDirectory.path, 0o755)
  let socket = socketDirectory.path + "/broker.sock"
  let log = open("/dev/null", O_WRONLY)
  let broker = spawn(
    [vfioctl, "serve", "--root", tree.path, "--state", state.path, "--socket", socket, "--log-level", "error"], output: log)
  close(log)
  let start = monotonic()
  while access(socket, F_OK) != 0 {
    if monotonic() - start > 30 { fail("the broker did not start") }
    usleep(20_000)
  }
  usleep(200_000)

  var passed = 0
  var failed = 0
  func check(_ ok: Bool, _ what: String) {
    if ok { passed += 1 } else { failed += 1 }
    print("\(ok ? "PASS" : "FAIL") \(what)")
  }

  print("attack       probes  errors  p50 ms   p99 ms   max ms  broker fds  RSS MiB  ledger KiB")
  var baseline = Figures()
  for attack in [nil, "descriptors", "idle", "pipeline", "refusals", "garbage", nil] as [String?] {
    let figures = measure(attack, self: executable, socket: socket, broker: broker, state: state.path, seconds: seconds)
    let name = attack ?? (baseline.latencies.isEmpty ? "none" : "none, after")
    print(
      name.padding(toLength: 12, withPad: " ", startingAt: 0)
        + String(
        format: " %6d  %6d  %7.2f  %7.2f  %7.2f  %10d  %7.1f  %10d", figures.latencies.count,
        figures.errors, figures.percentile(0.5) * 1000, figures.percentile(0.99) * 1000,
        (figures.latencies.max() ?? .infinity) * 1000, figures.descriptors, Double(figures.rssKiB) / 1024,
        figures.ledgerKiB))
    if attack == nil && baseline.latencies.isEmpty { baseline = figures }
    check(
      figures.errors == 0 && figures.percentile(0.99) < p99Limit,
      "\(name): the honest client's hello + list answered, p99 \(String(format: "%.1f", figures.percentile(0.99) * 1000)) ms < 50 ms")
    if attack == "refusals" {
      check(figures.ledgerKiB - baseline.ledgerKiB < 1024, "refusals: the ledger grew \(figures.ledgerKiB - baseline.ledgerKiB) KiB (< 1 MiB)")
    }
  }
  // Everything the attacks opened is closed again, and memory came back near where it was.
  usleep(1_500_000)
  let descriptors = descriptorCount(broker)
  let rss = rssKiB(broker)
  check(descriptors <= baseline.descriptors + 4, "the broker's descriptors came back: \(baseline.descriptors) -> \(descriptors)")
  check(rss < baseline.rssKiB + 64 * 1024, "the broker's memory stayed bounded: \(baseline.rssKiB / 1024) -> \(rss / 1024) MiB")

  let stopStart = monotonic()
  kill(broker, SIGTERM)
  let status = wait(broker)
  let took = monotonic() - stopStart
  check(status == 0 && took < 5, String(format: "SIGTERM stops the broker (exit status %d) in %.2f s", status, took))
  print("siege: \(passed) passed, \(failed) failed")
  exit(failed == 0 ? 0 : 1)
}

let arguments = CommandLine.arguments
switch arguments.dropFirst().first {
case "probe":
  guard arguments.count == 5 else { fail("usage: probe SOCKET COUNT INTERVAL") }
  probe(socket: arguments[2], count: Int(arguments[3]) ?? 100, interval: Double(arguments[4]) ?? 0.02)
case "attack":
  guard arguments.count == 5 else { fail("usage: attack KIND SOCKET SECONDS") }
  attack(arguments[2], socket: arguments[3], seconds: Double(arguments[4]) ?? 5)
default:
  conduct(arguments)
}
