#!/bin/sh
# Runs inside a lab guest (busybox sh, as root), driven by Tests/Integration/kubelet.sh:
# vfio-kubelet-plugin's two plugins with vfio-kubelet-sim playing the kubelet over Unix sockets,
# judged by the kernel (driver links, /dev/vfio nodes). One "PASS name" / "FAIL name: why"
# line per check in /out/checks, the closing line last; figures in /out/kubelet-timings.
TOPOLOGY=$1
S=/tmp/vfio-state
K=/tmp/kubelet
CDI=/tmp/cdi
CLAIMS=/tmp/claims
SLICES=/tmp/slices
DRIVER=vfio.swift-vfio.io
REG=$K/plugins_registry/$DRIVER-reg.sock
DRA=$K/plugins/$DRIVER/dra.sock
: > /out/kubelet-timings
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
both_on() {
    a=$(drv 0000:01:01.0); b=$(drv 0000:01:02.0)
    if [ "$a" = "$2" ] && [ "$b" = "$2" ]; then pass "$1"; else fail "$1: 01:01.0 on $a, 01:02.0 on $b, expected $2"; fi
}
claim() {  # claim UID DEVICE: a ResourceClaim allocated to DEVICE of this driver
    cat > "$CLAIMS/$1.json" <<JSON
{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim","metadata":{"name":"vm-$1","namespace":"default","uid":"$1"},
 "status":{"allocation":{"devices":{"results":[{"request":"vfio","driver":"$DRIVER","pool":"lab","device":"$2"}]}}}}
JSON
}
# start_dra [LOG [OPTION...]]: the DRA plugin with its specs in ${DRA_CDI:-$CDI}, output in /out/LOG.log.
start_dra() {
    _log=${1:-dra-plugin}; [ $# -gt 0 ] && shift
    vfio-kubelet-plugin dra --state "$S" --kubelet-dir $K --cdi-dir "${DRA_CDI:-$CDI}" --claims $CLAIMS --node-name lab \
        --slices-dir $SLICES --resync 1 "$@" > "/out/$_log.log" 2>&1 &
    DRA_PID=$!
    # A plugin that was killed leaves its socket files: wait until the new one answers.
    i=0
    until vfio-kubelet-sim info --socket "$REG" > /dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 150 ] || return 1; sleep 0.2
    done
}

