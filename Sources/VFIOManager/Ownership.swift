import Foundation

/// uid, gid and mode for a group's VFIO nodes.
public struct Ownership: Codable, Sendable, Equatable, CustomStringConvertible {
  public static let defaultMode = 0o660
  public let uid: Int
  public let gid: Int
  public let mode: Int

  public init(uid: Int, gid: Int, mode: Int = Ownership.defaultMode) {
    self.uid = uid
    self.gid = gid
    self.mode = mode
  }

  public var description: String { "\(uid):\(gid) mode 0\(String(mode, radix: 8))" }
  /// What the kernel gives a fresh node, and what `disown` and broker-only groups keep.
  public static let rootOnly = Ownership(uid: 0, gid: 0, mode: 0o600)
}

extension Ownership {
  /// `USER[:GROUP]`, names or numbers, with an octal `mode`. A user alone takes the user's
  /// primary group, as chown(1) does with `USER:`; a number without a passwd entry keeps gid 0.
  /// A mode may not give anything to "other": that would hand the group to every user.
  public static func parse(_ text: String, mode modeText: String? = nil) throws(ManagerError) -> Ownership {
    let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
    guard let userText = parts.first, !userText.isEmpty, parts.count <= 2 else {
      throw .usage("--owner '\(text)': expected USER or USER:GROUP (names or numbers)")
    }
    let user = try resolveUser(userText)
    var gid = user.primaryGroup ?? 0
    if parts.count == 2 {
      guard !parts[1].isEmpty else { throw .usage("--owner '\(text)': the group after ':' is empty") }
      gid = try resolveGroup(parts[1])
    }
    var mode = defaultMode
    if let modeText {
      let digits = modeText.hasPrefix("0o") ? String(modeText.dropFirst(2)) : modeText
      guard !digits.isEmpty, digits.count <= 4, digits.allSatisfy({ ("0"..."7").contains($0) }),
        let value = Int(digits, radix: 8), value <= 0o777
      else { throw .usage("--mode '\(modeText)': expected an octal mode such as 0660") }
      guard value & 0o007 == 0 else {
        throw .usage("--mode \(modeText) gives every user the group (the \"other\" bits); use 0600 or 0660 and --owner")
      }
      guard value & 0o600 == 0o600 else {
        throw .usage("--mode \(modeText) does not let the owner read and write the group; use 0600 or 0660")
      }
      mode = value
    }
    return Ownership(uid: user.uid, gid: gid, mode: mode)
  }

  private static func resolveUser(_ text: String) throws(ManagerError) -> (uid: Int, primaryGroup: Int?) {
    if let uid = Int(text), uid >= 0, uid < Int(UInt32.max) {
      return (uid, getpwuid(uid_t(uid)).map { Int($0.pointee.pw_gid) })
    }
    guard let entry = getpwnam(text) else {
      throw .usage("--owner: no user '\(text)' on this host (getpwnam); give a name from /etc/passwd or a number")
    }
    return (Int(entry.pointee.pw_uid), Int(entry.pointee.pw_gid))
  }

  private static func resolveGroup(_ text: String) throws(ManagerError) -> Int {
    if let gid = Int(text), gid >= 0, gid < Int(UInt32.max) { return gid }
    guard let entry = getgrnam(text) else {
      throw .usage("--owner: no group '\(text)' on this host (getgrnam); give a name from /etc/group or a number")
    }
    return Int(entry.pointee.gr_gid)
  }
}
