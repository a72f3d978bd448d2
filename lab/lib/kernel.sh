# shellcheck shell=bash
# `lab/vm build-kernel iommufd`: a small 6.12 kernel with iommufd, built from Debian's
# linux-source-6.12 (tinyconfig + lab/kernel/iommufd.config), cached by the sha256 of
# (fragment, source package version) so each machine builds it once.
# Sourced by lab/vm after lib/common.sh and lib/fetch.sh.

cmd_build_kernel() {
    local flavour=${1:-}
    [ "$flavour" = iommufd ] || die "usage: lab/vm build-kernel iommufd"
    local fragment=$LAB_DIR/kernel/$flavour.config
    ensure_packages build-essential flex bison libelf-dev bc libssl-dev xz-utils

    local deb ver key out src build
    deb=$(fetch_kernel_source)
    ver=$(dpkg-deb -f "$deb" Version)
    key=$( { cat "$fragment"; echo "$ver"; } | sha256sum | cut -c1-16)
    out=$KERNELS_DIR/$flavour-$key
    if [ -e "$out/.done" ]; then
        ln -sfn "$flavour-$key" "$KERNELS_DIR/$flavour"
        log "kernel $flavour cached: $out ($(cat "$out/kver"))"
        verify_boot
        return 0
    fi

    src=$CACHE/src/linux-source-6.12-$ver
    if [ ! -e "$src/.done" ]; then
        log "unpacking linux-source-6.12 $ver"
        rm -rf "$src" "$CACHE/src/pkg"; mkdir -p "$src"
        dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards '*/linux-source-6.12.tar.xz' \
            | tar -xJ -C "$src" --strip-components=1 || die "unpacking $deb failed"
        touch "$src/.done"
    fi

    build=$CACHE/build/$flavour-$key
    rm -rf "$build"; mkdir -p "$build"
    # ARCH=x86_64 (not x86) so tinyconfig starts 64-bit.
    local mk=(make -C "$src" O="$build" ARCH=x86_64)
    "${mk[@]}" -s tinyconfig >&2
    "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" > "$build/merge.log" 2>&1 \
        || { cat "$build/merge.log" >&2; die "merge_config.sh failed"; }
    "${mk[@]}" -s olddefconfig >&2
    verify_config "$fragment" "$build/.config"

    local t0; t0=$(now_ms)
    log "compiling (nice -n 19, -j2): log in $build/build.log"
    nice -n 19 "${mk[@]}" -j2 bzImage > "$build/build.log" 2>&1 \
        || { tail -n 40 "$build/build.log" >&2; die "kernel build failed"; }
    log "compiled in $(elapsed "$t0" "$(now_ms)")"

    mkdir -p "$out"
    cp "$build/arch/x86/boot/bzImage" "$out/bzImage"
    cp "$build/vmlinux" "$out/vmlinux"
    cp "$build/.config" "$out/config"
    cat "$build/include/config/kernel.release" > "$out/kver"
    touch "$out/.done"
    ln -sfn "$flavour-$key" "$KERNELS_DIR/$flavour"
    rm -rf "$build"
    log "kernel $flavour built: $out ($(cat "$out/kver"))"
    verify_boot
}

# Proof that the kernel does its job: boot q35-iommufd (edu and others bound to vfio-pci)
# and require /dev/iommu plus a VFIO device cdev.
verify_boot() {
    log "verifying: booting q35-iommufd"
    "$LAB_DIR/vm" run q35-iommufd --out "$CACHE/out/verify-iommufd" -- \
        'test -c /dev/iommu && test -c /dev/vfio/devices/vfio0 && ls /dev/iommu /dev/vfio/devices' \
        || die "the iommufd kernel booted without /dev/iommu or /dev/vfio/devices/vfio0 (see $CACHE/out/verify-iommufd/console.log)"
    log "verified: /dev/iommu and /dev/vfio/devices/vfio0 present with devices bound to vfio-pci"
}

# Kconfig silently drops symbols whose dependencies are unmet; make that loud.
verify_config() {
    local fragment=$1 config=$2 bad=0 line
    while IFS= read -r line; do
        case $line in CONFIG_*=*) ;; *) continue ;; esac
        grep -qxF "$line" "$config" || { echo "  not applied: $line (got: $(grep "^${line%%=*}[= ]\|# ${line%%=*} " "$config" || echo unset))" >&2; bad=1; }
    done < "$fragment"
    [ $bad -eq 0 ] || die "config fragment not fully applied"
}
