#!/bin/sh
# Runs inside a q35-iommufd guest (busybox sh, as root), driven by Tests/Integration/qemu10.sh:
# bookworm-backports' QEMU 10 realizes the edu device (00:03.0, on vfio-pci) from an iommufd
# and a VFIO cdev descriptor opened by someone else, as root and as uid 1000 with both nodes
# 0600 root. Judged by what QEMU prints (info pci, its errors) and its exit status.
# One "PASS name" / "FAIL name: why" line per check in /out/checks, the closing line last;
# every QEMU run's output in /out/NAME.txt, its exit status in /out/NAME.rc, durations in
# /out/times.
BDF=0000:00:03.0
EXAMPLE=/lab/qemu10-guest-example.sh
: > /out/times
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
printf 'info pci\nquit\n' > /tmp/monitor-commands
# qemu_run NAME CMD...: run with the monitor commands on stdin; CMD's time in /out/times.
qemu_run() {
    _t=$(now_ms)
    run "$@" < /tmp/monitor-commands
    echo "$1 $(elapsed "$_t" "$(now_ms)")" >> /out/times
}
# QEMU's own lines, without the monitor's echo of what it was sent.
qemu_said() { grep -v '\[K' "/out/$1.txt" | grep "$2" | head -n 1; }
# The edu device (1234:11e8) in the VM's info pci, and QEMU left through `quit` with 0.
expect_edu() {
    if [ "$rc" = 0 ] && grep -q 'PCI device 1234:11e8' "/out/$1.txt"; then
        pass "$2: info pci lists $(grep -B1 'PCI device 1234:11e8' "/out/$1.txt" | sed -n '/Bus/{s/^ *//;s/:$//;p}' | tr -s ' ') $(qemu_said "$1" 'PCI device 1234:11e8' | sed 's/^ *//'), exit 0"
    else
        fail "$2: exit $rc: $(grep -v '\[K' "/out/$1.txt" | tail -c 600)"
    fi
}
# expect_error NAME PATTERN DESCRIPTION: QEMU failed and said PATTERN.
expect_error() {
    if [ "$rc" != 0 ] && grep -q -- "$2" "/out/$1.txt"; then
        pass "$3: exit $rc, \"$(qemu_said "$1" "$2" | sed 's/^qemu-system-x86_64: //')\""
    else
        fail "$3: exit $rc, no '$2' in: $(grep -v '\[K' "/out/$1.txt" | tail -c 600)"
    fi
}

version=$(qemu-system-x86_64 --version | head -n 1)
case $version in
    *"version 10."*) pass "QEMU in the guest: $version" ;;
    *) fail "QEMU in the guest is not 10.x: $version" ;;
esac
# Debian's 7.2 builds TCG as accel-tcg-x86_64.so; this 10.x has it built in, so the guest
# needs no module directory (and a 7.2 module there would be refused as "not the same build").
if qemu-system-x86_64 -accel help | grep -qx tcg && [ ! -e /usr/lib/x86_64-linux-gnu/qemu ]; then
    pass "TCG is built in: -accel help lists tcg without a module directory"
else
    fail "TCG: $(qemu-system-x86_64 -accel help 2>&1 | tr '\n' ' ')"
fi
cdev=$(cdev_of "$BDF")
if [ -n "$cdev" ] && [ -c "/dev/vfio/devices/$cdev" ] && [ -c /dev/iommu ]; then
    pass "edu $BDF has cdev /dev/vfio/devices/$cdev beside /dev/iommu"
else
    fail "no cdev for $BDF or no /dev/iommu: $(ls -l /dev/iommu /dev/vfio/devices 2>&1 | tr '\n' ' ')"
fi

# --- root opens, root runs QEMU: the descriptors alone, with the default 8 MiB memlock limit -----
qemu_run root sh "$EXAMPLE" "$BDF"
expect_edu root "root-opened fds 3 (/dev/iommu) and 4 (cdev), QEMU as root, memlock $(ulimit -l) KiB (CAP_IPC_LOCK: not charged)"

