#!/usr/bin/env bash
# VFIO_DEVICE_FEATURE and the device-info capability chain in a lab guest, on edu 00:03.0 and
# the e1000e function 00:05.1: PROBE|SET of LOW_POWER_ENTRY accepted, PROBE|GET of it refused
# (EINVAL), MIGRATION and PCI_VF_TOKEN refused (ENOTTY), VFIO_DEVICE_GET_INFO re-read with
# room for capabilities without error.
#
# usage: Tests/Integration/features.sh TOPOLOGY RESULTS_DIR
#   q35-vtd        legacy (6.1)
#   q35-iommufd    iommufd (cdev) and legacy (6.12)
#   anything else  exit 77
# Last line: integration: N passed, M failed. Exit 0 pass, 1 fail, 77 skipped.
# ~5 s of guest time.
. "$(dirname "$0")/lib.sh"
usage_and_args "$@"
edu_backends "no feature scenario for $TOPOLOGY (needs edu 00:03.0 and e1000e 00:05.1 on vfio-pci)" \
    q35-vtd q35-iommufd
guest features "$(backend_steps features-03.0 'features 0000:00:03.0')
$(backend_steps features-05.1 'features 0000:00:05.1')"
for b in $backends; do
    for dev in 0000:00:03.0 0000:00:05.1; do
        f=$RESULTS/features/features-${dev##*:}-$b.json
        expect_grep "$f" '"name":"no PCI_VF_TOKEN","passed":true' \
            "$b $dev: LOW_POWER_ENTRY settable not gettable, no MIGRATION, no VF token; capability chain read"
    done
done
finish
