# shellcheck shell=sh
# Helpers of the guest side (busybox sh, as root): the check scripts of Tests/Integration and
# lab/suite's guest lines source it as /lab/guest/lib.sh (every guest has lab/guest/ there).
# Results as lab/lib/checks.sh writes them (pass, fail, skip_check, finish), into /out/checks,
# which the host reads back; `run NAME CMD...` keeps CMD's output in /out/NAME.txt and its
# status in $rc and /out/NAME.rc, and the expect_* helpers judge what run kept.
# shellcheck source=../lib/checks.sh
. /lab/lib/checks.sh
CHECKS=/out/checks
: > "$CHECKS"
S=${S:-/tmp/vfio-state}
v() { sub=$1; shift; vfioctl "$sub" --state "$S" "$@"; }

# Devices: the driver (none without one), the driver_override (gone when the device is),
# the IOMMU group and the VFIO cdev (none before 6.6); binding is lab/guest/bind.sh's.
drv() { l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$l" || echo none; }
ovr() { cat "/sys/bus/pci/devices/$1/driver_override" 2>/dev/null || echo gone; }
group_of() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }
cdev_of() { ls "/sys/bus/pci/devices/$1/vfio-dev/" 2>/dev/null | head -n 1; }
perm() { stat -c '%u:%g %a' "$1" 2>/dev/null || echo absent; }
# util-linux setpriv (busybox's has no --reuid), staged from the host.
as_user() { u=$1; shift; /usr/bin/setpriv --reuid "$u" --regid "$u" --clear-groups "$@"; }

run() { _name=$1; shift; "$@" > "/out/$_name.txt" 2>&1; rc=$?; echo "$rc" > "/out/$_name.rc"; }
# run_apart NAME CMD...: run, with stderr apart in /out/NAME.err (stdout stays parseable).
run_apart() { _name=$1; shift; "$@" > "/out/$_name.txt" 2> "/out/$_name.err"; rc=$?; echo "$rc" > "/out/$_name.rc"; }
output_of() { cat "/out/$1.txt" "/out/$1.err" 2>/dev/null | head -c 400; }
expect_rc() { if [ "$rc" = "$2" ]; then pass "$1 (exit $rc)"; else fail "$1: exit $rc, expected $2: $(output_of "$3")"; fi; }
expect_text() { if grep -q -- "$2" "/out/$3.txt"; then pass "$1"; else fail "$1: no '$2' in $(head -c 400 "/out/$3.txt")"; fi; }
expect_no_text() { if grep -q -- "$2" "/out/$3.txt"; then fail "$1: '$2' in $(head -c 400 "/out/$3.txt")"; else pass "$1"; fi; }
expect_perm() { p=$(perm "$2"); if [ "$p" = "$3" ]; then pass "$1: $2 is $p"; else fail "$1: $2 is $p, expected $3"; fi; }

# timed NAME CMD...: CMD's stdout in /out/NAME.out, stderr in /out/NAME.err, its status in $rc
# and /out/NAME.rc, its wall time in $secs ("1.2s") and, as "NAME 1.2s", in the file $TIMINGS.
TIMINGS=${TIMINGS:-/out/timings}
timed() {
    _n=$1
    shift
    _t0=$(now_ms)
    "$@" > "/out/$_n.out" 2> "/out/$_n.err"
    rc=$?
    secs=$(elapsed "$_t0" "$(now_ms)")
    echo "$rc" > "/out/$_n.rc"
    echo "$_n $secs" >> "$TIMINGS"
}
# why NAME: a timed command's status, the start of its stdout and the end of its stderr.
why() { echo "exit $rc: $(head -c 300 "/out/$1.out") $(tail -c 600 "/out/$1.err")"; }