# --- the broker's case: nodes 0600 root, uid 1000 gets only the descriptors -------------------
chmod 600 /dev/iommu /dev/vfio/vfio "/dev/vfio/devices/$cdev"
if as_user 1000 sh -c "exec 3<>/dev/iommu" 2>/dev/null || as_user 1000 sh -c "exec 3<>/dev/vfio/devices/$cdev" 2>/dev/null; then
    fail "uid 1000 can open /dev/iommu or the cdev itself: $(ls -l /dev/iommu "/dev/vfio/devices/$cdev" | tr '\n' ' ')"
else
    pass "uid 1000 cannot open /dev/iommu nor /dev/vfio/devices/$cdev ($(stat -c '%a uid %u' /dev/iommu), $(stat -c '%a uid %u' "/dev/vfio/devices/$cdev"))"
fi
qemu_run self as_user 1000 qemu-system-x86_64 -nodefaults -display none -machine q35 -accel tcg -m 128 -S \
    -object iommufd,id=iommufd0 -device "vfio-pci,iommufd=iommufd0,sysfsdev=/sys/bus/pci/devices/$BDF" -monitor stdio
expect_error self "Failed to open /dev/vfio/devices/$cdev" "without descriptors QEMU as uid 1000 cannot open the cdev"

qemu_run user-8m env QEMU_MEMLOCK_KIB=8192 sh "$EXAMPLE" "$BDF" 1000
expect_error user-8m "Cannot allocate memory" "uid 1000 with fds but the default 8 MiB memlock limit: iommufd refuses to pin guest RAM"
qemu_run user-ram env QEMU_MEMLOCK_KIB=131072 sh "$EXAMPLE" "$BDF" 1000
expect_error user-ram "Region pc.bios.*Cannot allocate memory" "uid 1000, memlock = guest RAM (131072 KiB): RAM pinned, the BIOS ROM is not"
qemu_run user sh "$EXAMPLE" "$BDF" 1000
expect_edu user "root-opened fds, QEMU as uid 1000 (setpriv), memlock guest RAM + 1 MiB"

# A sandboxed VMM may have no /sys: with descriptors QEMU does not look there.
exec 3<>/dev/iommu 4<>"/dev/vfio/devices/$cdev"
ulimit -l $((128 * 1024 + 1024))
qemu_run nosys unshare -m sh -c 'umount /sys && [ ! -e /sys/bus ] && exec /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups qemu-system-x86_64 -nodefaults -display none -machine q35 -accel tcg -m 128 -S -object iommufd,id=iommufd0,fd=3 -device vfio-pci,iommufd=iommufd0,fd=4 -monitor stdio'
expect_edu nosys "uid 1000 with the descriptors and /sys unmounted (own mount namespace)"
exec 3<&- 4<&-

# --- a device descriptor binds once: a second VMM needs a fresh open ------------------------------
exec 3<>/dev/iommu 4<>"/dev/vfio/devices/$cdev"
qemu_run once sh -c 'exec qemu-system-x86_64 -nodefaults -display none -machine q35 -accel tcg -m 128 -S -object iommufd,id=iommufd0,fd=3 -device vfio-pci,iommufd=iommufd0,fd=4 -monitor stdio'
expect_edu once "first QEMU on a pair of descriptors held by the caller"
qemu_run twice sh -c 'exec qemu-system-x86_64 -nodefaults -display none -machine q35 -accel tcg -m 128 -S -object iommufd,id=iommufd0,fd=3 -device vfio-pci,iommufd=iommufd0,fd=4 -monitor stdio'
expect_error twice "error bind device fd=4 to iommufd=3: Invalid argument" "the same device descriptor again: VFIO_DEVICE_BIND_IOMMUFD refuses a bound file"
exec 4<&-
qemu_run fresh sh -c "exec 4<>/dev/vfio/devices/$cdev; exec qemu-system-x86_64 -nodefaults -display none -machine q35 -accel tcg -m 128 -S -object iommufd,id=iommufd0,fd=3 -device vfio-pci,iommufd=iommufd0,fd=4 -monitor stdio"
expect_edu fresh "old iommufd descriptor, cdev opened afresh after the bound one was closed"
exec 3<&-
finish
