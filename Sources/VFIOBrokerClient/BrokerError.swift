/// What the broker refuses or fails at: a code a program can branch on, a message for the
/// person, and what to do next, as the CLI's errors have.
public struct BrokerError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
  public enum Code: String, Codable, Sendable {
    /// The message is not JSON, or not a request of this protocol.
    case malformed
    /// The message is over the size limit.
    case oversized
    /// The client speaks another protocol version.
    case version
    /// The request names nothing that exists, or names it badly.
    case invalidTarget = "invalid-target"
    /// The group is not detached by swift-vfio.
    case notDetached = "not-detached"
    /// The ledger gives the group to nobody, or to another user.
    case notOwner = "not-owner"
    /// The group is reserved for another guest (or the request names none).
    case reserved
    /// Someone holds the group now.
    case leased
    /// The administrator is taking the group back to the host.
    case closing
    /// The kernel refused to open what the ledger allows (not viable, no cdev, ...).
    case openFailed = "open-failed"
    /// Only root may do this.
    case notPermitted = "not-permitted"
    /// The broker cannot read its ledger.
    case ledger
    /// The broker is at its connection limit.
    case busy
    case internalError = "internal"
  }

  public let code: Code
  public let message: String
  public let next: String?

  public init(_ code: Code, _ message: String, next: String? = nil) {
    self.code = code
    self.message = message
    self.next = next
  }

  public var description: String { next.map { "\(message) (\($0))" } ?? message }
}
