import ArgumentParser

/// `vfioctl`: inventory, explanation and (in later commands) assignment of PCI devices to VFIO.
public struct VFIOCtl: ParsableCommand {
  public static let configuration = CommandConfiguration(
    commandName: "vfioctl",
    abstract: "Inspect and assign PCI devices for VFIO: IOMMU groups, verdicts, plans.",
    discussion: """
      Exit codes: 0 ok, 1 negative verdict (explain, doctor), 64 usage, 66 no such device or group,
      69 host data unavailable, 70 internal error.
      Shell completions: `vfioctl --generate-completion-script bash` (or zsh, fish).
      """,
    version: version,
    subcommands: [ListCommand.self, ShowCommand.self, ExplainCommand.self, DoctorCommand.self, CaptureCommand.self])

  /// The release, printed by `vfioctl --version` and recorded in captures.
  public static let version = "0.2.0"

  public init() {}
}
