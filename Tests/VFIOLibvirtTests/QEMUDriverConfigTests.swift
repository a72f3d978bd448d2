import XCTest

@testable import VFIOLibvirt

/// `user` and `group` out of qemu.conf, as libvirt's configuration reader sees them.
final class QEMUDriverConfigTests: XCTestCase {
  func testDebiansShippedFileMeansLibvirtQemu() throws {
    // The shape of Debian 12's /etc/libvirt/qemu.conf: everything commented out, lists and all.
    let text = """
      # Master configuration file for the QEMU driver.
      #vnc_listen = "0.0.0.0"
      #       user = "qemu"   # A user named "qemu"
      #       user = "+0"     # Super user (uid=0)
      #user = "libvirt-qemu"
      #group = "libvirt-qemu"
      #cgroup_device_acl = [
      #    "/dev/null", "/dev/full", "/dev/zero",
      #]
      """
    XCTAssertEqual(try QEMUDriverConfig.parse(text), QEMUDriverConfig(user: "libvirt-qemu", group: "libvirt-qemu"))
  }

  func testSettingsListsAndQuotes() throws {
    let text = """
      security_driver = [ "selinux", "apparmor" ]
      cgroup_device_acl = [
          "/dev/null", "/dev/full",
          'user = "evil"', # a string in a list is not a setting
      ]
      dynamic_ownership = 1
      user = "+107"   # KubeVirt's qemu
      group='kvm';
      stdio_handler = "file"
      """
    XCTAssertEqual(try QEMUDriverConfig.parse(text), QEMUDriverConfig(user: "+107", group: "kvm"))
  }

  func testSyntaxErrorsAreReported() {
    for text in ["user = \"libvirt-qemu", "user \"x\"", "acl = [ \"a\", ", "= 1"] {
      XCTAssertThrowsError(try QEMUDriverConfig.parse(text), text) { error in
        guard case QEMUDriverConfigError.syntax = error else { return XCTFail("\(text): \(error)") }
      }
    }
  }

  func testOwnerResolvesAsLibvirtDoes() throws {
    let users: (String) -> Int? = { ["libvirt-qemu": 64055, "100": 5000][$0] }
    let groups: (String) -> Int? = { ["libvirt-qemu": 64055, "kvm": 104][$0] }
    func owner(_ user: String, _ group: String) throws -> (uid: Int, gid: Int, mode: Int)? {
      try QEMUDriverConfig(user: user, group: group).ownership(users: users, groups: groups).map { ($0.uid, $0.gid, $0.mode) }
    }
    XCTAssertEqual(try owner("libvirt-qemu", "libvirt-qemu")?.uid, 64055)
    XCTAssertEqual(try owner("libvirt-qemu", "kvm")?.gid, 104)
    XCTAssertEqual(try owner("libvirt-qemu", "kvm")?.mode, 0o600)
    // A name first, then a number; "+N" is always the number.
    XCTAssertEqual(try owner("100", "kvm")?.uid, 5000)
    XCTAssertEqual(try owner("+100", "kvm")?.uid, 100)
    XCTAssertEqual(try owner("107", "+107")?.gid, 107)
    // QEMU as root: nothing to give.
    XCTAssertNil(try owner("+0", "+0"))
    XCTAssertThrowsError(try owner("nobody-here", "kvm")) { error in
      XCTAssertEqual(error as? QEMUDriverConfigError, .noSuchUser("nobody-here"))
    }
    XCTAssertThrowsError(try owner("libvirt-qemu", "no-group")) { error in
      XCTAssertEqual(error as? QEMUDriverConfigError, .noSuchGroup("no-group"))
    }
  }
}
