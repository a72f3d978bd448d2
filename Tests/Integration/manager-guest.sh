#!/bin/sh
# Runs inside a lab guest (busybox sh, as root): vfioctl detach/attach/reset against the real
# kernel, judged by what sysfs shows afterwards. Writes one "PASS name" or "FAIL name: why"
# line per check to /out/checks and each command's output under /out. Driven by
# Tests/Integration/manager.sh, which passes the topology name as $1.
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
# expect NAME DEVICE DRIVER OVERRIDE: the kernel shows DEVICE on DRIVER with driver_override OVERRIDE.
expect() {
    d=$(drv "$2"); o=$(ovr "$2")
    if [ "$d" = "$3" ] && [ "$o" = "$4" ]; then pass "$1"; else fail "$1: $2 is on $d with driver_override $o, expected $3 / $4"; fi
}

# Host drivers for the two e1000 behind the PCIe-to-PCI bridge (the lab binds them to
# vfio-pci at boot): e1000.ko on Debian's 6.1, built in on the iommufd kernel.
[ -f /lab/e1000.ko ] && insmod /lab/e1000.ko
sh /lab/guest/bind.sh --host 0000:01:01.0 0000:01:02.0
expect "setup: 01:01.0 on its host driver" 0000:01:01.0 e1000 "(null)"
expect "setup: 01:02.0 on its host driver" 0000:01:02.0 e1000 "(null)"
# edu with no driver at all, so that "none" is what attach must restore.
sh /lab/guest/bind.sh --none 0000:00:03.0
expect "setup: edu without a driver" 0000:00:03.0 none "(null)"

# --- e1000e 00:02.0, alone in group 2 -------------------------------------------------------
run detach-e1000e v detach 00:02.0
expect_rc "detach 00:02.0" 0 detach-e1000e
expect "detach 00:02.0: on vfio-pci" 0000:00:02.0 vfio-pci vfio-pci
[ -c /dev/vfio/2 ] && pass "detach 00:02.0: /dev/vfio/2 exists" || fail "detach 00:02.0: no /dev/vfio/2"
run status-e1000e v status 2
expect_text "status 2 names the original driver" "e1000e" status-e1000e
run explain-detached v explain 2
expect_text "explain of a detached group says so" "detached by swift-vfio" explain-detached
run attach-e1000e v attach 2
expect_rc "attach 2" 0 attach-e1000e
expect "attach 2: back on e1000e, no override" 0000:00:02.0 e1000e "(null)"
ls -d /sys/bus/pci/devices/0000:00:02.0/net/eth* >/dev/null 2>&1 && pass "attach 2: its network interface is back" \
    || fail "attach 2: no network interface under 0000:00:02.0/net"

# --- e1000e pair 00:05.0 (group 5) / 00:05.1 (group 6, vfio-pci) -----------------------------
run detach-mf v detach 5
expect_rc "detach 5" 0 detach-mf
expect "detach 5: 05.0 on vfio-pci" 0000:00:05.0 vfio-pci vfio-pci
expect "detach 5: sibling 05.1 untouched" 0000:00:05.1 vfio-pci vfio-pci
run attach-mf v attach 5
expect "attach 5: 05.0 back on e1000e" 0000:00:05.0 e1000e "(null)"
expect "attach 5: sibling 05.1 untouched" 0000:00:05.1 vfio-pci vfio-pci

# --- the bridge group: both e1000 move, the bridge stays --------------------------------------
bridge_driver=$(drv 0000:00:04.0)
run detach-bridge v detach 01:02.0
expect_rc "detach 01:02.0 (group 4)" 0 detach-bridge
expect "detach group 4: 01:01.0 on vfio-pci" 0000:01:01.0 vfio-pci vfio-pci
expect "detach group 4: 01:02.0 on vfio-pci" 0000:01:02.0 vfio-pci vfio-pci
[ "$(drv 0000:00:04.0)" = "$bridge_driver" ] && pass "detach group 4: bridge 00:04.0 stays on $bridge_driver" \
    || fail "detach group 4: the bridge moved to $(drv 0000:00:04.0)"
expect_text "detach group 4: one bus reset for both functions" "together, by one bus reset" detach-bridge
run attach-bridge v attach 4
expect_rc "attach 4" 0 attach-bridge
expect "attach 4: 01:01.0 back on e1000" 0000:01:01.0 e1000 "(null)"
expect "attach 4: 01:02.0 back on e1000" 0000:01:02.0 e1000 "(null)"

