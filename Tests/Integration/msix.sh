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
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
# ~10 s of guest time.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
edu_backends "no MSI-X scenario for $TOPOLOGY (needs the e1000e function 00:05.1 on vfio-pci)" q35-vtd q35-iommufd
guest msix "$(backend_steps msix 'msix 0000:00:05.1 --rounds 5')"
for b in $backends; do
    f=$RESULTS/msix/msix-$b.json
    expect_pass "$f" "$b: 5 MSI-X vectors, each cause on its own vector 5 of 5 times"
    expect_cases "$f" "$b" 'vector 0' 'vector 1' 'vector 2' 'vector 3' 'vector 4'
done
finish
