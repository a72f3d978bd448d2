// The broker under load, on loopback, against the recording kernel fake (so it measures the
// broker: protocol, policy, ledger, descriptor passing; not VFIO): N clients, each with its own
// owned group, asking for a grant, closing the descriptors, releasing and waiting for the
// lease to end, for a bounded time. Side by side, in the same run, the same message pattern
// as a bare SCM_RIGHTS ping-pong over socketpairs with one epoll server thread: the rate the
// kernel's Unix sockets allow with no broker in between. The two alternate for `--rounds`
// rounds; the medians of the rounds, their ratio and the targets (issue 20) are printed.
//   swift run -c release vfio-broker-bench [--clients 64] [--seconds 5] [--rounds 3] [--only broker|bare]
import CVFIO
import Foundation
import Logging
import PCI
import Synchronization
import VFIOBroker
import VFIOBrokerClient
import VFIOBrokerTestSupport
import VFIOHost
import VFIOManager
import VFIOTestSupport

#if canImport(Glibc)
  import Glibc
#endif

struct Load: Sendable {
  var clients = 64
  var seconds = 5.0
  var rounds = 3
  /// `broker` or `bare` alone, for a profiler.
  var only: String?

  static func parse(_ arguments: [String]) -> Load {
    var load = Load()
    var rest = arguments[...]
    while let flag = rest.popFirst() {
      switch (flag, rest.popFirst()) {
      case ("--clients", let value?): load.clients = max(1, min(Int(value) ?? 64, 1000))
      case ("--seconds", let value?): load.seconds = max(0.5, min(Double(value) ?? 5, 600))
      case ("--rounds", let value?): load.rounds = max(1, min(Int(value) ?? 3, 100))
      case ("--only", let value?) where ["broker", "bare"].contains(value): load.only = value
      default:
        FileHandle.standardError.write(Data("usage: vfio-broker-bench [--clients N] [--seconds S] [--rounds R] [--only broker|bare]\n".utf8))
        exit(64)
      }
    }
    return load
  }
}


func descriptorCount() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }

struct Run {
  var cycles = 0
  var latencies: [Double] = []

  static func merge(_ runs: [Run]) -> Run {
    Run(cycles: runs.reduce(0) { $0 + $1.cycles }, latencies: runs.flatMap(\.latencies).sorted())
  }

  func percentile(_ p: Double) -> Double {
    guard !latencies.isEmpty else { return .nan }
    return latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] * 1e6
  }
}

/// Runs `body` on `clients` threads until the deadline; each returns its own tally.
func onThreads(_ load: Load, _ body: @escaping @Sendable (Int, Double) -> Run) -> Run {
  let results = Mutex<[Run]>([])
  let deadline = monotonicSeconds() + load.seconds
  let threads = (0..<load.clients).map { index in
    Thread {
      let run = body(index, deadline)
      results.withLock { $0.append(run) }
    }
  }
  threads.forEach { $0.start() }
  while results.withLock({ $0.count }) < load.clients { usleep(10_000) }
  return Run.merge(results.withLock { $0 })
}

// MARK: The broker

/// A ledger with `groups` detached groups owned by this uid, as `detach --broker-only` leaves
/// them, recorded through the same intents the manager's detach uses (the fake grant source
/// never touches a device, so the members are made up).
func preparedLedger(_ directory: String, groups: Int) throws -> Ledger {
  guard let ledger = try Ledger.open(directory: directory, create: true) else { throw BrokerError(.ledger, "no ledger") }
  let owner = Ownership(uid: Int(getuid()), gid: Int(getgid()), mode: 0o660)
  for number in 0..<groups {
    let group = IOMMUGroupID(number)
    let member = LedgerMember(
      groupID: group, address: String(format: "0000:%02x:00.0", number + 1), vendorID: 0x8086, deviceID: 0x10D3,
      originalDriver: nil, originalOverride: nil)
    var detach = try ledger.beginDetach(
      LedgerOperation(starting: .detach, group: group, steps: [], command: "vfio-broker-bench"), driver: "vfio-pci",
      bootID: nil, detachedBy: "detach", originals: [member])
    try ledger.finish(&detach, .done, groupState: .detached)
    try ledger.recordOwner(group: group, owner, brokerOnly: true)
  }
  return ledger
}

func brokerRun(_ load: Load, socket: String) -> Run {
  onThreads(load) { index, deadline in
    var run = Run()
    guard let client = try? BrokerClient(socketPath: socket) else { return run }
    while monotonicSeconds() < deadline {
      let start = monotonicSeconds()
      guard let grant = try? client.open(String(index)) else { break }
      run.latencies.append(monotonicSeconds() - start)
      grant.close()
      // Answered once the broker has ended the lease (holders checked, group reset, recorded).
      guard (try? client.release(group: grant.group)) == "released" else { break }
      run.cycles += 1
    }
    return run
  }
}

// MARK: The bare reference

