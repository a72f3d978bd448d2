#!/usr/bin/env bash
# Group ownership, reservations, persistence and SR-IOV VFs against the real kernel
# (checks in Tests/Integration/ownership-guest.sh, run in the guest as root):
#   - `detach --owner 1000:1000` puts owner and mode on /dev/vfio/N (and the cdev on iommufd),
#     again after an attach/detach cycle; uid 1000 runs vfio-edu on both backends, uid 1001 gets
#     EACCES from the kernel; doctor names /dev/iommu until the admin grants it;
#   - Debian's QEMU as uid 1000 realizes `-device vfio-pci,host=00:03.0` (info pci), as uid 1001
#     it is refused with "Permission denied";
#   - a reserved group survives `attach` without `--release`; list/explain/owners say whose;
#   - `persist` through Debian's systemd-udevd: remove + rescan brings the e1000e back on
#     vfio-pci with the node's owner, and after `persist --remove` on e1000e;
#   - q35-sriov: `vfs --count 2 --detach --owner`, each VF in its own group, the count held while
#     a VF is owned, then `--count 0` cleans up and the ledger agrees.
# usage: Tests/Integration/ownership.sh TOPOLOGY RESULTS_DIR   (q35-vtd, q35-iommufd, q35-sriov)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
case $TOPOLOGY in
    q35-vtd | q35-iommufd) backends=$(backends_for "$TOPOLOGY" q35-vtd q35-iommufd) ;;
    q35-sriov) backends=legacy ;;
    *) skip "no ownership scenario for $TOPOLOGY" ;;
esac
require_lab
need_product EDU vfio-edu
need_product VFIOCTL_BIN vfioctl
# vfioctl, vfio-edu, QEMU and udevd in one initramfs: more than 512 MiB of guest RAM.
export LAB_MEMORY=${LAB_MEMORY:-1536}
files=(--file "$REPO/Tests/Integration/ownership-guest.sh:/lab/ownership-guest.sh")
bins=(--bin "$VFIOCTL_BIN")
if [ "$TOPOLOGY" != q35-sriov ]; then
    ( ensure_packages qemu-system-x86 seabios systemd udev ) || fail "could not install QEMU or udev"
    bins+=(--bin /usr/bin/qemu-system-x86_64 --bin /lib/systemd/systemd-udevd --bin /bin/udevadm --bin /usr/bin/setpriv)
    files+=(--file /usr/share/seabios/bios-256k.bin:/lab/bios-256k.bin)
    # Debian builds the TCG accelerator as a module QEMU loads from its module directory.
    files+=(--file /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so:/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so)
    # udevd is started by its path; the guest has it where the host does.
    files+=(--file /lib/systemd/systemd-udevd:/lib/systemd/systemd-udevd)
fi
guest ownership "BACKENDS='$backends' sh /lab/ownership-guest.sh $TOPOLOGY" "${bins[@]}" "${files[@]}" --timeout 600
guest_checks ownership
finish
