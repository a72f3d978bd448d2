#!/bin/sh
# bind.sh DRIVER BDF... — hands each device to DRIVER the way vfio users do: set
# driver_override, unbind from the current driver, then ask the PCI core to probe again.
# bind.sh --host BDF... — the way back: clear driver_override, unbind, probe again, so that
# the driver matching the device's IDs (its host driver) takes it.
# bind.sh --none BDF... — clear driver_override and unbind: the device is left without a driver.
# A device that does not end up as asked gets a LAB-WARN line, and the exit status is 1.
mode=$1; shift
rc=0
for bdf in "$@"; do
    d=/sys/bus/pci/devices/$bdf
    [ -e "$d" ] || { echo "LAB-WARN bind: no device $bdf"; rc=1; continue; }
    case $mode in --host | --none) echo > "$d/driver_override" ;; *) echo "$mode" > "$d/driver_override" ;; esac
    [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
    [ "$mode" = --none ] || echo "$bdf" > /sys/bus/pci/drivers_probe
    cur=$(readlink "$d/driver" 2>/dev/null)
    cur=${cur##*/}
    case $mode in
        --host) [ -n "$cur" ] && [ "$cur" != vfio-pci ] ;;
        --none) [ -z "$cur" ] ;;
        *) [ "$cur" = "$mode" ] ;;
    esac || { echo "LAB-WARN bind: $bdf is on '${cur:-none}' after bind.sh $mode"; rc=1; }
done
exit $rc
