#!/usr/bin/env bash
# The host assignment manager against the real kernel in a lab guest: vfioctl detach, attach
# and reset of the e1000e (its multifunction sibling untouched), the bridge group with two
# e1000 (both move, the bridge stays), the nvme behind the root port and the edu device
# (vfio-edu drives it after --allow-no-reset); refusals (no reset, an open group or cdev, a bus
# reset that hits a host device, active swap on the nvme); two detach at once; and a SIGKILL
# after every step of detach and attach of the bridge group, each followed by recovery. Every
# check reads what sysfs shows afterwards (Tests/Integration/manager-guest.sh).
#
# usage: Tests/Integration/manager.sh TOPOLOGY RESULTS_DIR
#   q35-vtd        Debian 6.1, legacy VFIO; e1000.ko loaded from the lab's kernel
#   q35-iommufd    custom 6.12 with iommufd: cdevs, and vfio-edu on both backends
#   anything else  exit 77
# Environment: VFIOCTL=/path uses that binary (else .build-lab's, else built like lab/suite).
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
edu_backends "no manager scenario for $TOPOLOGY (needs q35-vtd's devices)" q35-vtd q35-iommufd
need_product VFIOCTL_BIN vfioctl
# The initramfs holds vfioctl (static, with Foundation), vfio-edu, DPDK and python's modules:
# more than 512 MiB of guest RAM can unpack beside the kernel.
export LAB_MEMORY=${LAB_MEMORY:-1024}
files=(--file "$REPO/Tests/Integration/manager-guest.sh:/lab/manager-guest.sh")
# DPDK, Debian's build, as a real VFIO client: testpmd with the e1000 PMD and the ring
# mempool, loaded by EAL from /lab/pmds (`-d DIR` takes files named *.so). The PCI bus
# driver comes in as the e1000 PMD's dependency; a second copy in /lab/pmds would be loaded
# twice and EAL panics ("UIO_RESOURCE_LIST tailq is already registered").
( ensure_packages dpdk-dev librte-net-e1000-23 librte-mempool-ring23 ) \
    || fail "could not install Debian's dpdk-dev"
pmds=/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
dpdk_bins=()
if [ -x /usr/bin/dpdk-testpmd ]; then
    dpdk_bins=(--bin /usr/bin/dpdk-testpmd)
    for pmd in librte_net_e1000 librte_mempool_ring; do
        files+=(--file "$(readlink -f "$pmds/$pmd.so.23"):/lab/pmds/$pmd.so")
        for lib in $(ldd "$pmds/$pmd.so.23" | grep -o '/[^ ]*'); do
            files+=(--file "$(readlink -f "$lib"):$lib")
        done
    done
fi
if [ "$TOPOLOGY" = q35-vtd ]; then
    e1000=$(find "$CACHE/kernels/6.1/root/lib/modules" -name e1000.ko 2>/dev/null | head -n 1)
    [ -n "$e1000" ] || { fail "no e1000.ko under $CACHE/kernels/6.1 (lab/vm fetch)"; finish; }
    files+=(--file "$e1000:/lab/e1000.ko")
fi
# dpdk-devbind.py (Debian's dpdk package) with the python3 modules it loads, lspci and pci.ids,
# to compare its view of who drives what with vfioctl's.
( ensure_packages dpdk pciutils ) || fail "could not install Debian's dpdk"
if [ -f /usr/bin/dpdk-devbind.py ] && [ -x /usr/bin/python3 ] && [ -x /usr/bin/lspci ]; then
    dpdk_bins+=(--bin /usr/bin/python3 --bin /usr/bin/lspci)
    files+=(--file /usr/bin/dpdk-devbind.py:/usr/bin/dpdk-devbind.py)
    for ids in /usr/share/misc/pci.ids /usr/share/hwdata/pci.ids; do
        [ -f "$ids" ] && files+=(--file "$(readlink -f "$ids"):$ids")
    done
    modules=$(/usr/bin/python3 -I -S - 2>/dev/null <<'PY'
import sys
sys.argv = ["dpdk-devbind.py", "--status-dev", "net"]
sys.stdout = open("/dev/null", "w")
try:
    exec(compile(open("/usr/bin/dpdk-devbind.py").read(), "dpdk-devbind.py", "exec"), {"__name__": "__main__"})
except SystemExit:
    pass
sys.stdout = sys.__stdout__
import os
files = {getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}
print("\n".join(sorted(f for f in files if f.startswith("/") and os.path.isfile(f))))
PY
)
    for m in $modules /usr/lib/python3.11/os.py; do
        files+=(--file "$m:$m")
        case $m in *.so) for lib in $(ldd "$m" | grep -o '/[^ ]*'); do files+=(--file "$(readlink -f "$lib"):$lib"); done ;; esac
    done
fi
guest manager "BACKENDS='$backends' sh /lab/manager-guest.sh $TOPOLOGY" --bin "$VFIOCTL_BIN" --bin /usr/bin/setpriv \
    "${dpdk_bins[@]}" "${files[@]}" --timeout 600
guest_checks manager
finish
