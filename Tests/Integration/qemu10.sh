#!/usr/bin/env bash
# QEMU 10 (bookworm-backports, unpacked into the lab cache, not installed) as the VMM of the
# broker design: root opens /dev/iommu and the edu device's VFIO cdev, QEMU gets only the
# descriptors (-object iommufd,fd=3 -device vfio-pci,iommufd=iommufd0,fd=4). Checks in
# Tests/Integration/qemu10-guest.sh, run in the guest as root:
#   - root-opened descriptors, QEMU as root: info pci lists 1234:11e8, exit 0;
#   - nodes 0600 root, QEMU as uid 1000 with the descriptors: refused without them, ENOMEM
#     with the default memlock limit and with exactly guest RAM, info pci with RAM + 1 MiB,
#     also with /sys unmounted;
#   - a device descriptor binds once (EINVAL the second time); a fresh open works again.
# usage: Tests/Integration/qemu10.sh TOPOLOGY RESULTS_DIR   (q35-iommufd only)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
[ "$TOPOLOGY" = q35-iommufd ] || skip "descriptor passing needs /dev/iommu and VFIO cdevs (q35-iommufd)"
require_lab
started=$SECONDS
t0=$(now_ms)
qemu10_guest_args || { fail "could not fetch QEMU 10 from bookworm-backports (lab/vm fetch qemu10)"; finish; }
echo "QEMU 10: $QEMU10_VERSION (fetch/cache check $(elapsed "$t0" "$(now_ms)"))"
# The initramfs carries QEMU 10 and its libraries (~80 MB) and the nested VM takes 128 MiB.
export LAB_MEMORY=${LAB_MEMORY:-1024}
guest qemu10 "sh /lab/qemu10-guest.sh" "${QEMU10_ARGS[@]}" --bin /usr/bin/setpriv \
    --file "$REPO/Tests/Integration/qemu10-guest.sh:/lab/qemu10-guest.sh" \
    --file "$REPO/Tests/Integration/qemu10-guest-example.sh:/lab/qemu10-guest-example.sh" \
    --timeout 300
guest_checks qemu10
if [ -s "$RESULTS/qemu10/timings" ]; then
    echo "timings: guest boot $(sed -n 's/^boot //p' "$RESULTS/qemu10/timings") s, guest total $(sed -n 's/^qemu //p' "$RESULTS/qemu10/timings") s;" \
        "QEMU 10 in the guest: $(tr '\n' ' ' < "$RESULTS/qemu10/times"); script $((SECONDS - started)) s"
fi
finish
