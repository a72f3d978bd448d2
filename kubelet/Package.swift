// swift-tools-version: 6.1
import PackageDescription

// The kubelet plugins: their own package beside the host side (the repository's root package,
// `..`), so that gRPC, SwiftNIO and SwiftProtobuf (20 of the 24 packages) are resolved and built
// only here. Build and test from the repository root with `--package-path kubelet`; the lab builds
// every product it stages (vfioctl and vfio-edu too) through this package, in one release build.

// The root package by a fixed name: a path dependency's identity is its directory's name, which
// is whatever a clone was called.
let host = "swift-vfio"

let package = Package(
  name: "swift-vfio-kubelet",
  platforms: [.macOS(.v13)],
  products: [
    .executable(name: "vfio-kubelet-plugin", targets: ["vfio-kubelet-plugin"]),
    .library(name: "VFIOKubelet", targets: ["VFIOKubelet"]),
  ],
  dependencies: [
    .package(name: host, path: ".."),
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    // gRPC over Unix sockets. Only the Posix HTTP/2 transport is used; the messages and stubs
    // are generated once by scripts/generate-protos and committed.
    .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    // SIGTERM and SIGINT end the plugins gracefully: sockets gone, in-flight claims answered.
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
  ],
  targets: [
    // The kubelet's gRPC APIs (plugin registration, DRA v1/v1beta1, device plugin v1beta1):
    // messages and stubs generated from Protos/ by scripts/generate-protos, nothing else.
    .target(
      name: "KubeletAPI",
      dependencies: [
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]),
    // Kubernetes node agent: DRA kubelet plugin, classic device plugin, ResourceSlices, CDI specs.
    .target(
      name: "VFIOKubelet",
      dependencies: [
        "KubeletAPI",
        .product(name: "JSONStream", package: host),
        .product(name: "PCI", package: host),
        .product(name: "VFIOHost", package: host),
        .product(name: "VFIOPolicy", package: host),
        .product(name: "VFIOManager", package: host),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]),
    // The kubelet plugins' commands: the only ones that link gRPC, NIO and an HTTP client.
    .target(
      name: "VFIOKubeletCommands",
      dependencies: [
        "VFIOKubelet",
        .product(name: "VFIOCommands", package: host),
        .product(name: "VFIOHost", package: host),
        .product(name: "VFIOManager", package: host),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]),
    .executableTarget(name: "vfio-kubelet-plugin", dependencies: ["VFIOKubeletCommands"]),
    // Plays kubelet against the plugins over their Unix sockets (tests and Tests/Integration).
    .executableTarget(
      name: "vfio-kubelet-sim",
      dependencies: [
        "KubeletAPI",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .testTarget(
      name: "VFIOKubeletTests",
      dependencies: [
        "VFIOKubelet", "VFIOKubeletCommands", "KubeletAPI",
        .product(name: "PCI", package: host),
        .product(name: "VFIOManager", package: host),
        .product(name: "VFIOHost", package: host),
        .product(name: "VFIOPolicy", package: host),
        .product(name: "VFIOTestSupport", package: host),
        .product(name: "VFIOManagerTestSupport", package: host),
        .product(name: "VFIOManagerTestCase", package: host),
        .product(name: "ManPageCheck", package: host),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2Posix", package: "grpc-swift-nio-transport"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]),
  ]
)
