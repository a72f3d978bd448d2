import Foundation
import PCI
import VFIOHost
import VFIOPolicy
import VFIOTestSupport
import XCTest

/// A detach reads its groups and what their verdicts depend on, not the whole host
/// (`HostInventory.read(_:forVerdictsOn:)`). Its verdicts must be the whole host's: checked for
/// every group and every function of every captured tree, and for each edited tree of
/// `AssessorTests`.
final class VerdictScopeTests: XCTestCase {
  func testEveryGroupAndFunctionOfEveryCaptureIsJudgedAlikeFromItsScope() throws {
    var seen: Set<Reason.Code> = []
    var smaller = 0
    var judged = 0
    let trees = try FileManager.default.contentsOfDirectory(atPath: Fixtures.directory).sorted().filter {
      var isDirectory: ObjCBool = false
      return FileManager.default.fileExists(atPath: Fixtures.root($0), isDirectory: &isDirectory)
        && isDirectory.boolValue
    }
    XCTAssertGreaterThanOrEqual(trees.count, 7)
    for tree in trees {
      let sysfs = Fixtures.sysfs(tree)
      let whole = try HostInventory.read(sysfs, pageSize: 4096)
      for group in whole.groups {
        let scope = try assertJudgedAlike(.group(group.id), sysfs, whole, tree)
        seen.formUnion(Assessor(inventory: whole).assess(group: group.id).reasons.map(\.code))
        if scope.devices.count < whole.devices.count { smaller += 1 }
        judged += 1
      }
      for device in whole.devices {
        _ = try assertJudgedAlike(.device(device.address), sysfs, whole, tree)
        judged += 1
      }
      // A batch reads one part for all its groups.
      let ids = whole.groups.map(\.id)
      let batch = try HostInventory.read(sysfs, forVerdictsOn: ids, pageSize: 4096)
      XCTAssertEqual(batch.groups.map(\.id), ids, tree)
      for id in ids {
        XCTAssertEqual(
          try encoded(Assessor(inventory: batch).assess(group: id)),
          try encoded(Assessor(inventory: whole).assess(group: id)),
          "\(tree) group \(id) in a batch of every group")
      }
    }
    // The captures hold every fact a scope must reach beyond a group's members; without them
    // this test would prove nothing about the scans that find those facts.
    for code in [Reason.Code.busReset, .sharedINTx, .subPageBAR, .sriovVFs, .behindPCIBridge, .acsMissing, .hostUse] {
      XCTAssertTrue(seen.contains(code), "no capture has a \(code) reason")
    }
    XCTAssertGreaterThan(judged, 120)
    // Most groups need far less than the whole host (all would, were a scope to read everything).
    XCTAssertGreaterThan(smaller, judged / 4)
  }

  func testAVirtualFunctionsScopeIsItsOwnFunctionItsPFAndTheBridgesAbove() throws {
    let sysfs = Fixtures.sysfs("q35-sriov")
    let whole = try HostInventory.read(sysfs, pageSize: 4096)
    let vf = try XCTUnwrap(whole.devices.first { $0.isVirtualFunction })
    let group = try XCTUnwrap(vf.iommuGroup)
    let scope = try HostInventory.read(sysfs, forVerdictsOn: [group], pageSize: 4096)
    XCTAssertFalse(scope.isWholeHost)
    XCTAssertTrue(whole.isWholeHost)
    // The VF, its PF (a VF's config space reads 0xffff where its IDs are: the kernel takes
    // them from the PF) and the bridges above it; no other group's functions.
    let pf = try XCTUnwrap(vf.physicalFunction)
    XCTAssertEqual(Set(scope.devices.map(\.address)), Set([vf.address, pf] + vf.upstreamBridges))
    XCTAssertEqual(scope.device(vf.address)?.deviceID, whole.device(vf.address)?.deviceID)
    XCTAssertEqual(scope.groups.map(\.id), [group])
  }

  func testAGroupThatIsNotThereIsJudgedAsMissing() throws {
    let sysfs = Fixtures.sysfs("q35-vtd")
    let scope = try HostInventory.read(sysfs, forVerdictsOn: [IOMMUGroupID(999)], pageSize: 4096)
    XCTAssertTrue(scope.devices.isEmpty)
    XCTAssertTrue(scope.iommuEnabled)
    XCTAssertEqual(Assessor(inventory: scope).assess(group: IOMMUGroupID(999)).reasons.map(\.code), [.noGroup])
  }
}

/// What a judgement is asked about.
enum Judged {
  case group(IOMMUGroupID)
  case device(PCIAddress)
}

/// Asserts that `target` is assessed the same from the part of the host read for it as from
/// the `whole` host; returns that part.
@discardableResult
func assertJudgedAlike(
  _ target: Judged, _ sysfs: Sysfs, _ whole: HostInventory, _ label: String = "", file: StaticString = #filePath,
  line: UInt = #line
) throws -> HostInventory {
  let scope: HostInventory
  let fromWhole: Assessment?
  let fromScope: Assessment?
  switch target {
  case .group(let id):
    scope = try HostInventory.read(sysfs, forVerdictsOn: [id], pageSize: whole.pageSize)
    fromWhole = Assessor(inventory: whole).assess(group: id)
    fromScope = Assessor(inventory: scope).assess(group: id)
  case .device(let address):
    scope = try HostInventory.read(sysfs, forVerdictsOn: [], devices: [address], pageSize: whole.pageSize)
    fromWhole = Assessor(inventory: whole).assess(device: address)
    fromScope = Assessor(inventory: scope).assess(device: address)
  }
  XCTAssertEqual(
    try encoded(fromScope), try encoded(fromWhole), "\(label) \(target): judged differently from its scope", file: file,
    line: line)
  return scope
}

/// An assessment as JSON with sorted keys: two are the same verdict, reasons, members and plan
/// when these are equal.
func encoded(_ assessment: Assessment?) throws -> String {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.sortedKeys]
  return String(decoding: try encoder.encode(assessment), as: UTF8.self)
}
