import Foundation
import JSONStream
import VFIOCommands
import VFIOTestSupport
import XCTest

final class ListingJSONTests: XCTestCase {
  /// The same document as Foundation's encoder, value for value, on a real listing.
  func testMatchesFoundationOnAListing() throws {
    let report = ReportBuilder(inventory: try Fixtures.inventory("q35-sriov"), names: nil).list()
    let ours = try JSONSerialization.jsonObject(with: Data(try JSONWriter().encode(report).utf8)) as? NSDictionary
    let theirs = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(report)) as? NSDictionary
    XCTAssertNotNil(ours)
    XCTAssertEqual(ours, theirs)
  }
}
