#!/bin/sh
# Debian 12's libvirtd 9.0 with its QEMU driver in a lab guest (busybox sh, root, no systemd,
# no polkit, no virtlogd, no cgroups, the initramfs as /), sourced by a guest-side script after
# /lab/guest/lib.sh, once the host staged it with `libvirt_guest_args` (libvirt-lib.sh):
#   libvirt_prepare_guest             users, configuration, directories; starts libvirtd and
#                                     waits for qemu:///system to answer (the time it
#                                     took in $LIBVIRT_START_TIME, "1.2s"); once per boot
#   libvirt_domain_xml NAME MANAGED BDF...
#                                     a transient disk-less TCG q35 domain with one PCI
#                                     <hostdev managed='MANAGED'> per BDF, on stdout
#   virsh ARGS...                     virsh on qemu:///system
#   libvirt_stop_guest                stops libvirtd
# libvirtd's own log (warnings and errors, and whatever LIBVIRT_LOG_FILTERS adds, e.g.
# "1:util.pci" for the debug lines of its PCI code) is /out/libvirtd.log, its stderr
# /out/libvirtd.stderr; QEMU's output is /var/log/libvirt/qemu/NAME.log, a running domain's
# state (with what libvirt will undo) /run/libvirt/qemu/NAME.xml.
LIBVIRT_URI=qemu:///system
LIBVIRT_PIDFILE=/run/libvirtd.pid
# Debian's allocated ids for libvirt-qemu (libvirt-daemon-system's postinst); kvm and
# libvirt are dynamic system groups there, any free ids do here.
LIBVIRT_QEMU_UID=64055
LIBVIRT_QEMU_GID=64055

virsh() { command virsh -c "$LIBVIRT_URI" "$@"; }

# libvirt_alive PID: the process exists and is no zombie (kill -0 succeeds on one).
libvirt_alive() { _st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null); [ -n "$_st" ] && [ "$_st" != Z ]; }

# libvirt_add_line FILE NAME LINE: appends LINE unless FILE has an entry NAME.
libvirt_add_line() { grep -q "^$2:" "$1" 2>/dev/null || echo "$3" >> "$1"; }

libvirt_prepare_guest() {
    # libvirtd puts its sockets in /run/libvirt, virsh looks in /var/run/libvirt: Debian has
    # /var/run -> /run, the initramfs has no /var.
    mkdir -p /var /run || return 1
    [ -e /var/run ] || ln -s /run /var/run || return 1
    mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu \
        /var/log/libvirt/qemu || return 1
    # The QEMU driver resolves its user and group when it loads, even for root's domains
    # ("Failed to find user record for name 'libvirt-qemu'" otherwise), and puts QEMU into
    # all of the user's groups. Debian's libvirt-qemu has kvm as its primary group and is a
    # member of libvirt-qemu; libvirt is the socket group of libvirt-daemon-system.
    libvirt_add_line /etc/passwd root "root:x:0:0:root:/root:/bin/sh"
    libvirt_add_line /etc/passwd libvirt-qemu \
        "libvirt-qemu:x:$LIBVIRT_QEMU_UID:109:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin"
    libvirt_add_line /etc/group root "root:x:0:"
    libvirt_add_line /etc/group kvm "kvm:x:109:"
    libvirt_add_line /etc/group libvirt "libvirt:x:110:"
    libvirt_add_line /etc/group libvirt-qemu "libvirt-qemu:x:$LIBVIRT_QEMU_GID:libvirt-qemu"
    # libvirt-daemon-system (not staged: it pulls systemd and polkit) ships both files; these
    # keep only what this guest needs. A unix socket only, root's, no authentication: no
    # polkit to ask. The legacy monolithic libvirtd has no TCP/TLS listener without --listen.
    cat > /etc/libvirt/libvirtd.conf <<EOF
listen_tls = 0
listen_tcp = 0
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_level = 3
log_filters = "${LIBVIRT_LOG_FILTERS:-}"
log_outputs = "1:file:/out/libvirtd.log"
EOF
    # Debian's compiled-in user and group (its qemu.conf has them commented out), so QEMU
    # runs as libvirt-qemu and the DAC driver chowns what it hands to QEMU.
    # - security_driver: no SELinux or AppArmor in the lab kernel; DAC runs regardless.
    # - namespaces: with the default "mount" QEMU gets a private /dev with copies of the
    #   nodes and the labels land on those; here the chown of /dev/vfio/N is to be seen.
    # - cgroup_controllers: nothing is mounted on /sys/fs/cgroup.
    # - stdio_handler: the default "logd" needs virtlogd.
    cat > /etc/libvirt/qemu.conf <<EOF
user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
EOF
    chmod 0600 /etc/libvirt/qemu.conf
    _t0=$(now_ms)
    libvirtd --pid-file "$LIBVIRT_PIDFILE" >> /out/libvirtd.stderr 2>&1 &
    LIBVIRTD_PID=$!
    # virsh itself takes ~0.5 s to start under TCG: wait for the socket first.
    _i=0
    until [ -S /run/libvirt/libvirt-sock ] && virsh version > /out/libvirt-version.txt 2>&1; do
        libvirt_alive "$LIBVIRTD_PID" || { echo "libvirtd exited: $(tail -c 600 /out/libvirtd.stderr)" >&2; return 1; }
        _i=$((_i + 1))
        [ "$_i" -lt 600 ] || { echo "libvirtd did not answer within 120 s: $(tail -c 300 /out/libvirt-version.txt)" >&2; return 1; }
        sleep 0.2
    done
    # shellcheck disable=SC2034 # read by the sourcing script
    LIBVIRT_START_TIME=$(elapsed "$_t0" "$(now_ms)")
}

libvirt_domain_xml() {
    _name=$1 _managed=$2
    shift 2
    echo "<domain type='qemu'>"
    echo "  <name>$_name</name>"
    echo "  <memory unit='MiB'>128</memory>"
    echo "  <vcpu>1</vcpu>"
    echo "  <os><type arch='x86_64' machine='q35'>hvm</type></os>"
    echo "  <devices>"
    echo "    <emulator>/usr/bin/qemu-system-x86_64</emulator>"
    # Otherwise libvirt adds a USB controller and a balloon on q35.
    echo "    <controller type='usb' model='none'/>"
    echo "    <memballoon model='none'/>"
    for _bdf in "$@"; do
        # 0000:01:02.0 -> domain 0000, bus 01, slot 02, function 0
        _fn=${_bdf##*.} _rest=${_bdf%.*}
        _slot=${_rest##*:} _rest=${_rest%:*}
        _bus=${_rest##*:} _dom=${_rest%:*}
        echo "    <hostdev mode='subsystem' type='pci' managed='$_managed'>"
        echo "      <source><address domain='0x$_dom' bus='0x$_bus' slot='0x$_slot' function='0x$_fn'/></source>"
        echo "    </hostdev>"
    done
    echo "  </devices>"
    echo "</domain>"
}

libvirt_stop_guest() {
    [ -n "${LIBVIRTD_PID:-}" ] || return 0
    kill "$LIBVIRTD_PID" 2>/dev/null
    _i=0
    while libvirt_alive "$LIBVIRTD_PID" && [ "$_i" -lt 50 ]; do sleep 0.2; _i=$((_i + 1)); done
    kill -9 "$LIBVIRTD_PID" 2>/dev/null
    LIBVIRTD_PID=""
}
