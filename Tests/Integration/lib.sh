# shellcheck shell=bash
# Shared by the integration checks in this directory; sourced, not run. The lab's helpers come
# with it (lab/lib/common.sh: paths, ensure_packages; lab/lib/checks.sh: pass, fail, skip,
# finish, the clocks; lab/lib/products.sh: build_product). Guest-side scripts source
# /lab/guest/lib.sh, which every guest has.
#
# Calling convention of every check script here:
#   Tests/Integration/NAME.sh TOPOLOGY RESULTS_DIR
# TOPOLOGY is a lab topology (lab/topologies/TOPOLOGY.topo); RESULTS_DIR receives the guest's
# console log and one report per step. One "PASS|FAIL NAME TOPOLOGY: ..." line per check, and
# the last line printed is always the closing line of lab/lib/checks.sh,
#   integration: N passed, M failed
# and the exit status is 0 when everything passed, 1 when anything failed (or the guest did
# not boot), 77 when the topology (or this host) lacks what the check needs.
# Environment: VFIO_EDU, VFIOCTL, VFIO_KUBELET_PLUGIN, VFIO_KUBELET_SIM=/path use that binary
# instead of building it (release, static Swift stdlib, scratch path .build-lab, as lab/suite
# builds them); VFIO_LAB_CACHE as for lab/vm.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
# shellcheck source=../../lab/lib/common.sh
. lab/lib/common.sh
# shellcheck source=../../lab/lib/products.sh
. lab/lib/products.sh
SCRIPT=$(basename "$0" .sh)

usage_and_args() {
    if [ $# -ne 2 ]; then
        echo "usage: Tests/Integration/$SCRIPT.sh TOPOLOGY RESULTS_DIR" >&2
        exit 2
    fi
    TOPOLOGY=$1
    RESULTS=$2
    mkdir -p "$RESULTS"
    RESULTS=$(cd "$RESULTS" && pwd)
    # shellcheck disable=SC2034 # lab/lib/checks.sh's
    RESULT_PREFIX="$SCRIPT $TOPOLOGY: "
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

# need_product VAR PRODUCT: sets VAR to PRODUCT's binary (build_product: the prebuilt one its
# variable names, or built like lab/suite builds it); a product that does not build fails.
need_product() {
    local bin
    bin=$(build_product "$2") || { fail "$2 does not build (log: $CACHE/$2-build.log)"; finish; }
    printf -v "$1" %s "$bin"
}

# edu_backends WHY TOPOLOGY...: for a check that runs vfio-edu in the guest on the topologies
# named: sets backends (backends_for) or skips with WHY, needs the lab and sets EDU.
edu_backends() {
    backends=$(backends_for "$TOPOLOGY" "${@:2}") || skip "$1"
    require_lab
    need_product EDU vfio-edu
}

# A guest command line that runs `vfio-edu ARGS --json` into /out/NAME.json and its exit
# status into /out/NAME.json.rc.
step() { echo "vfio-edu $2 --json > /out/$1.json 2>/out/$1.err; echo \$? > /out/$1.json.rc"; }
# backend_steps NAME ARGS: one step NAME-BACKEND of `vfio-edu ARGS --backend BACKEND` per backend.
backend_steps() { local b; for b in $backends; do step "$1-$b" "$2 --backend $b"; done; }

# guest DIR CMD [lab/vm run options...]: boots TOPOLOGY and runs CMD (with vfio-edu when
# EDU is set); results under RESULTS/DIR. A guest that does not boot or hangs is a
# failure.
guest() {
    local dir=$1 cmd=$2
    shift 2
    local started=$SECONDS
    # Results of an earlier run must not pass for this one's.
    rm -rf "${RESULTS:?}/$dir"
    if ! lab/vm run "$TOPOLOGY" ${EDU:+--bin "$EDU"} "$@" --out "$RESULTS/$dir" -- "$cmd" \
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

# expect_cases FILE WHAT CASE...: the report names each CASE as passed, so that a report that
# silently left one out does not pass; one failure per missing case.
expect_cases() {
    local f=$1 what=$2 case
    for case in "${@:3}"; do
        grep -q "\"name\":\"$case\",\"passed\":true" "$f" 2>/dev/null || fail "$what: case '$case' missing or failed"
    done
}

# guest_checks DIR: the checks a guest-side script wrote to /out/checks (RESULTS/DIR/checks),
# counted here; a script that did not reach its closing line is a failure.
guest_checks() {
    take_results "$RESULTS/$1/checks" "the guest script did not finish (console: $RESULTS/$1/console.log)"
}

# Sets QEMU10_ARGS to the lab/vm run options that put bookworm-backports' QEMU 10 into a guest
# and QEMU10_VERSION to its version line; fetched and unpacked into $CACHE/qemu10 on first
# use (lab/vm fetch qemu10), the host's QEMU 7.2 untouched. In the guest:
# /usr/bin/qemu-system-x86_64 is 10.x (so do not stage the host's 7.2 as well: the last --bin
# wins), with its libraries from this host; SeaBIOS and kvmvapic.bin sit in QEMU's compiled-in
# data directory, so no -L or -bios is needed; TCG is built in, no module directory.
# Usage: qemu10_guest_args || fail ...; guest DIR CMD "${QEMU10_ARGS[@]}" ...
# shellcheck disable=SC2034 # QEMU10_* are the caller's
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
# shellcheck disable=SC2034 # PODMAN_GUEST_ARGS is the caller's
podman_guest_args() {
    ( ensure_packages podman crun conmon golang-github-containers-common busybox-static ) \
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
