#!/bin/sh
# Runs inside a lab guest (busybox sh, as root), driven by Tests/Integration/broker.sh: the
# broker (`vfioctl serve`) owns broker-only groups and hands their descriptors to uid 1000,
# judged by the kernel (node modes, EACCES, driver links, a device register after reset) and by
# real clients: vfio-edu's DMA + MSI checks through BrokerClient, and QEMU 10 realizing the
# edu device from the broker's iommufd descriptors. $1 is the topology.
TOPOLOGY=$1
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
SOCK=/run/swift-vfio/broker.sock
EDU=0000:00:03.0
NIC=0000:00:02.0

nap() { usleep 100000 2>/dev/null || sleep 1; }
# wait_socket PATH: up to 10 s for a listener to create PATH.
wait_socket() { i=0; while [ ! -S "$1" ] && [ $i -lt 100 ]; do nap; i=$((i + 1)); done; [ -S "$1" ]; }
start_broker() {
    rm -f "$SOCK"
    vfioctl serve --state "$S" --socket "$SOCK" > "/out/broker-$1.txt" 2>&1 &
    BROKER=$!
    wait_socket "$SOCK" && pass "broker $1 listens on $SOCK ($(perm "$SOCK"))" || fail "broker $1 did not start: $(tail -c 400 "/out/broker-$1.txt")"
}
# Sets $brc to the broker's exit status (in this shell: only the parent can wait for it).
stop_broker() { kill -TERM "$BROKER"; wait "$BROKER"; brc=$?; }
# The group's lease as `vfioctl status` reports it from the ledger ("" when none).
lease_of() { v status "$1" 2>/dev/null | grep 'leased by the broker'; }
wait_lease() { # GROUP present|gone
    i=0
    while [ $i -lt 200 ]; do
        l=$(lease_of "$1")
        { [ "$2" = present ] && [ -n "$l" ]; } || { [ "$2" = gone ] && [ -z "$l" ]; } && return 0
        nap; i=$((i + 1))
    done
    return 1
}

# --- the edu group, broker-only: the nodes stay root's --------------------------------------------
sh /lab/guest/bind.sh --none $EDU
G=$(group_of $EDU)
run detach-edu v detach $EDU --allow-no-reset --owner 1000:1000 --broker-only
expect_rc "detach $EDU --owner 1000:1000 --broker-only" 0 detach-edu
expect_perm "broker-only group node" "/dev/vfio/$G" "0:0 600"
cdev=$(cdev_of $EDU)
[ -n "$cdev" ] && [ -c "/dev/vfio/devices/$cdev" ] && expect_perm "broker-only cdev" "/dev/vfio/devices/$cdev" "0:0 600"
run direct-1000 as_user 1000 vfio-edu run $EDU --backend legacy --json
if [ "$rc" != 0 ] && grep -q 'ermission denied\|EACCES' /out/direct-1000.txt; then
    pass "uid 1000 cannot open the group itself (the kernel says EACCES)"
else
    fail "uid 1000 opened /dev/vfio/$G directly: rc $rc $(head -c 300 /out/direct-1000.txt)"
fi

start_broker first
for b in $BACKENDS; do
    run edu-broker-$b as_user 1000 vfio-edu run $EDU --broker "$SOCK" --backend $b --json
    if [ "$rc" = 0 ] && grep -q '"passed":true' /out/edu-broker-$b.txt; then
        pass "uid 1000 runs vfio-edu ($b) on descriptors from the broker: DMA + MSI"
    else
        fail "vfio-edu ($b) through the broker: rc $rc $(head -c 600 /out/edu-broker-$b.txt)"
    fi
    wait_lease "$G" gone && pass "its lease ended when vfio-edu exited ($b)" || fail "lease of group $G still there after vfio-edu ($b)"
    run edu-broker-1001-$b as_user 1001 vfio-edu run $EDU --broker "$SOCK" --backend $b --json
    if [ "$rc" != 0 ] && grep -q 'is not yours' /out/edu-broker-1001-$b.txt; then
        pass "uid 1001 is refused by the broker ($b)"
    else
        fail "uid 1001 through the broker: rc $rc $(head -c 400 /out/edu-broker-1001-$b.txt)"
    fi
done
run grant-time as_user 1000 env SWIFT_VFIO_TIMINGS=1 vfioctl open $EDU --socket "$SOCK" --backend legacy --exec -- true
grep -o 'grant [0-9.]* ms' /out/grant-time.txt > /out/grant-ms 2>/dev/null
[ -s /out/grant-ms ] && pass "one real grant: $(cat /out/grant-ms) (connect, open, descriptors received)" || fail "no grant timing: $(head -c 300 /out/grant-time.txt)"
wait_lease "$G" gone || fail "lease after the timed grant"
run history-edu v history "$G"
expect_text "the history has the grant" "granted" history-edu
run refusals-edu v history "$G" --refusals
expect_text "the refusal is counted (not a history row each)" "not-owner" refusals-edu

