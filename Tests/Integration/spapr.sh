#!/usr/bin/env bash
# sPAPR TCE in a real POWER guest (lab topology `pseries`, Debian 6.12 ppc64el, QEMU pseries):
# the C reference Tests/Integration/spapr/spapr_edu.c runs the ioctl sequence the Swift
# Container uses on sPAPR (there is no Swift toolchain for ppc64le) and drives edu's DMA
# through it. Its hex dumps are what Tests/VFIOTests/SPAPRGuestTests.swift compares the
# Swift encoders against.
#
# usage: Tests/Integration/spapr.sh TOPOLOGY RESULTS_DIR      (TOPOLOGY other than pseries: 77)
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
[ "$TOPOLOGY" = pseries ] || skip "sPAPR needs the pseries topology"
[ -x lab/vm ] && [ -f lab/topologies/pseries.topo ] || skip "no lab pseries topology"
command -v powerpc64le-linux-gnu-gcc >/dev/null || skip "apt-get install gcc-powerpc64le-linux-gnu"
powerpc64le-linux-gnu-gcc -O2 -static -o "$RESULTS/spapr_edu" Tests/Integration/spapr/spapr_edu.c
# 0001:00:01.0 is the edu on the second PHB, alone in its group (PHB 0's group has e1000 on
# its host driver, so it is not viable).
lab/vm run pseries --bin "$RESULTS/spapr_edu" --out "$RESULTS/guest" -- \
    'spapr_edu 0001:00:01.0 > /out/spapr.txt 2>&1; echo $? > /out/spapr.rc' >"$RESULTS/guest.vm.log" 2>&1
grep -E '^(PASS|FAIL)' "$RESULTS/guest/spapr.txt" || true
if [ "$(cat "$RESULTS/guest/spapr.rc" 2>/dev/null)" = 0 ] && grep -q '^SPAPR-EDU PASS' "$RESULTS/guest/spapr.txt"; then
    pass "sPAPR reference: edu DMA + MSI through TCE v2 (transcript $RESULTS/guest/spapr.txt)"
else
    fail "sPAPR reference (transcript $RESULTS/guest/spapr.txt, log $RESULTS/guest.vm.log)"
fi
finish
