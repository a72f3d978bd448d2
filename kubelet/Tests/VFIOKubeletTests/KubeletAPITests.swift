import KubeletAPI
import SwiftProtobuf
import XCTest

/// The kubelet's gRPC APIs are facts of Kubernetes: a renumbered field or a renamed service
/// would still build and then talk nonsense to a real kubelet. Each field is pinned by
/// encoding a message with only that field set and reading its tag (field << 3 | wire type).
final class KubeletAPITests: XCTestCase {
  /// Wire types: 0 varint, 2 length-delimited.
  func assertTag(
    _ message: some SwiftProtobuf.Message, field: Int, wire: Int = 2, file: StaticString = #filePath, line: UInt = #line
  ) throws {
    let bytes: [UInt8] = try message.serializedBytes()
    XCTAssertEqual(bytes.first.map(Int.init), field << 3 | wire, "\(type(of: message))", file: file, line: line)
  }

  func testPluginRegistration() throws {
    var info = Pluginregistration_PluginInfo()
    info.type = "DRAPlugin"
    try assertTag(info, field: 1)
    info = .init()
    info.name = "x"
    try assertTag(info, field: 2)
    info = .init()
    info.endpoint = "x"
    try assertTag(info, field: 3)
    info = .init()
    info.supportedVersions = ["v1.DRAPlugin"]
    try assertTag(info, field: 4)
    var status = Pluginregistration_RegistrationStatus()
    status.pluginRegistered = true
    try assertTag(status, field: 1, wire: 0)
    status = .init()
    status.error = "x"
    try assertTag(status, field: 2)
    XCTAssertEqual(Pluginregistration_Registration.descriptor.fullyQualifiedService, "pluginregistration.Registration")
    XCTAssertEqual(Pluginregistration_Registration.Method.GetInfo.descriptor.method, "GetInfo")
    XCTAssertEqual(
      Pluginregistration_Registration.Method.NotifyRegistrationStatus.descriptor.method, "NotifyRegistrationStatus")
  }

