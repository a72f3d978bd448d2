import Foundation
import KubeletAPI
import VFIOHost

/// What the classic device plugin answers, computed from the device catalog: one device ID
/// per IOMMU group (the group number, as KubeVirt's PCI device plugin uses it). A group is
/// healthy once every endpoint is on vfio-pci (`vfioctl detach` or `persist` put it there):
/// the device plugin API has no call to give a device back, so it never detaches.
public struct DevicePluginCore: Sendable {
  public let resourceName: String
  public let catalog: DeviceCatalog

  public init(resourceName: String, catalog: DeviceCatalog) {
    self.resourceName = resourceName
    self.catalog = catalog
  }

  public static let healthy = "Healthy"
  public static let unhealthy = "Unhealthy"

  public var devices: [V1beta1_Device] {
    catalog.published.map { published in
      var device = V1beta1_Device()
      device.id = published.pluginID
      device.health = published.onVFIO ? Self.healthy : Self.unhealthy
      if let node = published.numaNode {
        var numa = V1beta1_NUMANode()
        numa.id = Int64(node)
        device.topology.nodes = [numa]
      }
      return device
    }
  }

  /// `/dev/vfio/vfio` and each group's node with "mrw", and `PCI_RESOURCE_<NAME>` naming
  /// every function of every group.
  public func allocate(_ request: V1beta1_AllocateRequest) throws(KubeletError) -> V1beta1_AllocateResponse {
    var response = V1beta1_AllocateResponse()
    for container in request.containerRequests {
      var answer = V1beta1_ContainerAllocateResponse()
      var groups: [PublishedDevice] = []
      for id in container.devicesIds {
        guard let device = catalog.device(pluginID: id) else {
          throw .noSuchDevice(claim: "allocate", device: id, published: catalog.published.map(\.pluginID))
        }
        groups.append(device)
      }
      for path in ["/dev/vfio/vfio"] + groups.map({ "/dev/vfio/\($0.group)" }) {
        var spec = V1beta1_DeviceSpec()
        spec.containerPath = path
        spec.hostPath = path
        spec.permissions = "mrw"
        answer.devices.append(spec)
      }
      answer.envs[environmentVariable(resourceName)] = groups.map(\.busIDs).joined(separator: ",")
      response.containerResponses.append(answer)
    }
    return response
  }

  public func preferredAllocation(_ request: V1beta1_PreferredAllocationRequest) -> V1beta1_PreferredAllocationResponse
  {
    var response = V1beta1_PreferredAllocationResponse()
    response.containerResponses = request.containerRequests.map { container in
      var answer = V1beta1_ContainerPreferredAllocationResponse()
      answer.deviceIds = preferred(
        available: container.availableDeviceIds, mustInclude: container.mustIncludeDeviceIds,
        size: Int(container.allocationSize))
      return answer
    }
    return response
  }

  /// Chooses `size` of `available` (with `mustInclude`): the groups of one card together
  /// (functions of a multi-function card sit in separate groups when it has ACS), and all on
  /// one NUMA node when one can hold them: the node of the first must-include, else the node
  /// with the most available groups.
  public func preferred(available: [String], mustInclude: [String], size: Int) -> [String] {
    let known = available.compactMap(catalog.device(pluginID:))
    var chosen = mustInclude.filter { id in available.contains(id) || catalog.device(pluginID: id) != nil }
    guard chosen.count < size else { return chosen }
    let numaOf = { (id: String) in catalog.device(pluginID: id)?.numaNode ?? -1 }
    let counts = Dictionary(grouping: known, by: { $0.numaNode ?? -1 }).mapValues(\.count)
    let node =
      chosen.first.map(numaOf) ?? counts.max { a, b in a.value != b.value ? a.value < b.value : a.key > b.key }?.key
      ?? -1
    let cardsChosen = Set(chosen.compactMap { catalog.device(pluginID: $0)?.card })
    let cards = Dictionary(grouping: known.filter { !chosen.contains($0.pluginID) }, by: \.card)
    // Cards already started first, then the node's cards, bigger cards (more groups) first.
    let ordered = cards.sorted { a, b in
      let ka = (cardsChosen.contains(a.key) ? 0 : 1, (a.value[0].numaNode ?? -1) == node ? 0 : 1, -a.value.count, a.key)
      let kb = (cardsChosen.contains(b.key) ? 0 : 1, (b.value[0].numaNode ?? -1) == node ? 0 : 1, -b.value.count, b.key)
      return ka < kb
    }
    // Whole cards that fit go first; a card that does not fit whole only fills the rest.
    for (_, groups) in ordered where chosen.count + groups.count <= size {
      chosen += groups.map(\.pluginID)
    }
    for (_, groups) in ordered {
      for group in groups where chosen.count < size && !chosen.contains(group.pluginID) {
        chosen.append(group.pluginID)
      }
    }
    return chosen
  }
}
