import ArgumentParser
import Foundation
import VFIOManagerTestSupport
import VFIOTestSupport

/// Mutation fuzzer for vfioctl's read side: corrupts scratch copies of the captured fixtures
/// (Tests/Fixtures) and runs every command on them, with and without --json. A run fails on
/// a trap (a signal), a hang, an exit code outside the documented set, or invalid JSON.
@main
struct VFIOFuzz: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vfio-fuzz",
    abstract: "Run vfioctl on mutated copies of the captured fixtures; fail on a trap, a hang or bad output.",
    discussion: """
      The same --seed gives the same trees and runs. To replay one failing iteration:
      vfio-fuzz --seed S --first I --iterations 1 --keep DIR (the tree stays in DIR).
      """)

  @Option(help: "The vfioctl to test (default: the one built next to vfio-fuzz).")
  var vfioctl: String?

  @Option(help: "Directory of captured trees.")
  var fixtures: String = Fixtures.directory

  @Option(help: "Seed of the run.")
  var seed: UInt64 = 1

  @Option(help: "Number of the first iteration (to replay one).")
  var first: Int = 0

  @Option(help: "Iterations to run.")
  var iterations: Int = 20

  @Option(help: "Stop after this many seconds even if iterations remain (0: no limit).")
  var seconds: Double = 0

  @Option(help: "Seconds one command may take before it counts as a hang.")
  var timeout: Double = 10

  @Option(help: "Most mutations applied to one tree.")
  var mutations: Int = 3

  @Option(help: "Keep the trees of failing iterations in this directory.")
  var keep: String?

  /// sysexits(3) codes vfioctl documents; anything else is a bug.
  static let documentedExitCodes: Set<Int32> = [0, 1, 64, 65, 66, 69, 70, 73, 74, 75]

  func validate() throws {
    guard iterations > 0, mutations > 0, timeout > 0 else {
      throw ValidationError("--iterations, --mutations and --timeout must be positive")
    }
  }

  func run() throws {
    let executable = vfioctl ?? siblingExecutable("vfioctl")
    guard access(executable, X_OK) == 0 else {
      throw ValidationError("\(executable) is not an executable; build it (swift build) or pass --vfioctl")
    }
    let trees = FileTree.entries(fixtures).filter(\.isDirectory).map(\.name).sorted()
    guard !trees.isEmpty else { throw ValidationError("no fixture trees in \(fixtures)") }
    let scratch = try TemporaryTree()
    let start = monotonicSeconds()
    var stats = Stats()
    for iteration in first..<(first + iterations) {
      if seconds > 0 && monotonicSeconds() - start > seconds { break }
      var rng = SplitMix64(seed: seed ^ (UInt64(iteration) &* 0x9E37_79B9_7F4A_7C15))
      let fixture = trees.randomElement(using: &rng)!
      let tree = scratch.path + "/tree"
      mkdir(tree, 0o755)
      try FileTree.copy(fixtures + "/" + fixture, to: tree)
      let targets = FileTree.entries(tree + "/sys/bus/pci/devices").map(\.name) + ["0", "3", "99"]
      var mutator = TreeMutator(root: tree)
      var applied: [String] = []
      for _ in 0..<Int.random(in: 1...mutations, using: &rng) {
        let mutation = Mutation.allCases.randomElement(using: &rng)!
        if let what = mutator.apply(mutation, &rng) { applied.append("\(mutation.rawValue): \(what)") }
      }
      let target = targets.randomElement(using: &rng)!
      var failed = false
      for command in commands(target: target, scratch: scratch.path) {
        for json in [false, true] {
          let arguments = command + ["--root", tree] + (json ? ["--json"] : [])
          let result = runProgram(executable, arguments, timeout: timeout, scratch: scratch.path)
          stats.runs += 1
          FileTree.remove(scratch.path + "/capture")
          if let problem = check(result, json: json) {
            failed = true
            stats.failures += 1
            print(
              "FAIL iteration \(iteration) (seed \(seed), fixture \(fixture)): vfioctl \(arguments.joined(separator: " "))"
            )
            print("  \(problem)")
            for line in applied { print("  mutation \(line)") }
            let tail = String(decoding: result.stderr.suffix(600), as: UTF8.self)
            for line in tail.split(separator: "\n").suffix(6) { print("  stderr: \(line)") }
          }
        }
      }
      stats.iterations += 1
      if failed, let keep {
        let destination = "\(keep)/iteration-\(iteration)"
        mkdir(keep, 0o755)
        FileTree.remove(destination)
        rename(tree, destination)
        print("  tree kept in \(destination)")
      }
      FileTree.remove(tree)
    }
    let elapsed = monotonicSeconds() - start
    print(
      "vfio-fuzz: \(stats.iterations) iterations, \(stats.runs) runs, \(stats.failures) failures in "
        + String(format: "%.1f", elapsed) + " s (seed \(seed), iterations \(first)–\(first + stats.iterations - 1))")
    if stats.failures > 0 { throw ExitCode.failure }
  }

  struct Stats {
    var iterations = 0
    var runs = 0
    var failures = 0
  }

  /// Every command that reads the host; capture writes into a directory removed after each
  /// run; the manager's commands run as dry runs (and status) against an empty state directory.
  private func commands(target: String, scratch: String) -> [[String]] {
    let state = ["--state", scratch + "/state"]
    return [
      ["list"], ["list", "--tree"], ["show", target], ["explain", target], ["doctor"],
      ["capture", scratch + "/capture"],
      ["detach", target, "--dry-run"] + state, ["attach", target, "--dry-run"] + state,
      ["reset", target, "--dry-run"] + state, ["status"] + state,
    ]
  }

  /// Why a run is a failure, or nil.
  private func check(_ result: RunResult, json: Bool) -> String? {
    guard case .exited(let code) = result.outcome else { return result.outcome.description }
    guard Self.documentedExitCodes.contains(code) else { return "undocumented \(result.outcome)" }
    guard json, code == 0 || code == 1 else { return nil }
    do {
      _ = try JSONSerialization.jsonObject(with: Data(result.stdout))
      return nil
    } catch {
      return "invalid JSON (\(result.stdout.count) bytes): \(error)"
    }
  }

  private func siblingExecutable(_ name: String) -> String {
    let me = FileTree.readLink("/proc/self/exe") ?? CommandLine.arguments[0]
    return String(me[..<(me.lastIndex(of: "/") ?? me.startIndex)]) + "/" + name
  }
}
