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

# Downloads one package (by exact name) into the deb cache, once, and prints its path. Under a
# private apt configuration (APT_CONFIG set by private_apt) the lists are read under their lock.
download_deb() {
    local pkg=$1 f
    if dry_run; then
        resolve_package "$pkg" >/dev/null || return 1
        would "apt-get download $pkg into $DEBS_DIR"
        echo "$DEBS_DIR/${pkg}_DRY-RUN.deb"
        return 0
    fi
    mkdir -p "$DEBS_DIR"
    f=$(ls "$DEBS_DIR"/"${pkg}"_*.deb 2>/dev/null | head -n 1)
    if [ -z "$f" ]; then
        log "downloading $pkg"
        (cd "$DEBS_DIR" && apt_locked apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) || die "apt-get download $pkg failed"
        f=$(ls "$DEBS_DIR"/"${pkg}"_*.deb | head -n 1)
    fi
    echo "$f"
}

# unpack_kernel LABEL DEB: unpacks a kernel image package into $KERNELS_DIR/LABEL and
# records its release, once.
unpack_kernel() {
    local deb=$2 dir=$KERNELS_DIR/$1 kver
    if dry_run; then would "dpkg-deb -x $(basename "$deb") into $dir"; return 0; fi
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

# `lab/vm fetch [--dry-run] [x86_64|ppc64el|qemu10|all]`. With --dry-run every step of the
# chosen paths runs as it would from an empty cache, but nothing is installed, downloaded,
# updated or unpacked: each such step is logged as "would ...", and each package name is
# resolved against the apt lists already on the machine (a name apt does not know fails; with
# no lists yet, the name is reported unresolved). It needs no network, so scripts/test --unit
# runs it on an empty scratch cache: a path that calls a function nobody defines fails there.
cmd_fetch() {
    if [ "${1:-}" = --dry-run ]; then export LAB_DRY_RUN=1; shift; fi
    case ${1:-x86_64} in
        ppc64el) fetch_ppc64el ;;
        qemu10) fetch_qemu10 >/dev/null ;;
        x86_64) fetch_x86_64 ;;
        all) fetch_x86_64; fetch_ppc64el; fetch_qemu10 >/dev/null; fetch_kernel_source >/dev/null ;;
        *) die "usage: lab/vm fetch [--dry-run] [x86_64|ppc64el|qemu10|all]" ;;
    esac
}

# `lab/vm fetch`: QEMU, busybox and the two Debian x86 kernels (6.1 and 6.12).
fetch_x86_64() {
    ensure_packages qemu-system-x86 busybox-static python3
    local img61 img612
    img61=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-6\.1/ {print $2; exit}')
    if [ -z "$img61" ] && ! dry_run; then
        apt-get update -qq >&2
        img61=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1/ {print $2; exit}')
    fi
    img61=${img61:-$(unresolved "the linux-image-6.1.* that linux-image-amd64 depends on")}
    [ -n "$img61" ] || die "apt-cache depends linux-image-amd64 names no 6.1 image"
    unpack_kernel 6.1 "$(download_deb "$img61")"

    img612=$(newest_612_image)
    if [ -z "$img612" ]; then
        export APT_CONFIG; APT_CONFIG=$(private_apt amd64)
        img612=$(newest_612_image)
    fi
    img612=${img612:-$(unresolved "the newest linux-image-6.12.*+deb12-amd64")}
    [ -n "$img612" ] || die "no linux-image-6.12.*+deb12-amd64 found, even with bookworm-backports"
    unpack_kernel 6.12 "$(download_deb "$img612")"
    unset APT_CONFIG
    dry_run || log "kernels: 6.1=$(cat "$KERNELS_DIR/6.1/kver") 6.12=$(cat "$KERNELS_DIR/6.12/kver")"
}

