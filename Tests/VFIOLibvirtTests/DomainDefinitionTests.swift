import Foundation
import PCI
import VFIOHost
import VFIOTestSupport
import XCTest

@testable import VFIOLibvirt

/// Reading the domain XML libvirtd hands its hook: what is a PCI host device and what is not.
final class DomainDefinitionTests: XCTestCase {
  func parse(_ xml: String) throws -> DomainDefinition { try DomainDefinition.parse(Data(xml.utf8)) }

  func address(_ text: String) -> PCIAddress { try! PCIAddress(parsing: text) }

  func testSeveralHostDevicesInEverySpellingLibvirtAccepts() throws {
    let domain = try parse(
      """
      <domain type='qemu' id='3'>
        <name>vm1</name>
        <uuid>2D4E8B1C-0000-4000-8000-000000000001</uuid>
        <devices>
          <hostdev mode='subsystem' type='pci' managed='yes'>
            <driver name='vfio'/>
            <source><address domain='0x0000' bus='0x01' slot='0x01' function='0x0'/></source>
            <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
          </hostdev>
          <hostdev type='pci'>
            <source writeFiltering='no'><address bus='2' slot='0' function='0'/></source>
          </hostdev>
          <hostdev mode='subsystem' type='pci' managed='no'>
            <source><address type='pci' domain='0' bus='010' slot='0X1f' function='7'/></source>
          </hostdev>
          <interface type='hostdev' managed='yes'>
            <source><address type='pci' domain='0x0001' bus='0x3b' slot='0x02' function='0x1'/></source>
            <mac address='52:54:00:6d:90:02'/>
          </interface>
        </devices>
      </domain>
      """)
    XCTAssertEqual(domain.name, "vm1")
    XCTAssertEqual(domain.uuid, "2D4E8B1C-0000-4000-8000-000000000001")
    XCTAssertEqual(
      domain.hostDevices,
      [
        .init(address: address("0000:01:01.0"), managed: true),
        // libvirt's default is managed='no'; an absent domain is 0.
        .init(address: address("0000:02:00.0"), managed: false),
        // Base 0, as strtoul reads it: 010 is octal 8.
        .init(address: address("0000:08:1f.7"), managed: false),
        .init(address: address("0001:3b:02.1"), managed: true, element: "interface"),
      ])
    XCTAssertFalse(domain.keepReserved)
    XCTAssertEqual(domain.reservationName, "vm1")
  }

  func testNonPCIHostDevicesAndOtherAddressesAreNotTaken() throws {
    let domain = try parse(
      """
      <domain type='kvm'>
        <name>desk</name>
        <devices>
          <hostdev mode='subsystem' type='usb' managed='yes'>
            <source><vendor id='0x1234'/><product id='0xbeef'/><address bus='1' device='4'/></source>
          </hostdev>
          <hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/><address bus='0' target='0' unit='0'/></source></hostdev>
          <hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>
          <hostdev mode='capabilities' type='storage'><source><block>/dev/sdf1</block></source></hostdev>
          <interface type='network'><source network='default'/><address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></interface>
          <interface type='hostdev'><source><address type='usb' bus='0' port='1'/></source></interface>
          <disk type='file' device='disk'><address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></disk>
        </devices>
      </domain>
      """)
    XCTAssertEqual(domain.hostDevices, [])
  }

  func testMalformedAndForeignXMLIsRefused() {
    let cases: [(String, (DomainDefinitionError) -> Bool)] = [
      ("<domain><name>x</name><devices>", { if case .malformed = $0 { true } else { false } }),
      ("", { if case .malformed = $0 { true } else { false } }),
      ("<network><name>default</name></network>", { $0 == .notADomain("network") }),
      ("<domain type='kvm'><devices/></domain>", { $0 == .missing("<name>") }),
      (
        "<domain><name>x</name><devices><hostdev type='pci'><source><address bus='0x100' slot='0' function='0'/></source></hostdev></devices></domain>",
        { if case .badAddress(let why) = $0 { why.contains("bus='0x100'") } else { false } }
      ),
      (
        "<domain><name>x</name><devices><hostdev type='pci'><source><address bus='1' slot='0x20' function='0'/></source></hostdev></devices></domain>",
        { if case .badAddress(let why) = $0 { why.contains("slot") } else { false } }
      ),
      (
        "<domain><name>x</name><devices><hostdev type='pci'><source><address bus='one' slot='0' function='0'/></source></hostdev></devices></domain>",
        { if case .badAddress = $0 { true } else { false } }
      ),
      (
        "<domain><name>x</name><devices><hostdev type='pci'><source><address bus='-1' slot='0' function='0'/></source></hostdev></devices></domain>",
        { if case .badAddress = $0 { true } else { false } }
      ),
      (
        "<domain><name>x</name><metadata><g:groups xmlns:g='\(DomainDefinition.metadataNamespace)' keep='forever'/></metadata></domain>",
        { if case .badMetadata(let why) = $0 { why.contains("forever") } else { false } }
      ),
    ]
    for (xml, matches) in cases {
      XCTAssertThrowsError(try parse(xml), xml) { error in
        guard let error = error as? DomainDefinitionError else { return XCTFail("\(error)") }
        XCTAssertTrue(matches(error), "\(xml): \(error)")
      }
    }
    let huge = Data(count: DomainDefinition.maximumSize + 1)
    XCTAssertThrowsError(try DomainDefinition.parse(huge)) { error in
      XCTAssertEqual(error as? DomainDefinitionError, .tooLarge(DomainDefinition.maximumSize + 1))
    }
  }

  func testExternalEntitiesAreNotRead() throws {
    let secret = try TemporaryTree()
    let path = secret.path + "/secret"
    try "0x42".write(toFile: path, atomically: true, encoding: .utf8)
    let xml = """
      <?xml version="1.0"?>
      <!DOCTYPE domain [<!ENTITY bus SYSTEM "file://\(path)">]>
      <domain><name>x</name><devices><hostdev type='pci'><source><address bus='&bus;' slot='0' function='0'/></source></hostdev></devices></domain>
      """
    // Either refused or read without the file's content: never bus 0x42.
    if let domain = try? parse(xml) {
      XCTAssertFalse(domain.hostDevices.contains { $0.address.bus == 0x42 }, "\(domain)")
    }
  }

  func testTheKeepMarkIsSwiftVFIOsElementByNamespaceNotByPrefix() throws {
    let ours = try parse(
      """
      <domain><name>gpu-vm</name><metadata>
        <other:groups xmlns:other="\(DomainDefinition.metadataNamespace)" keep="reserved"/>
      </metadata></domain>
      """)
    XCTAssertTrue(ours.keepReserved)
    let foreign = try parse(
      """
      <domain><name>gpu-vm</name><metadata>
        <vfio:groups xmlns:vfio="http://example.org/not-ours" keep="reserved"/>
      </metadata></domain>
      """)
    XCTAssertFalse(foreign.keepReserved)
  }

  func testANameNoReservationMayCarryFallsBackToTheUUID() throws {
    let domain = try parse("<domain><name>my vm (test)</name><uuid>AB-cd</uuid></domain>")
    XCTAssertEqual(domain.reservationName, "libvirt-ab-cd")
  }
}

