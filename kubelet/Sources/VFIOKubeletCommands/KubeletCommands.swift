import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import VFIOCommands
import VFIOHost
import VFIOKubelet
import VFIOManager

/// `vfio-kubelet-plugin`: the node agent of a Kubernetes cluster, an executable of its own so
/// that `vfioctl` links no gRPC, NIO or HTTP client.
@available(macOS 10.15, *)
public struct KubeletPlugin: AsyncParsableCommand {
  public static let configuration = CommandConfiguration(
    commandName: "vfio-kubelet-plugin",
    abstract: "Serve the kubelet: a DRA driver or a classic device plugin handing out whole IOMMU groups.",
    discussion: "Exit codes as vfioctl's; the DaemonSet in deploy/ runs it.",
    version: VFIOCtl.version,
    subcommands: [KubeletDRACommand.self, KubeletDevicePluginCommand.self])

  public init() {}

  /// Parses the command line and awaits the plugin (ArgumentParser's own async entry point
  /// wants the command marked for Apple platforms first).
  public static func runMain() async {
    do {
      var command = try parseAsRoot()
      if var plugin = command as? any AsyncParsableCommand {
        try await plugin.run()
      } else {
        try command.run()
      }
    } catch {
      exit(withError: error)
    }
  }
}

extension HostOptions {
  /// Whose network and mounts the kubelet plugins judge host use by: the host's init on a
  /// live host (a plugin in a pod sees only its own), the capture's own on a `--root` tree.
  var kubeletView: HostView { root == "/" ? .hostInit : .caller }
}

extension VFIOInterface: ExpressibleByArgument {}

/// Where the kubelet keeps its plugin sockets.
struct KubeletOptions: ParsableArguments {
  @Option(help: "The kubelet's root directory (plugin sockets go below it).")
  var kubeletDir: String = "/var/lib/kubelet"

  var paths: KubeletPaths { KubeletPaths(directory: kubeletDir) }
}

/// swift-log on stderr, once per process.
func bootstrapLogging() {
  LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = .info
    return handler
  }
}

/// Runs `body`, printing a `KubeletError` with what to do and exiting with its code.
func reportingKubeletErrors(_ body: () async throws -> Void) async throws {
  do { try await body() } catch let error as KubeletError {
    printError(error.description)
    throw ExitCode(error.exitCode)
  } catch let error as CLIError {
    printError(error.description)
    throw ExitCode(error.exitCode)
  }
}

