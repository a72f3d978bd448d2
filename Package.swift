// swift-tools-version: 6.1
import PackageDescription

// The host side of swift-vfio: everything but the kubelet plugins, which live in their own
// package (kubelet/) because gRPC, SwiftNIO and SwiftProtobuf are 20 of their 24 packages: a
// first `swift run vfioctl` here resolves four packages and compiles none of those.

let package = Package(
  name: "swift-vfio",
  platforms: [.macOS(.v13)],
  products: [
    .executable(name: "vfioctl", targets: ["vfioctl"]),
    .executable(name: "vfio-edu", targets: ["vfio-edu"]),
    .library(name: "PCI", targets: ["PCI"]),
    .library(name: "VFIOHost", targets: ["VFIOHost"]),
    .library(name: "VFIOPolicy", targets: ["VFIOPolicy"]),
    .library(name: "VFIO", targets: ["VFIO"]),
    .library(name: "VFIOManager", targets: ["VFIOManager"]),
    .library(name: "VFIOBroker", targets: ["VFIOBroker"]),
    .library(name: "VFIOBrokerClient", targets: ["VFIOBrokerClient"]),
    .library(name: "VFIOCommands", targets: ["VFIOCommands"]),
    .library(name: "JSONStream", targets: ["JSONStream"]),
    // The test support the kubelet package's tests share with this package's (kubelet/).
    .library(name: "VFIOTestSupport", targets: ["VFIOTestSupport"]),
    .library(name: "VFIOManagerTestSupport", targets: ["VFIOManagerTestSupport"]),
    .library(name: "VFIOManagerTestCase", targets: ["VFIOManagerTestCase"]),
    .library(name: "ManPageCheck", targets: ["ManPageCheck"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
  ],
  targets: [
    // Kernel uAPI structures, request numbers and an errno-returning ioctl.
    .target(name: "CVFIO"),
    // PCI vocabulary shared by the host model and the VFIO library: addresses, config registers.
    .target(name: "PCI"),
    // Read-only model of the host: sysfs, PCI config space, IOMMU groups.
    .target(
      name: "VFIOHost",
      dependencies: ["PCI", "CVFIO", .product(name: "SystemPackage", package: "swift-system")]),
    // Assignability verdicts and plans computed from the host model.
    .target(name: "VFIOPolicy", dependencies: ["PCI", "VFIOHost"]),
    // Userspace VFIO: containers, groups, devices, iommufd, DMA, regions, interrupts.
    .target(
      name: "VFIO",
      dependencies: ["PCI", "CVFIO", .product(name: "SystemPackage", package: "swift-system")]),
    // The host assignment manager: executes plans on sysfs, with a crash-safe SQLite ledger.
    .target(
      name: "VFIOManager",
      dependencies: ["PCI", "CVFIO", "VFIOHost", "VFIOPolicy", "VFIO", .product(name: "GRDB", package: "GRDB.swift")]),
    // libvirt's QEMU hook: a domain's PCI host devices get whole groups through the manager.
    .target(name: "VFIOLibvirt", dependencies: ["PCI", "VFIOHost", "VFIOManager"]),
    // The broker's protocol, its socket code and BrokerClient: what a VMM launcher links (no
    // GRDB, no manager).
    .target(name: "VFIOBrokerClient", dependencies: ["CVFIO", "VFIO", "JSONStream"]),
    // The broker daemon: owns groups and grants their open descriptors over a Unix socket; and its client.
    .target(
      name: "VFIOBroker",
      dependencies: [
        "PCI", "CVFIO", "VFIO", "VFIOBrokerClient", "VFIOHost", "VFIOPolicy", "VFIOManager",
        .product(name: "Logging", package: "swift-log"),
      ]),
    // JSON written as the values are encoded: `list --json` and the kubelet plugin's slices.
    .target(name: "JSONStream"),
    // Subcommands and pure renderers behind `vfioctl`.
    .target(
      name: "VFIOCommands",
      dependencies: [
        "PCI", "VFIOHost", "VFIOPolicy", "VFIOManager", "VFIOBroker", "VFIOBrokerClient", "VFIO", "VFIOLibvirt",
        "JSONStream",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ]),
    .executableTarget(name: "vfioctl", dependencies: ["VFIOCommands"]),
    .executableTarget(
      name: "vfio-bench",
      dependencies: [
        "PCI", "VFIOHost", "VFIOPolicy", "VFIOCommands",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    // Example userspace driver for QEMU's edu device, built on the VFIO library.
    .executableTarget(
      name: "vfio-edu",
      dependencies: [
        "PCI", "VFIO", "VFIOBrokerClient", .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    // Fixture paths and scratch copies shared by the test targets: the host model only.
    .target(name: "VFIOTestSupport", dependencies: ["VFIOHost"], path: "Tests/VFIOTestSupport"),
    // The simulated PCI core (sysfs semantics of bind, unbind, driver_override, reset) the
    // manager acts on in unit tests, the fuzzer and the broker's harnesses.
    .target(
      name: "VFIOManagerTestSupport", dependencies: ["PCI", "VFIOTestSupport", "VFIOHost", "VFIOManager"],
      path: "Tests/VFIOManagerTestSupport"),
    // The broker's grant source that opens nothing and records what it was asked.
    .target(
      name: "VFIOBrokerTestSupport",
      dependencies: ["PCI", "VFIOBroker", "VFIOBrokerClient", "VFIOManager", "VFIOHost", "VFIO"],
      path: "Tests/VFIOBrokerTestSupport"),
    // XCTest's base for tests that run the manager on scratch trees (manager, broker, kubelet, CLI).
    .target(
      name: "VFIOManagerTestCase",
      dependencies: ["PCI", "VFIOManager", "VFIOHost", "VFIOPolicy", "VFIOTestSupport", "VFIOManagerTestSupport"],
      path: "Tests/VFIOManagerTestCase"),
    // Checks that a man page documents every option of a command.
    .target(
      name: "ManPageCheck", dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")],
      path: "Tests/ManPageCheck"),
    // Mutation fuzzer: runs vfioctl on corrupted copies of the captured fixtures.
    .executableTarget(
      name: "vfio-fuzz",
      dependencies: [
        "VFIOTestSupport", "VFIOManagerTestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Tests/Fuzz"),
    // The broker under 64 clients against the recording fake, beside a bare SCM_RIGHTS ping-pong.
    .executableTarget(
      name: "vfio-broker-bench",
      dependencies: [
        "CVFIO", "VFIOBroker", "VFIOBrokerClient", "VFIOManager", "VFIOTestSupport", "VFIOBrokerTestSupport",
        .product(name: "Logging", package: "swift-log"),
      ],
      path: "Tests/BrokerBench"),
    // The hostile-client harness: `vfioctl serve` under attack by other uids (scripts/test).
    .executableTarget(
      name: "vfio-broker-siege",
      dependencies: [
        "CVFIO", "VFIOBroker", "VFIOBrokerClient", "VFIOHost", "VFIOManager", "VFIOTestSupport", "VFIOManagerTestSupport",
        "VFIOBrokerTestSupport",
      ],
      path: "Tests/BrokerSiege"),
    // DMA map/unmap cost through the VFIO library (bench/map_bench.c is its raw-ioctl twin).
    .executableTarget(name: "vfio-map-bench", dependencies: ["PCI", "VFIO"]),
    .testTarget(name: "PCITests", dependencies: ["PCI"]),
    .testTarget(name: "JSONStreamTests", dependencies: ["JSONStream"]),
    .testTarget(name: "VFIOHostTests", dependencies: ["PCI", "VFIOHost", "VFIOTestSupport"]),
    .testTarget(name: "VFIOPolicyTests", dependencies: ["PCI", "VFIOPolicy", "VFIOHost", "VFIOTestSupport"]),
    .testTarget(name: "VFIOTests", dependencies: ["PCI", "VFIO", "CVFIO"]),
    .testTarget(name: "VFIOBrokerClientTests", dependencies: ["VFIOBrokerClient"]),
    .testTarget(
      name: "VFIOManagerTests",
      dependencies: [
        "PCI", "VFIOManager", "VFIOHost", "VFIOPolicy", "VFIOTestSupport", "VFIOManagerTestSupport",
        "VFIOManagerTestCase",
        .product(name: "GRDB", package: "GRDB.swift"),
      ]),
    .testTarget(
      name: "VFIOLibvirtTests",
      dependencies: ["PCI", "VFIOLibvirt", "VFIOManager", "VFIOHost", "VFIOTestSupport", "VFIOManagerTestSupport"]),
    .testTarget(
      name: "VFIOBrokerTests",
      dependencies: [
        "VFIOBroker", "VFIOBrokerClient", "VFIOManager", "VFIOHost", "VFIO", "VFIOTestSupport", "VFIOManagerTestSupport",
        "VFIOBrokerTestSupport", "VFIOManagerTestCase", .product(name: "Logging", package: "swift-log"),
      ]),
    .testTarget(
      name: "VFIOCommandsTests",
      dependencies: [
        "PCI", "VFIOCommands", "VFIOManager", "VFIOHost", "VFIOPolicy", "VFIOTestSupport", "VFIOManagerTestCase",
        "ManPageCheck",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
  ]
)
