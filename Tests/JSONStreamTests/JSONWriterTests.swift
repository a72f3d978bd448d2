import Foundation
import VFIOCommands
import VFIOTestSupport
import XCTest

final class JSONWriterTests: XCTestCase {
  struct Sample: Codable, Equatable {
    var text: String
    var number: Int
    var big: UInt64
    var flag: Bool
    var ratio: Double
    var missing: String?
    var empty: [Int]
    var nested: [[String: [Int]]]
  }

  func testEscapesAndStructure() throws {
    let sample = Sample(
      text: "quote \" backslash \\ newline \n tab \t bell \u{7} é", number: -42, big: UInt64.max, flag: true,
      ratio: 0.5,
      missing: nil, empty: [], nested: [["a": [1, 2]], [:]])
    let json = try JSONWriter().encode(sample)
    XCTAssertFalse(json.contains("missing"), "nil optionals are left out")
    XCTAssertTrue(json.contains("\\u0007"))
    XCTAssertEqual(try JSONDecoder().decode(Sample.self, from: Data(json.utf8)), sample)
  }

  func testKeysComeInDeclarationOrder() throws {
    let json = try JSONWriter().encode(
      Sample(text: "", number: 1, big: 2, flag: false, ratio: 1, missing: "x", empty: [3], nested: []))
    let order = ["text", "number", "big", "flag", "ratio", "missing", "empty", "nested"].map {
      json.range(of: "\"\($0)\"")!.lowerBound
    }
    XCTAssertEqual(order, order.sorted())
  }

  func testNonFiniteNumbersAreAnError() {
    XCTAssertThrowsError(try JSONWriter().encode([Double.nan]))
  }

  /// The same document as Foundation's encoder, value for value, on a real listing.
  func testMatchesFoundationOnAListing() throws {
    let report = ReportBuilder(inventory: try Fixtures.inventory("q35-sriov"), names: nil).list()
    let ours = try JSONSerialization.jsonObject(with: Data(try JSONWriter().encode(report).utf8)) as? NSDictionary
    let theirs = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(report)) as? NSDictionary
    XCTAssertNotNil(ours)
    XCTAssertEqual(ours, theirs)
  }
}