# --- nvme behind the root port --------------------------------------------------------------
run detach-nvme v detach 02:00.0
expect_rc "detach 02:00.0" 0 detach-nvme
expect "detach 02:00.0: on vfio-pci" 0000:02:00.0 vfio-pci vfio-pci
run attach-nvme v attach 02:00.0
expect "attach 02:00.0: back on nvme" 0000:02:00.0 nvme "(null)"

# --- edu: no reset method; vfio-edu drives it after --allow-no-reset ---------------------------
run detach-edu-refused v detach 00:03.0
expect_rc "detach edu without --allow-no-reset is refused" 1 detach-edu-refused
expect_text "the refusal names no-reset" "no-reset" detach-edu-refused
expect "refused detach changed nothing" 0000:00:03.0 none "(null)"
run detach-edu v detach 00:03.0 --allow-no-reset
expect_rc "detach edu --allow-no-reset" 0 detach-edu
expect "detach edu: on vfio-pci" 0000:00:03.0 vfio-pci vfio-pci
for b in $BACKENDS; do
    vfio-edu 0000:00:03.0 --backend "$b" --json > /out/edu-$b.json 2>/out/edu-$b.err
    rc=$?
    if [ "$rc" = 0 ] && grep -q '"passed":true' /out/edu-$b.json; then pass "vfio-edu ($b) on the detached edu: DMA + MSI"
    else fail "vfio-edu ($b) on the detached edu: exit $rc $(head -c 300 /out/edu-$b.json) $(head -c 300 /out/edu-$b.err)"; fi
done

# --- an open group or device cannot be attached ------------------------------------------------
sh -c 'exec 3<>/dev/vfio/3; exec sleep 30' &
holder=$!
sleep 1
run attach-open v attach 3
expect_rc "attach of an open group is refused" 1 attach-open
expect_text "the refusal names the holder's pid" "pid $holder" attach-open
kill $holder; wait $holder 2>/dev/null
cdev=$(cdev_of 0000:00:03.0)
# VFIO device cdevs (/dev/vfio/devices/vfioN) exist from 6.6 on; 6.1 has only the sysfs side.
if [ -n "$cdev" ] && [ -c "/dev/vfio/devices/$cdev" ]; then
    sh -c "exec 3<>/dev/vfio/devices/$cdev; exec sleep 30" &
    holder=$!
    sleep 1
    run attach-open-cdev v attach 3
    expect_rc "attach while the device's cdev is open is refused" 1 attach-open-cdev
    expect_text "the refusal names /dev/vfio/devices/$cdev" "/dev/vfio/devices/$cdev" attach-open-cdev
    kill $holder; wait $holder 2>/dev/null
