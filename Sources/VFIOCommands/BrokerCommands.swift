import ArgumentParser
import CVFIO
import Dispatch
import Foundation
import Logging
import PCI
import VFIO
import VFIOBroker
import VFIOBrokerClient
import VFIOManager

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension Backend: ExpressibleByArgument {}

struct SocketOptions: ParsableArguments {
  @Option(help: "The broker's Unix socket.")
  var socket: String = Broker.Configuration.defaultSocket
}

struct ServeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Run the broker: hand the descriptors of owned groups to their owners over a Unix socket.",
    discussion: """
      A caller is the uid the kernel reports for its connection (SO_PEERCRED). It gets a group's \
      descriptors only where the ledger says it owns the group (given with vfioctl own N --broker-only --owner UID), \
      and, for a reserved group, only for the guest the group is reserved for. A grant is a lease: \
      when the caller releases or dies and no process holds the group any more, the group is reset \
      and free for its owner again. Protocol: docs/broker.md. With systemd socket activation \
      (LISTEN_FDS) it serves the sockets it is given. SIGTERM stops it; leases survive in the ledger.
      """)

  @OptionGroup var socketOptions: SocketOptions
  @OptionGroup var stateOptions: StateOptions
  @OptionGroup var host: HostOptions

  @Option(help: "The most clients served at once (the last --reserved-for-root of them only for root).")
  var maxConnections: Int = 8192

  @Option(help: "The most connections one non-root user may have at once.")
  var maxConnectionsPerUser: Int = 64

  @Option(help: "Connection slots kept for root, so an administrator always gets in.")
  var reservedForRoot: Int = 32

  @Option(help: "Seconds after which a connection that holds no lease and watches nothing is closed.")
  var idleTimeout: Double = 60

  @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
  var logLevel: String = "info"

  func validate() throws {
    guard Logger.Level(rawValue: logLevel) != nil else {
      throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    guard (1...1_000_000).contains(maxConnections) else { throw ValidationError("--max-connections must be 1...1000000") }
    guard (1...maxConnections).contains(maxConnectionsPerUser) else {
      throw ValidationError("--max-connections-per-user must be 1...--max-connections")
    }
    guard (0..<maxConnections).contains(reservedForRoot) else {
      throw ValidationError("--reserved-for-root must be 0...--max-connections - 1")
    }
    guard (1...86_400).contains(idleTimeout) else { throw ValidationError("--idle-timeout must be 1...86400 seconds") }
  }

  func run() throws {
    try reportingErrors {
      let level = Logger.Level(rawValue: logLevel) ?? .info
      LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
      }
      let logger = Logger(label: "swift-vfio.broker")
      UnixSocket.raiseDescriptorLimit()
      signal(SIGPIPE, SIG_IGN)
      guard let ledger = try Ledger.open(directory: stateOptions.state, create: true) else {
        throw ManagerError.ledger(path: stateOptions.state, "could not be created")
      }
      let sysfs = host.sysfs
      let broker = try brokerCall {
        try Broker(
          source: LiveGrantSource(sysfs: sysfs, stateDirectory: stateOptions.state), ledger: ledger,
          configuration: .init(
            stateDirectory: stateOptions.state, maxConnections: maxConnections,
            maxConnectionsPerUser: maxConnectionsPerUser, reservedForRoot: reservedForRoot, idleTimeout: idleTimeout,
            server: "vfioctl \(VFIOCtl.version)"),
          logger: logger, bootID: sysfs.readString("/proc/sys/kernel/random/boot_id"))
      }
      let activated = systemdListeners()
      var ownSocket: String?
      if activated.isEmpty {
        let path = socketOptions.socket
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty, let code = makeDirectories(directory, mode: 0o755) {
          throw CLIError.usage("cannot create \(directory) for the socket: \(String(cString: strerror(code)))")
        }
        // Only a socket (a stale one of an earlier broker) is ever replaced: a typo that names
        // a file must not delete it.
        var info = stat()
        if lstat(path, &info) == 0 && info.st_mode & S_IFMT != S_IFSOCK {
          throw CLIError.usage("--socket \(path) exists and is not a socket; refusing to replace it")
        }
        let fd = try brokerCall { () throws(SocketError) in try UnixSocket.listen(path: path) }
        // Anyone may connect: the socket grants nothing, the ledger decides.
        chmod(path, 0o666)
        broker.serve(listener: fd)
        ownSocket = path
      } else {
        for fd in activated { broker.serve(listener: fd) }
      }
      let signals = [SIGTERM, SIGINT].map { number -> DispatchSourceSignal in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { broker.stop() }
        source.resume()
        return source
      }
      broker.run()
      withExtendedLifetime(signals) {}
      if let ownSocket { unlink(ownSocket) }
    }
  }

  /// sd_listen_fds(3): LISTEN_PID is this process and LISTEN_FDS counts descriptors from 3;
  /// only listening Unix stream sockets are taken.
  private func systemdListeners() -> [Int32] {
    let environment = ProcessInfo.processInfo.environment
    guard let pid = environment["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
      let count = environment["LISTEN_FDS"].flatMap(Int32.init), (1...64).contains(count)
    else { return [] }
    unsetenv("LISTEN_PID")
    unsetenv("LISTEN_FDS")
    unsetenv("LISTEN_FDNAMES")
    return (3..<3 + count).filter { cvfio_is_unix_listener($0) != 0 }
  }
}

