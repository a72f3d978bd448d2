#!/usr/bin/env bash
# MSI-X with several vectors in a lab guest: all 5 vectors of the e1000e function 00:05.1
# get eventfds (VFIO_DEVICE_SET_IRQS, MSI-X index), IVAR routes RxQ0, RxQ1, TxQ0, TxQ1 and
# Other to vectors 0-4, and each cause raised through the Interrupt Cause Set register must
# arrive on its own vector's eventfd, every round.
#
# usage: Tests/Integration/msix.sh TOPOLOGY RESULTS_DIR
#   q35-vtd        legacy (6.1)
#   q35-iommufd    iommufd (cdev) and legacy (6.12)
#   anything else  exit 77
# Last line: integration-vfio: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
# ~10 s of guest time.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
backends=$(backends_for "$TOPOLOGY" q35-vtd q35-iommufd) \
    || skip "no MSI-X scenario for $TOPOLOGY (needs the e1000e function 00:05.1 on vfio-pci)"
require_lab
build_edu
cmd=""
for b in $backends; do cmd="$cmd
$(step "msix-$b" "msix 0000:00:05.1 --backend $b --rounds 5")"; done
guest msix "$cmd"
for b in $backends; do
    f=$RESULTS/msix/msix-$b.json
    expect_pass "$f" "$b: 5 MSI-X vectors, each cause on its own vector 5 of 5 times"
    for v in 0 1 2 3 4; do
        grep -q "\"name\":\"vector $v\",\"passed\":true" "$f" 2>/dev/null || fail "$b: vector $v missing or failed"
    done
done
finish
