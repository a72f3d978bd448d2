#!/usr/bin/env bash
# End-to-end test of the VFIO library in emulated guests (lab/vm): the edu driver on the
# legacy and iommufd backends, a bus hot reset of the two e1000 behind the PCIe-to-PCI
# bridge, and the "group not viable" error naming the device that blocks it.
#
# usage: Tests/Integration/edu.sh [--no-build]     exit 0 pass, 1 fail, 77 skipped
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
BIN=$REPO/.build-vfio-rel/release/vfio-edu
OUT=${EDU_OUT:-/tmp/vfio-edu-integration}
[ -x lab/vm ] || { echo "SKIP: lab/vm not present"; exit 77; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: qemu-system-x86_64 not installed"; exit 77; }

if [ "${1:-}" != "--no-build" ]; then
    swift build -c release --static-swift-stdlib --product vfio-edu --scratch-path .build-vfio-rel >&2
fi

# A host driver for the "not viable" case: e1000 is not in q35-vtd's module list.
E1000=$(find "${VFIO_LAB_CACHE:-$HOME/.cache/swift-vfio-lab}/kernels/6.1/root/lib/modules" -name e1000.ko 2>/dev/null | head -n 1)

fails=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# expect_json FILE DESCRIPTION: the report says passed and the command exited 0.
expect_json() {
    local f=$1 what=$2
    if [ -s "$f" ] && grep -q '"passed":true' "$f" && [ "$(cat "$f.rc" 2>/dev/null)" = 0 ]; then
        pass "$what"
    else
        fail "$what: $(cat "$f" 2>/dev/null | head -c 600) rc=$(cat "$f.rc" 2>/dev/null)"
    fi
}

# Guest command: each step writes /out/NAME.json and /out/NAME.json.rc.
step() { echo "vfio-edu $2 --json > /out/$1.json 2>/out/$1.err; echo \$? > /out/$1.json.rc"; }

rm -rf "$OUT"; mkdir -p "$OUT"
vtd_cmd="$(step edu-legacy '0000:00:03.0 --backend legacy')
$(step edu-auto '0000:00:03.0')
$(step edu-shared '0000:00:03.0 --backend legacy --also 0000:00:05.1')
$(step probe-bridge 'probe 0000:01:01.0 --backend legacy')
$(step hot-reset-legacy 'hot-reset 0000:01:01.0 --backend legacy --also 0000:01:02.0')"
files=()
if [ -n "$E1000" ]; then
    files=(--file "$E1000:/lab/e1000.ko")
    vtd_cmd="$vtd_cmd
insmod /lab/e1000.ko && sh /lab/guest/bind.sh e1000 0000:01:02.0
$(step not-viable 'probe 0000:01:01.0 --backend legacy')"
fi
lab/vm run q35-vtd --bin "$BIN" "${files[@]}" --out "$OUT/vtd" -- "$vtd_cmd" >&2 || fail "q35-vtd guest run"

expect_json "$OUT/vtd/edu-legacy.json" "6.1 legacy: edu identity, factorial, DMA both ways with MSI, unmap blocks DMA, INTx"
if grep -q '"backend":"legacy"' "$OUT/vtd/edu-auto.json" 2>/dev/null; then
    expect_json "$OUT/vtd/edu-auto.json" "6.1 auto picks legacy (no /dev/iommu)"
else
    fail "6.1 auto did not pick legacy: $(head -c 300 "$OUT/vtd/edu-auto.json" 2>/dev/null)"
fi
if grep -q '0000:00:05.1 shares the DMA space (group' "$OUT/vtd/edu-shared.json" 2>/dev/null; then
    expect_json "$OUT/vtd/edu-shared.json" "6.1 two groups in one container: edu DMA with e1000e 05.1's group attached"
else
    fail "6.1 shared container: $(head -c 400 "$OUT/vtd/edu-shared.json" 2>/dev/null)"
fi
expect_json "$OUT/vtd/probe-bridge.json" "6.1 probe of e1000 01:01.0 (regions, irqs, IOVA ranges)"
if expect_json "$OUT/vtd/hot-reset-legacy.json" "x" >/dev/null && grep -q '2 affected' "$OUT/vtd/hot-reset-legacy.json"; then
    pass "6.1 hot reset of the bridge group: both e1000 listed, reset with the group fd"
else
    fail "6.1 hot reset: $(head -c 600 "$OUT/vtd/hot-reset-legacy.json" 2>/dev/null)"
fi
if [ -n "$E1000" ]; then
    f=$OUT/vtd/not-viable.json
    if [ "$(cat "$f.rc" 2>/dev/null)" = 1 ] && grep -q 'is not viable: 0000:01:02.0 is still bound to e1000' "$f" \
        && grep -q 'vfioctl detach' "$f"; then
        pass "6.1 group not viable: error names 0000:01:02.0 on e1000"
    else
        fail "6.1 group not viable: $(head -c 600 "$f" 2>/dev/null) rc=$(cat "$f.rc" 2>/dev/null)"
    fi
else
    echo "SKIP not-viable: no e1000.ko in the lab cache"
fi

fd_cmd="$(step edu-iommufd '0000:00:03.0 --backend iommufd')
$(step edu-auto '0000:00:03.0')
$(step edu-cdev '/dev/vfio/devices/vfio0 --interrupts msi')
$(step edu-shared '0000:00:03.0 --backend iommufd --also 0000:00:05.1')
$(step edu-legacy '0000:00:03.0 --backend legacy')
$(step probe-iommufd 'probe 0000:00:03.0 --backend iommufd')
$(step hot-reset-cdev 'hot-reset 0000:01:01.0 --backend iommufd --also 0000:01:02.0')
dmesg | grep -c 'DMAR: \[DMA Write' > /out/dmar-faults"
lab/vm run q35-iommufd --bin "$BIN" --out "$OUT/iommufd" -- "$fd_cmd" >&2 || fail "q35-iommufd guest run"

expect_json "$OUT/iommufd/edu-iommufd.json" "6.12 iommufd: edu via cdev + IOAS, DMA with MSI, INTx"
if grep -q '"backend":"iommufd"' "$OUT/iommufd/edu-auto.json" 2>/dev/null; then
    expect_json "$OUT/iommufd/edu-auto.json" "6.12 auto picks iommufd"
else
    fail "6.12 auto did not pick iommufd: $(head -c 300 "$OUT/iommufd/edu-auto.json" 2>/dev/null)"
fi
expect_json "$OUT/iommufd/edu-cdev.json" "6.12 edu opened by cdev path"
if grep -q 'same iommufd IOAS' "$OUT/iommufd/edu-shared.json" 2>/dev/null; then
    expect_json "$OUT/iommufd/edu-shared.json" "6.12 two devices attached to one IOAS: edu DMA"
else
    fail "6.12 shared IOAS: $(head -c 400 "$OUT/iommufd/edu-shared.json" 2>/dev/null)"
fi
expect_json "$OUT/iommufd/edu-legacy.json" "6.12 legacy container path"
if grep -q 'user -> process on a fresh iommufd' "$OUT/iommufd/probe-iommufd.json" 2>/dev/null; then
    expect_json "$OUT/iommufd/probe-iommufd.json" "6.12 IOMMU_OPTION RLIMIT_MODE user -> process (EBUSY once an IOAS exists)"
else
    fail "6.12 RLIMIT_MODE: $(head -c 600 "$OUT/iommufd/probe-iommufd.json" 2>/dev/null)"
fi
expect_json "$OUT/iommufd/hot-reset-cdev.json" "6.12 hot reset of the bridge devices through one iommufd"
n=$(cat "$OUT/iommufd/dmar-faults" 2>/dev/null || echo 0)
if [ "${n:-0}" -ge 1 ]; then pass "6.12 the DMA after unmap raised $n DMAR write fault(s)"; else fail "no DMAR fault after unmap"; fi

# Other IOMMUs: AMD-Vi (6.1), and virtio-iommu (Debian 6.12), which does not isolate MSIs,
# so type1 refuses it (EPERM) until allow_unsafe_interrupts is set.
lab/vm run q35-amd-iommu --bin "$BIN" --out "$OUT/amd" -- "$(step edu '0000:00:03.0')" >&2 || fail "q35-amd-iommu guest run"
expect_json "$OUT/amd/edu.json" "6.1 AMD-Vi: edu DMA with MSI and INTx"
vi_cmd="$(step edu-refused '0000:00:03.0')
echo Y > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
$(step edu-unsafe '0000:00:03.0')"
lab/vm run q35-virtio-iommu --bin "$BIN" --out "$OUT/virtio" -- "$vi_cmd" >&2 || fail "q35-virtio-iommu guest run"
f=$OUT/virtio/edu-refused.json
if [ "$(cat "$f.rc" 2>/dev/null)" = 1 ] && grep -q 'VFIO_SET_IOMMU.*EPERM.*allow_unsafe_interrupts' "$f"; then
    pass "6.12 virtio-iommu: SET_IOMMU EPERM explained (no MSI isolation, allow_unsafe_interrupts)"
else
    fail "6.12 virtio-iommu refusal: $(head -c 400 "$f" 2>/dev/null)"
fi
expect_json "$OUT/virtio/edu-unsafe.json" "6.12 virtio-iommu with allow_unsafe_interrupts: edu passes"

echo "reports in $OUT"
[ "$fails" -eq 0 ] && { echo "integration: all passed"; exit 0; }
echo "integration: $fails failed"; exit 1
