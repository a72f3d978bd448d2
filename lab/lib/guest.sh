# shellcheck shell=bash
# `lab/vm run` and `lab/vm shell`: build an initramfs for a topology and boot it in QEMU.
# Sourced by lab/vm after lib/common.sh and lib/fetch.sh.

# Parsed options (set by parse_guest_args).
BINS=(); FILES=(); OUT=""; TIMEOUT=180; TOPO=""; CMD=""; SHOW=""

parse_guest_args() {
    [ $# -ge 1 ] || usage
    TOPO=$1; shift
    while [ $# -gt 0 ]; do
        case $1 in
            --bin) BINS+=("$2"); shift 2 ;;
            --file) FILES+=("$2"); shift 2 ;;
            --out) OUT=$2; shift 2 ;;
            --timeout) TIMEOUT=$2; shift 2 ;;
            --show) SHOW=1; shift ;;
            --) shift; CMD="$*"; break ;;
            *) die "unknown option $1" ;;
        esac
    done
}

# Sources lab/topologies/NAME.topo (after prepare has set RUN_DIR, so a topology can
# point at its scratch files there, e.g. NVMe images listed in DISKS as NAME:SIZE).
load_topology() {
    local f=$LAB_DIR/topologies/$1.topo
    [ -f "$f" ] || die "no topology $1 (have: $(cd "$LAB_DIR/topologies" && ls *.topo | sed 's/\.topo$//' | tr '\n' ' '))"
    ARCH=x86_64; KERNEL=""; MODULES=(); QEMU_ARGS=(); APPEND=""; DISKS=(); MEMORY=512; VFIO_BIND=(); GUEST_SETUP=""
    HOST_PACKAGES=(); GUEST_BINS=()
    # shellcheck source=/dev/null
    . "$f"
    # Guest RAM in MiB, for runs that pin more than the topology's default (DMA benchmarks).
    MEMORY=${LAB_MEMORY:-$MEMORY}
    [ -n "$KERNEL" ] || die "$f sets no KERNEL"
    # Per-architecture machinery: QEMU binary and base arguments, the guest's static busybox,
    # the console and the second port that carries /out back.
    case $ARCH in
        x86_64) QEMU_BASE=(qemu-system-x86_64 -accel tcg -cpu max); BUSYBOX=/bin/busybox
                CONSOLE=ttyS0; XFER_TTY=ttyS1 ;;
        ppc64el) QEMU_BASE=(qemu-system-ppc64 -accel tcg); BUSYBOX=$CACHE/busybox-ppc64el/bin/busybox
                 CONSOLE=hvc0; XFER_TTY=hvc1 ;;
        *) die "$f: unknown ARCH $ARCH" ;;
    esac
}

# The directory of an unpacked or built kernel, fetching/building it on first use.
kernel_dir() {
    local d=$KERNELS_DIR/$1
    if [ ! -e "$d/.done" ]; then
        case $1 in
            iommufd) . "$LAB_DIR/lib/kernel.sh"; cmd_build_kernel iommufd ;;
            *-ppc64el) cmd_fetch ppc64el ;;
            *) cmd_fetch ;;
        esac
    fi
    [ -e "$d/.done" ] || die "kernel $1 not available"
    echo "$d"
}

