import Foundation
import PCI
import VFIOHost
import VFIOManager
import VFIOManagerTestSupport
import VFIOPolicy
import VFIOTestSupport
import XCTest

/// Scratch trees, the simulated PCI core and a ledger of their own for each test: the base of
/// the manager's, the broker's and the kubelet plugins' tests.
open class ManagerTestCase: XCTestCase {
  public var tree: TemporaryTree!
  public var state: TemporaryTree!
  public var kernel: SimulatedKernel!

  public func setUpTree(_ fixture: String = "q35-vtd") throws {
    tree = try TemporaryTree(copying: Fixtures.root(fixture))
    tree.exposeHostInit()
    state = try TemporaryTree()
    kernel = SimulatedKernel(root: tree.path)
  }

  public func manager(lockTimeout: Double = 0.2) -> AssignmentManager {
    AssignmentManager(
      sysfs: Sysfs(root: tree.path), host: kernel,
      configuration: .init(stateDirectory: state.path, lockTimeout: lockTimeout, command: "test"))
  }

  public func binding(_ address: String) -> DriverBinding? {
    DriverBinding.current(of: try! PCIAddress(parsing: address), sysfs: Sysfs(root: tree.path))
  }

  public func ledger() throws -> Ledger { try XCTUnwrap(try Ledger.open(directory: state.path, create: false)) }

  /// Every driver link and driver_override in the tree, to prove a refusal changed nothing.
  public func snapshot() -> [String: String] {
    var all: [String: String] = [:]
    for device in Sysfs(root: tree.path).list("/sys/bus/pci/devices") {
      all[device] = binding(device)?.description ?? "gone"
    }
    return all
  }

  public func address(_ text: String) -> PCIAddress { try! PCIAddress(parsing: text) }

  /// A refusal: the right code and words, exit 1, and neither the tree nor the ledger changed.

  public func assertRefused(
    _ body: () throws -> Void, code: String, mentions: String, file: StaticString = #filePath, line: UInt = #line
  ) throws {
    let before = snapshot()
    let writes = kernel.writes.count
    let history = historyCount()
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
      guard case ManagerError.refused(_, let refusals) = error else {
        return XCTFail("not a refusal: \(error)", file: file, line: line)
      }
      XCTAssertTrue(refusals.contains { $0.code == code }, "\(refusals)", file: file, line: line)
      XCTAssertTrue("\(error)".contains(mentions), "\(error)", file: file, line: line)
      XCTAssertEqual((error as? ManagerError)?.exitCode, 1, file: file, line: line)
    }
    XCTAssertEqual(snapshot(), before, "the tree changed", file: file, line: line)
    XCTAssertEqual(Array(kernel.writes.dropFirst(writes)), [], file: file, line: line)
    let ledgerGroups = (try? (try? Ledger.open(directory: state.path, create: false))??.groups()) ?? []
    XCTAssertTrue(ledgerGroups.allSatisfy { $0.state != .changing }, file: file, line: line)
    XCTAssertEqual(historyCount(), history, "a refusal wrote to the history", file: file, line: line)
  }

  public func historyCount() -> Int {
    guard let ledger = try? Ledger.open(directory: state.path, create: false) else { return 0 }
    return (try? ledger.history().count) ?? 0
  }

}