case " $BACKENDS " in *" iommufd "*)
    # --- QEMU 10 as the unprivileged VMM: only the broker's descriptors -------------------------------
    # iommufd charges pinned guest RAM to the VMM's memlock limit (per process: the broker set
    # IOMMU_OPTION_RLIMIT_MODE); 128 MiB of guest RAM and the BIOS need a little more than 128 MiB.
    ulimit -l $((128 * 1024 + 2048))
    qemu_args="-nodefaults -display none -machine q35 -accel tcg -m 128 -S -monitor stdio"
    printf 'info pci\nquit\n' > /tmp/monitor
    run qemu10-1000 as_user 1000 vfioctl open $EDU --socket "$SOCK" --backend iommufd --exec -- \
        qemu-system-x86_64 $qemu_args -object iommufd,id=iommufd0,fd='{iommufd}' -device vfio-pci,iommufd=iommufd0,fd='{device}' < /tmp/monitor
    if [ "$rc" = 0 ] && grep -q '1234:11e8' /out/qemu10-1000.txt; then
        pass "QEMU $(qemu-system-x86_64 --version | head -n 1 | awk '{print $4}') as uid 1000 realizes the edu device from the broker's descriptors"
    else
        fail "QEMU 10 through the broker: rc $rc $(grep -v '\[K' /out/qemu10-1000.txt | head -c 600)"
    fi
    wait_lease "$G" gone && pass "the lease ended with QEMU" || fail "lease of group $G still there after QEMU"
    run qemu10-1001 as_user 1001 vfioctl open $EDU --socket "$SOCK" --backend iommufd --exec -- \
        qemu-system-x86_64 $qemu_args -object iommufd,id=iommufd0,fd='{iommufd}' -device vfio-pci,iommufd=iommufd0,fd='{device}' < /tmp/monitor
    expect_rc "uid 1001's VMM is refused by the broker" 1 qemu10-1001
    expect_text "the refusal says why" "is not yours" qemu10-1001
    ;;
esac

