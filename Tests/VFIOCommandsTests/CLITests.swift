import ArgumentParser
import Foundation
import ManPageCheck
import PCI
import VFIOCommands
import VFIOHost
import VFIOManagerTestSupport
import VFIOPolicy
import VFIOTestSupport
import XCTest

/// The command line's contract: parsing, exit codes, and the JSON field names scripts rely on.
final class CLITests: XCTestCase {
  private func builder(_ fixture: String = "q35-vtd") throws -> ReportBuilder {
    ReportBuilder(inventory: try Fixtures.inventory(fixture), names: nil)
  }

  func testSelectorsAcceptAddressesAndGroups() throws {
    XCTAssertEqual(try Selector(parsing: "4"), .group(4))
    XCTAssertEqual(try Selector(parsing: "01:02.0"), .device(try PCIAddress(parsing: "0000:01:02.0")))
    XCTAssertThrowsError(try Selector(parsing: "01:02"))
    XCTAssertThrowsError(try Selector(parsing: "-3"))
  }

  func testMalformedAddressIsAUsageError() {
    for arguments in [["show", "01:02"], ["explain", "banana"], ["show"], ["list", "--bogus"]] {
      XCTAssertThrowsError(try VFIOCtl.parseAsRoot(arguments), "\(arguments)") { error in
        XCTAssertEqual(VFIOCtl.exitCode(for: error).rawValue, 64, "\(arguments)")
      }
    }
    XCTAssertThrowsError(try VFIOCtl.parseAsRoot(["show", "0000:01:00"])) { error in
      XCTAssertTrue(VFIOCtl.message(for: error).contains("not a PCI address"), VFIOCtl.message(for: error))
    }
  }

  func testUnknownDeviceAndGroupExit66() throws {
    let builder = try builder()
    XCTAssertThrowsError(try builder.show(.device(try PCIAddress(parsing: "09:00.0")))) {
      XCTAssertEqual(($0 as? CLIError)?.exitCode, 66)
      XCTAssertTrue("\($0)".contains("vfioctl list"))
    }
    XCTAssertThrowsError(try builder.explain(.group(77))) { XCTAssertEqual(($0 as? CLIError)?.exitCode, 66) }
  }

  private func run(_ arguments: [String]) throws {
    var command = try VFIOCtl.parseAsRoot(arguments)
    try command.run()
  }

  func testMissingTreeExits69() throws {
    let options = try HostOptions.parse(["--root", "/nonexistent/tree"])
    XCTAssertThrowsError(try run(["list", "--root", "/nonexistent/tree"])) { error in
      XCTAssertEqual(VFIOCtl.exitCode(for: error).rawValue, 69)
    }
    XCTAssertEqual(options.root, "/nonexistent/tree")
  }

  /// Options whose value would be silently wrong or ignored are usage errors (64).
  func testOptionsThatLieAreUsageErrors() throws {
    let root = Fixtures.root("q35-vtd")
    let nonEmpty = try TemporaryTree()
    try nonEmpty.write(nonEmpty.path + "/file", text: "x")
    for arguments in [
      ["list", "--page-size", "0"], ["list", "--page-size", "6000"], ["show", "4", "--page-size", "-1"],
      ["list", "--class", "banana"], ["list", "--pci-ids", "/nonexistent/pci.ids"], ["list", "--tree", "--json"],
      ["capture", nonEmpty.path], ["capture", nonEmpty.path + "/file"], ["capture", "/tmp/x", "--page-size", "4096"],
      ["capture", "/tmp/x", "--pci-ids", "/dev/null"], ["doctor", "--page-size", "4096"],
    ] {
      XCTAssertThrowsError(try VFIOCtl.parseAsRoot(arguments + ["--root", root]), "\(arguments)") { error in
        XCTAssertEqual(VFIOCtl.exitCode(for: error).rawValue, 64, "\(arguments): \(VFIOCtl.message(for: error))")
      }
    }
    XCTAssertNoThrow(try VFIOCtl.parseAsRoot(["list", "--page-size", "65536", "--class", "ethernet", "--root", root]))
    XCTAssertEqual(VFIOCtl.version.isEmpty, false)
  }

  /// docs/vfioctl.1 is generated (scripts/man); this catches a command or option added since.
  func testManPageNamesEveryCommandAndOption() throws {
    let page = try XCTUnwrap(Sysfs().readBytes(Fixtures.directory + "/../../docs/vfioctl.1", limit: 1 << 20))
    XCTAssertEqual(manPageGaps(String(decoding: page, as: UTF8.self), VFIOCtl.self), [], "run scripts/man")
  }

  /// A fresh machine has no pci.ids; class names are built in, so the CLASS column is kept.
  func testClassNamesNeedNoPCIIDs() throws {
    let list = try builder().list()
    XCTAssertEqual(list.devices.first { $0.address.description == "0000:00:02.0" }?.className, "Ethernet controller")
    XCTAssertEqual(PCIClassNames.name(0x0108_02), "Non-Volatile memory controller")
    XCTAssertEqual(PCIClassNames.name(0xFF_0000), "Unassigned class")
    XCTAssertEqual(PCIClassNames.name(0x0C_9900), "Serial bus controller", "an unknown subclass falls back to its base")
    XCTAssertNil(PCIClassNames.name(0xEE_0000))
  }

