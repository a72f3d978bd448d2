# shellcheck shell=sh
# Results and clocks of every check harness, on both sides of the lab: lab/suite and
# Tests/Integration/*.sh on the host (through lib/common.sh) and the guest-side scripts
# (through lab/guest/lib.sh; every guest has this file as /lab/lib/checks.sh). POSIX sh, so
# busybox runs it too. The one result format, which lab/check.py prints as well:
#   PASS NAME                          a check that passed
#   FAIL NAME: WHY                     a check that failed
#   SKIP NAME: WHY                     a check that could not run here (not counted)
#   integration: N passed, M failed    the closing line, always last
# read_result reads the closing line back (lab/suite, scripts/test). Lines go to stdout, or
# to the file $CHECKS when it is set (a guest's /out/checks, which the host reads back with
# take_results). RESULT_PREFIX goes before every NAME (Tests/Integration: "SCRIPT TOPOLOGY: ").
CHECKS=""
RESULT_PREFIX=""
PASSED=0
FAILED=0

result() { if [ -n "$CHECKS" ]; then echo "$*" >> "$CHECKS"; else echo "$*"; fi; }
pass() { PASSED=$((PASSED + 1)); result "PASS $RESULT_PREFIX$*"; }
fail() { FAILED=$((FAILED + 1)); result "FAIL $RESULT_PREFIX$*"; }
skip_check() { result "SKIP $RESULT_PREFIX$*"; }

# The closing line. In a file the counts are the file's own lines, so that checks a guest
# script ran in a subshell count too.
closing_line() {
    if [ -n "$CHECKS" ]; then
        PASSED=$(grep -c '^PASS ' "$CHECKS")
        FAILED=$(grep -c '^FAIL ' "$CHECKS")
    fi
    result "integration: $PASSED passed, $FAILED failed"
}

# The closing line, then the exit status: 1 when any check failed, 77 when none ran (what a
# skipped script says), else 0.
finish() {
    closing_line
    [ "$FAILED" -eq 0 ] || exit 1
    [ "$PASSED" -gt 0 ] || exit 77
    exit 0
}

# skip WHY: this script cannot run here (wrong topology, missing tools): SKIP, closing line, 77.
skip() { skip_check "$*"; closing_line; exit 77; }

# read_result FILE: "N M" from FILE's closing line; fails when it has none.
read_result() {
    sed -n 's/^integration: \([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1 \2/p' "$1" 2>/dev/null | tail -n 1 | grep .
}

# take_results FILE WHY: the checks another harness wrote to FILE (a guest's /out/checks,
# lab/check.py's output) become this one's: PASS, FAIL and SKIP lines with this RESULT_PREFIX,
# other lines as they are. FILE without a closing line that matches its lines (the other
# harness stopped early) is one more failure, WHY.
take_results() {
    _passed=0 _failed=0
    if [ -f "$1" ]; then
        while IFS= read -r _line; do
            case $_line in
                "PASS "*) pass "${_line#PASS }"; _passed=$((_passed + 1)) ;;
                "FAIL "*) fail "${_line#FAIL }"; _failed=$((_failed + 1)) ;;
                "SKIP "*) skip_check "${_line#SKIP }" ;;
                "integration: "*) ;;
                *) result "$_line" ;;
            esac
        done < "$1"
    fi
    [ "$(read_result "$1")" = "$_passed $_failed" ] || { fail "$2"; return 1; }
}

# now_ms: milliseconds of uptime (busybox date has no %N); elapsed A B: "12.3s" between two.
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fs", (b - a) / 1000 }'; }
