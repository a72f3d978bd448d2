# Shared by the integration checks in this directory; sourced, not run.
#
# Calling convention of every check script here:
#   Tests/Integration/NAME.sh TOPOLOGY RESULTS_DIR
# TOPOLOGY is a lab topology (lab/topologies/TOPOLOGY.topo); RESULTS_DIR receives the guest's
# console log and one report per step. The last line printed is always
#   integration-vfio: N passed, M failed
# and the exit status is 0 when everything passed, 1 when anything failed (or the guest did
# not boot), 77 when the topology (or this host) lacks what the check needs.
# Environment: VFIO_EDU=/path/to/vfio-edu uses that binary instead of building it (release,
# static Swift stdlib, scratch path .build-vfio-rel); VFIO_LAB_CACHE as for lab/vm.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
SCRIPT=$(basename "$0" .sh)
PASSED=0
FAILED=0
CACHE=${VFIO_LAB_CACHE:-$HOME/.cache/swift-vfio-lab}

usage_and_args() {
    if [ $# -ne 2 ]; then
        echo "usage: Tests/Integration/$SCRIPT.sh TOPOLOGY RESULTS_DIR" >&2
        exit 2
    fi
    TOPOLOGY=$1
    RESULTS=$2
    mkdir -p "$RESULTS"
    RESULTS=$(cd "$RESULTS" && pwd)
}

pass() { echo "PASS $SCRIPT $TOPOLOGY: $*"; PASSED=$((PASSED + 1)); }
# Milliseconds of wall time, and the seconds since such a reading as "1.2".
millis() { date +%s%3N; }
seconds_since() { local ms=$(($(millis) - $1)); echo "$((ms / 1000)).$((ms % 1000 / 100))"; }
fail() { echo "FAIL $SCRIPT $TOPOLOGY: $*"; FAILED=$((FAILED + 1)); }

# The closing line and exit status.
finish() {
    echo "integration-vfio: $PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ] && exit 0
    [ "$FAILED" -eq 0 ] && exit 77
    exit 1
}

skip() {
    echo "SKIP $SCRIPT $TOPOLOGY: $*"
    echo "integration-vfio: 0 passed, 0 failed"
    exit 77
}

# Prints the VFIO paths vfio-edu can take on TOPOLOGY when it is one of the topologies named
# (legacy type1 on Debian's kernels; iommufd and legacy on the custom iommufd kernel); fails
# for any other topology, so a check can `|| skip` with its own reason.
backends_for() {
    local t
    for t in "${@:2}"; do
        [ "$t" = "$1" ] || continue
        if [ "$1" = q35-iommufd ]; then echo "iommufd legacy"; else echo legacy; fi
        return 0
    done
    return 1
}

# Skips unless the lab can boot TOPOLOGY here without a long first-time build.
require_lab() {
    [ -x lab/vm ] || skip "lab/vm not present"
    [ -f "lab/topologies/$TOPOLOGY.topo" ] || skip "no lab topology $TOPOLOGY"
    command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed (lab/vm fetch)"
    if [ "$TOPOLOGY" = q35-iommufd ] && ! ls "$CACHE"/kernels/iommufd-*/.done >/dev/null 2>&1; then
        skip "the iommufd kernel is not built (lab/vm build-kernel iommufd, ~4-11 min)"
    fi
}

# Sets EDU to a vfio-edu binary built from this tree.
build_edu() {
    if [ -n "${VFIO_EDU:-}" ]; then EDU=$VFIO_EDU; return; fi
    if ! swift build -c release --static-swift-stdlib --product vfio-edu \
        --scratch-path .build-vfio-rel >"$RESULTS/build.log" 2>&1; then
        fail "vfio-edu does not build (log: $RESULTS/build.log)"
        finish
    fi
    EDU=$REPO/.build-vfio-rel/release/vfio-edu
}

# A guest command line that runs `vfio-edu ARGS --json` into /out/NAME.json and its exit
# status into /out/NAME.json.rc.
step() { echo "vfio-edu $2 --json > /out/$1.json 2>/out/$1.err; echo \$? > /out/$1.json.rc"; }

# guest DIR CMD [lab/vm run options...]: boots TOPOLOGY and runs CMD (with vfio-edu when
# build_edu has set EDU); results under RESULTS/DIR. A guest that does not boot or hangs is a
# failure.
guest() {
    local dir=$1 cmd=$2
    shift 2
    local started=$SECONDS
    # Results of an earlier run must not pass for this one's.
    rm -rf "${RESULTS:?}/$dir"
    if ! lab/vm run "$TOPOLOGY" ${EDU:+--bin "$EDU"} --file "$REPO/Tests/Integration/guest-lib.sh:/lab/guest-lib.sh" \
        "$@" --out "$RESULTS/$dir" -- "$cmd" \
        >"$RESULTS/$dir.vm.log" 2>&1; then
        local status
        status=$(cat "$RESULTS/$dir/status" 2>/dev/null || echo none)
        # The command's own status is judged per step; only a harness failure counts here.
        if [ "$status" = none ]; then
            fail "guest run $dir did not complete (log: $RESULTS/$dir.vm.log)"
            tail -n 20 "$RESULTS/$dir.vm.log"
        fi
    fi
    echo "guest $dir: $((SECONDS - started)) s"
}

# expect_pass FILE DESCRIPTION: the report says passed and the command exited 0.
expect_pass() {
    local f=$1 what=$2
    if [ -s "$f" ] && grep -q '"passed":true' "$f" && [ "$(cat "$f.rc" 2>/dev/null)" = 0 ]; then
        pass "$what"
    else
        fail "$what: $(head -c 800 "$f" 2>/dev/null) $(head -c 300 "${f%.json}.err" 2>/dev/null) rc=$(cat "$f.rc" 2>/dev/null)"
    fi
}

# expect_grep FILE PATTERN DESCRIPTION: passed, and the report contains PATTERN.
expect_grep() {
    local f=$1 pattern=$2 what=$3
    if grep -q -- "$pattern" "$f" 2>/dev/null; then
        expect_pass "$f" "$what"
    else
        fail "$what: no '$pattern' in $(head -c 800 "$f" 2>/dev/null) rc=$(cat "$f.rc" 2>/dev/null)"
    fi
}

# build_release PRODUCT: sets BIN to PRODUCT built from this tree (release, static Swift stdlib,
# in .build-lab where lab/suite builds too); a product that does not build is a failed check.
build_release() {
    if ! swift build -c release --static-swift-stdlib --product "$1" \
        --scratch-path .build-lab >"$RESULTS/build-$1.log" 2>&1; then
        fail "$1 does not build (log: $RESULTS/build-$1.log)"
        finish
    fi
    BIN=$REPO/.build-lab/release/$1
}

# Sets VFIOCTL_BIN to a statically linked vfioctl built from this tree (the one lab/suite
# builds, when it is there).
build_vfioctl() {
    if [ -n "${VFIOCTL:-}" ]; then VFIOCTL_BIN=$VFIOCTL; return; fi
    build_release vfioctl
    VFIOCTL_BIN=$BIN
}

# guest_checks DIR: counts the PASS/FAIL lines a guest-side script wrote to /out/checks
# (RESULTS/DIR/checks); a script that did not reach its closing "done" line is a failure.
guest_checks() {
    local checks=$RESULTS/$1/checks line
    grep -q '^done$' "$checks" 2>/dev/null || fail "the guest script did not finish (console: $RESULTS/$1/console.log)"
    while IFS= read -r line; do
        case $line in
            "PASS "*) pass "${line#PASS }" ;;
            "FAIL "*) fail "${line#FAIL }" ;;
            "SKIP "*) echo "$line" ;;
        esac
    done < <(cat "$checks" 2>/dev/null)
}

