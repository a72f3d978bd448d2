#!/usr/bin/env bash
# sPAPR TCE in a real POWER guest (lab topology `pseries`, Debian 6.12 ppc64el, QEMU pseries):
# the C reference Tests/Integration/spapr/spapr_edu.c runs the ioctl sequence the Swift
# Container uses on sPAPR (there is no Swift toolchain for ppc64le) and drives edu's DMA
# through it. Its hex dumps are what Tests/VFIOTests/SPAPRGuestTests.swift compares the
# Swift encoders against.
#
# usage: Tests/Integration/spapr.sh      exit 0 pass, 1 fail, 77 skipped
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
OUT=${SPAPR_OUT:-/tmp/vfio-spapr-integration}
[ -x lab/vm ] && [ -f lab/topologies/pseries.topo ] || { echo "SKIP: no lab pseries topology"; exit 77; }
command -v powerpc64le-linux-gnu-gcc >/dev/null || { echo "SKIP: apt-get install gcc-powerpc64le-linux-gnu"; exit 77; }
mkdir -p "$OUT"
powerpc64le-linux-gnu-gcc -O2 -static -o "$OUT/spapr_edu" Tests/Integration/spapr/spapr_edu.c
# 0001:00:01.0 is the edu on the second PHB, alone in its group (PHB 0's group has e1000 on
# its host driver, so it is not viable).
lab/vm run pseries --bin "$OUT/spapr_edu" --out "$OUT/guest" -- \
    'spapr_edu 0001:00:01.0 > /out/spapr.txt 2>&1; echo $? > /out/spapr.rc' >&2 || true
grep -E '^(PASS|FAIL)' "$OUT/guest/spapr.txt" || true
if [ "$(cat "$OUT/guest/spapr.rc" 2>/dev/null)" = 0 ] && grep -q '^SPAPR-EDU PASS' "$OUT/guest/spapr.txt"; then
    echo "integration: sPAPR reference passed (transcript $OUT/guest/spapr.txt)"; exit 0
fi
echo "integration: sPAPR reference failed (transcript $OUT/guest/spapr.txt)"; exit 1
