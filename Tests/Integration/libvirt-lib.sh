# shellcheck shell=bash
# Debian 12's libvirt for the lab guests; sourced after lib.sh, not run.
#
# libvirt_guest_args: installs what is missing of Debian's libvirt-daemon (libvirtd and the
# loadable drivers), libvirt-daemon-driver-qemu, libvirt-clients (virsh), qemu-system-x86 7.2
# and seabios, and sets LIBVIRT_GUEST_ARGS to the lab/vm run options that put into the guest:
# libvirtd and virsh, the QEMU driver module (the only one: libvirtd skips drivers it does not
# find) and QEMU's TCG module, each with the libraries ldd lists, QEMU 7.2 with SeaBIOS and
# kvmvapic.bin where it looks for them, libvirt's CPU map and schemas, and
# Tests/Integration/libvirt-guest-lib.sh as /lab/libvirt-guest-lib.sh. LIBVIRT_VERSION gets
# libvirtd's version line. Returns 1 when the packages cannot be installed.
# libvirt-daemon-system is not installed: it brings systemd units, polkit and the users; the
# packages above have no units and no maintainer scripts that start anything (virsh's only
# handle its conffiles). Guest side: `. /lab/libvirt-guest-lib.sh; libvirt_prepare_guest`.
# Usage: libvirt_guest_args || fail ...; guest DIR CMD "${LIBVIRT_GUEST_ARGS[@]}" ...
libvirt_guest_args() {
    ( ensure_packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
        dmidecode qemu-system-x86 seabios ) || return 1
    local multiarch=/usr/lib/x86_64-linux-gnu module lib
    local -A seen=()
    # shellcheck disable=SC2034 # read by the caller
    LIBVIRT_VERSION=$(/usr/sbin/libvirtd --version) || return 1
    # --bin puts programs in /usr/bin; libvirtd finds its modules by their compiled-in path.
    LIBVIRT_GUEST_ARGS=(--bin /usr/sbin/libvirtd --bin /usr/bin/virsh --bin /usr/bin/qemu-system-x86_64)
    # dlopened, so --bin's ldd of the programs does not see what they need.
    for module in "$multiarch/libvirt/connection-driver/libvirt_driver_qemu.so" \
        "$multiarch/qemu/accel-tcg-x86_64.so"; do
        LIBVIRT_GUEST_ARGS+=(--file "$module:$module")
        for lib in $(ldd "$module" | grep -o '/[^ ]*'); do
            [ -n "${seen[$lib]:-}" ] && continue
            seen[$lib]=1
            LIBVIRT_GUEST_ARGS+=(--file "$lib:$lib")
        done
    done
    # The QEMU driver reads the host's SMBIOS tables with dmidecode (an error in the log without).
    LIBVIRT_GUEST_ARGS+=(--file /usr/sbin/dmidecode:/usr/sbin/dmidecode)
    # Debian's QEMU 7.2 looks for firmware in /usr/share/qemu and /usr/share/seabios.
    LIBVIRT_GUEST_ARGS+=(--file /usr/share/seabios/bios-256k.bin:/usr/share/seabios/bios-256k.bin
        --file /usr/share/qemu/kvmvapic.bin:/usr/share/qemu/kvmvapic.bin
        --file /usr/share/libvirt/cpu_map:/usr/share/libvirt/cpu_map
        --file /usr/share/libvirt/schemas:/usr/share/libvirt/schemas
        --file "$REPO/Tests/Integration/libvirt-guest-lib.sh:/lab/libvirt-guest-lib.sh")
}
