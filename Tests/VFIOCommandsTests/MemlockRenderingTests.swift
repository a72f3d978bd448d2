import VFIOCommands
import VFIOPolicy
import XCTest

/// `doctor --vm`'s locked-memory section as a person reads it.
final class MemlockRenderingTests: XCTestCase {
  func testTheSectionSaysWhatIsPinnedAndWhetherThisShellCanRunIt() {
    let report = MemlockReport(MemlockRequirement(guestRAM: 128 << 20, devices: 1, viommu: false), current: 8 << 20)
    XCTAssertEqual(report.systemd, "LimitMEMLOCK=1152M")
    XCTAssertEqual(report.ulimit, "ulimit -l 1179648")
    let text = HumanRenderer.memlock(report)
    XCTAssertTrue(text.contains("locked memory: 1.1 GiB = the RAM pinned once"), text)
    XCTAssertTrue(text.contains("this shell's limit: 8 MiB (too low for that VMM)"), text)
  }
}