if [ "$TOPOLOGY" = q35-vtd ]; then
    # --- leases: killing the holder frees the group, and it is reset ---------------------------------
    # The bridge group: both e1000 in one grant, and a reset that is a secondary bus reset, which
    # QEMU's e1000 honours (the e1000e's only method is pm, which QEMU's e1000e ignores).
    E1=0000:01:01.0; E2=0000:01:02.0
    B=$(group_of $E1)
    sh /lab/guest/bind.sh --none $E1 $E2
    run detach-bridge v detach $E1 --owner 1000:1000 --broker-only
    expect_rc "detach the bridge group --owner 1000:1000 --broker-only" 0 detach-bridge
    as_user 1000 vfioctl open "$B" --socket "$SOCK" --backend legacy --exec -- sleep 600 > /out/holder-1.txt 2>&1 &
    H=$!
    wait_lease "$B" present && pass "a held grant is a lease in the ledger: $(lease_of "$B")" || fail "no lease for group $B: $(head -c 300 /out/holder-1.txt)"
    run status-leased v status "$B"
    # A device register a reset clears (e1000 RDBAL, BAR0 + 0x2800), written while the lease
    # holds the device enabled; read back after the lease with memory decoding on again.
    bar0=$(awk 'NR == 1 {print $1}' /sys/bus/pci/devices/$E1/resource)
    rdbal=$(printf '0x%x' $((bar0 + 0x2800)))
    devmem "$rdbal" 32 0x12345000
    before=$(devmem "$rdbal" 32)

    # --- a broker restart keeps the lease -------------------------------------------------------------
    stop_broker
    [ "$brc" = 0 ] && pass "SIGTERM stops the broker cleanly (exit 0)" || fail "broker exit $brc on SIGTERM"
    [ -n "$(lease_of "$B")" ] && pass "the lease outlives the broker (ledger)" || fail "lease gone with the broker"
    start_broker second
    expect_text "the restarted broker takes the leases from the ledger" "leases from the ledger" broker-second
    run second-open as_user 1000 vfioctl open $E2 --socket "$SOCK" --exec -- true
    expect_rc "a grant of another device of the held group is refused" 75 second-open

    kill -9 "$H"
    # shellcheck disable=SC2046 # one argument per pid
    pkill -9 -f 'sleep 600' 2>/dev/null || kill -9 $(pidof sleep) 2>/dev/null
    wait "$H" 2>/dev/null
    if wait_lease "$B" gone; then pass "killing the client ends the lease"; else fail "lease still there after the holder died"; fi
    run history-bridge v history "$B"
    expect_text "the lease's end is in the history" "lease-ended" history-bridge
    expect_text "the group was reset after the lease (history)" "reset after the lease" history-bridge
    printf '\006' | dd of=/sys/bus/pci/devices/$E1/config bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
    after=$(devmem "$rdbal" 32)
    [ "$before" = 0x12345000 ] && [ "$after" = 0x00000000 ] && pass "the kernel reset the device: RDBAL $before -> $after" \
        || fail "RDBAL $before -> $after"

    N=$(group_of $NIC)
    run detach-nic v detach $NIC --owner 1000:1000 --broker-only
    expect_rc "detach $NIC --owner 1000:1000 --broker-only" 0 detach-nic

    # --- vfioctl attach on a leased group reaches the holder as a device request -------------------
    as_user 1000 vfioctl open $NIC --socket "$SOCK" --backend legacy --exec -- sleep 600 > /out/holder-2.txt 2>&1 &
    H=$!
    wait_lease "$N" present || fail "no lease for the attach test"
    run attach-leased v attach $NIC
    expect_rc "attach of a leased, held group is refused without --revoke-after" 1 attach-leased
    # A racer of the same owner reopens the group over and over while the attach takes it back:
    # the group is marked closing under its lock before the holder is asked, so none may win.
    (
        i=0
        while [ $i -lt 40 ] && [ ! -e /tmp/race-stop ]; do
            as_user 1000 vfioctl open $NIC --socket "$SOCK" --backend legacy --exec -- true > /dev/null 2> /tmp/race-err
            echo "$? $(head -c 120 /tmp/race-err | tr '\n' ' ')" >> /out/racer.txt
            i=$((i + 1))
        done
    ) &
    R=$!
    run attach-revoke v attach $NIC --revoke-after 20 --socket "$SOCK"
    expect_rc "attach --revoke-after 20 asks the holder and gives the group back" 0 attach-revoke
    touch /tmp/race-stop; wait $R
    grep -q '^0 ' /out/racer.txt && fail "a reopen slipped in between the revoke and the attach: $(grep '^0 ' /out/racer.txt | head -n 3)" \
        || pass "no reopen won the race with the revoke ($(wc -l < /out/racer.txt) tries, $(grep -c closing /out/racer.txt) refused as closing)"
    wait "$H"; hrc=$?
    [ "$hrc" = 143 ] && pass "the holder's command got SIGTERM (exit 143)" || fail "holder exit $hrc"
    expect_text "the holder was told" "device request" holder-2
    [ "$(drv $NIC)" = e1000e ] && pass "$NIC is back on e1000e" || fail "$NIC is on $(drv $NIC)"

    # --- the kernel's own request (VFIO request interrupt), relayed to the holder -------------------
    run detach-nic-2 v detach $NIC --owner 1000:1000 --broker-only
    as_user 1000 vfioctl open $NIC --socket "$SOCK" --backend legacy --exec -- sleep 600 > /out/holder-3.txt 2>&1 &
    H=$!
    wait_lease "$N" present || fail "no lease for the kernel request test"
    echo $NIC > /sys/bus/pci/drivers/vfio-pci/unbind &
    U=$!
    i=0; while kill -0 $U 2>/dev/null && [ $i -lt 300 ]; do nap; i=$((i + 1)); done
    if ! kill -0 $U 2>/dev/null; then pass "the unbind completed once the holder let go"; else fail "unbind still blocked"; fi
    expect_text "the kernel's device request reached the holder through the broker" "the kernel asks" holder-3
    wait "$H" 2>/dev/null
    wait_lease "$N" gone || fail "lease still there after the kernel's request"
    run attach-after v attach $NIC
    expect_rc "attach puts the group right after an outside unbind" 0 attach-after
    [ "$(drv $NIC)" = e1000e ] && pass "$NIC is on e1000e again" || fail "$NIC is on $(drv $NIC)"
fi

stop_broker
[ "$brc" = 0 ] || fail "broker exit $brc at the end"

# --- a typo must not destroy a file: --socket on a regular file is refused -------------------------
echo precious > /tmp/precious
run serve-file v serve --socket /tmp/precious
expect_rc "serve --socket on a regular file is refused" 64 serve-file
[ "$(cat /tmp/precious)" = precious ] && pass "the file named by --socket is intact" || fail "--socket replaced the file"
expect_text "the broker logs its grants (swift-log)" "granted" broker-first

# --- socket activation: systemd's own launcher hands the broker its listening socket ------------
ACT=/run/swift-vfio/activated.sock
systemd-socket-activate -l "$ACT" vfioctl serve --state "$S" > /out/activated.txt 2>&1 &
A=$!
wait_socket "$ACT" || fail "systemd-socket-activate did not create $ACT: $(head -c 300 /out/activated.txt)"
# What SocketMode=0666 does in deploy/systemd/swift-vfio-broker.socket.
chmod 0666 "$ACT"
run edu-activated as_user 1000 vfio-edu run $EDU --broker "$ACT" --backend legacy --json
if [ "$rc" = 0 ] && grep -q '"passed":true' /out/edu-activated.txt; then
    pass "a socket-activated broker (systemd-socket-activate, LISTEN_FDS) serves vfio-edu"
else
    fail "socket activation: rc $rc $(head -c 300 /out/edu-activated.txt) $(head -c 300 /out/activated.txt)"
fi
kill -TERM $A; wait $A
finish
