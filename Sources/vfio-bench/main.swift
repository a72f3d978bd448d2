import ArgumentParser

/// Benchmarks for swift-vfio's inventory: synthetic trees and side-by-side timing.
struct VFIOBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "vfio-bench",
    abstract: "Generate large synthetic sysfs trees and time `vfioctl list --json` against lspci and a shell loop.",
    subcommands: [GenerateCommand.self, RunCommand.self])
}

VFIOBench.main()