struct OpenCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "open",
    abstract: "Get a device's descriptors from the broker and run a command (a VMM) with them inherited.",
    discussion: """
      In CMD's arguments {device} becomes the first device's descriptor number, {devices} all of them \
      (comma separated), {iommufd}, {container} and {group} the others; the environment has \
      SWIFT_VFIO_BACKEND, SWIFT_VFIO_GROUP, SWIFT_VFIO_DEVICE_FD, SWIFT_VFIO_IOMMUFD_FD, \
      SWIFT_VFIO_CONTAINER_FD, SWIFT_VFIO_GROUP_FD and SWIFT_VFIO_DEVICES (ADDRESS=FD,...). \
      The grant lasts while CMD runs; when the broker relays a device request (the administrator \
      or the kernel wants the device back) CMD gets SIGTERM unless --on-request ignore. Exits with CMD's status.
      Example: vfioctl open 0000:00:03.0 --backend iommufd --exec -- qemu-system-x86_64 \
      -object iommufd,id=fd0,fd={iommufd} -device vfio-pci,iommufd=fd0,fd={device}
      """)

  @Argument(help: "A PCI address (that device) or an IOMMU group number (every endpoint of it).")
  var target: String

  @OptionGroup var socketOptions: SocketOptions

  @Option(help: "legacy, iommufd or auto.")
  var backend: Backend = .auto

  @Option(help: "The guest this is for, when the group is reserved for one.")
  var guest: String?

  @Option(help: "What a device request does to CMD: term (SIGTERM) or ignore.")
  var onRequest: String = "term"

  @Flag(help: "Run the command after the separator with the descriptors.")
  var exec = false

  @Argument(parsing: .postTerminator, help: "The command and its arguments.")
  var command: [String] = []

  func validate() throws {
    guard exec, !command.isEmpty else { throw ValidationError("open needs --exec -- CMD [ARGS...]") }
    guard ["term", "ignore"].contains(onRequest) else { throw ValidationError("--on-request must be term or ignore") }
  }

  func run() throws {
    try reportingErrors {
      let started = monotonicSeconds()
      let client = try brokerCall { try BrokerClient(socketPath: socketOptions.socket) }
      let grant = try brokerCall { try client.open(target, backend: backend, guest: guest) }
      if ProcessInfo.processInfo.environment["SWIFT_VFIO_TIMINGS"] == "1" {
        printError(String(format: "timings: grant %.1f ms (connect, open, %d descriptors)", (monotonicSeconds() - started) * 1000, grant.descriptors.count))
      }
      let launch = Launch(grant: grant)
      let child = try launch.spawn(command)
      // Only the command holds the descriptors now: when it ends, nothing does.
      grant.close()
      let status = supervise(child, client: client, group: grant.group)
      throw ExitCode(status)
    }
  }

  /// Waits for the child, relaying device requests for its own group to it (a watch also
  /// hears of the caller's other groups, which are not this command's business); its exit
  /// status (128+N for signal N).
  private func supervise(_ child: pid_t, client: BrokerClient, group: IOMMUGroupID) -> Int32 {
    _ = try? client.watch()
    var signalled = false
    while true {
      var status: Int32 = 0
      let done = waitpid(child, &status, WNOHANG)
      if done == child {
        let code = status & 0x7f
        return code == 0 ? (status >> 8) & 0xff : 128 + code
      }
      if done < 0 && errno != EINTR { return 70 }
      if let event = try? client.nextEvent(timeout: 0.2), event.event == .deviceRequest, event.group == group {
        printError("device request: \(event.detail ?? "")")
        if onRequest == "term" && !signalled {
          kill(child, SIGTERM)
          signalled = true
        }
      }
    }
  }
}

