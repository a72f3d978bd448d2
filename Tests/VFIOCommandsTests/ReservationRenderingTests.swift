import Foundation
import VFIOCommands
import VFIOHost
import VFIOManager
import VFIOManagerTestCase
import XCTest

/// What `list` prints of a group the manager reserved, from the ledger as it recorded it.
final class ReservationRenderingTests: ManagerTestCase {
  func testListSaysForWhomAGroupIsReserved() throws {
    try setUpTree()
    _ = try manager().groups.detach(.group(2))
    _ = try manager().access.reserve(.group(2), for: "vm1", owner: Ownership(uid: 1000, gid: 1000))
    let records = try LedgerRecord.all(directory: state.path)
    let inventory = try HostInventory.read(Sysfs(root: tree.path), pageSize: 4096)
    let listed = HumanRenderer.list(ReportBuilder(inventory: inventory, names: nil, ledger: records).list())
    XCTAssertTrue(listed.contains("reserved for vm1 (owner 1000)"), listed)
  }
}