# The uncompressed vmlinux, booted through its PVH entry point: it skips the in-guest
# decompression, which under TCG costs seconds (xz/zstd). Extracted once per kernel
# the way scripts/extract-vmlinux does it: find a compressor's magic, decompress from there.
kernel_image() {
    local d=$1
    if [ ! -s "$d/vmlinux" ]; then
        local img=$d/bzImage magic tool off
        for magic in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
            tool=${magic%%:*}
            for off in $(LC_ALL=C grep -aboP "${magic#*:}" "$img" | cut -d: -f1); do
                tail -c +$((off + 1)) "$img" | "$tool" -dc 2>/dev/null > "$d/vmlinux.tmp"
                if [ "$(head -c 4 "$d/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                    mv "$d/vmlinux.tmp" "$d/vmlinux"; break 2
                fi
            done
        done
        rm -f "$d/vmlinux.tmp"
    fi
    if [ -s "$d/vmlinux" ] && [ -z "${LAB_BOOT_BZIMAGE:-}" ]; then echo "$d/vmlinux"; else echo "$d/bzImage"; fi
}

# Module file (relative to lib/modules/KVER) for a module name, or nothing if built in.
module_path() {
    local mdir=$1 name=${2//-/_} p
    p=$(cd "$mdir" && find kernel -name '*.ko*' | awk -v n="$name" '{ b=$0; sub(/.*\//,"",b); sub(/\.ko.*/,"",b); gsub(/-/,"_",b); if (b==n) print }' | head -n 1)
    echo "$p"
}
is_builtin() {
    local mdir=$1 name=${2//-/_}
    sed 's/.*\///; s/\.ko$//; s/-/_/g' "$mdir/modules.builtin" | grep -qxF "$name"
}

# Expands MODULES with their dependencies (from each .ko's modinfo `depends=`), dependencies
# first, skipping built-ins; copies the .ko files (decompressed) into the initramfs and
# writes /lab/modules in load order.
stage_modules() {
    local kdir=$1 root=$2 kver mdir
    kver=$(cat "$kdir/kver"); mdir=$kdir/root/lib/modules/$kver
    : > "$root/lab/modules"
    [ ${#MODULES[@]} -gt 0 ] || return 0
    [ -d "$mdir" ] || die "kernel $KERNEL has no modules, but the topology lists some"
    local -A seen=()
    local loaded=() builtin=()
    add_module() {
        local name=${1//-/_} p deps d
        [ -n "${seen[$name]:-}" ] && return 0
        seen[$name]=1
        if is_builtin "$mdir" "$name"; then builtin+=("$name"); return 0; fi
        p=$(module_path "$mdir" "$name")
        [ -n "$p" ] || die "module $name: neither in modules.builtin nor under $mdir/kernel"
        case $p in *.xz) deps=$(xz -dc "$mdir/$p" | tr '\0' '\n' | sed -n 's/^depends=//p') ;;
                   *.zst) deps=$(zstd -dc "$mdir/$p" | tr '\0' '\n' | sed -n 's/^depends=//p') ;;
                   *) deps=$(tr '\0' '\n' < "$mdir/$p" | sed -n 's/^depends=//p') ;; esac
        for d in ${deps//,/ }; do add_module "$d"; done
        local dest=$root/lib/modules/$kver/${p%.xz}; dest=${dest%.zst}
        mkdir -p "$(dirname "$dest")"
        case $p in *.xz) xz -dc "$mdir/$p" > "$dest" ;; *.zst) zstd -qdc "$mdir/$p" > "$dest" ;; *) cp "$mdir/$p" "$dest" ;; esac
        echo "/lib/modules/$kver/${dest#"$root/lib/modules/$kver/"}" >> "$root/lab/modules"
        loaded+=("$name")
    }
    local m; for m in "${MODULES[@]}"; do add_module "$m"; done
    log "modules: insmod ${loaded[*]:-none}; built in: ${builtin[*]:-none}"
}

# Copies a program and every shared library ldd names, at the same paths.
stage_bin() {
    local bin=$1 root=$2 lib
    [ -x "$bin" ] || die "--bin $bin is not an executable file"
    mkdir -p "$root/usr/bin"
    # Stripped: the initramfs lives in the guest's RAM, and a static vfioctl is half symbols
    # (197 MB with the kubelet plugins' gRPC stack, 93 MB stripped).
    strip -o "$root/usr/bin/$(basename "$bin")" "$bin" 2>/dev/null || cp -L "$bin" "$root/usr/bin/"
    for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
    done
}

build_initramfs() {
    local kdir=$1 root=$RUN_DIR/root spec
    rm -rf "$root"; mkdir -p "$root"/{bin,lab,out,usr/bin}
    [ -x "$BUSYBOX" ] || cmd_fetch "$ARCH"
    cp "$BUSYBOX" "$root/bin/busybox"
    cp "$LAB_DIR/guest/init" "$root/init"; chmod +x "$root/init"
    # Guest helper scripts are always there, so commands can say `sh /lab/guest/X.sh`, and
    # with them the results and clocks they share with the host (/lab/guest/lib.sh sources it).
    cp -r "$LAB_DIR/guest" "$root/lab/guest"
    mkdir -p "$root/lab/lib"; cp "$LAB_DIR/lib/checks.sh" "$root/lab/lib/checks.sh"
    stage_modules "$kdir" "$root"
    [ ${#HOST_PACKAGES[@]} -eq 0 ] || ensure_packages "${HOST_PACKAGES[@]}"
    for spec in ${GUEST_BINS[@]+"${GUEST_BINS[@]}"} ${BINS[@]+"${BINS[@]}"}; do stage_bin "$spec" "$root"; done
    for spec in ${FILES[@]+"${FILES[@]}"}; do
        mkdir -p "$root$(dirname "${spec#*:}")"; cp -rL "${spec%%:*}" "$root${spec#*:}"
    done
    [ -n "$CMD" ] && printf '%s\n' "$CMD" > "$root/lab/cmd"
    # The topology's guest-side state: devices handed to vfio-pci, then any extra setup.
    {
        [ ${#VFIO_BIND[@]} -gt 0 ] && echo "sh /lab/guest/bind.sh vfio-pci ${VFIO_BIND[*]}"
        printf '%s\n' "$GUEST_SETUP"
    } > "$root/lab/setup"
    echo "$NONCE" > "$root/lab/nonce"
    echo "$XFER_TTY" > "$root/lab/xfer-tty"
    # Uncompressed by default: inflating ~70 MB of Swift binaries under TCG cost ~1.5 s of
    # boot and gzip on the host ~0.5 s (q35-vtd with vfioctl: 4.7-5.6 s total vs 6.6-7.7 s).
    # LAB_INITRD_GZIP=1 compresses it.
    local pack=cat; [ -n "${LAB_INITRD_GZIP:-}" ] && pack="gzip -1"
    (cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | $pack > "$RUN_DIR/initrd.img")
    # The kernel holds the image and its unpacked copy at once ("Initramfs unpacking failed:
    # write error" otherwise): at least twice its size plus room for the guest's own work.
    local need=$(( $(stat -c %s "$RUN_DIR/initrd.img") * 2 / 1048576 + 320 ))
    if [ "$MEMORY" -lt "$need" ]; then
        log "$TOPO: ${MEMORY} MiB of guest RAM cannot unpack a $(( $(stat -c %s "$RUN_DIR/initrd.img") / 1048576 )) MiB initramfs; using $need MiB"
        MEMORY=$need
    fi
}

# Common QEMU arguments; the topology adds machine and devices.
qemu_cmdline() {
    local kdir=$1
    QEMU=("${QEMU_BASE[@]}" -m "$MEMORY" -smp 1 -no-reboot -nic none
          -kernel "$(kernel_image "$kdir")" -initrd "$RUN_DIR/initrd.img"
          -append "console=$CONSOLE panic=-1 $APPEND" "${QEMU_ARGS[@]}")
}

prepare() {
    RUN_DIR=$(mktemp -d "$CACHE/runs.XXXX")
    # The scratch directory (initramfs, disks, transfer log) goes however we leave.
    trap 'rm -rf "$RUN_DIR"' EXIT
    NONCE=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
    load_topology "$TOPO"
    local d; for d in ${DISKS[@]+"${DISKS[@]}"}; do truncate -s "${d#*:}" "$RUN_DIR/${d%%:*}"; done
    KDIR=$(kernel_dir "$KERNEL")
    build_initramfs "$KDIR"
    qemu_cmdline "$KDIR"
}

cmd_shell() {
    parse_guest_args "$@"
    CMD=""
    prepare
    log "shell in $TOPO ($(cat "$KDIR/kver")); Ctrl-A X quits QEMU"
    "${QEMU[@]}" -nographic || true
}

cmd_run() {
    parse_guest_args "$@"
    [ -n "$CMD" ] || die "lab/vm run: no command after --"
    local t0; t0=$(now_ms)
    prepare
    OUT=${OUT:-$CACHE/out/$TOPO}
    rm -rf "$OUT"; mkdir -p "$OUT"
    local con=$OUT/console.log xfer=$RUN_DIR/xfer.log
    : > "$con"; : > "$xfer"

    local tq; tq=$(now_ms)
    "${QEMU[@]}" -display none -monitor none -serial "file:$con" -serial "file:$xfer" \
        > "$RUN_DIR/qemu.log" 2>&1 &
    local pid=$! tb="" reason=""
    # Poll: note when the guest reaches init (boot time), enforce the timeout ourselves.
    while kill -0 "$pid" 2>/dev/null; do
        [ -z "$tb" ] && grep -q '^LAB-BOOTED' "$con" && tb=$(now_ms)
        if [ $(( ($(now_ms) - tq) / 1000 )) -ge "$TIMEOUT" ]; then
            reason="timeout after ${TIMEOUT}s"; kill "$pid" 2>/dev/null || true; sleep 1; kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || true
    [ -z "$tb" ] && grep -q '^LAB-BOOTED' "$con" && tb=$(now_ms)
    local te; te=$(now_ms)

    # Unpack /out from the transfer channel: the lines between this run's markers.
    local status=""
    tr -d '\r' < "$xfer" > "$xfer.txt"
    if grep -q "^LAB-OUT-END $NONCE " "$xfer.txt"; then
        status=$(sed -n "s/^LAB-OUT-END $NONCE //p" "$xfer.txt")
        sed -n "/^LAB-OUT-BEGIN $NONCE\$/,/^LAB-OUT-END $NONCE /p" "$xfer.txt" | sed '1d;$d' \
            | base64 -d | tar -xzm -C "$OUT" || { reason="corrupt /out transfer"; status=""; }
    fi
    [ -n "$status" ] && echo "$status" > "$OUT/status"
    if [ -z "$reason" ]; then
        if grep -q 'Kernel panic' "$con"; then reason="kernel panic"
        elif [ -z "$tb" ]; then reason="guest never reached init"
        elif [ -z "$status" ]; then reason="guest stopped without reporting a status"; fi
    fi

    local boot="n/a"; [ -n "$tb" ] && boot=$(elapsed "$tq" "$tb")
    # Machine-readable timings for lab/suite (seconds).
    printf 'boot %s\nqemu %s\ntotal %s\n' "${boot%s}" "$(elapsed "$tq" "$te" | tr -d s)" \
        "$(elapsed "$t0" "$te" | tr -d s)" > "$OUT/timings"
    log "$TOPO: boot $boot, qemu $(elapsed "$tq" "$te"), total $(elapsed "$t0" "$te") ($(sed -n 's/^LAB-BOOTED //p' "$con" | head -n 1))"
    if [ -n "$reason" ]; then
        echo "==== $TOPO: FAILED: $reason; last console lines ($con):" >&2
        tail -n 40 "$con" >&2
        [ -s "$RUN_DIR/qemu.log" ] && { echo "==== qemu:" >&2; cat "$RUN_DIR/qemu.log" >&2; }
        exit 3
    fi
    # --show: the console from init to the command's end (kernel messages included).
    [ -n "$SHOW" ] && sed -n '/^LAB-BOOTED/,/^LAB-STATUS/p' "$con"
    log "$TOPO: command exited $status; output in $OUT"
    return "$status"
}
