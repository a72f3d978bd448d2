/// One way the host is using a PCI function that assigning it would take away.
public struct HostUse: Sendable, Equatable, Codable, CustomStringConvertible {
  public enum Kind: String, Sendable, Codable {
    /// A file system on a block device below the function is mounted.
    case mount
    /// A block device below the function is active swap.
    case swap
    /// A block device below the function is held by another (device mapper, md RAID).
    case holder
    /// A block device exists below the function but nothing uses it.
    case disk
    /// A network interface of the function.
    case interface
    /// The function drives the host's text console.
    case console
    /// A framebuffer or DRM card of the function.
    case display
    /// The firmware booted on this VGA device.
    case bootVGA = "boot-vga"
  }

  public let kind: Kind
  /// The block device, interface or console the use is about (`nvme0n1p2`, `eth0`, `fb0`).
  public let subject: String
  /// What the host does with it, e.g. `mounted at /home`.
  public let detail: String
  /// True when taking the device away would break something now (a mount, an interface with
  /// addresses or routes, the console); false for an idle disk or a down interface.
  public let active: Bool

  public init(kind: Kind, subject: String, detail: String, active: Bool) {
    self.kind = kind
    self.subject = subject
    self.detail = detail
    self.active = active
  }

  public var description: String { "\(subject) \(detail)" }

  /// What the user does to end this use.
  public var remedy: String {
    switch kind {
    case .mount: "unmount what is mounted from /dev/\(subject)"
    case .swap: "swapoff /dev/\(subject)"
    case .holder: "stop what holds /dev/\(subject) (its device-mapper or RAID device)"
    case .disk: "nothing: the disk just disappears from the host"
    case .interface: "ip link set \(subject) down (and move its addresses and routes elsewhere)"
    case .console: "move the host console off \(subject) (another GPU, or fbcon=map:) and unbind the vtconsole"
    case .display: "stop what uses \(subject)"
    case .bootVGA: "make another device the boot VGA in firmware"
    }
  }
}
