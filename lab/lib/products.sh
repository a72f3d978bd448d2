# shellcheck shell=bash
# swift-vfio's Swift products for the guests (vfioctl, vfio-edu, the kubelet plugins), built
# for lab/suite, lab/capture-fixtures and Tests/Integration. Sourced after lib/common.sh.

# Builds a Swift product (release, statically linked Swift stdlib, its own scratch path
# .build-lab so it never disturbs developers' .build) and prints the binary's path. Every product
# is built through the kubelet package (kubelet/), which has the root package as a dependency:
# one release build of the host's modules serves vfioctl, vfio-edu and the plugins alike. It
# fails quietly when the product does not build yet. A prebuilt binary named by the product's
# variable (its name in capitals, '-' as '_': VFIOCTL, VFIO_EDU, VFIO_KUBELET_PLUGIN,
# VFIO_KUBELET_SIM) is used instead; LAB_NO_SWIFT=1 builds nothing, LAB_NO_VFIOCTL=1 skips vfioctl.
build_product() {
    local product=$1 var
    [ "$product" != vfioctl ] || [ -z "${LAB_NO_VFIOCTL:-}" ] || return 1
    var=$(echo "$product" | tr 'a-z-' 'A-Z_')
    if [ -n "${!var:-}" ]; then [ -x "${!var}" ] && { echo "${!var}"; return 0; }; return 1; fi
    [ -z "${LAB_NO_SWIFT:-}" ] || return 1
    command -v swift >/dev/null 2>&1 || { log "no swift toolchain"; return 1; }
    local logf=$CACHE/$product-build.log try
    local build=(swift build -c release --static-swift-stdlib --product "$product" --package-path kubelet
                 --scratch-path .build-lab)
    forget_stale_description "$REPO_DIR/.build-lab" release
    log "building $product (log: $logf)"
    # Others edit Sources/ while we build: SwiftPM then aborts with "was modified during
    # the build", which says nothing about the code. Retry that case a few times.
    for try in 1 2 3; do
        (cd "$REPO_DIR" && "${build[@]}") > "$logf" 2>&1 && break
        if [ $try -lt 3 ] && grep -q 'was modified during the build' "$logf"; then
            log "sources changed during the build; retrying"; continue
        fi
        log "$product does not build: $(grep -m1 'error:' "$logf" || tail -n 1 "$logf")"
        return 1
    done
    local bin; bin=$(cd "$REPO_DIR" && "${build[@]}" --show-bin-path)/$product
    [ -x "$bin" ] || return 1
    echo "$bin"
}

# SwiftPM keeps a package's build description until that package's own manifest or folders
# change; it looks at neither the manifest nor the source folders of a path dependency. A build
# through kubelet/ after the root Package.swift changed, or after a file was added to or removed
# from a root target, would go on with the old targets and files ("cannot find 'X' in scope",
# "no such module"), so the description is dropped then. A folder's mtime moves when an entry is
# added, removed or renamed; edits of existing files SwiftPM sees itself.
# usage: forget_stale_description SCRATCH_PATH CONFIGURATION   (debug or release)
forget_stale_description() {
    local description=$1/$2/description.json
    [ -f "$description" ] || return 0
    if [ "$REPO_DIR/Package.swift" -nt "$description" ] || [ -n "$(find "$REPO_DIR/Sources" "$REPO_DIR/Tests" \
        -path "$REPO_DIR/Tests/Fixtures" -prune -o -type d -newer "$description" -print -quit)" ]; then
        rm -f "$description"
    fi
}