# `lab/vm fetch ppc64el`: qemu-system-ppc, Debian's 6.12 ppc64el kernel and its static busybox,
# through a private foreign-architecture apt configuration.
fetch_ppc64el() {
    ensure_packages qemu-system-ppc
    local conf img deb bb=$CACHE/busybox-ppc64el
    conf=$(private_apt ppc64el) || return 1
    # backports carries the 6.12 ppc64el kernel; 6.1's vfio-pci fails to probe there (-22).
    img=$(apt_read "$conf" apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+(deb12|bpo)-powerpc64le$' 2>/dev/null \
        | awk '{print $1}' | sort -V | tail -n 1)
    img=${img:-$(unresolved "the newest linux-image-6.12.*-powerpc64le")}
    [ -n "$img" ] || die "no linux-image-6.12.*-powerpc64le in bookworm(-backports)"
    deb=$(DEBS_DIR=$CACHE/debs-ppc64el APT_CONFIG=$conf download_deb "$img") || return 1
    unpack_kernel 6.12-ppc64el "$deb"
    if [ ! -x "$bb/bin/busybox" ]; then
        deb=$(DEBS_DIR=$CACHE/debs-ppc64el APT_CONFIG=$conf download_deb busybox-static) || return 1
        if dry_run; then would "dpkg-deb -x $(basename "$deb") into $bb"; return 0; fi
        rm -rf "$bb"; dpkg-deb -x "$deb" "$bb" || die "dpkg-deb -x $deb failed"
    fi
    dry_run || log "ppc64el: kernel $(cat "$KERNELS_DIR/6.12-ppc64el/kver"), busybox $bb/bin/busybox"
}

# Debian's linux-source-6.12 package (for `lab/vm build-kernel`), downloaded once; prints its path.
fetch_kernel_source() { download_deb linux-source-6.12; }

# The Debian archive the system's own apt sources use for bookworm (whichever mirror this
# machine is set up with), read through apt itself so both sources formats count. The private
# configurations below use the same archive: the repository names no mirror of its own.
system_archive_uri() {
    local uri
    uri=$(env -u APT_CONFIG apt-get indextargets --no-release-info \
            --format '$(RELEASE) $(COMPONENT) $(REPO_URI)' 'Identifier: Packages' 2>/dev/null \
        | awk '$1 == "bookworm" && $2 == "main" { print $3; exit }')
    [ -n "$uri" ] || die "the system's apt sources (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list) name no Debian archive with bookworm main; add one, then run lab/vm fetch again"
    echo "$uri"
}

# A private apt configuration for ARCH with bookworm and bookworm-backports: its own
# sources (restricted with [arch=]), lists, empty dpkg status and cache under
# $CACHE/apt-ARCH, so neither /etc/apt nor the host's apt state changes (nor learns about a
# foreign architecture). Used for ppc64el, and for amd64 when the system's sources carry no
# 6.12 kernel (bookworm-security does nowadays). bookworm-security is left out: its ppc64el
# index failed to download here ("File has unexpected size").
private_apt() {
    local arch=$1 root=$CACHE/apt-$1 key=/usr/share/keyrings/debian-archive-keyring.gpg uri
    uri=$(system_archive_uri) || return 1
    mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/sources.list.d"
    [ -e "$root/status" ] || : > "$root/status"
    # Written aside and renamed: a concurrent apt run never reads a half-written file.
    cat > "$root/sources.list.$$" <<SRC
deb [arch=$arch signed-by=$key] $uri bookworm main
deb [arch=$arch signed-by=$key] $uri bookworm-backports main
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
    if dry_run; then would "apt-get update of the private lists in $root"; return 0; fi
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

# apt_locked CMD...: CMD under the apt configuration in force: a private one (APT_CONFIG) read
# under its lock, or the system's.
apt_locked() {
    if [ -n "${APT_CONFIG:-}" ]; then apt_read "$APT_CONFIG" "$@"; else "$@"; fi
}

# resolve_package PKG[/SUITE]: prints "PKG VERSION" as the apt lists in force know it. Fails
# when they do not know it; with no lists at all (a dry run on a machine that never ran
# apt-get update), says so and succeeds, since there is nothing to check the name against.
resolve_package() {
    local version
    version=$(apt_locked apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
    if [ -n "$version" ]; then
        dry_run && log "resolved $1 $version"
        echo "$1 $version"; return 0
    fi
    if dry_run && ! apt_lists_present; then
        log "unresolved $1: no apt lists here (${APT_CONFIG:-system apt}); apt-get update was never run"
        echo "$1 ?"; return 0
    fi
    die "apt knows no package $1 (${APT_CONFIG:-system sources}): is the archive in the sources, and the lists fresh (apt-get update)?"
}

# Whether the apt configuration in force has downloaded any package index.
apt_lists_present() {
    local f
    for f in $(apt-get indextargets --format '$(FILENAME)' 'Identifier: Packages' 2>/dev/null); do
        compgen -G "$f*" >/dev/null && return 0
    done
    return 1
}

# unresolved WHAT: in a dry run, a stand-in name for a package that only downloaded lists could
# name (it is logged, and resolve_package sees it later); otherwise nothing, so the caller dies.
unresolved() {
    dry_run || return 0
    log "unresolved: $1 (no lists to search here)"
    echo "DRY-RUN-UNRESOLVED"
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
    conf=$(private_apt amd64) || return 1
    if dry_run; then
        local pkg
        for pkg in qemu-system-x86 qemu-system-data seabios; do
            APT_CONFIG=$conf resolve_package "$pkg/bookworm-backports" >/dev/null || return 1
        done
        would "apt-get download qemu-system-x86 qemu-system-data seabios from bookworm-backports, dpkg-deb -x into $QEMU10_DIR"
        echo "$cur/root"; return 0
    fi
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
