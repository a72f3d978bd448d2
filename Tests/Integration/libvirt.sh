#!/usr/bin/env bash
# What Debian 12's libvirtd 9.0 (QEMU driver, QEMU 7.2 under TCG, user libvirt-qemu) does on
# its own, with no hook, when a transient domain names the two e1000 behind the PCIe-to-PCI
# bridge (one IOMMU group). Checks in Tests/Integration/libvirt-guest.sh, run in the guest:
#   - libvirtd comes up (timed);
#   - managed='no' with the function on e1000: refused, "must be manually detached";
#   - managed='yes' naming one function: libvirt binds only that one to vfio-pci, QEMU fails
#     with "group N is not viable", libvirt gives the function back;
#   - both bound to vfio-pci by hand, managed='no' and then (fresh libvirtd) managed='yes':
#     the domain starts paused, QEMU's qtree has both, libvirt chowns /dev/vfio/N to
#     libvirt-qemu while it runs and back to root after destroy; both stay on vfio-pci;
#   - both on e1000, managed='yes': libvirt moves both and gives both back at destroy; but
#     after a managed='no' domain on them (same libvirtd) it moves both and leaves them on
#     vfio-pci ("Not reattaching unmanaged PCI device").
# usage: Tests/Integration/libvirt.sh TOPOLOGY RESULTS_DIR   (q35-vtd only)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
. "$REPO/Tests/Integration/libvirt-lib.sh"
usage_and_args "$@"
[ "$TOPOLOGY" = q35-vtd ] || skip "no libvirt scenario for $TOPOLOGY (the e1000 pair of q35-vtd on Debian's 6.1)"
require_lab
need_product VFIOCTL_BIN vfioctl
started=$SECONDS
t0=$(now_ms)
libvirt_guest_args || { fail "could not install Debian's libvirt-daemon, libvirt-daemon-driver-qemu and libvirt-clients"; finish; }
echo "libvirt: $LIBVIRT_VERSION, $(qemu-system-x86_64 --version | head -n 1) (install/cache check $(elapsed "$t0" "$(now_ms)"))"
e1000=$(find "$CACHE/kernels/6.1/root/lib/modules" -name e1000.ko 2>/dev/null | head -n 1)
[ -n "$e1000" ] || { fail "no e1000.ko under $CACHE/kernels/6.1 (lab/vm fetch)"; finish; }
# libvirtd, QEMU and their libraries (~100 MB of initramfs), vfioctl (~200 MB), and the
# nested VM's 128 MiB.
export LAB_MEMORY=${LAB_MEMORY:-2048}
guest libvirt "sh /lab/libvirt-guest.sh" "${LIBVIRT_GUEST_ARGS[@]}" --bin "$VFIOCTL_BIN" --file "$e1000:/lab/e1000.ko" \
    --file "$REPO/Tests/Integration/libvirt-guest.sh:/lab/libvirt-guest.sh" --timeout 600
guest_checks libvirt
if [ -s "$RESULTS/libvirt/libvirt-timings" ]; then
    echo "timings: guest boot $(sed -n 's/^boot //p' "$RESULTS/libvirt/timings") s, guest total $(sed -n 's/^qemu //p' "$RESULTS/libvirt/timings") s;" \
        "in the guest: $(tr '\n' ' ' < "$RESULTS/libvirt/libvirt-timings")script $((SECONDS - started)) s"
fi
[ -s "$RESULTS/libvirt/libvirt-findings" ] && sed 's/^/FINDING /' "$RESULTS/libvirt/libvirt-findings"
finish
