#!/bin/sh
# Guest side (busybox sh, as root): the broker's part for an unprivileged VMM, done by hand.
# Opens /dev/iommu and the device's VFIO cdev as root, then starts QEMU 10 (as UID when given)
# with those two descriptors and no path: QEMU opens no VFIO node itself, so the nodes can
# stay 0600 root. Monitor commands come from stdin, e.g.
#   printf 'info pci\nquit\n' | sh qemu10-guest-example.sh 0000:00:03.0 1000
# usage: sh qemu10-guest-example.sh BDF [UID]     exit status: QEMU's, 2 if BDF has no cdev
# Environment: QEMU_MEM (MiB, default 128); QEMU_MEMLOCK_KIB (default: what QEMU_MEM needs).
# Staged by Tests/Integration/qemu10.sh (qemu10_guest_args in lib.sh).
bdf=$1
uid=${2:-}
mem=${QEMU_MEM:-128}
cdev=$(ls "/sys/bus/pci/devices/$bdf/vfio-dev/" 2>/dev/null | head -n 1)
[ -n "$cdev" ] || { echo "$bdf has no VFIO cdev (not bound to vfio-pci, or no iommufd kernel)" >&2; exit 2; }
exec 3<>/dev/iommu 4<>"/dev/vfio/devices/$cdev" || exit 2
as=""
if [ -n "$uid" ]; then
    # iommufd charges every pinned page to the caller's RLIMIT_MEMLOCK unless it has
    # CAP_IPC_LOCK (root is not charged). QEMU maps guest RAM and then the firmware ROMs
    # (pc.bios first): -m 128 failed with ENOMEM at 131072 and 131200 KiB, passed at 131584.
    ulimit -l "${QEMU_MEMLOCK_KIB:-$((mem * 1024 + 1024))}" || exit 2
    # util-linux setpriv (busybox's cannot change uids); rlimits and fds 3, 4 are inherited.
    as="/usr/bin/setpriv --reuid $uid --regid $uid --clear-groups"
fi
# -S: the machine is built and the device realized (RAM mapped into the IOAS) but no guest
# code runs, which under nested TCG would only cost time.
exec $as qemu-system-x86_64 -nodefaults -display none -machine q35 -accel tcg -m "$mem" -S \
    -object iommufd,id=iommufd0,fd=3 \
    -device vfio-pci,iommufd=iommufd0,fd=4 \
    -monitor stdio
