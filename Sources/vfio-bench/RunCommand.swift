import ArgumentParser
import Foundation
import VFIOCommands
import VFIOHost
import VFIOPolicy

/// Times `vfioctl list --json` on each tree, side by side with `lspci -k` on the same tree and
/// with the usual shell loop over /sys/kernel/iommu_groups, and prints the ratios.
struct RunCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run", abstract: "Time vfioctl list --json against lspci -k and the iommu_groups shell loop.")

  @Option(help: "The vfioctl binary to time (build it with -c release).") var vfioctl = ".build/release/vfioctl"
  @Option(help: "Runs per measurement; the median is reported.") var runs = 7
  @Option(help: "Where to generate the synthetic tree.") var synthetic = "/tmp/vfio-bench-synthetic"
  @Option(help: "Root ports (one PF each) in the synthetic tree.") var ports = 64
  @Option(help: "VFs per PF in the synthetic tree.") var vfs = 63
  @Option(help: "Devices the shell loop may visit before it is cut (it spawns lspci per device).") var loopLimit = 512
  @Argument(help: "Captured trees to time as well (default: every Tests/Fixtures/* tree).") var trees: [String] = []

  func run() throws {
    let fixtures = trees.isEmpty ? try defaultFixtures() : trees
    let count = try SyntheticTree(
      template: Templates.fixture, rootPort: Templates.rootPort, physicalFunction: Templates.physicalFunction,
      virtualFunction: Templates.virtualFunction, ports: ports, vfs: vfs
    ).write(to: synthetic)
    print("synthetic tree: \(count) functions (\(ports) root ports, \(ports) PFs x \(vfs) VFs) in \(synthetic)\n")
    print(
      pad("tree", 24) + pad("functions", 11) + pad("vfioctl", 11) + pad("in-process", 12) + pad("lspci -k", 11)
        + pad("ratio", 8) + pad("shell loop", 22) + "ratio")
    for tree in [synthetic] + fixtures {
      try measure(tree)
    }
    // After the timed runs, so the tree is as warm as it was for them.
    try breakdown(synthetic)
    try detachScope(synthetic)
    print("ratio = tool time / vfioctl time (above 1: vfioctl is faster); times are medians of \(runs) runs")
  }

  private func measure(_ tree: String) throws {
    let functions = (try? FileManager.default.contentsOfDirectory(atPath: tree + "/sys/bus/pci/devices").count) ?? 0
    let ours = try median { try spawn(vfioctl, ["list", "--json", "--root", tree]) }
    let inProcess = try median {
      let start = now()
      let inventory = try HostInventory.read(Sysfs(root: tree))
      _ = try encodeJSON(ReportBuilder(inventory: inventory, names: PCIIDDatabase.load(Sysfs())).list())
      return now() - start
    }
    let lspci = try median {
      try spawn("/usr/bin/lspci", ["-k", "-A", "linux-sysfs", "-O", "sysfs.path=\(tree)/sys/bus/pci"])
    }
    let loop = try shellLoop(tree)
    print(
      pad((tree as NSString).lastPathComponent, 24) + pad("\(functions)", 11) + pad(ms(ours), 11)
        + pad(ms(inProcess), 12)
        + pad(ms(lspci), 11) + pad(String(format: "%.2fx", lspci / ours), 8)
        + pad(ms(loop.time) + (loop.cut ? " (\(loop.visited) dev, est.)" : ""), 22)
        + String(format: "%.1fx", loop.time / ours))
  }

  /// Where the in-process time goes, stage by stage, on one tree.
  private func breakdown(_ tree: String) throws {
    var stages: [(String, Double)] = []
    var start = now()
    func lap(_ name: String) {
      let t = now()
      stages.append((name, t - start))
      start = t
    }
    let inventory = try HostInventory.read(Sysfs(root: tree))
    lap("read sysfs")
    let names = PCIIDDatabase.load(Sysfs())
    lap("load pci.ids")
    let builder = ReportBuilder(inventory: inventory, names: names)
    lap("assess groups")
    let report = builder.list()
    lap("build report")
    let json = try encodeJSON(report)
    lap("encode JSON")
    print(
      "\nin-process stages on the synthetic tree: " + stages.map { "\($0.0) \(ms($0.1))" }.joined(separator: ", ")
        + "; \(json.utf8.count / 1024) KiB of JSON")
  }

  /// What a detach of one VF reads of the synthetic tree (its group and what the verdict needs)
  /// against the whole host it read before, in process and interleaved; then the whole command,
  /// `vfioctl detach --dry-run`, beside `lspci -k` on the same tree.
  private func detachScope(_ tree: String) throws {
    let sysfs = Sysfs(root: tree)
    let whole = try HostInventory.read(sysfs)
    guard let vf = whole.devices.last(where: \.isVirtualFunction), let group = vf.iommuGroup else {
      throw BenchError("the synthetic tree has no VF in an IOMMU group")
    }
    var scopeTimes: [Double] = []
    var wholeTimes: [Double] = []
    var functions = 0
    for run in 0..<runs {
      for scoped in run % 2 == 0 ? [true, false] : [false, true] {
        let start = now()
        if scoped {
          functions = try HostInventory.read(sysfs, forVerdictsOn: [group]).devices.count
          scopeTimes.append(now() - start)
        } else {
          _ = try HostInventory.read(sysfs)
          wholeTimes.append(now() - start)
        }
      }
    }
    let scope = scopeTimes.sorted()[runs / 2]
    let all = wholeTimes.sorted()[runs / 2]
    let state = NSTemporaryDirectory() + "vfio-bench-state-\(getpid())"
    defer { try? FileManager.default.removeItem(atPath: state) }
    let command = try median {
      try spawn(vfioctl, ["detach", "--dry-run", "--root", tree, "--state", state, vf.address.description])
    }
    let lspci = try median {
      try spawn("/usr/bin/lspci", ["-k", "-A", "linux-sysfs", "-O", "sysfs.path=\(tree)/sys/bus/pci"])
    }
    print(
      "\ndetach of VF \(vf.address) (group \(group)): reads \(functions) of \(whole.devices.count) functions, "
        + "\(ms(scope)) against \(ms(all)) for the whole host (\(String(format: "%.0fx", all / scope)) less); "
        + "`vfioctl detach --dry-run` \(ms(command)), lspci -k \(ms(lspci)) (\(String(format: "%.1fx", lspci / command)))")
  }

  /// The loop people paste from wikis: every group, every member, `lspci -nns` each. When it
  /// would visit more than `loopLimit` devices it runs on the first ones and is scaled up.
  private func shellLoop(_ tree: String) throws -> (time: Double, cut: Bool, visited: Int) {
    let groups = "\(tree)/sys/kernel/iommu_groups"
    let total =
      (try? FileManager.default.subpathsOfDirectory(atPath: groups).filter { $0.contains("/devices/") }.count) ?? 0
    let visit = min(total, loopLimit)
    let script = """
      n=0
      for g in $(find \(groups)/* -maxdepth 0 -type d | sort -V); do
        echo "IOMMU Group ${g##*/}:"
        for d in $g/devices/*; do
          [ $n -ge \(visit) ] && exit 0
          n=$((n+1))
          echo "    $(lspci -A linux-sysfs -O sysfs.path=\(tree)/sys/bus/pci -nns ${d##*/})"
        done
      done
      """
    let time = try spawn("/bin/bash", ["-c", script])
    return (visit == 0 ? time : time * Double(total) / Double(visit), total > visit, visit)
  }

  private func defaultFixtures() throws -> [String] {
    let base = "Tests/Fixtures"
    return try FileManager.default.contentsOfDirectory(atPath: base).sorted().map { "\(base)/\($0)" }
      .filter { FileManager.default.fileExists(atPath: "\($0)/sys/bus/pci/devices") }
  }

  private func median(_ body: () throws -> Double) throws -> Double {
    var times: [Double] = []
    for _ in 0..<runs { times.append(try body()) }
    return times.sorted()[times.count / 2]
  }

  /// Wall time of a process whose output goes to /dev/null; a failure is an error. Spawned
  /// and reaped directly: Foundation's Process polls for the exit every 50 ms or so.
  private func spawn(_ path: String, _ arguments: [String]) throws -> Double {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let start = now()
    let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
    guard rc == 0 else { throw BenchError("cannot start \(path): \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let elapsed = now() - start
    // WIFEXITED && WEXITSTATUS == 0
    guard status & 0x7F == 0, (status >> 8) & 0xFF == 0 else {
      throw BenchError("\(path) \(arguments.joined(separator: " ")) failed (wait status \(status))")
    }
    return elapsed
  }
}

private func now() -> Double {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

private func ms(_ seconds: Double) -> String { String(format: "%.1f ms", seconds * 1000) }
private func pad(_ text: String, _ width: Int) -> String {
  text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}
