import ArgumentParser
import Foundation
import VFIOHost
import VFIOLibvirt
import VFIOManager

/// `vfioctl libvirt-hook`: libvirt's QEMU hook, and its installer.
struct LibvirtHookCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "libvirt-hook",
    abstract: "libvirt's QEMU hook: a domain's PCI host devices get their whole IOMMU groups, and give them back.",
    discussion: """
      libvirtd runs the hook as `HOOK DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain XML on \
      stdin. At prepare/begin each <hostdev type='pci'> (and <interface type='hostdev'>) has its \
      whole IOMMU group detached (companions included, bridges stay with the host), its nodes \
      given to libvirt's QEMU user (user and group in qemu.conf), and the group reserved for the \
      domain; any refusal (a device in use, no reset, another guest's reservation) exits non-zero \
      with the reasons, which libvirt shows, and changes nothing. At release/end the groups go \
      back to the host exactly, or stay detached and reserved when the domain's <metadata> holds \
      <vfio:groups xmlns:vfio="https://swift-vfio.dev/xmlns/libvirt/1" keep="reserved"/>. \
      reconnect/begin and attach/begin (a restarted libvirtd) change nothing. \
      `--install` writes /etc/libvirt/hooks/qemu.d/swift-vfio for the installed vfioctl.
      """)

  @Argument(help: "DOMAIN OPERATION SUB-OPERATION EXTRA, as libvirtd passes them.")
  var arguments: [String] = []

  @Flag(help: "Write the hook script into the hooks directory (for the vfioctl installed in /usr/local/bin, /usr/bin or /usr/sbin).")
  var install = false

  @Flag(help: "Remove the hook script.")
  var uninstall = false

  @Option(help: "libvirt's hooks directory.")
  var hooksDirectory: String = HookInstaller.defaultDirectory

  @Option(help: "libvirt's QEMU driver configuration, for the user and group QEMU runs as.")
  var qemuConf: String = QEMUDriverConfig.defaultPath

  @Option(help: "Seconds to wait for another vfioctl changing the same group.")
  var wait: Double = 30

  @OptionGroup var stateOptions: StateOptions
  @OptionGroup var host: HostOptions

  func validate() throws {
    if install && uninstall { throw ValidationError("--install or --uninstall, not both") }
    if install || uninstall {
      guard arguments.isEmpty else { throw ValidationError("--install and --uninstall take no DOMAIN arguments") }
      guard hooksDirectory.hasPrefix("/") else { throw ValidationError("--hooks-directory must be an absolute path") }
    } else if arguments.count < 3 {
      throw ValidationError("expected DOMAIN OPERATION SUB-OPERATION [EXTRA] (as libvirtd calls a hook), or --install")
    }
  }

  func run() throws {
    let manager = stateOptions.manager(host: host, lockTimeout: wait)
    if install || uninstall {
      try reportingErrors {
        var options: [String] = []
        if stateOptions.state != Ledger.defaultDirectory { options += ["--state", stateOptions.state] }
        if self.qemuConf != QEMUDriverConfig.defaultPath { options += ["--qemu-conf", self.qemuConf] }
        let installer = HookInstaller(hooksDirectory: hooksDirectory, options: options)
        print(install ? try installer.install(manager: manager) : installer.uninstall())
      }
      return
    }
    let sysfs = host.sysfs
    let configPath = qemuConf
    // libvirtd runs the hook script, which execs vfioctl: the parent is libvirtd.
    let runner = ProcessIdentity.current(pid: Int(getppid()), sysfs: sysfs)
    let hook = LibvirtHook(manager: manager, runner: runner) { () throws(LibvirtHookError) -> Ownership? in
      do throws(QEMUDriverConfigError) {
        return try QEMUDriverConfig.read(configPath, sysfs: sysfs).ownership()
      } catch {
        throw .qemuConfig(error)
      }
    }
    do throws(LibvirtHookError) {
      let outcome = try hook.run(
        domain: arguments[0], operation: arguments[1], subOperation: arguments[2], xml: try readStandardInput())
      for line in outcome.lines { printError(line) }
    } catch {
      // libvirt shows this in its error: say which domain, and what happened to its devices.
      printError("domain '\(printable(arguments[0]))': " + error.description)
      throw ExitCode(error.exitCode)
    }
  }

  /// libvirtd writes the whole definition and closes the pipe; more than a definition may hold
  /// is refused (the hook must not be made to buffer without end).
  func readStandardInput() throws(LibvirtHookError) -> Data {
    var data = Data()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let count = read(0, &buffer, buffer.count)
      if count == 0 { return data }
      if count < 0 {
        if errno == EINTR { continue }
        throw .usage("cannot read the domain XML from stdin: \(String(cString: strerror(errno)))")
      }
      data.append(contentsOf: buffer[..<count])
      if data.count > DomainDefinition.maximumSize { throw .definition(.tooLarge(data.count)) }
    }
  }
}
