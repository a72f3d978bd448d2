#!/usr/bin/env bash
# Resets and ownership in a lab guest: VFIO_DEVICE_RESET on the e1000e function 00:05.1 (PM
# reset), its refusal on edu (no reset method) with the errno and a next step, the bus hot
# reset of the two e1000 behind the PCIe-to-PCI bridge (one IOMMU group; ownership proven with
# the group fd, or the iommufd for cdevs), and opening that group once 01:02.0 is back on e1000:
# refused, naming the device and the fix.
#
# usage: Tests/Integration/reset.sh TOPOLOGY RESULTS_DIR
#   q35-vtd        legacy; includes the non-viable group (e1000.ko from the lab's 6.1 kernel)
#   q35-iommufd    iommufd (cdev) and legacy resets on 6.12
#   anything else  exit 77
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
# ~15 s of guest time.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
edu_backends "no reset scenario for $TOPOLOGY (needs e1000e 00:05.1 and the bridge group on vfio-pci)" \
    q35-vtd q35-iommufd
# e1000e's RDBAL0 (0x2800) as the scratch register; STATUS (0x8) must still read after.
cmd="$(backend_steps reset 'reset 0000:00:05.1 --scratch 0x2800')
$(backend_steps reset-refused 'reset 0000:00:03.0 --expect-refusal')
$(backend_steps hot-reset 'hot-reset 0000:01:01.0 --also 0000:01:02.0')"
files=()
if [ "$TOPOLOGY" = q35-vtd ]; then
    # A host driver for the non-viable case: e1000 is not in q35-vtd's module list.
    e1000=$(find "$CACHE/kernels/6.1/root/lib/modules" -name e1000.ko 2>/dev/null | head -n 1)
    if [ -n "$e1000" ]; then
        files=(--file "$e1000:/lab/e1000.ko")
        cmd="$cmd
insmod /lab/e1000.ko && sh /lab/guest/bind.sh e1000 0000:01:02.0
$(step not-viable 'probe 0000:01:01.0 --backend legacy')"
    else
        fail "no e1000.ko under $CACHE/kernels/6.1 for the non-viable group (lab/vm fetch)"
    fi
fi
guest reset "$cmd" "${files[@]}"
R=$RESULTS/reset
for b in $backends; do
    expect_grep "$R/reset-$b.json" '"name":"device responds after the reset","passed":true' \
        "$b: VFIO_DEVICE_RESET of e1000e 00:05.1 (twice), device still answers"
    expect_grep "$R/reset-refused-$b.json" 'has no function-level reset' \
        "$b: VFIO_DEVICE_RESET on edu refused with EINVAL and a next step"
    grep -q 'EINVAL' "$R/reset-refused-$b.json" 2>/dev/null || fail "$b: the edu reset refusal does not name EINVAL"
    expect_grep "$R/hot-reset-$b.json" '2 affected' \
        "$b: hot reset of the bridge group: both e1000 listed, bus reset with proof of ownership"
done
if [ "$TOPOLOGY" = q35-vtd ] && [ ${#files[@]} -gt 0 ]; then
    f=$R/not-viable.json
    if [ "$(cat "$f.rc" 2>/dev/null)" = 1 ] && grep -q 'is not viable: 0000:01:02.0 is still bound to e1000' "$f" \
        && grep -q 'vfioctl detach' "$f"; then
        pass "non-viable group refused, naming 0000:01:02.0 on e1000 and the fix"
    else
        fail "non-viable group: $(head -c 600 "$f" 2>/dev/null) rc=$(cat "$f.rc" 2>/dev/null)"
    fi
fi
finish
