import Foundation
import XCTest

@testable import VFIOBrokerClient

/// The protocol as docs/broker.md writes it, byte for byte, both ways: every example line
/// decodes and encodes back to itself, and what the client builds encodes to the lines.
final class WireGoldenTests: XCTestCase {
  /// The `wire` block of docs/broker.md: (direction, body) per line.
  func examples() throws -> [(request: Bool, body: String)] {
    let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../docs/broker.md")
    let doc = try String(contentsOf: docs, encoding: .utf8)
    let block = try XCTUnwrap(doc.components(separatedBy: "```wire\n").dropFirst().first?.components(separatedBy: "```").first)
    return block.split(separator: "\n").map { line in (line.hasPrefix("> "), String(line.dropFirst(2))) }
  }

  func body(_ message: some Encodable) throws -> String {
    String(decoding: try Wire.encode(message).dropFirst(4), as: UTF8.self)
  }

  func testEveryExampleDecodesAndEncodesBackToTheSameBytes() throws {
    let lines = try examples()
    XCTAssertGreaterThanOrEqual(lines.count, 19)
    for (isRequest, line) in lines {
      let bytes = Array(line.utf8)
      let again =
        isRequest
        ? try body(try Wire.decode(BrokerRequest.self, from: bytes))
        : try body(try Wire.decode(BrokerResponse.self, from: bytes))
      XCTAssertEqual(again, line)
    }
  }

  func testWhatTheClientSendsIsWhatTheDocumentSays() throws {
    let requests = try examples().filter(\.request).map(\.body)
    let built = [
      BrokerRequest(.hello, id: 1, version: Wire.version),
      BrokerRequest(.list, id: 2),
      BrokerRequest(.open, id: 3, target: "0000:00:03.0", backend: "iommufd"),
      BrokerRequest(.open, id: 4, target: "4", backend: "legacy", guest: "vm1"),
      BrokerRequest(.watch, id: 5),
      BrokerRequest(.release, id: 6, group: 3),
      BrokerRequest(.revoke, id: 7, group: 4, wait: 20, force: true),
      BrokerRequest(.open, id: 8, target: "2"),
    ]
    XCTAssertEqual(try built.map(body), requests)
    var refusal = BrokerResponse.failure(
      BrokerError(.notOwner, "IOMMU group 2 is not given to uid 1000", next: "vfioctl detach 2 --owner 1000 --broker-only, as root"),
      id: 8)
    XCTAssertEqual(try body(refusal), try examples().last?.body)
    refusal.error = nil
    XCTAssertEqual(try body(refusal), "{\"id\":8,\"type\":\"error\"}")
  }
}
