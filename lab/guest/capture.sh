#!/bin/sh
# capture.sh DEST — copies the VFIO-relevant subset of this machine's sysfs, /proc and /dev
# into DEST as a mirror of the real paths (DEST/sys/devices/..., DEST/proc/cmdline, ...),
# the layout the unit tests read through Sysfs(root:). Busybox-only. Symlinks are recreated
# with exactly the relative target the kernel shows (readlink), never resolved.
set -u
dest=${1:?usage: capture.sh DEST}
mkdir -p "$dest"

# Copies regular file $1 to the same path under $dest if it is readable (write-only
# attributes and ones whose show() fails are skipped).
copy_file() {
    [ -f "$1" ] || return 0
    mkdir -p "$dest$(dirname "$1")"
    cat "$1" > "$dest$1.tmp" 2>/dev/null && mv "$dest$1.tmp" "$dest$1" || rm -f "$dest$1.tmp"
}
# Recreates symlink $1 under $dest with the kernel's own (relative) target.
copy_link() {
    [ -L "$1" ] || return 0
    mkdir -p "$dest$(dirname "$1")"
    ln -sfn "$(readlink "$1")" "$dest$1"
}
# An empty stand-in for a write-only attribute, so tests can exercise writes to it.
touch_file() {
    [ -e "$1" ] || return 0
    mkdir -p "$dest$(dirname "$1")"; : > "$dest$1"
}

PCI_FILES="config resource vendor device subsystem_vendor subsystem_device class revision irq
numa_node driver_override reset_method boot_vga enable sriov_totalvfs sriov_numvfs sriov_offset
sriov_stride sriov_vf_device sriov_drivers_autoprobe modalias"

for link in /sys/bus/pci/devices/*; do
    [ -e "$link" ] || continue
    copy_link "$link"
    d=$(readlink -f "$link")
    mkdir -p "$dest$d"
    for f in $PCI_FILES; do copy_file "$d/$f"; done
    for l in driver iommu_group iommu physfn subsystem "$d"/virtfn*; do
        case $l in /*) copy_link "$l" ;; *) copy_link "$d/$l" ;; esac
    done
    for n in "$d"/net/*; do
        [ -d "$n" ] || continue
        mkdir -p "$dest$n"; copy_file "$n/operstate"; copy_file "$n/flags"
    done
    # Names only: a device in use by the host shows up as nvme/nvmeN and its namespaces.
    for n in "$d"/nvme/* "$d"/nvme/*/nvme*n* "$d"/block/*; do
        [ -d "$n" ] && mkdir -p "$dest$n"
    done
    # The iommufd device cdev (6.12+): vfio-dev/vfioN with its dev_t.
    for n in "$d"/vfio-dev/*; do
        [ -d "$n" ] || continue
        mkdir -p "$dest$n"; copy_file "$n/dev"
    done
done

for drv in /sys/bus/pci/drivers/*; do
    mkdir -p "$dest$drv"
    for l in "$drv"/0000:*; do copy_link "$l"; done
    for f in bind unbind new_id remove_id; do touch_file "$drv/$f"; done
done
copy_file /sys/bus/pci/drivers_autoprobe
touch_file /sys/bus/pci/drivers_probe
touch_file /sys/bus/pci/rescan

for g in /sys/kernel/iommu_groups/*; do
    [ -d "$g" ] || continue
    mkdir -p "$dest$g/devices"
    copy_file "$g/type"; copy_file "$g/reserved_regions"
    for l in "$g"/devices/*; do copy_link "$l"; done
done

for l in /sys/class/iommu/*; do
    [ -L "$l" ] || continue
    copy_link "$l"
    t=$(readlink -f "$l")
    mkdir -p "$dest$t"
    for dl in "$t"/devices/*; do copy_link "$dl"; done
done

for m in vfio vfio_pci vfio_pci_core vfio_iommu_type1 vfio_virqfd iommufd pci_stub vfio_iommu_spapr_tce irqbypass; do
    [ -d /sys/module/$m ] || continue
    mkdir -p "$dest/sys/module/$m"
    # initstate exists only for loadable modules: its absence says "built in".
    copy_file /sys/module/$m/initstate
    for p in /sys/module/$m/parameters/*; do copy_file "$p"; done
done

for f in /proc/cmdline /proc/mounts /proc/swaps; do copy_file "$f"; done

if [ -d /dev/vfio ]; then
    mkdir -p "$dest/dev/vfio"
    for n in /dev/vfio/*; do [ -c "$n" ] && : > "$dest$n"; done
    if [ -d /dev/vfio/devices ]; then
        mkdir -p "$dest/dev/vfio/devices"
        for n in /dev/vfio/devices/*; do [ -c "$n" ] && : > "$dest$n"; done
    fi
fi
[ -c /dev/iommu ] && { mkdir -p "$dest/dev"; : > "$dest/dev/iommu"; }
exit 0