  func testCountsArePluralisedAndGroupsNamedOnce() throws {
    let builder = try builder()
    var list = builder.list()
    list.devices = Array(list.devices.prefix(1))
    list.groups = Array(list.groups.prefix(1))
    XCTAssertTrue(HumanRenderer.list(list).contains("\n1 device in 1 IOMMU group: "), HumanRenderer.list(list))
    let explained = HumanRenderer.explain(try builder.explain(.group(4)))
    XCTAssertTrue(explained.hasPrefix("group 4: ASSIGNABLE WITH CONDITIONS\n"), explained)
  }

  func testExplainExitsOneWhenNotAssignable() throws {
    XCTAssertThrowsError(try run(["explain", "00:03.0", "--root", Fixtures.root("q35-vtd"), "--json"])) {
      XCTAssertEqual(VFIOCtl.exitCode(for: $0).rawValue, 1)
    }
    XCTAssertNoThrow(try run(["explain", "01:01.0", "--root", Fixtures.root("q35-vtd"), "--json"]))
  }

  func testListFiltersKeepTheirGroups() throws {
    let report = try builder().list()
    let filtered = DeviceFilter(classFilter: "0200", assignableOnly: true).apply(report)
    XCTAssertEqual(
      filtered.devices.map(\.address.description),
      ["0000:00:02.0", "0000:00:05.0", "0000:00:05.1", "0000:01:01.0", "0000:01:02.0"])
    XCTAssertEqual(filtered.groups.map(\.id), [2, 4, 5, 6])
  }

  func testHumanAndJSONComeFromTheSameValue() throws {
    let report = try builder().explain(.device(try PCIAddress(parsing: "01:02.0")))
    let text = HumanRenderer.explain(report)
    XCTAssertTrue(text.contains("ASSIGNABLE WITH CONDITIONS"))
    for reason in report.reasons { XCTAssertTrue(text.contains(reason.message), reason.message) }
    let decoded = try JSONDecoder().decode(ExplainReport.self, from: Data(try encodeJSON(report).utf8))
    XCTAssertEqual(decoded.reasons, report.reasons)
    XCTAssertEqual(decoded.plan, report.plan)
  }

  /// The documented field names (docs/json.md). Renaming or removing one is a breaking change:
  /// bump `Schema.version` and update the document with this test.
  func testJSONFieldNamesAreStable() throws {
    let builder = try builder("q35-sriov")
    let list = try object(builder.list())
    XCTAssertTrue(
      Set(list.keys).isSubset(of: [
        "schemaVersion", "kernelRelease", "iommu", "vfio", "groups", "devices", "unreadable",
      ]))
    XCTAssertTrue(["schemaVersion", "iommu", "vfio", "groups", "devices", "unreadable"].allSatisfy { list[$0] != nil })
    XCTAssertEqual(list["schemaVersion"] as? Int, 1)
    let devices = try XCTUnwrap(list["devices"] as? [[String: Any]])
    let required: Set = [
      "address", "vendorID", "deviceID", "classCode", "name", "kind", "iommuGroup", "resetMethods", "bars", "hostUse",
      "verdict", "warnings",
    ]
    let optional: Set = ["className", "driver", "driverOverride", "parent", "sriov", "physicalFunction"]
    for device in devices {
      XCTAssertTrue(required.isSubset(of: device.keys), "\(Set(device.keys))")
      XCTAssertTrue(
        Set(device.keys).isSubset(of: required.union(optional)),
        "\(Set(device.keys).subtracting(required.union(optional)))")
    }
    let bar = try XCTUnwrap(devices.compactMap { ($0["bars"] as? [[String: Any]])?.first }.first)
    XCTAssertEqual(
      Set(bar.keys), ["index", "role", "kind", "start", "size", "is64Bit", "prefetchable", "pageAligned", "subPage"])
    let group = try XCTUnwrap((list["groups"] as? [[String: Any]])?.first)
    XCTAssertTrue(["id", "devices", "endpoints", "otherMembers", "verdict", "reasons"].allSatisfy { group[$0] != nil })
    let pf = try XCTUnwrap(devices.first { $0["sriov"] != nil })
    XCTAssertEqual(
      Set((pf["sriov"] as? [String: Any])?.keys ?? [:].keys),
      ["totalVFs", "numVFs", "virtualFunctions", "driversAutoprobe", "vfDeviceID"])

    let explain = try object(builder.explain(.device(try PCIAddress(parsing: "01:00.0"))))
    XCTAssertTrue(
      ["schemaVersion", "target", "group", "verdict", "reasons", "members", "plan"].allSatisfy { explain[$0] != nil })
    let reason = try XCTUnwrap((explain["reasons"] as? [[String: Any]])?.first)
    XCTAssertTrue(["code", "severity", "message", "devices"].allSatisfy { reason[$0] != nil })
    let plan = try XCTUnwrap(explain["plan"] as? [String: Any])
    XCTAssertEqual(Set(plan.keys), ["group", "detach", "resets", "restore"])

    let show = try object(builder.show(.device(try PCIAddress(parsing: "01:00.0"))))
    let full = try XCTUnwrap((show["devices"] as? [[String: Any]])?.first)
    XCTAssertTrue(
      ["capabilities", "interrupt", "upstreamBridges", "resetMethodsSource", "headerType", "multifunction"].allSatisfy {
        full[$0] != nil
      })

    let doctor = try object(builder.doctor())
    XCTAssertTrue(["schemaVersion", "ok", "findings"].allSatisfy { doctor[$0] != nil })
  }

  private func object<T: Encodable>(_ value: T) throws -> [String: Any] {
    try XCTUnwrap(JSONSerialization.jsonObject(with: Data(try encodeJSON(value).utf8)) as? [String: Any])
  }
}
