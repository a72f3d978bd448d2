#!/usr/bin/env bash
# A real consumer of the CDI spec the DRA plugin writes: Debian 12's podman 4.3 (crun,
# conmon, cgroupfs on cgroup2, vfs storage on tmpfs) runs a container from a --rootfs
# directory with `--device swift-vfio.dev/group=NAME` out of a hand-written spec in
# /var/run/cdi, and vfio-edu inside it does its DMA + MSI checks on the edu at 00:03.0
# (checks in Tests/Integration/podman-guest.sh, run in the guest as root):
#   - the spec's device nodes and env reach the container; vfio-edu passes (legacy type1;
#     iommufd with /dev/iommu + the cdev too on q35-iommufd);
#   - without the device the container has no node, and one it mknods is refused by the
#     device cgroup;
#   - the cdiVersions and fields podman 4.3's CDI library accepts and rejects.
# usage: Tests/Integration/podman.sh TOPOLOGY RESULTS_DIR   (q35-vtd, q35-iommufd)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
backends=$(backends_for "$TOPOLOGY" q35-vtd q35-iommufd) || skip "no podman scenario for $TOPOLOGY"
require_lab
# The custom kernel is cached by its fragment's hash, but lab/vm boots the last one built.
# CONFIG_USER_NS is the last of the container options added to the fragment.
if [ "$TOPOLOGY" = q35-iommufd ] && ! grep -q '^CONFIG_USER_NS=y' "$CACHE/kernels/iommufd/config" 2>/dev/null; then
    skip "the iommufd kernel lacks the container options of lab/kernel/iommufd.config (rebuild: lab/vm build-kernel iommufd)"
fi
need_product EDU vfio-edu
podman_guest_args "$EDU"
# podman (~45 MB), vfio-edu twice (guest and rootfs) and the vfs store in guest RAM.
export LAB_MEMORY=${LAB_MEMORY:-1536}
guest podman "BACKENDS='$backends' sh /lab/podman-guest.sh $TOPOLOGY" "${PODMAN_GUEST_ARGS[@]}" \
    --file "$REPO/Tests/Integration/podman-guest.sh:/lab/podman-guest.sh" --timeout 600
guest_checks podman
if [ -s "$RESULTS/podman/podman-timings" ]; then
    echo "guest podman: $(tr '\n' ' ' < "$RESULTS/podman/podman-timings")"
fi
[ -s "$RESULTS/podman/cdi-matrix.txt" ] && sed 's/^/CDI /' "$RESULTS/podman/cdi-matrix.txt"
finish
