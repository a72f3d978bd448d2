#!/usr/bin/env bash
# The kubelet plugins (vfio-kubelet-plugin) against the real kernel (checks in Tests/Integration/kubelet-guest.sh,
# run in the guest as root), with vfio-kubelet-sim playing the kubelet over the real sockets:
#   - DRA slices kept true (files in --slices-dir): republished within 2 s of a remove, a rescan,
#     an administrator's detach and attach, the generation going up; the health stream (v1 and
#     v1alpha1) and the NoSchedule taint of a member rebound to e1000 behind the ledger's back,
#     both cleared by vfioctl detach; KEP-5304 metadata and its mount spec at prepare, gone at
#     unprepare; SIGTERM ends the plugin with exit 0 and its sockets removed;
#   - DRA: GetInfo/NotifyRegistrationStatus on plugins_registry/<driver>-reg.sock; the slices
#     publish the bridge group (00:04.0 01:01.0 01:02.0) as one device; NodePrepareResources for
#     it detaches both e1000 to vfio-pci and writes a CDI spec naming /dev/vfio/N, again is
#     idempotent, a bad claim is answered with an error and detaches nothing; v1beta1 too;
#     NodeUnprepareResources puts both back on e1000 and removes the spec; a plugin restart
#     keeps a prepared claim prepared; prepare+unprepare latency per claim (/out/kubelet-timings);
#   - device plugin: Register on kubelet.sock, ListAndWatch (the group Healthy once detached),
#     GetPreferredAllocation, Allocate (/dev/vfio/vfio + /dev/vfio/N, mrw, PCI_RESOURCE_…), and
#     after a kubelet restart (sockets removed, kubelet.sock made anew) a second Register.
#   - podman 4.3 (Debian's) runs vfio-edu in a container with the device of a claim for the edu
#     group from the spec the DRA plugin wrote (--allow-no-reset): DMA + MSI pass inside; with
#     --interface iommufd on the iommufd kernel the spec adds /dev/iommu and the cdev, and the
#     container finds them in the KEP-5304 metadata mounted by the second CDI device, as
#     virt-launcher does, then vfio-edu --backend iommufd passes; on 6.1 (no cdevs) the spec
#     keeps the legacy pair and the log says why;
#   - q35-sriov: the PF and its VFs drawing on one counter set; a VF count change through sysfs
#     (2 -> 0 -> 1) and through vfioctl vfs (-> 2) republishes the VFs and the counters within 2 s.
# usage: Tests/Integration/kubelet.sh TOPOLOGY RESULTS_DIR   (q35-vtd, q35-iommufd, q35-sriov)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
case $TOPOLOGY in
    q35-vtd | q35-iommufd | q35-sriov) ;;
    *) skip "no kubelet scenario for $TOPOLOGY" ;;
esac
require_lab
need_product EDU vfio-edu
need_product VFIOCTL_BIN vfioctl
need_product SIM_BIN vfio-kubelet-sim
need_product PLUGIN_BIN vfio-kubelet-plugin
# vfioctl, the plugin, the simulator and vfio-edu unpack into the guest's RAM.
export LAB_MEMORY=${LAB_MEMORY:-2048}
files=(--file "$REPO/Tests/Integration/kubelet-guest.sh:/lab/kubelet-guest.sh")
if [ "$TOPOLOGY" = q35-vtd ]; then
    # Debian's 6.1 has e1000 as a module; the iommufd kernel has it built in.
    e1000=$(find "$CACHE/kernels/6.1/root/lib/modules" -name e1000.ko 2>/dev/null | head -n 1)
    [ -n "$e1000" ] || { fail "no e1000.ko under $CACHE/kernels/6.1 (lab/vm fetch)"; finish; }
    files+=(--file "$e1000:/lab/e1000.ko")
fi
# podman 4.3 consumes the DRA plugin's CDI spec: it runs vfio-edu in a container (not on
# q35-sriov, whose checks are the slices of a VF count change).
PODMAN_GUEST_ARGS=()
[ "$TOPOLOGY" = q35-sriov ] || podman_guest_args "$EDU"
guest kubelet "sh /lab/kubelet-guest.sh $TOPOLOGY" --bin "$VFIOCTL_BIN" --bin "$PLUGIN_BIN" --bin "$SIM_BIN" "${files[@]}" \
    "${PODMAN_GUEST_ARGS[@]}" --timeout 600
guest_checks kubelet
[ -f "$RESULTS/kubelet/kubelet-timings" ] && sed 's/^/  /' "$RESULTS/kubelet/kubelet-timings"
finish
