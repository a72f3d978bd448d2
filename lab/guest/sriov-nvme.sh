#!/bin/sh
# sriov-nvme.sh PF NUMVFS [VF_DRIVER...] — enables NUMVFS virtual functions on QEMU's nvme
# PF and, when nvme-cli (`nvme`) is in the guest, makes them usable: QEMU's secondary
# controllers start offline with no queues, so the PF's flexible resources are released,
# the PF reset, and each VF assigned 1 interrupt + 2 queues and brought online (the
# sequence in QEMU's docs/system/devices/nvme.rst). VFs are then bound to the i-th
# VF_DRIVER (e.g. nvme vfio-pci); without nvme-cli they stay unbound and offline, but
# still appear in sysfs with their own IOMMU groups.
pf=$1 numvfs=$2; shift 2
P=/sys/bus/pci/devices/$pf
say() { echo "LAB-SRIOV: $*"; }
ctrl=$(ls "$P/nvme" 2>/dev/null | head -n 1)

if command -v nvme >/dev/null && [ -n "$ctrl" ]; then
    nvme virt-mgmt "/dev/$ctrl" -c 0 -r 1 -a 1 -n 0 >/dev/null || say "release VI failed"
    nvme virt-mgmt "/dev/$ctrl" -c 0 -r 0 -a 1 -n 0 >/dev/null || say "release VQ failed"
    nvme reset "/dev/$ctrl" || say "controller reset failed"
    echo 1 > "$P/reset" || say "PF function reset failed"
    usable=1
else
    say "no nvme-cli in the guest: VFs will be enabled but stay offline"
    usable=0
fi

echo 0 > "$P/sriov_drivers_autoprobe"
echo "$numvfs" > "$P/sriov_numvfs" || { say "enabling $numvfs VFs failed"; exit 1; }

i=0
while [ $i -lt "$numvfs" ]; do
    vf=$(readlink "$P/virtfn$i"); vf=${vf##*/}
    cntlid=$((i + 1))   # QEMU numbers secondary controllers after the primary (0)
    if [ $usable = 1 ]; then
        nvme virt-mgmt "/dev/$ctrl" -c $cntlid -r 1 -a 8 -n 1 >/dev/null &&
        nvme virt-mgmt "/dev/$ctrl" -c $cntlid -r 0 -a 8 -n 2 >/dev/null &&
        nvme virt-mgmt "/dev/$ctrl" -c $cntlid -r 0 -a 9 -n 0 >/dev/null || say "bringing $vf (cntlid $cntlid) online failed"
    fi
    drv=$1; [ $# -gt 0 ] && shift
    if [ -n "$drv" ]; then
        sh /lab/guest/bind.sh "$drv" "$vf" && say "$vf -> $drv"
    fi
    i=$((i + 1))
done
exit 0
