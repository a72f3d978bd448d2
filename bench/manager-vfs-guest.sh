#!/bin/sh
# Guest side of bench/manager's batch of VFs (q35-sriov with LAB_SRIOV_VFS=N: N VFs of QEMU's
# nvme PF, each in its own IOMMU group, all on the nvme driver). Per round, interleaved:
#   bare    the sysfs writes of the same plans, one VF after another, by the shell;
#   batch   `vfioctl detach VF...` then `vfioctl attach VF...`: one process each way;
#   single  one `vfioctl detach VF` and one `vfioctl attach VF` per VF (what a batch replaces).
# Prints "bare|batch|single VFS TOTAL_MS [LEDGER_MS STEPS_MS INVENTORY_MS]" lines to /out/vfs.txt.
reps=$1
S=/tmp/bench-state
ms() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }   # /proc/uptime in 10 ms steps
drv() { l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$l" || echo none; }
P=/sys/bus/pci/devices/0000:01:00.0
vfs=""
for link in "$P"/virtfn*; do vfs="$vfs $(basename "$(readlink "$link")")"; done
count=$(echo $vfs | wc -w)
for vf in $vfs; do [ "$(drv "$vf")" = nvme ] || sh /lab/guest/bind.sh nvme "$vf"; done
w() { echo "$2" > "$1"; }
bare() {
    for vf in $vfs; do
        d=/sys/bus/pci/devices/$vf
        w "$d/driver/unbind" "$vf"; w "$d/driver_override" vfio-pci; w /sys/bus/pci/drivers_probe "$vf"; w "$d/reset" 1
    done
    for vf in $vfs; do
        d=/sys/bus/pci/devices/$vf
        w "$d/reset" 1; w "$d/driver/unbind" "$vf"; w "$d/driver_override" nvme; w /sys/bus/pci/drivers/nvme/bind "$vf"
    done
}
# shellcheck disable=SC2086 # the VFs are one argument each
batch() {
    SWIFT_VFIO_TIMINGS=1 vfioctl detach --state $S $vfs 2>>/tmp/t >/dev/null
    SWIFT_VFIO_TIMINGS=1 vfioctl attach --state $S $vfs 2>>/tmp/t >/dev/null
}
single() {
    for vf in $vfs; do SWIFT_VFIO_TIMINGS=1 vfioctl detach --state $S "$vf" 2>>/tmp/t >/dev/null; done
    for vf in $vfs; do SWIFT_VFIO_TIMINGS=1 vfioctl attach --state $S "$vf" 2>>/tmp/t >/dev/null; done
}
one() {
    : > /tmp/t
    t0=$(ms); "$1"; t1=$(ms)
    bad=""
    for vf in $vfs; do [ "$(drv "$vf")" = nvme ] || bad="$bad $vf:$(drv "$vf")"; done
    [ -z "$bad" ] || echo "WRONG after $1:$bad"
    if [ "$1" = bare ]; then echo "bare $count $((t1 - t0))"; else
        # shellcheck disable=SC2046 # three numbers, three arguments
        set -- "$1" $(sed -n 's/.*steps \([0-9.]*\) ms, ledger \([0-9.]*\) ms, inventory \([0-9.]*\) ms/\1 \2 \3/p' /tmp/t \
            | awk '{s+=$1; l+=$2; i+=$3} END {print l, s, i}')
        echo "$1 $count $((t1 - t0)) $2 $3 $4"
    fi
}
{
    batch   # warm up: page cache, the ledger's creation
    i=0
    while [ $i -lt "$reps" ]; do
        if [ $((i % 2)) = 0 ]; then one bare; one batch; one single
        else one single; one batch; one bare; fi
        i=$((i + 1))
    done
} > /out/vfs.txt 2>&1