# Sets QEMU10_ARGS to the lab/vm run options that put bookworm-backports' QEMU 10 into a guest
# and QEMU10_VERSION to its version line; fetched and unpacked into $CACHE/qemu10 on first
# use (lab/vm fetch qemu10), the host's QEMU 7.2 untouched. In the guest:
# /usr/bin/qemu-system-x86_64 is 10.x (so do not stage the host's 7.2 as well: the last --bin
# wins), with its libraries from this host; SeaBIOS and kvmvapic.bin sit in QEMU's compiled-in
# data directory, so no -L or -bios is needed; TCG is built in, no module directory.
# Usage: qemu10_guest_args || fail ...; guest DIR CMD "${QEMU10_ARGS[@]}" ...
qemu10_guest_args() {
    local root
    root=$(bash -c '. lab/lib/common.sh && . lab/lib/fetch.sh && fetch_qemu10') || return 1
    QEMU10_VERSION=$(cat "$root/../version")
    QEMU10_ARGS=(--bin "$root/usr/bin/qemu-system-x86_64"
        --file "$root/usr/share/seabios/bios-256k.bin:/usr/share/qemu/bios-256k.bin"
        --file "$root/usr/share/qemu/kvmvapic.bin:/usr/share/qemu/kvmvapic.bin")
}

# podman_guest_args BIN...: installs Debian's podman if missing (podman 4.3 with crun, conmon
# and containers-common's configuration), stages a container rootfs in RESULTS/podman-rootfs
# holding each BIN in /usr/bin with every library ldd lists plus a static busybox as
# /bin/busybox, and sets PODMAN_GUEST_ARGS to the lab/vm run options that put podman, its
# runtime, its Debian defaults, that rootfs (as /lab/podman/rootfs) and
# Tests/Integration/podman-guest-lib.sh (as /lab/podman-guest-lib.sh) into the guest.
# Guest side: `. /lab/podman-guest-lib.sh; podman_prepare_guest; podman_run_cdi KIND=NAME CMD`.
podman_guest_args() {
    ( . lab/lib/common.sh; ensure_packages podman crun conmon golang-github-containers-common busybox-static ) \
        || { fail "could not install podman"; finish; }
    local rootfs=$RESULTS/podman-rootfs bin lib
    rm -rf "$rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/usr/bin"
    cp /bin/busybox "$rootfs/bin/busybox"
    for bin in "$@"; do
        cp -L "$bin" "$rootfs/usr/bin/"
        for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*'); do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
    PODMAN_GUEST_ARGS=(--bin /usr/bin/podman --bin /usr/bin/crun --bin /usr/bin/conmon
        --file /usr/share/containers/containers.conf:/usr/share/containers/containers.conf
        --file /usr/share/containers/seccomp.json:/usr/share/containers/seccomp.json
        --file "$rootfs:/lab/podman/rootfs"
        --file "$REPO/Tests/Integration/podman-guest-lib.sh:/lab/podman-guest-lib.sh")
}