fi
# A fake holder: an unprivileged user, in a mount namespace of its own, holds a plain file named
# /dev/vfio/3 open. Holders are the kernel's device (st_rdev), not a link's text: no refusal.
if [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo 1)" != 0 ] \
    && [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 0)" -gt 0 ]; then
    # setpriv itself in the background (not the as_user function, whose subshell $! would name).
    /usr/bin/setpriv --reuid 1000 --regid 1000 --clear-groups \
        unshare -Urm sh -c 'mount -t tmpfs none /dev/vfio && : > /dev/vfio/3 && exec sleep 30 < /dev/vfio/3' &
    faker=$!
    i=0; while [ "$(readlink /proc/$faker/fd/0 2>/dev/null)" != /dev/vfio/3 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
    [ "$(readlink /proc/$faker/fd/0 2>/dev/null)" = /dev/vfio/3 ] && pass "the fake holder holds a file named /dev/vfio/3" \
        || fail "the fake holder did not start: fd 0 is $(readlink /proc/$faker/fd/0 2>&1)"
    run status-fake v status 3
    grep -q "pid $faker" /out/status-fake.txt && fail "a plain file named /dev/vfio/3 counted as a holder" \
        || pass "a plain file named /dev/vfio/3 in a private mount namespace is no holder"
    kill $faker 2>/dev/null; wait $faker 2>/dev/null
else
    skip_check "fake holder: unprivileged user namespaces are off in this kernel"
fi
run attach-edu v attach 3
expect_rc "attach edu" 0 attach-edu
expect "attach edu: back to no driver" 0000:00:03.0 none "(null)"

# --- a reset that would hit a device the host uses is refused ---------------------------------
run reset-busy v reset 01:01.0 --method bus
expect_rc "bus reset of 01:01.0 while 01:02.0 is on e1000 is refused" 1 reset-busy
expect_text "the refusal lists 01:02.0" "0000:01:02.0 (on e1000)" reset-busy
run reset-e1000e v reset 00:02.0
expect_rc "pm reset of the e1000e through sysfs" 0 reset-e1000e

# --- an active swap on the nvme namespace ------------------------------------------------------
if grep -q nvme0n1 /proc/partitions && mkswap /dev/nvme0n1 >/dev/null 2>&1 && swapon /dev/nvme0n1 2>/dev/null; then
    run detach-swap v detach 02:00.0
    expect_rc "detach of an nvme whose namespace is active swap is refused" 1 detach-swap
    expect_text "the refusal says swap" "swap" detach-swap
    expect "refused: nvme still on nvme" 0000:02:00.0 nvme "(null)"
    swapoff /dev/nvme0n1
else
    skip_check "swap: this kernel cannot swap on nvme0n1"
fi

# --- two detach at once on one group ------------------------------------------------------------
v detach 2 > /out/race-a.txt 2>&1 &
a=$!
v detach 2 > /out/race-b.txt 2>&1 &
b=$!
wait $a; ra=$?
wait $b; rb=$?
if { [ $ra = 0 ] || [ $ra = 75 ]; } && { [ $rb = 0 ] || [ $rb = 75 ]; } && { [ $ra = 0 ] || [ $rb = 0 ]; }; then
    pass "two detach at once: exits $ra and $rb, one did it"
else fail "two detach at once: exits $ra and $rb: $(cat /out/race-a.txt /out/race-b.txt | head -c 600)"; fi
expect "after the race: 00:02.0 on vfio-pci" 0000:00:02.0 vfio-pci vfio-pci
run race-history v history 2 --json
n=$(grep -o '"result": *"ok"' /out/race-history.txt | wc -l)
[ "$n" -ge 3 ] && pass "the ledger recorded the race consistently ($n ok entries)" || fail "race history: $(head -c 600 /out/race-history.txt)"
v attach 2 > /out/race-attach.txt 2>&1
expect "after the race: attach restores e1000e" 0000:00:02.0 e1000e "(null)"

# --- DPDK's testpmd takes the e1000e that vfioctl detached, then the host gets it back ---------
if command -v dpdk-testpmd >/dev/null; then
    v detach 00:02.0 > /out/dpdk-detach.txt 2>&1
    expect "dpdk: 00:02.0 detached to vfio-pci" 0000:00:02.0 vfio-pci vfio-pci
    # No hugepages in the guest: anonymous memory, IOVA as VA through the type1 container.
    mkdir -p /var/run
    echo | dpdk-testpmd --lcores 0@0,1@0 -n 1 --no-huge -m 128 --iova-mode=va -d /lab/pmds -a 0000:00:02.0 \
        -- --total-num-mbufs=2048 --nb-cores=1 > /out/dpdk-testpmd.txt 2>&1
    rc=$?
    if [ $rc = 0 ] && grep -q "^Port 0: [0-9A-F:]*" /out/dpdk-testpmd.txt && grep -q "Bye" /out/dpdk-testpmd.txt; then
        pass "dpdk-testpmd initialised port 0 (net_e1000_em) through VFIO and exited cleanly"
    else fail "dpdk-testpmd: exit $rc: $(grep -v '^$' /out/dpdk-testpmd.txt | tail -n 8 | tr '\n' '|' | head -c 700)"; fi
    if command -v python3 >/dev/null && [ -f /usr/bin/dpdk-devbind.py ]; then
        # dpdk-devbind --status against vfioctl list, device by device, with 00:02.0 detached.
        python3 -I -S /usr/bin/dpdk-devbind.py --status-dev net > /out/devbind.txt 2>/out/devbind.err
        v list --json | tr -d ' \n' > /out/list-flat.json
        agreed=0 disagreed=""
        for line in $(grep -o '^0000:[0-9a-f:.]* .*drv=[^ ]*' /out/devbind.txt | sed "s/^\(0000:[0-9a-f:.]*\) .*drv=\([^ ]*\).*/\1=\2/"); do
            addr=${line%%=*} drv=${line#*=}
            ours=$(grep -o "\"address\":\"$addr\"[^{}]*\"kind\":\"[a-z]*\",\"driver\":\"[^\"]*\"" /out/list-flat.json | sed 's/.*"driver":"\([^"]*\)"/\1/')
            if [ "$ours" = "$drv" ]; then agreed=$((agreed + 1)); else disagreed="$disagreed $addr:devbind=$drv,vfioctl=${ours:-none}"; fi
        done
        if [ "$agreed" -ge 3 ] && [ -z "$disagreed" ] && grep -q "0000:00:02.0.*drv=vfio-pci" /out/devbind.txt; then
            pass "dpdk-devbind.py --status agrees with vfioctl list on all $agreed bound network devices (00:02.0 on vfio-pci)"
        else fail "dpdk-devbind.py vs vfioctl list: $agreed agree;$disagreed $(head -c 400 /out/devbind.txt) $(head -c 200 /out/devbind.err)"; fi
    else
        fail "dpdk-devbind.py or python3 is not in the guest"
    fi
    run dpdk-attach v attach 2
    expect "dpdk: after attach 00:02.0 is back on e1000e" 0000:00:02.0 e1000e "(null)"
    ls -d /sys/bus/pci/devices/0000:00:02.0/net/eth* >/dev/null 2>&1 && pass "dpdk: after attach the host has its interface again" \
        || fail "dpdk: no network interface after attach"
else
    fail "dpdk-testpmd is not in the guest"
fi

# --- several groups in one command: the e1000e (2), the bridge group (4) and 00:05.0 (5) ------
on_host() { [ "$(drv 0000:00:02.0)$(ovr 0000:00:02.0)$(drv 0000:01:01.0)$(ovr 0000:01:01.0)$(drv 0000:01:02.0)$(ovr 0000:01:02.0)" = "e1000e(null)e1000(null)e1000(null)" ]; }
run batch-detach v detach 2 01:01.0 5 01:02.0
expect_rc "detach 2 01:01.0 5 01:02.0 (three groups, one batch)" 0 batch-detach
for f in 0000:00:02.0 0000:01:01.0 0000:01:02.0 0000:00:05.0; do
    expect "batch detach: $f on vfio-pci" $f vfio-pci vfio-pci
done
expect "batch detach: sibling 05.1 untouched" 0000:00:05.1 vfio-pci vfio-pci
[ "$(grep -c '^detach IOMMU group [245]: done' /out/batch-detach.txt)" = 3 ] \
    && pass "batch detach: one report per group, each group once" || fail "batch detach: $(head -c 400 /out/batch-detach.txt)"
run_apart batch-attach v attach 5 4 2 --json
expect_rc "attach 5 4 2 --json" 0 batch-attach
[ "$(head -c 1 /out/batch-attach.txt)" = "[" ] && [ "$(grep -c '"outcome": "done"' /out/batch-attach.txt)" = 3 ] \
    && pass "batch attach --json: a list of three reports" || fail "batch attach --json: $(head -c 400 /out/batch-attach.txt)"
on_host && pass "batch attach: 02.0 on e1000e, both e1000 on e1000, no override" \
    || fail "batch attach: 02.0 $(drv 0000:00:02.0), 01:01.0 $(drv 0000:01:01.0), 01:02.0 $(drv 0000:01:02.0)"
expect "batch attach: 05.0 back on e1000e" 0000:00:05.0 e1000e "(null)"
run batch-refused v detach 2 00:03.0
expect_rc "detach 2 00:03.0: edu has no reset, so neither group changes" 1 batch-refused
expect_text "batch refusal: says nothing was changed" "nothing was changed" batch-refused
expect "batch refusal: 02.0 still on e1000e" 0000:00:02.0 e1000e "(null)"
# A SIGKILL at step N of a batch interrupts every group that had not finished: group 2 has
# fewer steps than group 4, so past its last step it stays detached, recorded and whole.
steps=$(v detach 4 --dry-run | grep -c '^  [0-9][0-9]*\. ')
for n in $(seq 1 "$steps"); do
    SWIFT_VFIO_FAULT_AFTER_STEP=$n vfioctl detach --state "$S" 2 4 > /out/kill-batch-detach-$n.txt 2>&1
    rc=$?
    [ $rc = 137 ] || fail "batch detach killed after step $n: exit $rc, not SIGKILL"
    run recover-batch-detach-$n v recover
    [ "$(drv 0000:00:02.0)" = vfio-pci ] && v status 2 | grep -q detached && v attach 2 > /dev/null 2>&1
    if on_host; then pass "kill -9 after step $n of a batch detach of groups 2 and 4: recover put every group right"
    else fail "kill -9 after step $n of a batch detach: $(head -c 300 /out/recover-batch-detach-$n.txt); 02.0 $(drv 0000:00:02.0), 01:01.0 $(drv 0000:01:01.0), 01:02.0 $(drv 0000:01:02.0)"; fi
done
for n in $(seq 1 "$steps"); do
    v detach 2 4 > /dev/null 2>&1 || fail "detach 2 4 before the batch attach kill $n"
    SWIFT_VFIO_FAULT_AFTER_STEP=$n vfioctl attach --state "$S" 2 4 > /out/kill-batch-attach-$n.txt 2>&1
    rc=$?
    [ $rc = 137 ] || fail "batch attach killed after step $n: exit $rc, not SIGKILL"
    run recover-batch-attach-$n v recover
    if on_host; then pass "kill -9 after step $n of a batch attach of groups 2 and 4: recovery finished every group"
    else fail "kill -9 after step $n of a batch attach: $(head -c 300 /out/recover-batch-attach-$n.txt); 02.0 $(drv 0000:00:02.0), 01:01.0 $(drv 0000:01:01.0), 01:02.0 $(drv 0000:01:02.0)"; fi
done

# --- kill -9 at every step of detach and attach of the bridge group -----------------------------
steps=$(v detach 4 --dry-run | grep -c '^  [0-9][0-9]*\. ')
echo "bridge group plan: $steps steps" > /out/kill-steps
for n in $(seq 1 "$steps"); do
    SWIFT_VFIO_FAULT_AFTER_STEP=$n vfioctl detach --state "$S" 4 > /out/kill-detach-$n.txt 2>&1
    rc=$?
    [ $rc = 137 ] || fail "detach killed after step $n: exit $rc, not SIGKILL"
    run recover-detach-$n v recover
    if grep -q "rolled back the interrupted detach" /out/recover-detach-$n.txt \
        && [ "$(drv 0000:01:01.0)$(ovr 0000:01:01.0)$(drv 0000:01:02.0)$(ovr 0000:01:02.0)" = "e1000(null)e1000(null)" ]; then
        pass "kill -9 after detach step $n of $steps: recover rolled back, both e1000 on e1000, no override"
    else fail "kill -9 after detach step $n: $(cat /out/recover-detach-$n.txt | head -c 300); 01:01.0 $(drv 0000:01:01.0) $(ovr 0000:01:01.0), 01:02.0 $(drv 0000:01:02.0) $(ovr 0000:01:02.0)"; fi
done
for n in $(seq 1 "$steps"); do
    v detach 4 > /dev/null 2>&1 || fail "detach 4 before the attach kill $n"
    SWIFT_VFIO_FAULT_AFTER_STEP=$n vfioctl attach --state "$S" 4 > /out/kill-attach-$n.txt 2>&1
    rc=$?
    [ $rc = 137 ] || fail "attach killed after step $n: exit $rc, not SIGKILL"
    # Half the time the next command on the group recovers, half the time `recover` does.
    if [ $((n % 2)) = 0 ]; then run recover-attach-$n v attach 4; else run recover-attach-$n v recover; fi
    if grep -q "finished the interrupted attach" /out/recover-attach-$n.txt \
        && [ "$(drv 0000:01:01.0)$(ovr 0000:01:01.0)$(drv 0000:01:02.0)$(ovr 0000:01:02.0)" = "e1000(null)e1000(null)" ]; then
        pass "kill -9 after attach step $n of $steps: recovery finished it, both e1000 on e1000, no override"
    else fail "kill -9 after attach step $n: $(head -c 300 /out/recover-attach-$n.txt); 01:01.0 $(drv 0000:01:01.0) $(ovr 0000:01:01.0), 01:02.0 $(drv 0000:01:02.0) $(ovr 0000:01:02.0)"; fi
done
run final-status v status --json
grep -q '"groups": *\[\]' /out/final-status.txt && pass "the ledger ends with every group on the host" \
    || fail "final status: $(head -c 600 /out/final-status.txt)"
v history > /out/history.txt 2>&1
finish
