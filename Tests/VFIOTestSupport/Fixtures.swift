import VFIOHost

/// Paths of the captured trees in Tests/Fixtures (captured from real kernels by `vfioctl
/// capture`; see lab/README.md for how they are re-captured).
public enum Fixtures {
  public static let directory: String = {
    var path = #filePath
    for _ in 0..<2 { path = String(path[..<path.lastIndex(of: "/")!]) }
    return path + "/Fixtures"
  }()

  public static func root(_ name: String) -> String { directory + "/" + name }
  public static func sysfs(_ name: String) -> Sysfs { Sysfs(root: root(name)) }

  public static func inventory(_ name: String) throws -> HostInventory {
    try HostInventory.read(sysfs(name), pageSize: 4096)
  }

  /// Ground truth the guest printed from the kernel in the same boot (lab/guest/facts.sh).
  public static func facts(_ name: String) -> [[String]] {
    let text = Sysfs().readString(root(name) + "/lab-facts.txt") ?? ""
    return text.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
  }
}
