# shellcheck shell=bash
# Shared paths and helpers for the lab scripts and the checks of Tests/Integration; sourced,
# never run. Brings lib/checks.sh along: the results (pass, fail, finish...) and the clocks.
# Everything large (kernels, .debs, initramfs images, QEMU output scratch) lives in the
# cache, outside the repository, so a clone stays small and rebuilds are cheap.

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # read by the scripts that source this file
REPO_DIR=$(cd "$LAB_DIR/.." && pwd)
CACHE=${VFIO_LAB_CACHE:-$HOME/.cache/swift-vfio-lab}
mkdir -p "$CACHE"

log() { printf '[lab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[lab] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=checks.sh
. "$LAB_DIR/lib/checks.sh"

# `lab/vm fetch --dry-run` sets LAB_DRY_RUN: the fetch paths run, but every step that would
# install, download, update or unpack is only logged (see cmd_fetch in lib/fetch.sh).
dry_run() { [ -n "${LAB_DRY_RUN:-}" ]; }
would() { log "would $*"; }

# Installs Debian packages only when missing, so repeated runs neither touch apt nor need
# the network. apt-get update runs at most once per process.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if dry_run; then
        # resolve_package is lib/fetch.sh's: a dry run is always lab/vm fetch's.
        for p in "${missing[@]}"; do resolve_package "$p" >/dev/null || return 1; done
        would "apt-get install ${missing[*]}"
        return 0
    fi
    log "installing ${missing[*]}"
    if [ -z "${LAB_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2 || die "apt-get update failed"
        LAB_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        > "$CACHE/apt-install.log" 2>&1 \
        || { tail -n 20 "$CACHE/apt-install.log" >&2; die "apt-get install ${missing[*]} failed"; }
}
