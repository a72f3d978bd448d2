#!/bin/sh
# facts.sh — the kernel's ground truth about PCI devices, IOMMU groups and VFIO, as plain
# lines "KIND ARGS..." that lab/check.py compares with vfioctl's JSON and the topology's
# .expect file. Busybox-only; reads sysfs directly, independent of swift-vfio.
#   kernel RELEASE                      iommu NAME (each /sys/class/iommu entry)
#   device BDF VENDOR DEVICE CLASS      driver BDF NAME|-
#   group N TYPE                        member N BDF
#   reset BDF METHOD...|-|absent        bar BDF INDEX START SIZE FLAGS (resource lines 0-5)
#   resource BDF LINE START SIZE FLAGS  (every non-empty line of `resource`: BARs, ROM = 6,
#                                        SR-IOV VF BARs = 7-12, bridge windows after them)
#   sriov BDF TOTALVFS NUMVFS           vf VF_BDF PF_BDF
#   module NAME builtin|loaded          dev PATH (each /dev/vfio entry, /dev/iommu)
echo "kernel $(uname -r)"
for i in /sys/class/iommu/*; do [ -e "$i" ] && echo "iommu ${i##*/}"; done

hex() { printf '%d' "$1"; }

for d in /sys/bus/pci/devices/*; do
    [ -e "$d" ] || continue
    b=${d##*/}
    echo "device $b $(cat $d/vendor | sed s/0x//) $(cat $d/device | sed s/0x//) $(cat $d/class | sed s/0x//)"
    if [ -e $d/driver ]; then drv=$(readlink $d/driver); echo "driver $b ${drv##*/}"; else echo "driver $b -"; fi
    if [ -f $d/reset_method ]; then
        r=$(cat $d/reset_method 2>/dev/null); echo "reset $b ${r:--}"
    else
        echo "reset $b absent"
    fi
    i=0
    while read -r start end flags; do
        s=$(hex "$start"); e=$(hex "$end")
        if [ "$e" -ne 0 ]; then
            [ $i -le 5 ] && echo "bar $b $i $s $((e - s + 1)) $flags"
            echo "resource $b $i $s $((e - s + 1)) $flags"
        fi
        i=$((i + 1))
    done < $d/resource
    if [ -f $d/sriov_totalvfs ]; then echo "sriov $b $(cat $d/sriov_totalvfs) $(cat $d/sriov_numvfs)"; fi
    if [ -e $d/physfn ]; then pf=$(readlink $d/physfn); echo "vf $b ${pf##*/}"; fi
done

for g in /sys/kernel/iommu_groups/*; do
    [ -d "$g" ] || continue
    n=${g##*/}
    echo "group $n $(cat $g/type 2>/dev/null || echo -)"
    for m in $g/devices/*; do echo "member $n ${m##*/}"; done
done

for m in vfio vfio_pci vfio_pci_core vfio_iommu_type1 vfio_iommu_spapr_tce vfio_virqfd iommufd pci_stub irqbypass e1000e e1000 nvme nvme_core; do
    [ -d /sys/module/$m ] || continue
    if [ -f /sys/module/$m/initstate ]; then echo "module $m loaded"; else echo "module $m builtin"; fi
done
for n in /dev/vfio/* /dev/vfio/devices/* /dev/iommu; do [ -c "$n" ] && echo "dev $n"; done
exit 0
