#!/usr/bin/env bash
# DMA map/unmap at the boundaries, in a lab guest, through the library and straight to the
# kernel: misaligned IOVA, address and length; overlaps; IOVAs in the reserved hole, across a
# range end, above the last range and wrapping; unmaps of foreign, partial and already
# unmapped mappings. Each must fail with its own error code and a message saying what to do,
# the kernel must refuse the same calls with an errno, and the space must stay usable.
#
# usage: Tests/Integration/dma.sh TOPOLOGY RESULTS_DIR
#   q35-vtd        legacy type1 (6.1)
#   q35-iommufd    iommufd IOAS and legacy type1 (6.12)
#   q35-amd-iommu  legacy type1 on AMD-Vi
#   anything else  exit 77
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
# ~10 s of guest time.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
edu_backends "no DMA boundary scenario for $TOPOLOGY (needs edu at 00:03.0 on vfio-pci)" \
    q35-vtd q35-amd-iommu q35-iommufd
guest dma "$(backend_steps dma 'dma-checks 0000:00:03.0')"
for b in $backends; do
    f=$RESULTS/dma/dma-$b.json
    expect_pass "$f" "$b: every boundary case refused with its error, the kernel agrees, the space stays usable"
    expect_cases "$f" "$b" 'misaligned IOVA' 'misaligned process address' 'misaligned length' 'overlap: covers a mapping' \
        'outside ranges: in the hole at 0xfee00000' 'outside ranges: wraps past 2^64' 'unmap: twice' \
        'kernel refuses an overlap' 'kernel refuses the hole at 0xfee00000'
done
finish
