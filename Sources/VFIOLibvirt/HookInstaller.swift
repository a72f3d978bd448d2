import Foundation
import VFIOManager

/// Puts the hook where libvirtd (6.5 and later) runs it: `HOOKS/qemu.d/swift-vfio`, a small
/// script that execs an installed vfioctl, so an existing `HOOKS/qemu` (the single-script hook
/// people keep their own glue in) is left alone and still runs first.
public struct HookInstaller {
  public static let defaultDirectory = "/etc/libvirt/hooks"
  public static let scriptName = "swift-vfio"

  /// The hooks directory (absolute, on this host).
  public let hooksDirectory: String
  /// What the script passes to `vfioctl libvirt-hook` before the hook's own arguments.
  public let options: [String]

  public init(hooksDirectory: String = defaultDirectory, options: [String] = []) {
    self.hooksDirectory = hooksDirectory
    self.options = options
  }

  public var scriptPath: String { hooksDirectory + "/qemu.d/" + Self.scriptName }

  /// The script for `vfioctl` at `vfioctl`: `--` before libvirt's arguments, so a domain whose
  /// name starts with '-' is never read as an option.
  public func script(vfioctl: String) -> String {
    let command = ([vfioctl, "libvirt-hook"] + options + ["--"]).map(shellQuoted).joined(separator: " ")
    return """
      #!/bin/sh
      # Written by `vfioctl libvirt-hook --install`; `vfioctl libvirt-hook --uninstall` removes it.
      # libvirtd runs it as: swift-vfio DOMAIN OPERATION SUB-OPERATION EXTRA, the domain XML on
      # stdin. At prepare/begin swift-vfio detaches the whole IOMMU groups of the domain's PCI
      # host devices for libvirt's QEMU user; at release/end it gives them back exactly.
      exec \(command) "$@"

      """
  }

  /// Writes the script (0755) for the vfioctl the manager trusts to run as root.
  public func install(manager: AssignmentManager) throws(ManagerError) -> String {
    let vfioctl = try manager.persistence.installedVfioctl(for: "libvirt-hook --install", runner: "libvirtd")
    try manager.persistence.writeAtomically(scriptPath, script(vfioctl: vfioctl), mode: 0o755)
    return "wrote \(scriptPath) (runs \(vfioctl)); restart libvirtd (or virtqemud) so that it finds the hook"
  }

  /// Removes the script; says so when there was none.
  public func uninstall() -> String {
    if unlink(scriptPath) == 0 { return "removed \(scriptPath); restart libvirtd (or virtqemud)" }
    return "no hook at \(scriptPath): nothing to remove"
  }
}

/// `text` as one word for sh: single quotes, an embedded one closed, escaped and reopened.
func shellQuoted(_ text: String) -> String {
  if !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "/-_.=:+@".contains($0)) }) {
    return text
  }
  return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