/// A command line and environment with a grant's descriptor numbers in them.
struct Launch {
  let grant: Grant
  /// `{device}` and the others, to descriptor numbers.
  let substitutions: [String: String]

  init(grant: Grant) {
    self.grant = grant
    self.substitutions = Launch.placeholders(grant)
  }

  private static func placeholders(_ grant: Grant) -> [String: String] {
    var values: [String: String] = [:]
    let devices = grant.descriptors.filter { $0.0.kind == .device }
    values["{device}"] = devices.first.map { String($0.1) }
    values["{devices}"] = devices.map { String($0.1) }.joined(separator: ",")
    values["{iommufd}"] = grant.first(.iommufd).map { String($0.1) }
    values["{container}"] = grant.first(.container).map { String($0.1) }
    values["{group}"] = grant.first(.group).map { String($0.1) }
    return values.compactMapValues { $0 }
  }

  var environment: [String: String] {
    var values = [
      "SWIFT_VFIO_BACKEND": grant.backend.rawValue, "SWIFT_VFIO_GROUP": grant.group.description,
      "SWIFT_VFIO_DEVICES": grant.descriptors.filter { $0.0.kind == .device }
        .map { "\($0.0.address ?? "")=\($0.1)" }.joined(separator: ","),
    ]
    for (key, placeholder) in [
      ("SWIFT_VFIO_DEVICE_FD", "{device}"), ("SWIFT_VFIO_IOMMUFD_FD", "{iommufd}"),
      ("SWIFT_VFIO_CONTAINER_FD", "{container}"), ("SWIFT_VFIO_GROUP_FD", "{group}"),
    ] {
      values[key] = substitutions[placeholder]
    }
    return values
  }

  func arguments(_ command: [String]) -> [String] {
    command.map { argument in
      substitutions.reduce(argument) { $0.replacingOccurrences(of: $1.key, with: $1.value) }
    }
  }

  /// posix_spawnp with the granted descriptors inherited (a dup2 onto itself clears
  /// close-on-exec in the child only) and nothing else of ours.
  func spawn(_ command: [String]) throws(CLIError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (_, fd) in grant.descriptors { posix_spawn_file_actions_adddup2(&actions, fd, fd) }
    let argv = arguments(command)
    var env = ProcessInfo.processInfo.environment
    for (key, value) in environment { env[key] = value }
    let cArgs = argv.map { strdup($0) } + [nil]
    let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for p in cArgs + cEnv { free(p) } }
    // The command starts with the usual dispositions: a signal this process ignores (SIGPIPE,
    // for its socket) would stay ignored across exec, and the VMM must see the device
    // request's SIGTERM. The mask is the main thread's, which blocks nothing.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for number in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT] { sigaddset(&defaults, number) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, argv[0], &actions, &attributes, cArgs, cEnv)
    guard rc == 0 else {
      throw CLIError.usage("cannot run \(argv[0]): \(String(cString: strerror(rc)))")
    }
    return pid
  }
}

/// Runs a broker call, turning its error into the CLI's exit code and message.
func brokerCall<T>(_ body: () throws -> T) throws -> T {
  do {
    return try body()
  } catch let error as BrokerError {
    throw CLIError.broker(error)
  } catch let error as SocketError {
    throw CLIError.broker(BrokerError(.internalError, error.description))
  }
}
