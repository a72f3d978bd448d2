# shellcheck shell=bash
# `lab/vm fetch`: host packages and the two Debian kernels, unpacked into the cache.
# Sourced by lab/vm after lib/common.sh.

KERNELS_DIR=$CACHE/kernels
DEBS_DIR=$CACHE/debs

# Newest linux-image-6.12.*+deb12-amd64 that apt knows, under the given APT_CONFIG (or the system's).
newest_612_image() {
    apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' 2>/dev/null \
        | awk '{print $1}' | sort -V | tail -n 1
}

# Downloads one package (by exact name) into the deb cache, once.
download_deb() {
    local pkg=$1 f
    mkdir -p "$DEBS_DIR"
    f=$(ls "$DEBS_DIR"/"${pkg}"_*.deb 2>/dev/null | head -n 1)
    if [ -z "$f" ]; then
        log "downloading $pkg"
        (cd "$DEBS_DIR" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
        f=$(ls "$DEBS_DIR"/"${pkg}"_*.deb | head -n 1)
    fi
    echo "$f"
}

# unpack_kernel LABEL DEB: unpacks a kernel image package into $KERNELS_DIR/LABEL and
# records its release, once.
unpack_kernel() {
    local deb=$2 dir=$KERNELS_DIR/$1 kver
    if [ -e "$dir/.done" ] && [ "$(cat "$dir/.deb")" = "$(basename "$deb")" ]; then return 0; fi
    rm -rf "$dir"; mkdir -p "$dir"
    log "unpacking $(basename "$deb") -> $dir"
    dpkg-deb -x "$deb" "$dir/root" || die "dpkg-deb -x $deb failed"
    kver=$(ls "$dir/root/lib/modules")
    # x86 packages ship a bzImage (vmlinuz-*), ppc64el ones the ELF vmlinux-* itself.
    if [ -e "$dir/root/boot/vmlinuz-$kver" ]; then ln -s "root/boot/vmlinuz-$kver" "$dir/bzImage"
    else ln -s "root/boot/vmlinux-$kver" "$dir/vmlinux"; fi
    echo "$kver" > "$dir/kver"
    basename "$deb" > "$dir/.deb"
    touch "$dir/.done"
}

cmd_fetch() {
    case ${1:-x86_64} in
        ppc64el) fetch_ppc64el; return ;;
        qemu10) fetch_qemu10 >/dev/null; return ;;
        x86_64) ;;
        *) die "usage: lab/vm fetch [ppc64el|qemu10]" ;;
    esac
    ensure_packages qemu-system-x86 busybox-static python3
    local img61 img612
    img61=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6\.1/ {print $2; exit}')
    [ -n "$img61" ] || { apt-get update -qq >&2; img61=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1/ {print $2; exit}'); }
    [ -n "$img61" ] || die "apt-cache depends linux-image-amd64 names no 6.1 image"
    unpack_kernel 6.1 "$(download_deb "$img61")"

    img612=$(newest_612_image)
    if [ -z "$img612" ]; then
        export APT_CONFIG; APT_CONFIG=$(private_apt amd64)
        img612=$(newest_612_image)
    fi
    [ -n "$img612" ] || die "no linux-image-6.12.*+deb12-amd64 found, even with bookworm-backports"
    unpack_kernel 6.12 "$(download_deb "$img612")"
    unset APT_CONFIG
    log "kernels: 6.1=$(cat "$KERNELS_DIR/6.1/kver") 6.12=$(cat "$KERNELS_DIR/6.12/kver")"
}

# A private apt configuration for ARCH with bookworm and bookworm-backports: its own
# sources (restricted with [arch=]), lists, empty dpkg status and cache under
# $CACHE/apt-ARCH, so neither /etc/apt nor the host's apt state changes (nor learns about a
# foreign architecture). Used for ppc64el, and for amd64 when the system's sources carry no
# 6.12 kernel (bookworm-security does nowadays). bookworm-security is left out: its ppc64el
# index failed to download here ("File has unexpected size").
private_apt() {
    local arch=$1 root=$CACHE/apt-$1 key=/usr/share/keyrings/debian-archive-keyring.gpg
    mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/sources.list.d"
    [ -e "$root/status" ] || : > "$root/status"
    # Written aside and renamed: a concurrent apt run never reads a half-written file.
    cat > "$root/sources.list.$$" <<SRC
deb [arch=$arch signed-by=$key] http://deb.debian.org/debian bookworm main
deb [arch=$arch signed-by=$key] http://deb.debian.org/debian bookworm-backports main
SRC
    mv "$root/sources.list.$$" "$root/sources.list"
    cat > "$root/apt.conf.$$" <<CONF
APT::Architecture "$arch";
APT::Architectures { "$arch"; };
APT::Sandbox::User "root";
Dir::Etc::SourceList "$root/sources.list";
Dir::Etc::SourceParts "$root/sources.list.d";
Dir::State "$root";
Dir::State::Lists "$root/lists";
Dir::State::status "$root/status";
Dir::Cache "$root/cache";
CONF
    mv "$root/apt.conf.$$" "$root/apt.conf"
    [ -e "$root/lists/.updated" ] || private_apt_update "$root" if-needed
    echo "$root/apt.conf"
}