  func testDRAv1AndV1beta1() throws {
    XCTAssertEqual(
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin.descriptor.fullyQualifiedService,
      "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin")
    XCTAssertEqual(
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_DRAPlugin.descriptor.fullyQualifiedService,
      "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin")
    XCTAssertEqual(
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin.Method.NodePrepareResources.descriptor.method, "NodePrepareResources")
    XCTAssertEqual(
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1_DRAPlugin.Method.NodeUnprepareResources.descriptor.method, "NodeUnprepareResources"
    )
    try pinDRA(
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim.self, K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Device.self,
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourceResponse.self)
    try pinDRA(
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_Claim.self, K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_Device.self,
      K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodePrepareResourceResponse.self)
    var request = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesRequest()
    request.claims = [.init()]
    try assertTag(request, field: 1)
    var response = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourcesResponse()
    response.claims = ["uid": .init()]
    try assertTag(response, field: 1)
    var unprepared = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodeUnprepareResourceResponse()
    unprepared.error = "x"
    try assertTag(unprepared, field: 1)
    // The JSON names are the proto field names in lowerCamelCase, as the Go types use them.
    var device = K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Device()
    device.cdiDeviceIds = ["a=b"]
    device.requestNames = ["r"]
    XCTAssertEqual(try device.jsonString(), #"{"requestNames":["r"],"cdiDeviceIds":["a=b"]}"#)
  }

  /// Claim{namespace 1, uid 2, name 3}, Device{request_names 1, pool_name 2, device_name 3,
  /// cdi_device_ids 4}, NodePrepareResourceResponse{devices 1, error 2}: the same in both versions.
  func pinDRA<C: ClaimLike, D: DeviceLike, R: PrepareResponseLike>(_: C.Type, _: D.Type, _: R.Type) throws {
    for (field, set) in [(1, \C.namespace), (2, \C.uid), (3, \C.name)] {
      var claim = C()
      claim[keyPath: set] = "x"
      try assertTag(claim, field: field)
    }
    var device = D()
    device.requestNames = ["r"]
    try assertTag(device, field: 1)
    for (field, set) in [(2, \D.poolName), (3, \D.deviceName)] {
      device = D()
      device[keyPath: set] = "x"
      try assertTag(device, field: field)
    }
    device = D()
    device.cdiDeviceIds = ["k=n"]
    try assertTag(device, field: 4)
    var response = R()
    response.error = "x"
    try assertTag(response, field: 2)
  }

  func testDevicePluginV1beta1() throws {
    XCTAssertEqual(V1beta1_Registration.descriptor.fullyQualifiedService, "v1beta1.Registration")
    XCTAssertEqual(V1beta1_DevicePlugin.descriptor.fullyQualifiedService, "v1beta1.DevicePlugin")
    XCTAssertEqual(
      [
        V1beta1_DevicePlugin.Method.GetDevicePluginOptions.descriptor.method,
        V1beta1_DevicePlugin.Method.ListAndWatch.descriptor.method,
        V1beta1_DevicePlugin.Method.GetPreferredAllocation.descriptor.method,
        V1beta1_DevicePlugin.Method.Allocate.descriptor.method,
        V1beta1_DevicePlugin.Method.PreStartContainer.descriptor.method,
      ], ["GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer"])
    var register = V1beta1_RegisterRequest()
    register.version = "v1beta1"
    try assertTag(register, field: 1)
    register = .init()
    register.endpoint = "x"
    try assertTag(register, field: 2)
    register = .init()
    register.resourceName = "x"
    try assertTag(register, field: 3)
    register = .init()
    register.options = .init()
    try assertTag(register, field: 4)
    var options = V1beta1_DevicePluginOptions()
    options.preStartRequired = true
    try assertTag(options, field: 1, wire: 0)
    options = .init()
    options.getPreferredAllocationAvailable = true
    try assertTag(options, field: 2, wire: 0)
    var device = V1beta1_Device()
    device.id = "4"
    try assertTag(device, field: 1)
    device = .init()
    device.health = "Healthy"
    try assertTag(device, field: 2)
    device = .init()
    device.topology = .init()
    try assertTag(device, field: 3)
    var numa = V1beta1_NUMANode()
    numa.id = 1
    try assertTag(numa, field: 1, wire: 0)
    var allocation = V1beta1_ContainerAllocateResponse()
    allocation.envs = ["A": "b"]
    try assertTag(allocation, field: 1)
    allocation = .init()
    allocation.mounts = [.init()]
    try assertTag(allocation, field: 2)
    allocation = .init()
    allocation.devices = [.init()]
    try assertTag(allocation, field: 3)
    allocation = .init()
    allocation.annotations = ["a": "b"]
    try assertTag(allocation, field: 4)
    allocation = .init()
    allocation.cdiDevices = [.init()]
    try assertTag(allocation, field: 5)
    for (field, set) in [(1, \V1beta1_DeviceSpec.containerPath), (2, \.hostPath), (3, \.permissions)] {
      var spec = V1beta1_DeviceSpec()
      spec[keyPath: set] = "x"
      try assertTag(spec, field: field)
    }
    var preferred = V1beta1_ContainerPreferredAllocationRequest()
    preferred.availableDeviceIds = ["1"]
    try assertTag(preferred, field: 1)
    preferred = .init()
    preferred.mustIncludeDeviceIds = ["1"]
    try assertTag(preferred, field: 2)
    preferred = .init()
    preferred.allocationSize = 1
    try assertTag(preferred, field: 3, wire: 0)
    var ids = V1beta1_ContainerAllocateRequest()
    ids.devicesIds = ["1"]
    try assertTag(ids, field: 1)
    var answer = V1beta1_ContainerPreferredAllocationResponse()
    answer.deviceIds = ["1"]
    try assertTag(answer, field: 1)
    // Go's names, which the JSON form carries: ID, devices_ids, available_deviceIDs.
    XCTAssertEqual(try device.jsonString(), #"{"topology":{}}"#)
    XCTAssertTrue(try V1beta1_Device.init(jsonString: #"{"ID":"4"}"#).id == "4")
    XCTAssertEqual(try ids.jsonString(), #"{"devicesIds":["1"]}"#)
  }
}

protocol ClaimLike: SwiftProtobuf.Message {
  var namespace: String { get set }
  var uid: String { get set }
  var name: String { get set }
}
protocol DeviceLike: SwiftProtobuf.Message {
  var requestNames: [String] { get set }
  var poolName: String { get set }
  var deviceName: String { get set }
  var cdiDeviceIds: [String] { get set }
}
protocol PrepareResponseLike: SwiftProtobuf.Message {
  var error: String { get set }
}
extension K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Claim: ClaimLike {}
extension K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_Claim: ClaimLike {}
extension K8s_Io_Kubelet_Pkg_Apis_Dra_V1_Device: DeviceLike {}
extension K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_Device: DeviceLike {}
extension K8s_Io_Kubelet_Pkg_Apis_Dra_V1_NodePrepareResourceResponse: PrepareResponseLike {}
extension K8s_Io_Kubelet_Pkg_Apis_Dra_V1beta1_NodePrepareResourceResponse: PrepareResponseLike {}
