#!/bin/sh
# Debian's podman in a lab guest (busybox sh, root, no systemd, no journald, the initramfs
# as /), sourced by a guest-side script after the host staged podman with
# `podman_guest_args` (Tests/Integration/lib.sh):
#   podman_prepare_guest          config, storage, cgroups, the root podman can pivot from;
#                                 once per boot, before any other call
#   podman_run_cdi DEVICE CMD...  runs CMD in the staged rootfs with the CDI device DEVICE
#                                 (vendor/class=name from a spec under /var/run/cdi or /etc/cdi)
#   podman_run CMD...             the same container without a device
#   podman ARGS...                podman itself, as it has to be called here
# Extra `podman run` options go in PODMAN_RUN_OPTS (word-split), e.g. "--ulimit memlock=-1:-1".
PODMAN_ROOTFS=${PODMAN_ROOTFS:-/lab/podman/rootfs}
PODMAN_STATE=${PODMAN_STATE:-/tmp/podman}
PODMAN_SYSROOT=/

# podman_mount DIR FSTYPE: mounts FSTYPE on DIR unless something is mounted there already.
podman_mount() {
    grep -q " $1 " /proc/mounts && return 0
    mkdir -p "$1" && mount -t "$2" "$2" "$1"
}

podman_prepare_guest() {
    # A kernel without these fails later with a bare "no such file or directory".
    for _ns in pid net ipc uts mnt; do
        [ -e "/proc/self/ns/$_ns" ] || { echo "podman_prepare_guest: the kernel has no $_ns namespace" >&2; return 1; }
    done
    grep -q cgroup2 /proc/filesystems || { echo "podman_prepare_guest: the kernel has no cgroup2" >&2; return 1; }
    mkdir -p /etc/containers /etc/cdi "$PODMAN_STATE" || return 1
    # Debian has /var/run -> /run; the CDI spec directory is named through it.
    [ -e /var/run ] || { mkdir -p /var /run && ln -s /run /var/run; }
    mkdir -p /var/run/cdi
    # The rootfs podman_guest_args staged has busybox; sh -c in the container needs /bin/sh.
    [ -x "$PODMAN_ROOTFS/bin/busybox" ] && [ ! -e "$PODMAN_ROOTFS/bin/sh" ] && ln -s busybox "$PODMAN_ROOTFS/bin/sh"
    # Debian's default_sysctls set net.ipv4.ping_group_range; on a kernel without IPv4 (the
    # iommufd one) crun then fails: "open /proc/sys/net/ipv4/ping_group_range: No such file".
    _sysctls=""
    [ -d /proc/sys/net/ipv4 ] || _sysctls="default_sysctls = []"
    # Debian's defaults come from /usr/share/containers/containers.conf (staged); these
    # override what needs systemd or journald.
    cat > /etc/containers/containers.conf <<EOF
[containers]
log_driver = "k8s-file"
$_sysctls
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
EOF
    # vfs: plain directories, works on any filesystem (overlay on the initramfs does not);
    # the store is tiny anyway, --rootfs containers use no image layers.
    cat > /etc/containers/storage.conf <<EOF
[storage]
driver = "vfs"
graphroot = "$PODMAN_STATE/root"
runroot = "$PODMAN_STATE/run"
EOF
    # podman's locks are POSIX shared memory (shm_open "/libpod_lock"): without /dev/shm
    # every command fails with "failed to get new shm lock manager".
    podman_mount /dev/shm tmpfs || return 1
    # crun puts the container in a cgroup (cgroupfs manager) and its device allow-list is
    # an eBPF program on that cgroup: without cgroup2 nothing restricts device access.
    podman_mount /sys/fs/cgroup cgroup2 || return 1
    # `podman --log-level=debug` runs conmon with --syslog; with nothing on /dev/log every
    # container then takes 20 s more ("Exceeded conmon timeout waiting for container").
    [ -S /dev/log ] || syslogd -O "$PODMAN_STATE/syslog" || return 1
    # pivot_root(2) refuses the initramfs as the old root (EINVAL, crun: "pivot_root:
    # Invalid argument"): rootfs is the one mount without a parent. A bind mount of it (with
    # everything mounted below) has one, so podman runs chrooted into that. Files written
    # anywhere later (specs in /var/run/cdi) are seen there; mounts made later are not.
    if grep -q '^rootfs / rootfs ' /proc/mounts; then
        PODMAN_SYSROOT=/tmp/podman-sysroot
        if ! grep -q " $PODMAN_SYSROOT " /proc/mounts; then
            mkdir -p "$PODMAN_SYSROOT" && mount --rbind / "$PODMAN_SYSROOT" || return 1
        fi
    fi
}

podman() { chroot "$PODMAN_SYSROOT" /usr/bin/podman "$@"; }

# --rootfs is a flag: the first argument after the options is the rootfs directory.
podman_run() {
    # shellcheck disable=SC2086
    podman run --rm --network none $PODMAN_RUN_OPTS --rootfs "$PODMAN_ROOTFS" "$@"
}

podman_run_cdi() {
    _dev=$1
    shift
    # shellcheck disable=SC2086
    podman run --rm --network none $PODMAN_RUN_OPTS --device "$_dev" --rootfs "$PODMAN_ROOTFS" "$@"
}
