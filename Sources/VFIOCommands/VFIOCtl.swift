import ArgumentParser

/// `vfioctl`: inventory, explanation and assignment of PCI devices to VFIO.
@available(macOS 10.15, *)
public struct VFIOCtl: ParsableCommand {
  public static let configuration = CommandConfiguration(
    commandName: "vfioctl",
    abstract: "Inspect and assign PCI devices for VFIO: IOMMU groups, verdicts, plans.",
    discussion: """
      Exit codes: 0 ok, 1 negative verdict (explain, doctor) or refused (detach, attach, reset), 64 usage,
      65 ledger unreadable or from a newer version, 66 no such device or group, 69 host data unavailable,
      70 internal error, 73 state directory unusable, 74 a step failed (and was rolled back),
      75 another vfioctl is changing the group.
      Shell completions: `vfioctl --generate-completion-script bash` (or zsh, fish).
      """,
    version: version,
    subcommands: [
      ListCommand.self, ShowCommand.self, ExplainCommand.self, DoctorCommand.self, CaptureCommand.self,
      DetachCommand.self, AttachCommand.self, ResetCommand.self, RecoverCommand.self, StatusCommand.self,
      HistoryCommand.self, OwnCommand.self, DisownCommand.self, ReserveCommand.self, UnreserveCommand.self,
      OwnersCommand.self, PersistCommand.self, ReconcileCommand.self, VFsCommand.self, ServeCommand.self,
      OpenCommand.self, LibvirtHookCommand.self,
    ])

  /// The release, printed by `vfioctl --version` and recorded in captures.
  public static let version = "0.3.0"

  public init() {}
}
