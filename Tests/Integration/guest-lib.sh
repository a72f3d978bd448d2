# Helpers of the guest-side check scripts (busybox sh, as root), sourced from /lab/guest-lib.sh
# (lib.sh's guest() puts it there). Each check writes one "PASS name" / "FAIL name: why" line
# to /out/checks; `run NAME CMD...` keeps CMD's output in /out/NAME.txt and its status in $rc.
S=${S:-/tmp/vfio-state}
: > /out/checks
v() { sub=$1; shift; vfioctl "$sub" --state "$S" "$@"; }
drv() { l=$(readlink "/sys/bus/pci/devices/$1/driver" 2>/dev/null) && basename "$l" || echo none; }
perm() { stat -c '%u:%g %a' "$1" 2>/dev/null || echo absent; }
pass() { echo "PASS $*" >> /out/checks; }
fail() { echo "FAIL $*" >> /out/checks; }
run() { _name=$1; shift; "$@" > "/out/$_name.txt" 2>&1; rc=$?; echo "$rc" > "/out/$_name.rc"; }
expect_rc() { if [ "$rc" = "$2" ]; then pass "$1 (exit $rc)"; else fail "$1: exit $rc, expected $2: $(head -c 400 "/out/$3.txt")"; fi; }
expect_text() { if grep -q -- "$2" "/out/$3.txt"; then pass "$1"; else fail "$1: no '$2' in $(head -c 400 "/out/$3.txt")"; fi; }
expect_perm() { p=$(perm "$2"); if [ "$p" = "$3" ]; then pass "$1: $2 is $p"; else fail "$1: $2 is $p, expected $3"; fi; }
# util-linux setpriv (busybox's has no --reuid), staged from the host.
as_user() { u=$1; shift; /usr/bin/setpriv --reuid "$u" --regid "$u" --clear-groups "$@"; }
cdev_of() { ls "/sys/bus/pci/devices/$1/vfio-dev/" 2>/dev/null | head -n 1; }
# Centiseconds of guest uptime (busybox date has no %N).
centis() { read -r _up _ < /proc/uptime; echo "${_up%.*}${_up#*.}"; }
# timed NAME CMD...: CMD's stdout in /out/NAME.out, stderr in /out/NAME.err, its status in $rc
# and /out/NAME.rc, its wall time in $secs and, as "NAME 1.23s", in the file $TIMINGS.
TIMINGS=${TIMINGS:-/out/timings}
timed() {
    _n=$1
    shift
    _t0=$(centis)
    "$@" > "/out/$_n.out" 2> "/out/$_n.err"
    rc=$?
    _t=$(($(centis) - _t0))
    echo "$rc" > "/out/$_n.rc"
    secs=$((_t / 100)).$(printf %02d $((_t % 100)))
    echo "$_n ${secs}s" >> "$TIMINGS"
}
# why NAME: a timed command's status, the start of its stdout and the end of its stderr.
why() { echo "exit $rc: $(head -c 300 "/out/$1.out") $(tail -c 600 "/out/$1.err")"; }