struct KubeletDRACommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "dra",
    abstract: "Run the DRA kubelet plugin, or print the ResourceSlices this node publishes.",
    discussion: """
      Publishes one device per assignable IOMMU group (named group-N, companions included) with the \
      attributes resource.kubernetes.io/pciBusID, pcieRoot and numaNode and its own (iommuGroup, vendor, \
      device, class, functions, functionCount, verdict, resetMethod, sriov); a PF and its VFs draw on one \
      shared counter set, so a claim never gets both. The slices are kept true: kernel uevents \
      (add, remove, bind, unbind, VF counts) and ledger writes republish them with a higher pool \
      generation, an unhealthy device is tainted (NoSchedule; NoExecute once gone) and its health \
      streamed to the kubelet (DRAResourceHealth v1 and v1alpha1). NodePrepareResources detaches each \
      allocated group through the assignment manager (owned as the DeviceClass's opaque parameters \
      owner and mode say), writes a CDI spec naming the claim (legacy nodes; with iommufd also \
      /dev/iommu and the cdevs where the kernel has them) and each request's device metadata \
      (KEP-5304, mounted at /var/run/kubernetes.io/dra-device-attributes); NodeUnprepareResources \
      attaches it back and removes both. Claims on different groups are prepared at once. SIGTERM \
      stops the plugin after the calls in flight, its sockets removed. A claim's allocation is read \
      from the API server (in-cluster or the kubeconfig option) or from a directory of ResourceClaim \
      files (the claims option).
      """)

  @Option(help: "The DRA driver name (a DNS subdomain).")
  var driver: String = "vfio.swift-vfio.io"

  @Option(help: "The node name (default: $NODE_NAME, else the host name).")
  var nodeName: String?

  @OptionGroup var kubelet: KubeletOptions

  @Option(help: "Where CDI specs are written (the container runtime reads them there).")
  var cdiDir: String = "/var/run/cdi"

  @Option(help: "The VFIO nodes a container gets: legacy (/dev/vfio/vfio and /dev/vfio/N) or iommufd.")
  var interface: VFIOInterface = .legacy

  @Option(help: "Read each claim's allocation from DIR/UID.json (a ResourceClaim) instead of the API server.")
  var claims: String?

  @Option(help: "A kubeconfig with a bearer token (default: in-cluster service account).")
  var kubeconfig: String?

  @Flag(help: "Publish and prepare groups without a reset method too (userspace drivers that need none).")
  var allowNoReset = false

  @Flag(help: "Print the ResourceSlices as a JSON List and exit (works on a capture with the root option).")
  var printSlices = false

  @Option(help: "Publish the ResourceSlices as files in DIR instead of to the API server.")
  var slicesDir: String?

  @Option(help: "Seconds between looks at the host when no uevent came (health: AER counts).")
  var resync: Double = 10

  @OptionGroup var stateOptions: StateOptions
  @OptionGroup var host: HostOptions

  var node: String {
    nodeName ?? ProcessInfo.processInfo.environment["NODE_NAME"] ?? ProcessInfo.processInfo.hostName
  }

  func run() async throws {
    try await reportingKubeletErrors {
      let manager = stateOptions.manager(host: host)
      let cdi = CDIWriter(
        directory: cdiDir, kind: cdiKind(driver), resourceName: driver, interface: interface, sysfs: host.sysfs)
      let metadata = DeviceMetadataWriter(
        driver: driver, pluginDirectory: kubelet.paths.pluginDirectory(driver: driver), cdiDirectory: cdiDir)
      let preparer = ClaimPreparer(
        manager: manager, cdi: cdi, metadata: metadata, driver: driver, allowNoReset: allowNoReset,
        view: host.kubeletView, logger: Logger(label: "vfio.dra"))
      let reader = NodeReader(preparer: preparer, oneLook: printSlices)
      if printSlices {
        let snapshot = try reader.read()
        let slices = SliceBuilder(driver: driver, nodeName: node).slices(devices: snapshot.devices, health: snapshot.health)
        print(try sliceJSON(SliceList(items: slices)), terminator: "")
        return
      }
      bootstrapLogging()
      let logger = Logger(label: "vfio.dra")
      let api =
        try kubeconfig.map { path throws(KubeletError) in
          guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw KubeletError.usage("--kubeconfig \(path): cannot read it")
          }
          return try APIServer.kubeconfig(text)
        } ?? APIServer.inCluster()
      let source: any ClaimSource
      if let claims {
        source = ClaimDirectory(path: claims)
      } else if let api {
        source = APIServerClaims(api: api)
      } else {
        throw KubeletError.usage("no API server (not in a cluster): give --kubeconfig FILE or --claims DIR")
      }
      let publisher: any SlicePublisher
      if let slicesDir {
        publisher = SliceDirectory(path: slicesDir)
      } else if let api {
        publisher = APIServerSlices(api: api, driver: driver, nodeName: node)
      } else {
        throw KubeletError.usage("no API server to publish ResourceSlices to: give --kubeconfig FILE or --slices-dir DIR")
      }
      // The ledger's directory is watched for detach, own, reserve and lease: it must exist.
      if mkdir(stateOptions.state, 0o700) != 0 && errno != EEXIST {
        throw KubeletError.usage("--state \(stateOptions.state): \(String(cString: strerror(errno)))")
      }
      let monitor: HostChangeMonitor
      do throws(HostChangeMonitor.Failure) { monitor = try HostChangeMonitor(watching: [stateOptions.state]) } catch {
        throw KubeletError.usage(error.description)
      }
      let health = HealthBoard(pool: node)
      let controller = SliceController(
        driver: driver, nodeName: node, read: { () throws(KubeletError) in try reader.read() }, publisher: publisher,
        triggers: hostTriggers(monitor: monitor, resync: resync), observe: { health.update($0) }, logger: logger)
      let plugin = DRAPlugin(
        driver: driver, paths: kubelet.paths, preparer: preparer, claims: source, health: health, logger: logger)
      try await ServiceGroup(
        configuration: .init(
          services: [.init(service: plugin), .init(service: controller)], gracefulShutdownSignals: [.sigterm, .sigint],
          logger: logger)
      ).run()
    }
  }
}

/// `{"apiVersion": "v1", "kind": "List", "items": [...]}`: what `kubectl apply -f` takes.
struct SliceList: Encodable {
  var apiVersion = "v1"
  var kind = "List"
  let items: [ResourceSlice]
}

/// The CDI kind of a driver's specs: `<driver>/pci`.
func cdiKind(_ driver: String) -> String { driver + "/pci" }

struct KubeletDevicePluginCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "device-plugin",
    abstract: "Run the classic (v1beta1) device plugin: one device per IOMMU group, for KubeVirt and older clusters.",
    discussion: """
      Registers the resource with the kubelet and serves ListAndWatch (a group is Healthy once every \
      endpoint is on vfio-pci: detach it first with vfioctl detach or persist), GetPreferredAllocation \
      (groups of one card together, one NUMA node) and Allocate (/dev/vfio/vfio and /dev/vfio/N with \
      mrw, and PCI_RESOURCE_<NAME> with the functions). Registers again whenever the kubelet restarts.
      """)

  @Option(help: "The extended resource name the groups are advertised as.")
  var resourceName: String = "vfio.swift-vfio.io/pci"

  @OptionGroup var kubelet: KubeletOptions

  @Option(help: "Seconds between looks at the groups and at the kubelet's socket.")
  var poll: Double = 5

  @OptionGroup var stateOptions: StateOptions
  @OptionGroup var host: HostOptions

  func run() async throws {
    try await reportingKubeletErrors {
      bootstrapLogging()
      let plugin = DevicePlugin(
        resourceName: resourceName, paths: kubelet.paths,
        catalog: NodeCatalog(sysfs: host.sysfs, stateDirectory: stateOptions.state, view: host.kubeletView),
        pollInterval: poll, logger: Logger(label: "vfio.device-plugin"))
      try await plugin.run()
    }
  }
}
