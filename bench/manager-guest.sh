#!/bin/sh
# Guest side of bench/manager: prints "bare|vfioctl GROUP TOTAL_MS [LEDGER_MS STEPS_MS INVENTORY_MS]" lines.
reps=$1
S=/tmp/bench-state
ms() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}0"; }   # /proc/uptime in 10 ms steps
insmod /lab/e1000.ko
for f in 0000:01:01.0 0000:01:02.0; do
    echo > /sys/bus/pci/devices/$f/driver_override
    echo $f > /sys/bus/pci/devices/$f/driver/unbind
    echo $f > /sys/bus/pci/drivers/e1000/bind
done
w() { echo "$2" > "$1"; }
bare_e1000e() {
    d=/sys/bus/pci/devices/0000:00:02.0
    w $d/driver/unbind 0000:00:02.0; w $d/driver_override vfio-pci; w /sys/bus/pci/drivers_probe 0000:00:02.0
    w $d/reset 1
    w $d/reset 1; w $d/driver/unbind 0000:00:02.0; w $d/driver_override ""; w /sys/bus/pci/drivers/e1000e/bind 0000:00:02.0
}
# The bridge group's bus reset needs VFIO_DEVICE_PCI_HOT_RESET, which a shell cannot issue:
# the bare script does the binding writes only, so the ratio is against strictly less work.
bare_bridge() {
    for f in 0000:01:01.0 0000:01:02.0; do
        d=/sys/bus/pci/devices/$f
        w $d/driver/unbind $f; w $d/driver_override vfio-pci; w /sys/bus/pci/drivers_probe $f
    done
    for f in 0000:01:01.0 0000:01:02.0; do
        d=/sys/bus/pci/devices/$f
        w $d/driver/unbind $f; w $d/driver_override ""; w /sys/bus/pci/drivers/e1000/bind $f
    done
}
tool() {
    SWIFT_VFIO_TIMINGS=1 vfioctl detach --state $S "$1" 2>>/tmp/t >/dev/null
    SWIFT_VFIO_TIMINGS=1 vfioctl attach --state $S "$1" 2>>/tmp/t >/dev/null
}
one() {  # one GROUP-LABEL KIND
    : > /tmp/t
    t0=$(ms)
    if [ "$2" = bare ]; then "bare_$3"; else tool "$4"; fi
    t1=$(ms)
    if [ "$2" = bare ]; then echo "bare $1 $((t1 - t0))"; else
        # sum the ledger, step and inventory times of detach + attach
        # shellcheck disable=SC2046 # three numbers, three arguments
        set -- $(sed -n 's/.*steps \([0-9.]*\) ms, ledger \([0-9.]*\) ms, inventory \([0-9.]*\) ms/\1 \2 \3/p' /tmp/t \
            | awk '{s+=$1; l+=$2; i+=$3} END {print l, s, i}')
        echo "vfioctl $label $((t1 - t0)) $1 $2 $3"
    fi
}
{
for group in "2-e1000e e1000e 2" "4-bridge bridge 4"; do
    set -- $group; label=$1 kind=$2 target=$3
    tool "$target"   # warm up: page cache, first ledger creation
    i=0
    while [ $i -lt "$reps" ]; do
        if [ $((i % 2)) = 0 ]; then one "$label" bare "$kind"; one "$label" tool "$kind" "$target"
        else one "$label" tool "$kind" "$target"; one "$label" bare "$kind"; fi
        i=$((i + 1))
    done
done
} > /out/bench.txt 2>&1
