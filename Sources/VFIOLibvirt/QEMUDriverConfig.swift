import Foundation
import VFIOHost
import VFIOManager

/// The user and group libvirt's QEMU driver runs QEMU as: `user` and `group` of
/// `/etc/libvirt/qemu.conf`, Debian's compiled-in `libvirt-qemu` for each one not set.
public struct QEMUDriverConfig: Sendable, Equatable {
  public static let defaultPath = "/etc/libvirt/qemu.conf"
  /// What Debian's libvirt is built with (`-Dqemu_user`, `-Dqemu_group`); its qemu.conf says so
  /// in the commented-out `#user = "libvirt-qemu"` and `#group = "libvirt-qemu"`.
  public static let debianDefault = "libvirt-qemu"

  public let user: String
  public let group: String

  public init(user: String = debianDefault, group: String = debianDefault) {
    self.user = user
    self.group = group
  }

  /// The settings of `text` (a qemu.conf): libvirt's configuration syntax, `name = value` at the
  /// top level, `#` comments, strings in double or single quotes, lists in brackets that may span
  /// lines (skipped whole, so a string inside one is never taken for a setting).
  public static func parse(_ text: String) throws(QEMUDriverConfigError) -> QEMUDriverConfig {
    var settings: [String: String] = [:]
    var scanner = ConfScanner(Array(text.unicodeScalars))
    while let (name, value) = try scanner.nextSetting() {
      if let value { settings[name] = value }
    }
    return QEMUDriverConfig(user: settings["user"] ?? debianDefault, group: settings["group"] ?? debianDefault)
  }

  /// The file at `path` under `root`; a missing file is libvirt's defaults, as for libvirtd.
  public static func read(_ path: String = defaultPath, sysfs: Sysfs) throws(QEMUDriverConfigError) -> QEMUDriverConfig {
    guard sysfs.exists(path) else { return QEMUDriverConfig() }
    guard let data = sysfs.readBytes(path, limit: 1 << 20) else { throw .unreadable(path) }
    do {
      return try parse(String(decoding: data, as: UTF8.self))
    } catch .syntax(let why) {
      throw .syntax("\(path): \(why)")
    }
  }

  /// The owner QEMU's group nodes get, resolved as libvirt resolves them: `+N` is the number N;
  /// otherwise a name first and, when no such entry exists, a number. Mode 0600: the QEMU user
  /// alone, as libvirt's own labelling leaves it. nil when that is root (nothing to give).
  public func ownership(
    users: (String) -> Int? = Self.passwdEntry, groups: (String) -> Int? = Self.groupEntry
  ) throws(QEMUDriverConfigError) -> Ownership? {
    guard let uid = Self.resolve(user, names: users) else { throw .noSuchUser(user) }
    guard let gid = Self.resolve(group, names: groups) else { throw .noSuchGroup(group) }
    return uid == 0 && gid == 0 ? nil : Ownership(uid: uid, gid: gid, mode: 0o600)
  }

  /// `+N` is the number N; otherwise a name first and, when there is no such entry, a number.
  static func resolve(_ text: String, names: (String) -> Int?) -> Int? {
    if let number = plusNumber(text) { return number }
    if let id = names(text) { return id }
    guard let number = Int(text), number >= 0, number < Int(UInt32.max) else { return nil }
    return number
  }

  static func plusNumber(_ text: String) -> Int? {
    guard text.hasPrefix("+"), let value = Int(text.dropFirst()), value >= 0, value < Int(UInt32.max) else { return nil }
    return value
  }

  public static func passwdEntry(_ name: String) -> Int? { getpwnam(name).map { Int($0.pointee.pw_uid) } }

  public static func groupEntry(_ name: String) -> Int? { getgrnam(name).map { Int($0.pointee.gr_gid) } }
}

public enum QEMUDriverConfigError: Error, Equatable, CustomStringConvertible {
  case unreadable(String)
  case syntax(String)
  case noSuchUser(String)
  case noSuchGroup(String)

  public var description: String {
    switch self {
    case .unreadable(let path): return "cannot read \(path) (libvirt's QEMU driver configuration); pass --qemu-conf PATH"
    case .syntax(let why): return "qemu.conf: \(why)"
    case .noSuchUser(let user):
      return "libvirt runs QEMU as user '\(printable(user))' (qemu.conf), which this host does not have; fix `user` in qemu.conf"
    case .noSuchGroup(let group):
      return "libvirt runs QEMU with group '\(printable(group))' (qemu.conf), which this host does not have; fix `group` in qemu.conf"
    }
  }
}

/// Walks libvirt's configuration syntax one top-level setting at a time.
private struct ConfScanner {
  let text: [Unicode.Scalar]
  var index = 0
  var line = 1

  init(_ text: [Unicode.Scalar]) { self.text = text }

  var current: Unicode.Scalar? { index < text.count ? text[index] : nil }

  mutating func advance() {
    if current == "\n" { line += 1 }
    index += 1
  }

  /// Spaces, newlines and comments.
  mutating func skipBlank() {
    while let c = current {
      if c == "#" {
        while let d = current, d != "\n" { advance() }
      } else if c == " " || c == "\t" || c == "\r" || c == "\n" {
        advance()
      } else {
        return
      }
    }
  }

  /// The next `name = value`: the value when it is a string, nil for numbers and lists.
  mutating func nextSetting() throws(QEMUDriverConfigError) -> (String, String?)? {
    skipBlank()
    guard current != nil else { return nil }
    var name = ""
    while let c = current, c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "_" || c == "." {
      name.unicodeScalars.append(c)
      advance()
    }
    guard !name.isEmpty else { throw .syntax("line \(line): expected a setting name") }
    skipBlank()
    guard current == "=" else { throw .syntax("line \(line): expected '=' after \(name)") }
    advance()
    skipBlank()
    let value = try self.value()
    // A setting may end with ';'.
    while current == " " || current == "\t" { advance() }
    if current == ";" { advance() }
    return (name, value)
  }

  mutating func value() throws(QEMUDriverConfigError) -> String? {
    guard let c = current else { throw .syntax("line \(line): a setting without a value") }
    switch c {
    case "\"", "'": return try string()
    case "[":
      advance()
      while true {
        skipBlank()
        guard let d = current else { throw .syntax("line \(line): a list without its ']'") }
        if d == "]" { advance(); return nil }
        if d == "," { advance(); continue }
        _ = try value()
      }
    default:
      var word = ""
      while let d = current, !" \t\r\n#;,]".unicodeScalars.contains(d) {
        word.unicodeScalars.append(d)
        advance()
      }
      guard !word.isEmpty else { throw .syntax("line \(line): unexpected '\(c)'") }
      return nil
    }
  }

  mutating func string() throws(QEMUDriverConfigError) -> String {
    let quote = current!
    advance()
    var value = ""
    while let c = current {
      advance()
      if c == quote { return value }
      guard c != "\n" else { break }
      value.unicodeScalars.append(c)
    }
    throw .syntax("line \(line): a string without its closing \(quote)")
  }
}
