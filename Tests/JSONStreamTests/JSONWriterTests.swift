import Foundation
import JSONStream
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

  struct Attributes: Encodable {
    let attributes: [String: Int]
    func encode(to encoder: any Encoder) throws {
      var container = encoder.container(keyedBy: StringKey.self)
      try container.encodeSorted(attributes, forKey: StringKey("attributes"))
    }
  }

  func testEncodeSortedWritesAMapsKeysInOrder() throws {
    let attributes = Dictionary(uniqueKeysWithValues: (0..<40).map { ("key\(($0 * 7) % 40)", $0) })
    let json = try JSONWriter().encode(Attributes(attributes: attributes))
    let order = attributes.keys.sorted().map { json.range(of: "\"\($0)\"")!.lowerBound }
    XCTAssertEqual(order, order.sorted())
    XCTAssertEqual(try JSONDecoder().decode([String: [String: Int]].self, from: Data(json.utf8)), ["attributes": attributes])
  }

  func testNonFiniteNumbersAreAnError() {
    XCTAssertThrowsError(try JSONWriter().encode([Double.nan]))
  }
}
