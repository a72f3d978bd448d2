#!/bin/sh
# bind.sh DRIVER BDF... — hands each device to DRIVER the way vfio users do: set
# driver_override, unbind from the current driver, then ask the PCI core to probe again.
drv=$1; shift
rc=0
for bdf in "$@"; do
    d=/sys/bus/pci/devices/$bdf
    [ -e "$d" ] || { echo "LAB-WARN bind: no device $bdf"; rc=1; continue; }
    echo "$drv" > "$d/driver_override"
    [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
    echo "$bdf" > /sys/bus/pci/drivers_probe
    cur=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    [ "$cur" = "$drv" ] || { echo "LAB-WARN bind: $bdf is on '${cur:-none}', not $drv"; rc=1; }
done
exit $rc
