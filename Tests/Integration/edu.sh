#!/usr/bin/env bash
# The edu driver end to end through the VFIO library in a lab guest: MMIO, factorial, DMA
# both ways with MSI on completion, DMA after unmap blocked, INTx; and two devices sharing
# one DMA space (a second group in the same container, or a second cdev in the same IOAS).
#
# usage: Tests/Integration/edu.sh TOPOLOGY RESULTS_DIR
#   q35-vtd           legacy (6.1): edu; auto picks legacy; two groups in one container
#   q35-iommufd       iommufd and legacy on one 6.12 kernel: edu via iommufd, auto, the cdev
#                     path, two devices in one IOAS, legacy container; IOMMU_OPTION; DMAR fault
#   q35-amd-iommu     legacy on AMD-Vi
#   q35-virtio-iommu  type1 refused (no MSI isolation) with an explanation, then allowed
#   anything else     exit 77
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
# ~20-40 s of guest time per topology.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
case $TOPOLOGY in
    q35-vtd | q35-iommufd | q35-amd-iommu | q35-virtio-iommu) ;;
    *) skip "no edu scenario for $TOPOLOGY (needs an x86 topology with edu at 00:03.0)" ;;
esac
require_lab
need_product EDU vfio-edu
R=$RESULTS/edu

case $TOPOLOGY in
q35-vtd)
    guest edu "$(step edu-legacy '0000:00:03.0 --backend legacy')
$(step edu-auto '0000:00:03.0')
$(step edu-shared '0000:00:03.0 --backend legacy --also 0000:00:05.1')"
    expect_pass "$R/edu-legacy.json" "edu on type1: identity, factorial, DMA both ways with MSI, unmap blocks DMA, INTx"
    expect_grep "$R/edu-auto.json" '"backend":"legacy"' "auto picks legacy without /dev/iommu"
    expect_grep "$R/edu-shared.json" '0000:00:05.1 shares the DMA space (group' \
        "two groups in one container: edu DMA with e1000e 05.1's group attached"
    ;;
q35-iommufd)
    guest edu "$(step edu-iommufd '0000:00:03.0 --backend iommufd')
$(step edu-auto '0000:00:03.0')
$(step edu-cdev '/dev/vfio/devices/vfio0 --interrupts msi')
$(step edu-shared '0000:00:03.0 --backend iommufd --also 0000:00:05.1')
$(step edu-legacy '0000:00:03.0 --backend legacy')
$(step edu-legacy-shared '0000:00:03.0 --backend legacy --also 0000:00:05.1')
$(step probe-iommufd 'probe 0000:00:03.0 --backend iommufd')
dmesg | grep -c 'DMAR: \[DMA Write' > /out/dmar-faults"
    expect_pass "$R/edu-iommufd.json" "edu via cdev + iommufd IOAS: DMA with MSI, unmap blocks DMA, INTx"
    expect_grep "$R/edu-auto.json" '"backend":"iommufd"' "auto picks iommufd"
    expect_pass "$R/edu-cdev.json" "edu opened by its cdev path"
    expect_grep "$R/edu-shared.json" 'same iommufd IOAS' "two devices attached to one IOAS: edu DMA"
    expect_pass "$R/edu-legacy.json" "edu through the legacy container on the same kernel"
    expect_grep "$R/edu-legacy-shared.json" '0000:00:05.1 shares the DMA space (group' \
        "two groups in one container on 6.12"
    expect_grep "$R/probe-iommufd.json" 'user -> process on a fresh iommufd' \
        "IOMMU_OPTION RLIMIT_MODE user -> process (EBUSY once an IOAS exists)"
    n=$(cat "$R/dmar-faults" 2>/dev/null || echo 0)
    # Every edu run ends with a DMA to an IOVA it just unmapped; the IOMMU must fault it.
    if [ "${n:-0}" -ge 1 ]; then pass "DMA after unmap raised $n DMAR write fault(s)"; else fail "no DMAR fault after unmap"; fi
    ;;
q35-amd-iommu)
    guest edu "$(step edu '0000:00:03.0')"
    expect_pass "$R/edu.json" "AMD-Vi: edu DMA with MSI and INTx"
    ;;
q35-virtio-iommu)
    guest edu "$(step edu-refused '0000:00:03.0')
echo Y > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
$(step edu-unsafe '0000:00:03.0')"
    f=$R/edu-refused.json
    if [ "$(cat "$f.rc" 2>/dev/null)" = 1 ] && grep -q 'VFIO_SET_IOMMU.*EPERM.*allow_unsafe_interrupts' "$f"; then
        pass "virtio-iommu: SET_IOMMU EPERM explained (no MSI isolation, allow_unsafe_interrupts)"
    else
        fail "virtio-iommu refusal: $(head -c 400 "$f" 2>/dev/null)"
    fi
    expect_pass "$R/edu-unsafe.json" "virtio-iommu with allow_unsafe_interrupts: edu passes"
    ;;
esac
finish
