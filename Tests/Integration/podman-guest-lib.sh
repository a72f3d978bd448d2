#!/bin/sh
# Podman in a lab guest (busybox sh, root, no systemd, no journald, an initramfs as /):
# sourced by a guest-side script after the host staged podman with `podman_guest_args`
# (Tests/Integration/lib.sh).
#   podman_prepare_guest          config, storage, cgroups; once per boot
#   podman_run_cdi DEVICE CMD...  runs CMD in the staged rootfs with the CDI device DEVICE
#                                 (vendor/class=name, from a spec under /var/run/cdi)
#   podman_run CMD...             the same container without any device
# Extra `podman run` options go in PODMAN_RUN_OPTS (word-split).
PODMAN_ROOTFS=${PODMAN_ROOTFS:-/lab/podman/rootfs}
PODMAN_STATE=${PODMAN_STATE:-/tmp/podman}

# podman_mount DIR FSTYPE: mounts FSTYPE on DIR unless something is mounted there already.
podman_mount() {
    grep -q " $1 " /proc/mounts && return 0
    mkdir -p "$1" && mount -t "$2" "$2" "$1"
}

podman_prepare_guest() {
    mkdir -p /etc/containers /var/run/cdi /etc/cdi "$PODMAN_STATE"
    cat > /etc/containers/containers.conf <<EOF
[containers]
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
EOF
    cat > /etc/containers/storage.conf <<EOF
[storage]
driver = "vfs"
graphroot = "$PODMAN_STATE/root"
runroot = "$PODMAN_STATE/run"
EOF
    podman_mount /dev/shm tmpfs
    podman_mount /sys/fs/cgroup cgroup2
}

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