# flat_slices: the published slices (files in $SLICES, as the plugin keeps them) without blanks
# or line breaks, so one pattern can span a JSON object: "name":"group-4".
flat_slices() { cat $SLICES/*.json 2>/dev/null | tr -d ' \n'; }
# device_of NAME: the published device NAME alone ({"name":"NAME",...}), on one line.
device_of() { flat_slices | sed 's/{"name":"/\n{"name":"/g' | grep "^{\"name\":\"$1\""; }
# gen: the highest pool generation published.
gen() { flat_slices | grep -o '"generation":[0-9]*' | cut -d: -f2 | sort -n | tail -n 1; }
# slices_within NAME present|absent PATTERN: waits up to 2 s for the published slices to have
# or lack PATTERN (matched in flat_slices); the time it took in /out/kubelet-timings.
slices_within() {
    _t0=$(now_ms)
    while :; do
        if flat_slices | grep -q -- "$3"; then _has=present; else _has=absent; fi
        _ms=$(($(now_ms) - _t0))
        [ "$_has" = "$2" ] && break
        [ $_ms -lt 2000 ] || break
        sleep 0.05
    done
    if [ "$_has" = "$2" ]; then pass "$1 (${_ms} ms)"; else fail "$1: still $_has after ${_ms} ms: $(flat_slices | head -c 600)"; fi
    echo "slices after $1: ${_ms} ms" >> /out/kubelet-timings
}

# --- q35-sriov: a VF count change republishes the VFs and their PF's counter set ----------------
# The lab enabled 2 VFs of the nvme PF (01:00.1 on nvme, 01:00.2 on vfio-pci); the VFs' drivers
# do not probe by themselves (sriov_drivers_autoprobe 0), which the slices do not care about.
if [ "$TOPOLOGY" = q35-sriov ]; then
    PF=0000:01:00.0
    NUMVFS=/sys/bus/pci/devices/$PF/sriov_numvfs
    COUNTERS=sriov-0000-01-00-0
    mkdir -p $CLAIMS
    start_dra || { fail "the DRA plugin did not come up: $(tail -c 400 /out/dra-plugin.log)"; finish; }
    pass "the DRA plugin serves its registration socket"
    # draws FUNCTION N: the device of FUNCTION's group draws N from the counter set.
    draws() {
        _what="\"consumesCounters\":\[{\"counterSet\":\"$COUNTERS\",\"counters\":{\"functions\":{\"value\":\"$2\"}}}\]"
        _t0=$(now_ms)
        until device_of "group-$(group_of "$1")" | grep -q -- "$_what"; do
            [ $(($(now_ms) - _t0)) -lt 2000 ] || { fail "$3: $(device_of "group-$(group_of "$1")" | head -c 600)"; return; }
            sleep 0.05
        done
        pass "$3 ($(($(now_ms) - _t0)) ms)"
    }
    slices_within "the PF and both VFs are published" present '"string":"0000:01:00.2"'
    slices_within "the PF's counter set: 2 functions" present "\"sharedCounters\":\[{\"name\":\"$COUNTERS\",\"counters\":{\"functions\":{\"value\":\"2\"}}}\]"
    draws $PF 2 "the PF draws all 2"
    draws 0000:01:00.2 1 "a VF draws 1"
    flat_slices > /out/slices-sriov-2.json
    g0=$(gen)
    echo 0 > $NUMVFS
    slices_within "VFs set to 0 through sysfs: the VFs leave the slices within 2 s" absent '"0000:01:00.[12]"'
    slices_within "and the counter set goes with them" absent "\"$COUNTERS\""
    slices_within "the PF stays, drawing nothing" present '"string":"0000:01:00.0"'
    [ "$(gen)" -gt "$g0" ] && pass "the pool generation went up ($g0 -> $(gen))" || fail "generation $(gen) after $g0"
    echo 1 > $NUMVFS
    slices_within "VFs set to 1: the new VF is published within 2 s" present '"string":"0000:01:00.1"'
    draws $PF 1 "with a counter set of 1, the PF drawing 1"
    flat_slices > /out/slices-sriov-1.json
    echo 0 > $NUMVFS
    run_apart vfs-two vfioctl vfs $PF --count 2 --state "$S"
    expect_rc "vfioctl vfs --count 2" 0 vfs-two
    slices_within "and both VFs are back within 2 s" present '"string":"0000:01:00.2"'
    draws $PF 2 "the PF draws 2 again"
    kill -TERM $DRA_PID; wait $DRA_PID
    rc=$?
    expect_rc "SIGTERM ends the plugin" 0 dra-plugin
    finish
fi

# The two e1000 behind the PCIe-to-PCI bridge on their host driver (the lab binds them to
# vfio-pci at boot): e1000.ko on Debian's 6.1, built in on the iommufd kernel.
[ -f /lab/e1000.ko ] && insmod /lab/e1000.ko
sh /lab/guest/bind.sh --host 0000:01:01.0 0000:01:02.0
both_on "setup: both e1000 on their host driver" e1000
G=$(group_of 0000:01:02.0)
mkdir -p $CLAIMS

# --- DRA ---------------------------------------------------------------------------------------
run_apart slices vfio-kubelet-plugin dra --print-slices --node-name lab
expect_rc "print-slices" 0 slices
expect_text "the bridge group is one device" "\"group-$G\"" slices
expect_text "with both functions" '"0000:01:01.0,0000:01:02.0"' slices
expect_no_text "numaNode is never -1" '"int" *: *-1' slices

if start_dra; then pass "the DRA plugin serves its registration socket"; else fail "no $REG after 30 s: $(tail -c 400 /out/dra-plugin.log)"; fi
run_apart info vfio-kubelet-sim info --socket "$REG"
expect_rc "GetInfo + NotifyRegistrationStatus" 0 info
expect_text "GetInfo: a DRAPlugin" '"type":"DRAPlugin"' info
expect_text "GetInfo: v1 and v1beta1" '"supportedVersions":\["v1.DRAPlugin","v1beta1.DRAPlugin",' info
expect_text "GetInfo: the endpoint" "\"endpoint\":\"$DRA\"" info
expect_text "GetInfo: the health service, v1 and v1alpha1" '"v1.DRAResourceHealth","v1alpha1.DRAResourceHealth"' info
slices_within "the plugin published its slices" present "\"group-$G\""

# --- the slices stay true: the controller republishes on uevents and ledger writes -------------
NIC=0000:00:02.0
NG=$(group_of $NIC)
slices_within "the e1000e is published" present "\"group-$NG\""
g0=$(gen)
echo 1 > /sys/bus/pci/devices/$NIC/remove
slices_within "a removed function's group leaves the slices within 2 s" absent "\"group-$NG\""
[ "$(gen)" -gt "$g0" ] && pass "the pool generation went up ($g0 -> $(gen))" || fail "generation $(gen) after $g0"
echo 1 > /sys/bus/pci/rescan
NG=$(group_of $NIC)
slices_within "after a rescan it is back within 2 s" present "\"group-$NG\""
vfioctl detach $NIC --state "$S" --owner 1000:1000 --broker-only > /out/detach-admin.txt 2>&1
slices_within "an administrator's detach to uid 1000 withdraws it within 2 s" absent "\"group-$NG\""
vfioctl attach $NIC --state "$S" > /out/attach-admin.txt 2>&1
slices_within "and the attach publishes it again within 2 s" present "\"group-$NG\""
run_apart health-first vfio-kubelet-sim health --socket "$DRA" --device "group-$G" --state HEALTHY --timeout 10
expect_rc "NodeWatchResources (v1): the bridge group is healthy" 0 health-first
run_apart health-alpha vfio-kubelet-sim health --socket "$DRA" --device "group-$G" --state HEALTHY --timeout 10 --v1alpha1
expect_rc "NodeWatchResources (v1alpha1) too" 0 health-alpha

claim bad group-999
run_apart bad vfio-kubelet-sim prepare --socket "$DRA" --uid bad
expect_rc "a bad claim is answered (not a gRPC failure)" 0 bad
expect_text "with an error naming the device" 'group-999' bad
both_on "a bad claim detaches nothing" e1000

claim u1 "group-$G"
t0=$(now_ms)
run_apart prepare vfio-kubelet-sim prepare --socket "$DRA" --uid u1
t1=$(now_ms)
expect_rc "NodePrepareResources" 0 prepare
expect_no_text "no error" '"error"' prepare
expect_text "the CDI device of the claim" "\"cdiDeviceIds\":\[\"$DRIVER/pci=u1-group-$G\"," prepare
both_on "prepare detached the whole group: both e1000 on vfio-pci" vfio-pci
[ -c /dev/vfio/$G ] && pass "/dev/vfio/$G exists" || fail "no /dev/vfio/$G"
SPEC=$CDI/swift-vfio-u1.json
cp "$SPEC" /out/cdi-spec.json 2>/dev/null
if grep -q "\"/dev/vfio/$G\"" "$SPEC" && grep -q '"/dev/vfio/vfio"' "$SPEC" && grep -q '"cdiVersion" : "0.5.0"' "$SPEC"; then
    pass "the CDI spec names /dev/vfio/vfio and /dev/vfio/$G (CDI 0.5.0)"
else fail "CDI spec: $(head -c 600 "$SPEC" 2>&1)"; fi
grep -q 'PCI_RESOURCE_VFIO_SWIFT-VFIO_IO=0000:01:01.0,0000:01:02.0' "$SPEC" && pass "the spec sets PCI_RESOURCE_… to both functions" || fail "no PCI_RESOURCE in the spec"
# The kubelet names the claim (the simulator: default/claim); the request is the allocation's.
META=$K/plugins/$DRIVER/dra-device-metadata/default_claim/vfio/metadata.json
cp "$META" /out/device-metadata.json 2>/dev/null
expect_text "prepare names the claim's device metadata (KEP-5304)" "\"$DRIVER/metadata=u1_vfio\"" prepare
if grep -q '"resource.kubernetes.io/pciBusID":{"string":"0000:01:01.0"}' "$META" && grep -q 'metadata.resource.k8s.io/v1alpha1' "$META"; then
    pass "the metadata file carries pciBusID, v1beta1 and v1alpha1"
else fail "metadata: $(head -c 600 "$META" 2>&1)"; fi
grep -q '"containerPath" : "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/claim/vfio/vfio.swift-vfio.io-metadata.json"' "$CDI/${DRIVER}_metadata_u1_vfio.json" \
    && pass "a CDI spec mounts it where KubeVirt reads it" || fail "metadata CDI spec: $(head -c 400 "$CDI/${DRIVER}_metadata_u1_vfio.json" 2>&1)"
# A member rebound to its host driver behind the ledger's back: unhealthy, tainted.
echo 0000:01:01.0 > /sys/bus/pci/devices/0000:01:01.0/driver/unbind
echo > /sys/bus/pci/devices/0000:01:01.0/driver_override
echo 0000:01:01.0 > /sys/bus/pci/drivers/e1000/bind
run_apart health-bad vfio-kubelet-sim health --socket "$DRA" --device "group-$G" --state UNHEALTHY --timeout 10
expect_rc "a member on e1000 behind the ledger's back: the health stream says UNHEALTHY" 0 health-bad
slices_within "and the slices taint it (NoSchedule)" present '"value":"BoundToHostDriver"'
cat $SLICES/*.json > /out/slices-tainted.json
vfioctl detach "$G" --state "$S" > /out/detach-repair.txt 2>&1
run_apart health-good vfio-kubelet-sim health --socket "$DRA" --device "group-$G" --state HEALTHY --timeout 10
expect_rc "after vfioctl detach $G: HEALTHY again" 0 health-good
slices_within "and the taint is gone" absent '"value":"BoundToHostDriver"'
run_apart prepare-again vfio-kubelet-sim prepare --socket "$DRA" --uid u1
cmp -s /out/prepare.txt /out/prepare-again.txt && pass "prepare is idempotent (the same answer)" || fail "second prepare: $(head -c 400 /out/prepare-again.txt)"

claim u2 "group-$G"
run_apart taken vfio-kubelet-sim prepare --socket "$DRA" --uid u2
expect_text "another claim for the same group is refused" "prepared for claim u1" taken

# A plugin restart: the prepared claim is still prepared (checkpoint), unprepare still works.
# SIGTERM first: a clean stop, both sockets removed.
kill -TERM $DRA_PID; wait $DRA_PID; rc=$?
[ "$rc" = 0 ] && pass "SIGTERM stops the plugin cleanly (exit 0)" || fail "exit $rc after SIGTERM: $(tail -c 300 /out/dra-plugin.log)"
[ ! -e "$DRA" ] && [ ! -e "$REG" ] && pass "and removes its sockets" || fail "sockets left: $(ls -l $DRA $REG 2>&1)"
start_dra && pass "the DRA plugin came back" || fail "the DRA plugin did not come back"
run_apart prepare-restarted vfio-kubelet-sim prepare --socket "$DRA" --uid u1 --v1beta1
expect_text "after a plugin restart, v1beta1 prepare answers from the checkpoint" "u1-group-$G" prepare-restarted

t2=$(now_ms)
run_apart unprepare vfio-kubelet-sim unprepare --socket "$DRA" --uid u1
t3=$(now_ms)
expect_rc "NodeUnprepareResources" 0 unprepare
expect_no_text "unprepare: no error" '"error"' unprepare
both_on "unprepare gave both back to e1000" e1000
[ ! -e "$SPEC" ] && pass "unprepare removed the CDI spec" || fail "the CDI spec is still there"
[ ! -e "$META" ] && [ ! -e "$CDI/${DRIVER}_metadata_u1_vfio.json" ] && pass "unprepare removed the device metadata and its spec" || fail "metadata left: $(ls $K/plugins/$DRIVER/dra-device-metadata $CDI)"
run_apart unprepare-again vfio-kubelet-sim unprepare --socket "$DRA" --uid u1 --v1beta1
expect_no_text "unprepare again (v1beta1): no error" '"error"' unprepare-again
echo "DRA prepare (bridge group, 2 functions): $((t1 - t0)) ms" >> /out/kubelet-timings
echo "DRA unprepare: $((t3 - t2)) ms" >> /out/kubelet-timings
# Five more rounds for the latency figure.
total=0
for i in 1 2 3 4 5; do
    claim "r$i" "group-$G"
    a=$(now_ms)
    vfio-kubelet-sim prepare --socket "$DRA" --uid "r$i" > /dev/null 2>&1
    vfio-kubelet-sim unprepare --socket "$DRA" --uid "r$i" > /dev/null 2>&1
    b=$(now_ms)
    total=$((total + b - a))
done
echo "DRA prepare+unprepare per claim (mean of 5, incl. two sim process starts): $((total / 5)) ms" >> /out/kubelet-timings
both_on "after five more rounds: both on e1000" e1000
kill $DRA_PID; wait $DRA_PID 2>/dev/null

# --- kill -9 at every step of a prepare: the retry finishes the claim, unprepare gives all back ---
# SWIFT_VFIO_FAULT_AFTER_STEP=N makes the plugin SIGKILL itself right after step N of the
# group's detach; its checkpoint was written before the first step.
n=1
while [ $n -le 8 ]; do
    claim "k$n" "group-$G"
    export SWIFT_VFIO_FAULT_AFTER_STEP=$n
    start_dra "dra-crash-$n" || fail "crash $n: the plugin did not start"
    unset SWIFT_VFIO_FAULT_AFTER_STEP
    timeout 120 vfio-kubelet-sim prepare --socket "$DRA" --uid "k$n" > "/out/crash-$n.txt" 2>&1
    # Killed by its fault, or (past the last step) still serving: never wait on a live plugin.
    i=0; while kill -0 $DRA_PID 2>/dev/null && [ $i -lt 25 ]; do sleep 0.2; i=$((i + 1)); done
    if kill -0 $DRA_PID 2>/dev/null; then
        code=alive; kill $DRA_PID; wait $DRA_PID 2>/dev/null
    else
        wait $DRA_PID 2>/dev/null; code=$?
    fi
    start_dra "dra-after-crash-$n" || fail "crash $n: the plugin did not come back"
    run_apart "retry-$n" timeout 120 vfio-kubelet-sim prepare --socket "$DRA" --uid "k$n"
    if [ "$code" = 137 ]; then
        expect_text "killed after step $n of the detach: the retry prepares the claim" "k$n-group-$G" "retry-$n"
        both_on "killed after step $n: both e1000 on vfio-pci after the retry" vfio-pci
    else
        # Past the last step: the prepare finished before the fault could fire.
        expect_no_text "no step $n: the prepare finished (plugin exit $code)" '"error"' "retry-$n"
    fi
    run_apart "undo-$n" timeout 120 vfio-kubelet-sim unprepare --socket "$DRA" --uid "k$n"
    expect_no_text "killed after step $n: unprepare without error" '"error"' "undo-$n"
    both_on "killed after step $n: unprepare gave both back to e1000" e1000
    kill $DRA_PID; wait $DRA_PID 2>/dev/null
    [ "$code" = 137 ] || break
    n=$((n + 1))
done
[ -z "$(ls $S/kubelet-claims/ 2>/dev/null)" ] && pass "no checkpoint is left after the crashes" || fail "checkpoints left: $(ls $S/kubelet-claims/)"

# --- the plugins publish what the host, not their own namespace, says is free ------------------
IF=$(ls /sys/bus/pci/devices/$NIC/net/ 2>/dev/null | head -n 1)
run_apart slices-idle vfio-kubelet-plugin dra --print-slices --node-name lab --state "$S"
expect_text "the e1000e, down and unaddressed, is published" "\"group-$NG\"" slices-idle
if [ ! -e /proc/net/route ]; then
    skip_check "uplink: this kernel has no IPv4 (the uplink checks run on Debian's 6.1)"
elif [ -n "$IF" ]; then
    # The node's uplink: an address and the default route (documentation addresses; the guest
    # has no network, nothing is sent).
    ip addr add 192.0.2.15/24 dev "$IF" && ip link set "$IF" up && ip route add default via 192.0.2.1 dev "$IF"
    run_apart slices-uplink vfio-kubelet-plugin dra --print-slices --node-name lab --state "$S"
    expect_no_text "the node's uplink is withheld" "\"group-$NG\"" slices-uplink
    # As the shipped DaemonSet runs it: its own network namespace, where no route exists.
    run_apart slices-netns unshare -n vfio-kubelet-plugin dra --print-slices --node-name lab --state "$S"
    expect_rc "print-slices in a network namespace of its own" 0 slices-netns
    expect_no_text "in its own network namespace the plugin still withholds the node's uplink" "\"group-$NG\"" slices-netns
    ip route del default 2>/dev/null; ip addr flush dev "$IF"; ip link set "$IF" down
else
    fail "the e1000e has no network interface in this guest"
fi

# --- a group the ledger gives to a user is never published -------------------------------------
run_apart detach-owned vfioctl detach $NIC --state "$S" --owner 1000:1000 --broker-only
expect_rc "detach the e1000e --owner 1000:1000 --broker-only" 0 detach-owned
run_apart slices-owned vfio-kubelet-plugin dra --print-slices --node-name lab --state "$S"
expect_no_text "a group owned by uid 1000 is not published" "\"group-$NG\"" slices-owned
claim owned "group-$NG"
start_dra dra-owned || fail "the DRA plugin did not start for the owned-group check"
run_apart prepare-owned vfio-kubelet-sim prepare --socket "$DRA" --uid owned
expect_text "a claim for the owned group is refused" "does not publish" prepare-owned
[ "$(drv $NIC)" = vfio-pci ] && pass "the owned group stays with its owner on vfio-pci" || fail "$NIC is on $(drv $NIC)"
kill $DRA_PID; wait $DRA_PID 2>/dev/null
vfioctl attach $NIC --state "$S" > /out/attach-owned.txt 2>&1
[ "$(drv $NIC)" = e1000e ] && pass "attach gave the e1000e back" || fail "after attach $NIC is on $(drv $NIC)"

# --- device plugin ------------------------------------------------------------------------------
vfioctl detach "$G" --state "$S" > /out/dp-detach.txt 2>&1 && pass "detach $G for the device plugin" || fail "detach $G: $(head -c 300 /out/dp-detach.txt)"
mkdir -p $K/device-plugins
vfio-kubelet-sim device-plugin-kubelet --dir $K/device-plugins --allocate "$G" --restarts 1 > /out/dp.txt 2> /out/dp.err &
SIM_PID=$!
sleep 0.5
vfio-kubelet-plugin device-plugin --kubelet-dir $K --poll 0.2 > /out/dp-plugin.log 2>&1 &
DP_PID=$!
wait $SIM_PID; rc=$?
expect_rc "the test kubelet saw the device plugin twice" 0 dp
[ "$(grep -c '"resourceName":"vfio.swift-vfio.io/pci"' /out/dp.txt)" = 2 ] && pass "Register, and again after the kubelet restarted" || fail "registrations: $(grep -c resourceName /out/dp.txt): $(head -c 400 /out/dp.err)"
expect_text "ListAndWatch: the group is Healthy" "{\"ID\":\"$G\",\"health\":\"Healthy\"" dp
expect_text "Allocate: /dev/vfio/$G with mrw" "\"hostPath\":\"/dev/vfio/$G\",\"permissions\":\"mrw\"" dp
expect_text "Allocate: /dev/vfio/vfio" '"hostPath":"/dev/vfio/vfio"' dp
expect_text "Allocate: PCI_RESOURCE_… names both functions" '"PCI_RESOURCE_VFIO_SWIFT-VFIO_IO_PCI":"0000:01:01.0,0000:01:02.0"' dp
kill $DP_PID; wait $DP_PID 2>/dev/null
vfioctl attach "$G" --state "$S" > /out/dp-attach.txt 2>&1
both_on "attach after the device plugin: both on e1000" e1000

# --- a real consumer of the CDI spec: podman 4.3 runs vfio-edu on the claim's device -------------
# The edu device (group of 00:03.0) has no reset method: published only with --allow-no-reset.
# shellcheck source=podman-guest-lib.sh
. /lab/podman-guest-lib.sh
if podman_prepare_guest > /out/podman-prepare.txt 2>&1; then pass "podman 4.3 ready in the guest"; else fail "podman_prepare_guest: $(tail -c 300 /out/podman-prepare.txt)"; fi
EDU=0000:00:03.0
sh /lab/guest/bind.sh --none $EDU
GE=$(group_of $EDU)
DRA_CDI=/var/run/cdi
start_dra dra-plugin-edu --allow-no-reset || fail "the DRA plugin with --allow-no-reset did not come up: $(tail -c 300 /out/dra-plugin-edu.log)"
claim e1 "group-$GE"
run_apart prepare-edu vfio-kubelet-sim prepare --socket "$DRA" --uid e1
expect_no_text "prepare of the edu claim: no error" '"error"' prepare-edu
[ "$(drv $EDU)" = vfio-pci ] && pass "the claim put $EDU on vfio-pci" || fail "$EDU is on $(drv $EDU)"
# The address comes from the spec's PCI_RESOURCE_… variable. Its name keeps KubeVirt's dashes,
# which a shell neither expands nor passes on to its children: read the shell's own environ.
run_apart podman-edu podman_run_cdi "$DRIVER/pci=e1-group-$GE" /bin/busybox sh -c \
    'a=$(tr "\000" "\n" < /proc/$$/environ | sed -n "s/^PCI_RESOURCE_[^=]*=//p" | head -n 1); echo "address from the spec: $a"; exec vfio-edu run "$a" --backend legacy --json'
expect_text "the spec's PCI_RESOURCE_… reached the container" "address from the spec: $EDU" podman-edu
if grep -q '"passed":true' /out/podman-edu.txt; then
    pass "podman 4.3 with --device $DRIVER/pci=e1-group-$GE from the plugin's spec: vfio-edu passes DMA + MSI in the container"
else
    fail "podman with the plugin's spec: $(head -c 600 /out/podman-edu.txt) $(head -c 300 /var/run/cdi/*e1*.json)"
fi
run_apart podman-bare podman_run /bin/busybox sh -c "ls /dev/vfio/$GE"
[ "$rc" != 0 ] && pass "without the device the container has no /dev/vfio/$GE" || fail "the container saw /dev/vfio/$GE without the device"
run_apart unprepare-edu vfio-kubelet-sim unprepare --socket "$DRA" --uid e1
expect_no_text "unprepare of the edu claim: no error" '"error"' unprepare-edu
ls /var/run/cdi/*e1* > /dev/null 2>&1 && fail "the edu claim's spec is still there" || pass "unprepare removed the edu claim's spec"
kill $DRA_PID; wait $DRA_PID 2>/dev/null

# --- iommufd: the container gets /dev/iommu and the cdev, found the KubeVirt way ------------------
# With --interface iommufd the spec adds VEP 266's nodes; the container reads the device's PCI
# address and cdev from the KEP-5304 metadata the second CDI device mounts (as virt-launcher
# does), then vfio-edu runs on the cdev with the iommufd backend. A kernel without VFIO cdevs
# (Debian's 6.1) gets the legacy pair and a warning in the log, never a node that is missing.
start_dra dra-plugin-iommufd --allow-no-reset --interface iommufd \
    || fail "the DRA plugin with --interface iommufd did not come up: $(tail -c 300 /out/dra-plugin-iommufd.log)"
claim e2 "group-$GE"
run_apart prepare-iommufd vfio-kubelet-sim prepare --socket "$DRA" --uid e2
expect_no_text "prepare with --interface iommufd: no error" '"error"' prepare-iommufd
SPEC2=/var/run/cdi/swift-vfio-e2.json
cp "$SPEC2" /out/cdi-spec-iommufd.json 2>/dev/null
CDEV=$(cdev_of $EDU)
if [ -z "$CDEV" ] || [ ! -c "/dev/vfio/devices/$CDEV" ] || [ ! -c /dev/iommu ]; then
    if grep -q "\"/dev/vfio/$GE\"" "$SPEC2" && ! grep -q -e '"/dev/iommu"' -e '/dev/vfio/devices/' "$SPEC2"; then
        pass "no VFIO cdevs in this kernel: the iommufd spec names the legacy pair only"
    else fail "the iommufd spec on a kernel without cdevs: $(head -c 600 "$SPEC2" 2>&1)"; fi
    grep -q "gets the legacy nodes only" /out/dra-plugin-iommufd.log && pass "and the plugin's log says why" \
        || fail "no warning in $(tail -c 400 /out/dra-plugin-iommufd.log)"
else
    missing=""
    for n in /dev/vfio/vfio "/dev/vfio/$GE" /dev/iommu "/dev/vfio/devices/$CDEV"; do grep -q "\"$n\"" "$SPEC2" || missing="$missing $n"; done
    [ -z "$missing" ] && pass "the iommufd spec names /dev/vfio/vfio, /dev/vfio/$GE, /dev/iommu and /dev/vfio/devices/$CDEV" \
        || fail "the iommufd spec lacks$missing: $(head -c 600 "$SPEC2" 2>&1)"
    cat > "$PODMAN_ROOTFS/from-metadata.sh" <<'SH'
# Inside the container: the first document of the metadata stream names the device.
m=/var/run/kubernetes.io/dra-device-attributes/resourceclaims/claim/vfio/vfio.swift-vfio.io-metadata.json
doc=$(head -n 1 "$m")
bdf=$(echo "$doc" | sed -n 's/.*"resource.kubernetes.io\/pciBusID":{"string":"\([^"]*\)".*/\1/p')
cdev=$(echo "$doc" | sed -n 's/.*"vfioDevices":{"strings":\["\([^"]*\)".*/\1/p')
echo "from the metadata: $bdf $cdev"
ls -l /dev/iommu "/dev/vfio/devices/$cdev" >&2
exec vfio-edu run "/dev/vfio/devices/$cdev" --backend iommufd --json
SH
    PODMAN_RUN_OPTS="--device $DRIVER/metadata=e2_vfio" run_apart podman-iommufd \
        podman_run_cdi "$DRIVER/pci=e2-group-$GE" /bin/busybox sh /from-metadata.sh
    expect_text "the container read the address and cdev from the mounted metadata" "from the metadata: $EDU $CDEV" podman-iommufd
    if grep -q '"passed":true' /out/podman-iommufd.txt; then
        pass "podman 4.3 with the iommufd spec (/dev/iommu + $CDEV): vfio-edu --backend iommufd passes DMA + MSI in the container"
    else
        fail "podman with the iommufd spec: $(head -c 600 /out/podman-iommufd.txt) $(tail -c 300 /out/podman-iommufd.err)"
    fi
fi
run_apart unprepare-iommufd vfio-kubelet-sim unprepare --socket "$DRA" --uid e2
expect_no_text "unprepare of the iommufd claim: no error" '"error"' unprepare-iommufd
ls /var/run/cdi/*e2* > /dev/null 2>&1 && fail "the iommufd claim's specs are still there" || pass "unprepare removed the claim's specs"
kill $DRA_PID; wait $DRA_PID 2>/dev/null
finish
