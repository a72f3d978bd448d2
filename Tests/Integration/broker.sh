#!/usr/bin/env bash
# The broker (`vfioctl serve`) against the real kernel in a lab guest, with real clients
# (checks in Tests/Integration/broker-guest.sh, run in the guest as root):
#   - `detach --broker-only --owner 1000`: the nodes stay root 0600, uid 1000 gets EACCES;
#   - uid 1000 runs vfio-edu's DMA + MSI checks on the broker's descriptors (BrokerClient), on
#     every backend of the topology; uid 1001 is refused; the history has both;
#   - q35-iommufd: bookworm-backports' QEMU 10 as uid 1000, through `vfioctl open --exec`,
#     realizes the edu device from the broker's iommufd and cdev descriptors; uid 1001 refused;
#   - q35-vtd: a lease outlives a broker restart; killing the holder ends it and the e1000e is
#     reset (its command register reads 0); `vfioctl attach --revoke-after` reaches the holder
#     as a device request; the kernel's own request (an unbind) is relayed to the holder.
# usage: Tests/Integration/broker.sh TOPOLOGY RESULTS_DIR   (q35-vtd, q35-iommufd)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
edu_backends "no broker scenario for $TOPOLOGY" q35-vtd q35-iommufd
need_product VFIOCTL_BIN vfioctl
export LAB_MEMORY=${LAB_MEMORY:-1536}
( ensure_packages systemd ) || fail "could not install systemd (systemd-socket-activate)"
args=(--bin "$VFIOCTL_BIN" --bin /usr/bin/setpriv --bin /usr/bin/systemd-socket-activate --file "$REPO/Tests/Integration/broker-guest.sh:/lab/broker-guest.sh")
if [ "$TOPOLOGY" = q35-iommufd ]; then
    qemu10_guest_args || { fail "could not fetch QEMU 10 from bookworm-backports (lab/vm fetch qemu10)"; finish; }
    echo "QEMU 10: $QEMU10_VERSION"
    args+=("${QEMU10_ARGS[@]}")
fi
guest broker "BACKENDS='$backends' sh /lab/broker-guest.sh $TOPOLOGY" "${args[@]}" --timeout 600
guest_checks broker
finish