# private_apt_update ROOT [if-needed]: apt-get update of the private lists under ROOT. Other
# checkouts share them (kernels, podman, QEMU 10): an update holds $ROOT/.lab-lock exclusively,
# readers (apt-cache, apt-get download) hold it shared, so nobody reads lists half replaced;
# with if-needed, whoever waited finds .updated and skips it.
private_apt_update() {
    local root=$1
    (
        flock -x 9
        [ "${2:-}" = if-needed ] && [ -e "$root/lists/.updated" ] && exit 0
        APT_CONFIG=$root/apt.conf apt-get update -qq >&2 && touch "$root/lists/.updated"
    ) 9>"$root/.lab-lock" || die "apt-get update ($root) failed"
}

# apt_read CONF CMD...: CMD under that private apt configuration, holding its lock shared.
apt_read() {
    local conf=$1; shift
    APT_CONFIG=$conf flock -s "$(dirname "$conf")/.lab-lock" "$@"
}

QEMU10_DIR=$CACHE/qemu10

# `lab/vm fetch qemu10`: QEMU 10.0 from bookworm-backports for lab guests, downloaded with the
# private apt configuration and unpacked under $QEMU10_DIR/VERSION/root, never installed: the
# host keeps Debian 12's QEMU 7.2, which boots the guests and which other checks run. Prints
# that root. Only the x86 system emulator, its data files and the SeaBIOS its Depends ask
# for (>> 1.16.3-1~, newer than bookworm's): the binary's shared libraries all exist in
# bookworm, and TCG is built in since this packaging (no accel-tcg-x86_64.so module). Once
# unpacked, apt is not asked again.
fetch_qemu10() {
    local cur=$QEMU10_DIR/current conf
    if [ -e "$cur/.done" ]; then echo "$(cd "$cur" && pwd -P)/root"; return 0; fi
    conf=$(private_apt amd64)
    mkdir -p "$QEMU10_DIR"
    # One unpacking at a time; a run that waited finds it done.
    ( flock 9; unpack_qemu10 "$conf" ) 9>"$QEMU10_DIR/.lock" || die "QEMU 10 from bookworm-backports is not available"
    echo "$(cd "$cur" && pwd -P)/root"
}

# unpack_qemu10 APT_CONF: the work of fetch_qemu10, under its lock.
unpack_qemu10() {
    local conf=$1 cur=$QEMU10_DIR/current ver dir debs pkg want missing version
    ver=$(apt_read "$conf" apt-cache show qemu-system-x86/bookworm-backports 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    case $ver in
        1:1[0-9].*) ;;
        *) die "bookworm-backports has no qemu-system-x86 10.x (found '${ver:-nothing}')" ;;
    esac
    dir=$QEMU10_DIR/${ver#*:}
    if [ ! -e "$dir/.done" ]; then
        debs=$dir.debs
        mkdir -p "$debs"
        want=()
        for pkg in qemu-system-x86 qemu-system-data seabios; do
            ls "$debs/${pkg}"_*.deb >/dev/null 2>&1 || want+=("$pkg/bookworm-backports")
        done
        if [ ${#want[@]} -gt 0 ]; then
            log "downloading ${want[*]}"
            # Lists older than the mirror name .debs it has dropped: refresh once and retry.
            (cd "$debs" && apt_read "$conf" apt-get download -qq "${want[@]}" >&2) || {
                private_apt_update "$(dirname "$conf")"
                (cd "$debs" && apt_read "$conf" apt-get download -qq "${want[@]}" >&2)
            } || die "apt-get download ${want[*]} failed"
        fi
        rm -rf "$dir"; mkdir -p "$dir/root"
        for pkg in "$debs"/*.deb; do
            dpkg-deb -x "$pkg" "$dir/root" || die "dpkg-deb -x $pkg failed"
        done
        # The binary runs on the host's bookworm libraries (the guest gets them via --bin's
        # ldd): anything unresolved would need fetching too, so say so now.
        missing=$(ldd "$dir/root/usr/bin/qemu-system-x86_64" 2>&1 | grep 'not found' || true)
        [ -z "$missing" ] || die "QEMU $ver needs libraries this host lacks: $missing"
        version=$("$dir/root/usr/bin/qemu-system-x86_64" --version) || die "the unpacked QEMU $ver does not run here"
        echo "${version%%$'\n'*}" > "$dir/version"
        echo "$ver" > "$dir/deb-version"
        touch "$dir/.done"
        log "QEMU $ver unpacked -> $dir ($(du -sh "$debs" | cut -f1) of .debs)"
    fi
    ln -sfn "$(basename "$dir")" "$cur.tmp" && mv -T "$cur.tmp" "$cur"
}
