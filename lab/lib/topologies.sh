# shellcheck shell=bash
# Topology discovery for lab/suite and lab/capture-fixtures. Sourced after lib/common.sh.

# Topologies whose kernel can be had on this machine (the iommufd one only once built,
# unless LAB_BUILD_KERNEL=1 allows building it on demand).
available_topologies() {
    local f k
    for f in "$LAB_DIR"/topologies/*.topo; do
        k=$(sed -n 's/^KERNEL=//p' "$f")
        if [ "$k" = iommufd ] && [ ! -e "$CACHE/kernels/iommufd/.done" ] && [ -z "${LAB_BUILD_KERNEL:-}" ]; then
            log "skipping $(basename "$f" .topo): iommufd kernel not built (lab/vm build-kernel iommufd)"
            continue
        fi
        basename "$f" .topo
    done
}

# A topology's guest architecture (vfioctl is built for the host, x86_64, only).
topology_arch() {
    local a; a=$(sed -n 's/^ARCH=//p' "$LAB_DIR/topologies/$1.topo")
    echo "${a:-x86_64}"
}