/// One epoll thread answering each client's socketpair: "open" with three descriptors,
/// "release" with one, each about as long as the broker's.
func bareRun(_ load: Load) -> Run {
  let epoll = cvfio_epoll_create()
  var pairs: [(Int32, Int32)] = []
  for _ in 0..<load.clients {
    var fds: [Int32] = [0, 0]
    _ = cvfio_socketpair(&fds)
    pairs.append((fds[0], fds[1]))
    _ = cvfio_epoll_add(epoll, fds[1], UInt64(fds[1]))
  }
  let null = open("/dev/null", O_RDWR | O_CLOEXEC)
  let granted = Array(repeating: UInt8(ascii: "g"), count: 260)
  let short = Array(repeating: UInt8(ascii: "r"), count: 60)
  let stop = Atomic<Bool>(false)
  let server = Thread {
    var tokens = [UInt64](repeating: 0, count: 64)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while !stop.load(ordering: .relaxed) {
      let n = tokens.withUnsafeMutableBufferPointer { cvfio_epoll_wait(epoll, $0.baseAddress, 64, 50) }
      for token in tokens.prefix(Int(max(n, 0))) {
        let fd = Int32(token)
        let got = recv(fd, &buffer, buffer.count, 0)
        guard got > 0 else { continue }
        if buffer[0] == UInt8(ascii: "o") {
          try? UnixSocket.sendAll(fd, granted, descriptors: [null, null, null])
        } else {
          try? UnixSocket.sendAll(fd, short)
        }
      }
    }
  }
  server.start()
  let ends = pairs.map(\.0)
  let run = onThreads(load) { index, deadline in
    var run = Run()
    let fd = ends[index]
    var buffer = [UInt8](repeating: 0, count: 4096)
    let openRequest = Array(#"{"backend":"auto","id":1,"target":"12","type":"open"}"#.utf8)
    let releaseRequest = Array(#"{"group":12,"id":2,"type":"release"}"#.utf8)
    func read(_ bytes: Int) -> Bool {
      var have = 0
      while have < bytes {
        guard let got = try? UnixSocket.receive(fd, into: &buffer, maxDescriptors: 16), got.count > 0 else { return false }
        for received in got.descriptors { close(received) }
        have += got.count
      }
      return true
    }
    while monotonicSeconds() < deadline {
      let start = monotonicSeconds()
      guard (try? UnixSocket.sendAll(fd, [UInt8(ascii: "o")] + openRequest)) != nil, read(granted.count) else { break }
      run.latencies.append(monotonicSeconds() - start)
      guard (try? UnixSocket.sendAll(fd, [UInt8(ascii: "r")] + releaseRequest)) != nil, read(short.count) else { break }
      run.cycles += 1
    }
    return run
  }
  stop.store(true, ordering: .relaxed)
  while !server.isFinished { usleep(1000) }
  for (a, b) in pairs {
    close(a)
    close(b)
  }
  close(null)
  close(epoll)
  return run
}

// MARK: Main

let load = Load.parse(Array(CommandLine.arguments.dropFirst()))

let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vfio-broker-bench-\(getpid())").path
try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(atPath: scratch) }
let socketPath = scratch + "/broker.sock"
UnixSocket.raiseDescriptorLimit()

let ledger = try preparedLedger(scratch, groups: load.clients)
var logger = Logger(label: "bench.broker")
logger.logLevel = .error
let broker = try Broker(
  source: RecordingGrantSource(), ledger: ledger, configuration: .init(stateDirectory: scratch, maxConnectionsPerUser: 4096), logger: logger,
  bootID: nil)
broker.serve(listener: try UnixSocket.listen(path: socketPath))
let brokerThread = Thread { broker.run() }
brokerThread.start()
// Counted with the broker up and idle: what is open after the load must be exactly this.
let before = descriptorCount()

print(
  "broker load: \(load.clients) clients, \(load.seconds) s a round, \(load.rounds) rounds alternating with the bare reference,"
    + " recording kernel fake, ledger in \(scratch)")

func line(_ name: String, _ rate: Double, _ p50: Double, _ p99: Double) -> String {
  String(
    format: "%@ %9.0f cycles/s   grant p50 %8.1f us   p99 %8.1f us", name.padding(toLength: 28, withPad: " ", startingAt: 0), rate,
    p50, p99)
}

var brokerRounds: [Run] = []
var bareRounds: [Run] = []
for round in 1...load.rounds {
  if load.only != "bare" {
    let run = brokerRun(load, socket: socketPath)
    brokerRounds.append(run)
    print(line("round \(round) broker", Double(run.cycles) / load.seconds, run.percentile(0.5), run.percentile(0.99)))
    usleep(200_000)  // the broker sees the clients' hang-ups
  }
  if load.only != "broker" {
    let run = bareRun(load)
    bareRounds.append(run)
    print(line("round \(round) bare", Double(run.cycles) / load.seconds, run.percentile(0.5), run.percentile(0.99)))
  }
}
let after = descriptorCount()
broker.stop()
while !brokerThread.isFinished { usleep(1000) }

func median(_ values: [Double]) -> Double {
  guard !values.isEmpty else { return .nan }
  let sorted = values.sorted()
  return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}
func medians(_ runs: [Run]) -> (rate: Double, p50: Double, p99: Double) {
  (
    median(runs.map { Double($0.cycles) / load.seconds }), median(runs.map { $0.percentile(0.5) }),
    median(runs.map { $0.percentile(0.99) })
  )
}
let brokerMedian = medians(brokerRounds)
let bareMedian = medians(bareRounds)
print("medians of \(load.rounds) rounds:")
print(line("broker (open+release)", brokerMedian.rate, brokerMedian.p50, brokerMedian.p99))
print(line("bare SCM_RIGHTS ping-pong", bareMedian.rate, bareMedian.p50, bareMedian.p99))
print(
  String(
    format: "ratio broker/bare: %.3fx (target >= 0.5x)   broker grant p99 %.2f ms (target <= 1.5 ms)", brokerMedian.rate / bareMedian.rate,
    brokerMedian.p99 / 1000))
print(
  String(
    format: "grants recorded: %d   ledger: %d write transactions, %.0f ms writing", broker.stats.granted, ledger.writeTransactions,
    ledger.secondsWriting * 1000))
print("open descriptors before \(before), after \(after)" + (before == after ? " (equal)" : " (LEAK)"))
