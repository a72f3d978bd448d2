#!/bin/sh
# Runs inside a lab guest (busybox sh, as root), driven by Tests/Integration/podman.sh:
# Debian's podman 4.3 starts a container from a CDI spec written here by hand (what the DRA
# plugin writes at claim prepare) and vfio-edu inside it does its DMA + MSI checks on the
# edu at 0000:00:03.0; without the CDI device the container cannot reach the group; which
# cdiVersions and fields podman's CDI library takes. $1 is the topology, BACKENDS the VFIO
# paths to try (legacy; iommufd too on q35-iommufd). One "PASS name" / "FAIL name: why" line
# per check in /out/checks, the closing line last; /out/podman-timings has the podman run times.
BDF=0000:00:03.0
KIND=swift-vfio.dev/group
SPEC=/var/run/cdi/swift-vfio-test.json
# shellcheck source=podman-guest-lib.sh
. /lab/podman-guest-lib.sh
TIMINGS=/out/podman-timings
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
: > "$TIMINGS"

# write_spec FILE VERSION KIND NAME NODE... [-- EDIT_JSON]: a CDI spec with one device
# whose deviceNodes are NODE... (host paths; podman fills type, major and minor from the
# host) and the env PCI_RESOURCE_SWIFT_VFIO_DEV_GROUP=$BDF; EDIT_JSON is spliced into the
# spec's top level (fields a version test adds).
write_spec() {
    _f=$1 _v=$2 _k=$3 _name=$4
    shift 4
    _nodes="" _extra=""
    while [ $# -gt 0 ]; do
        if [ "$1" = -- ]; then _extra="$2,"; break; fi
        _nodes="$_nodes${_nodes:+, }{\"path\": \"$1\"}"
        shift
    done
    cat > "$_f" <<EOF
{
  "cdiVersion": "$_v",
  "kind": "$_k",${_extra:+ $_extra}
  "devices": [
    {
      "name": "$_name",
      "containerEdits": {
        "deviceNodes": [$_nodes],
        "env": ["PCI_RESOURCE_SWIFT_VFIO_DEV_GROUP=$BDF"]
      }
    }
  ]
}
EOF
}

timed prepare podman_prepare_guest
[ "$rc" = 0 ] && pass "podman_prepare_guest" || fail "podman_prepare_guest: $(why prepare)"
podman --version > /out/podman-version.txt 2>/dev/null
timed info podman info
[ "$rc" = 0 ] && pass "podman info ($(cat /out/podman-version.txt))" || fail "podman info: $(why info)"
timed hello podman_run /bin/busybox echo hello
if [ "$rc" = 0 ] && grep -qx hello /out/hello.out; then pass "podman runs a --rootfs container (no network, cgroupfs)"
else fail "podman run --rootfs: $(why hello)"; fi

group=$(group_of $BDF)
cdev=$(cdev_of $BDF)

for b in $BACKENDS; do
    if [ "$b" = iommufd ]; then
        nodes="/dev/iommu /dev/vfio/devices/$cdev"
        dev=/dev/vfio/devices/$cdev
        target=/dev/vfio/devices/$cdev
    else
        nodes="/dev/vfio/vfio /dev/vfio/$group"
        dev=/dev/vfio/$group
        target=\$PCI_RESOURCE_SWIFT_VFIO_DEV_GROUP
    fi
    name=claim-edu-$b
    # The major and minor of the node the container must not reach without the device.
    mm=$(stat -c '%t %T' "$dev" | while read -r ma mi; do echo "$((0x$ma)) $((0x$mi))"; done)
    write_spec "$SPEC" 0.5.0 "$KIND" "$name" $nodes
    cp "$SPEC" "/out/spec-$b.json"

    timed edu-$b podman_run_cdi "$KIND=$name" /bin/busybox sh -c \
        "ls /dev/vfio /dev/vfio/devices /dev/iommu 2>&1 >&2; env >&2; echo memlock=\$(ulimit -l) >&2; exec vfio-edu run $target --backend $b --json"
    if [ "$rc" = 0 ] && grep -q '"passed":true' /out/edu-$b.out; then
        pass "$b: vfio-edu in the container with --device $KIND=$name: DMA both ways with MSI, INTx"
    else fail "$b: vfio-edu in the container: $(why edu-$b)"; fi
    grep -q "^PCI_RESOURCE_SWIFT_VFIO_DEV_GROUP=$BDF\$" /out/edu-$b.err \
        && pass "$b: the spec's env reached the container" || fail "$b: no PCI_RESOURCE env in $(head -c 300 /out/edu-$b.err)"

    timed edu-$b-nodev podman_run vfio-edu run "$BDF" --backend "$b" --json
    # vfio-edu itself must have run and found no node (its report names the errno).
    if [ "$rc" != 0 ] && grep -q '"error":"open on [^"]*(ENOENT)' /out/edu-$b-nodev.out; then
        pass "$b: without --device vfio-edu finds no node: $(grep -o 'open on [^;]*' /out/edu-$b-nodev.out | head -n 1)"
    else fail "$b: vfio-edu without the CDI device: $(why edu-$b-nodev)"; fi
    # Nor can the container make the node itself (podman grants CAP_MKNOD): the device
    # cgroup allows only what the spec granted, mknod included.
    timed mknod-$b podman_run /bin/busybox sh -c "mknod /dev/vfio-x c $mm && cat /dev/vfio-x"
    if [ "$rc" != 0 ] && grep -q '^\(mknod\|cat\): .*Operation not permitted' /out/mknod-$b.err; then
        pass "$b: without --device the container cannot mknod/open $dev ($mm): $(grep -o '^[a-z]*: .*Operation not permitted' /out/mknod-$b.err) (device cgroup)"
    else fail "$b: mknod of $dev inside the container: $(why mknod-$b)"; fi
done

# CDI 0.5 has no rlimits: a workload pinning more than the default 8 MiB (DPDK, a VMM) needs
# the memlock limit from the podman command line; the guest's podman honours it.
PODMAN_RUN_OPTS='--ulimit memlock=-1:-1' timed memlock podman_run /bin/busybox sh -c 'ulimit -l'
[ "$rc" = 0 ] && grep -qx unlimited /out/memlock.out && pass "--ulimit memlock=-1:-1 reaches the container (default: $(sed -n 's/^memlock=//p' /out/edu-legacy.err 2>/dev/null) KiB)" \
    || fail "--ulimit memlock=-1:-1: $(why memlock)"

# --- which specs podman 4.3's CDI library accepts ---------------------------------------------
# Each variant alone in the spec directory; a spec the library rejects is skipped (logged at
# debug level only), and the device is then "unresolvable".
rm -f /var/run/cdi/*.json
: > /out/cdi-matrix.txt
variant() {
    _label=$1 _v=$2 _name=$3 _extra=$4 _expect=$5
    if [ -n "$_extra" ]; then write_spec /var/run/cdi/v.json "$_v" swift-vfio.dev/probe "$_name" /dev/vfio/vfio -- "$_extra"
    else write_spec /var/run/cdi/v.json "$_v" swift-vfio.dev/probe "$_name" /dev/vfio/vfio; fi
    _vi=$((_vi + 1))
    timed "cdi-$_vi" podman --log-level=debug run --rm --network none --device "swift-vfio.dev/probe=$_name" \
        --rootfs "$PODMAN_ROOTFS" /bin/busybox true
    # Rejected means by the CDI library; any other failure is reported as such.
    _res=accepted
    [ "$rc" = 0 ] || _res=failed
    grep -q '^Error: setting up CDI devices: unresolvable CDI devices' "/out/cdi-$_vi.err" && _res=rejected
    # Why, in the library's words: the refresh error (debug level only) and podman's error.
    _msg=$(sed -n 's/.*refreshing the CDI registry: \(.*\)"$/\1/p' "/out/cdi-$_vi.err" | head -n 1 \
        | sed 's/\\n\\t\* / /g; s/\\n//g; s/\\"/"/g')
    _msg="$_msg${_msg:+; }$(grep '^Error:' "/out/cdi-$_vi.err" | tail -n 1)"
    echo "$_label: $_res ($_v)${_msg:+ -- $_msg}" >> /out/cdi-matrix.txt
    if [ "$_res" = "$_expect" ]; then pass "CDI $_label: $_res"; else fail "CDI $_label: $_res, expected $_expect: $_msg"; fi
}
_vi=0
for v in 0.1.0 0.2.0 0.3.0 0.4.0 0.5.0; do variant "cdiVersion $v" "$v" dev "" accepted; done
for v in 0.6.0 0.7.0 0.8.0 1.0.0; do variant "cdiVersion $v" "$v" dev "" rejected; done
variant "device name starting with a digit, 0.5.0" 0.5.0 0dev "" accepted
variant "device name starting with a digit, 0.3.0" 0.3.0 0dev "" accepted
variant "spec-level annotations (0.6.0 field), 0.5.0" 0.5.0 dev '"annotations": {"a": "b"}' rejected
variant "unknown top-level field" 0.5.0 dev '"foo": 1' rejected
# The plugin writes one file per claim, all of one kind: each file's devices resolve.
write_spec /var/run/cdi/claim-b.json 0.5.0 swift-vfio.dev/probe other /dev/vfio/vfio
variant "a second file of the same kind, other device name" 0.5.0 dev "" accepted
# The same name in two files of one directory is a conflict: neither resolves.
write_spec /var/run/cdi/claim-b.json 0.5.0 swift-vfio.dev/probe dev /dev/vfio/vfio
variant "the same device name in two files of one directory" 0.5.0 dev "" rejected
rm -f /var/run/cdi/claim-b.json
# Another vendor's broken spec in the same directory is skipped, ours still resolves.
echo '{"cdiVersion": "0.5.0", "kind": "other.vendor/x", "devices": [' > /var/run/cdi/broken.json
variant "beside a spec that does not parse" 0.5.0 dev "" accepted
rm -f /var/run/cdi/v.json /var/run/cdi/broken.json
finish
