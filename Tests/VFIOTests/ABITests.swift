import CVFIO
import Testing

@testable import VFIO

/// The kernel's _IOC encoding (include/uapi/asm-generic/ioctl.h; powerpc puts "none" at 1).
func ioc(type: UInt8, nr: UInt8) -> UInt {
  #if arch(powerpc64le) || arch(powerpc64)
    let none: UInt = 1
  #else
    let none: UInt = 0
  #endif
  return (none << 30) | (UInt(type) << 8) | UInt(nr)
}

/// _IO(VFIO_TYPE, VFIO_BASE + n), VFIO_TYPE = ';', VFIO_BASE = 100.
func vfioIO(_ n: UInt8) -> UInt { ioc(type: UInt8(ascii: ";"), nr: 100 + n) }

/// _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + n), IOMMUFD_CMD_BASE = 0x80.
func iommufdIO(_ n: UInt8) -> UInt { ioc(type: UInt8(ascii: ";"), nr: 0x80 + n) }

@Suite struct RequestNumbers {
  @Test(arguments: [
    (IoctlRequest.getAPIVersion, vfioIO(0)), (.checkExtension, vfioIO(1)), (.setIOMMU, vfioIO(2)),
    (.groupGetStatus, vfioIO(3)), (.groupSetContainer, vfioIO(4)),
    (.groupUnsetContainer, vfioIO(5)),
    (.groupGetDeviceFD, vfioIO(6)), (.deviceGetInfo, vfioIO(7)), (.deviceGetRegionInfo, vfioIO(8)),
    (.deviceGetIRQInfo, vfioIO(9)), (.deviceSetIRQs, vfioIO(10)), (.deviceReset, vfioIO(11)),
    (.deviceGetPCIHotResetInfo, vfioIO(12)), (.devicePCIHotReset, vfioIO(13)),
    (.deviceFeature, vfioIO(17)), (.deviceBindIOMMUFD, vfioIO(18)),
    (.deviceAttachIOMMUFDPT, vfioIO(19)), (.deviceDetachIOMMUFDPT, vfioIO(20)),
    (.iommuGetInfo, vfioIO(12)), (.iommuMapDMA, vfioIO(13)), (.iommuUnmapDMA, vfioIO(14)),
    (.iommuEnable, vfioIO(15)), (.iommuDisable, vfioIO(16)), (.spaprTCEGetInfo, vfioIO(12)),
    (.spaprRegisterMemory, vfioIO(17)), (.spaprUnregisterMemory, vfioIO(18)),
    (.spaprTCECreate, vfioIO(19)), (.spaprTCERemove, vfioIO(20)), (.eehPEOp, vfioIO(21)),
    (.iommuDestroy, iommufdIO(0)), (.iommuIOASAlloc, iommufdIO(1)),
    (.iommuIOASIOVARanges, iommufdIO(4)), (.iommuIOASMap, iommufdIO(5)),
    (.iommuIOASUnmap, iommufdIO(6)), (.iommuOption, iommufdIO(7)),
  ])
  func matchesKernelFormula(request: IoctlRequest, expected: UInt) {
    #expect(request.number == expected, "\(request.name)")
  }

  @Test func literalValuesOnX86() {
    #if arch(x86_64) || arch(arm64)
      #expect(IoctlRequest.getAPIVersion.number == 0x3b64)
      #expect(IoctlRequest.iommuMapDMA.number == 0x3b71)
      #expect(IoctlRequest.deviceBindIOMMUFD.number == 0x3b76)
      #expect(IoctlRequest.iommuIOASMap.number == 0x3b85)
    #endif
  }
}

@Suite struct StructSizes {
  @Test func vfioStructs() {
    #expect(MemoryLayout<vfio_info_cap_header>.size == 8)
    #expect(MemoryLayout<vfio_group_status>.size == 8)
    #expect(MemoryLayout<vfio_region_info>.size == 32)
    #expect(MemoryLayout<vfio_irq_info>.size == 16)
    #expect(MemoryLayout<vfio_irq_set>.size == 20)
    #expect(MemoryLayout<vfio_pci_dependent_device>.size == 8)
    #expect(MemoryLayout<vfio_pci_hot_reset_info>.size == 12)
    #expect(MemoryLayout<vfio_pci_hot_reset>.size == 12)
    #expect(MemoryLayout<vfio_iommu_type1_info>.size == 24)
    #expect(MemoryLayout<vfio_iommu_type1_dma_map>.size == 32)
    #expect(MemoryLayout<vfio_iommu_type1_dma_unmap>.size == 24)
    #expect(MemoryLayout<vfio_region_info_cap_sparse_mmap>.size == 16)
    #expect(MemoryLayout<vfio_iommu_type1_info_cap_iova_range>.size == 16)
    #expect(MemoryLayout<vfio_iommu_type1_info_cap_migration>.size == 32)
    // The minimum the kernel copies (offsetofend cap_offset); newer headers pad to 24.
    #expect(MemoryLayout<vfio_device_info>.size >= 20)
    #expect(MemoryLayout<vfio_device_info>.offset(of: \.cap_offset) == 16)
  }

  @Test func spaprStructs() {
    #expect(MemoryLayout<vfio_iommu_spapr_tce_info>.size == 32)
    #expect(MemoryLayout<vfio_iommu_spapr_register_memory>.size == 24)
    #expect(MemoryLayout<vfio_iommu_spapr_tce_create>.size == 40)
    #expect(MemoryLayout<vfio_iommu_spapr_tce_create>.offset(of: \.start_addr) == 32)
    #expect(MemoryLayout<vfio_iommu_spapr_tce_remove>.size == 16)
    #expect(MemoryLayout<vfio_eeh_pe_op>.size == 40)
  }

  @Test func iommufdAndCdevStructs() {
    #expect(MemoryLayout<cvfio_iommu_destroy>.size == 8)
    #expect(MemoryLayout<cvfio_iommu_ioas_alloc>.size == 12)
    #expect(MemoryLayout<cvfio_iommu_iova_range>.size == 16)
    #expect(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.size == 32)
    #expect(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.offset(of: \.allowed_iovas) == 16)
    #expect(MemoryLayout<cvfio_iommu_ioas_iova_ranges>.offset(of: \.out_iova_alignment) == 24)
    #expect(MemoryLayout<cvfio_iommu_ioas_map>.size == 40)
    #expect(MemoryLayout<cvfio_iommu_ioas_map>.offset(of: \.user_va) == 16)
    #expect(MemoryLayout<cvfio_iommu_ioas_map>.offset(of: \.iova) == 32)
    #expect(MemoryLayout<cvfio_iommu_ioas_unmap>.size == 24)
    #expect(MemoryLayout<cvfio_iommu_ioas_unmap>.offset(of: \.iova) == 8)
    #expect(MemoryLayout<cvfio_iommu_option>.size == 24)
    #expect(MemoryLayout<cvfio_iommu_option>.offset(of: \.op) == 8)
    #expect(MemoryLayout<cvfio_iommu_option>.offset(of: \.val64) == 16)
    #expect(MemoryLayout<cvfio_device_bind_iommufd>.size == 16)
    #expect(MemoryLayout<cvfio_device_bind_iommufd>.offset(of: \.out_devid) == 12)
    #expect(MemoryLayout<cvfio_device_attach_iommufd_pt>.size == 12)
    #expect(MemoryLayout<cvfio_device_detach_iommufd_pt>.size == 8)
  }
}
