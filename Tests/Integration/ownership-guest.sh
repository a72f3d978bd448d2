#!/bin/sh
# Runs inside a lab guest (busybox sh, as root), driven by Tests/Integration/ownership.sh:
# group ownership, reservations, persistence through systemd-udevd, and QEMU as an
# unprivileged VMM, judged by the kernel (node owners and modes, driver links, EACCES).
# $1 is the topology. One "PASS name" / "FAIL name: why" / "SKIP ..." line per check in
# /out/checks, the closing line last.
TOPOLOGY=$1
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
# Hot-unplug and replug the e1000e as the kernel sees it, with udev's current rules.
replug_e1000e() {
    udevadm control --reload
    echo 1 > /sys/bus/pci/devices/0000:00:02.0/remove
    udevadm settle
    echo 1 > /sys/bus/pci/rescan
    udevadm settle
    sleep 1
}

if [ "$TOPOLOGY" = q35-sriov ]; then
    # --- SR-IOV: VFs created detached and owned, the count held while one is owned ---------------
    pf=0000:01:00.0
    run vfs-zero v vfs $pf --count 0
    expect_rc "vfs --count 0 removes the lab's two VFs" 0 vfs-zero
    [ "$(cat /sys/bus/pci/devices/$pf/sriov_numvfs)" = 0 ] && pass "the kernel shows 0 VFs" || fail "sriov_numvfs is $(cat /sys/bus/pci/devices/$pf/sriov_numvfs)"
    run vfs-two v vfs $pf --count 2 --detach --owner 1000:1000
    expect_rc "vfs --count 2 --detach --owner 1000" 0 vfs-two
    groups=""
    for vf in 0000:01:00.1 0000:01:00.2; do
        g=$(group_of $vf 2>/dev/null)
        [ "$(drv $vf)" = vfio-pci ] && pass "VF $vf appeared on vfio-pci (never on nvme)" || fail "VF $vf is on $(drv $vf)"
        expect_perm "VF $vf group $g owned" "/dev/vfio/$g" "1000:1000 660"
        groups="$groups $g"
    done
    set -- $groups
    [ -n "$1" ] && [ -n "$2" ] && [ "$1" != "$2" ] && pass "each VF in its own IOMMU group ($1, $2)" || fail "VF groups: '$groups'"
    run vfs-held v vfs $pf --count 0
    expect_rc "lowering the count while a VF is owned is refused" 1 vfs-held
    expect_text "the refusal names the owner" "is owned by 1000:1000" vfs-held
    [ "$(cat /sys/bus/pci/devices/$pf/sriov_numvfs)" = 2 ] && pass "refused: still 2 VFs" || fail "refused but the count changed"
    run list-vfs v list
    expect_text "list shows the VFs detached with their owner" "detached, owner 1000" list-vfs
    for g in $groups; do v disown "$g" > /dev/null 2>&1 || fail "disown $g"; done
    run vfs-clean v vfs $pf --count 0
    expect_rc "then --count 0 cleans up" 0 vfs-clean
    [ "$(cat /sys/bus/pci/devices/$pf/sriov_numvfs)" = 0 ] && pass "the kernel shows 0 VFs again" || fail "sriov_numvfs is $(cat /sys/bus/pci/devices/$pf/sriov_numvfs)"
    run vfs-status v status --json
    grep -q '"groups": *\[\]' /out/vfs-status.txt && pass "the ledger agrees: nothing detached" || fail "status after cleanup: $(head -c 400 /out/vfs-status.txt)"
    finish
fi

# --- ownership of the edu group (and its cdev on iommufd) ------------------------------------------
sh /lab/guest/bind.sh --none 0000:00:03.0
run detach-owned v detach 00:03.0 --allow-no-reset --owner 1000:1000
expect_rc "detach 00:03.0 --owner 1000:1000" 0 detach-owned
expect_perm "after detach" /dev/vfio/3 "1000:1000 660"
cdev=$(cdev_of 0000:00:03.0)
if [ -n "$cdev" ] && [ -c "/dev/vfio/devices/$cdev" ]; then
    expect_perm "after detach, the cdev" "/dev/vfio/devices/$cdev" "1000:1000 660"
fi
run doctor-owner v doctor
for b in $BACKENDS; do
    if [ "$b" = iommufd ]; then
        # An owner also needs /dev/iommu; doctor says so until the admin grants it.
        expect_text "doctor says uid 1000 cannot open /dev/iommu" "uid 1000 owns groups 3 but cannot open /dev/iommu" doctor-owner
        chgrp 1000 /dev/iommu && chmod 0660 /dev/iommu
    fi
    as_user 1000 vfio-edu 0000:00:03.0 --backend "$b" --json > /out/edu-1000-$b.json 2>/out/edu-1000-$b.err
    rc=$?
    if [ $rc = 0 ] && grep -q '"passed":true' /out/edu-1000-$b.json; then pass "uid 1000 runs vfio-edu ($b) on its group: DMA + MSI"
    else fail "uid 1000 vfio-edu ($b): exit $rc $(head -c 300 /out/edu-1000-$b.json) $(head -c 200 /out/edu-1000-$b.err)"; fi
    as_user 1001 vfio-edu 0000:00:03.0 --backend "$b" --json > /out/edu-1001-$b.json 2>/out/edu-1001-$b.err
    rc=$?
    if [ $rc != 0 ] && grep -q 'EACCES\|Permission denied' /out/edu-1001-$b.json /out/edu-1001-$b.err; then
        pass "uid 1001 is refused by the kernel ($b): EACCES"
    else fail "uid 1001 vfio-edu ($b): exit $rc $(head -c 300 /out/edu-1001-$b.json)"; fi
done
run doctor-granted v doctor
expect_text "doctor: the owner can open what it needs" "uid 1000 (groups 3) can open" doctor-granted

# --- an attach/detach cycle: giving the group back to the host ends the owner's claim ------------
v attach 3 > /out/cycle-attach.txt 2>&1
[ -e /dev/vfio/3 ] && fail "after attach /dev/vfio/3 still exists" || pass "after attach the kernel removed /dev/vfio/3"
grep -q "uid 1000 no longer owns IOMMU group 3" /out/cycle-attach.txt && pass "attach says the owner's claim ended" \
    || fail "attach did not end the claim: $(head -c 400 /out/cycle-attach.txt)"
run cycle-detach v detach 3 --allow-no-reset
expect_perm "detach again without --owner: root's, not the old owner's" /dev/vfio/3 "0:0 600"
run cycle-own v own 3 --owner 1000:1000
expect_perm "own gives it to uid 1000 again" /dev/vfio/3 "1000:1000 660"

# --- QEMU, a VMM nobody here wrote, as uid 1000 and as uid 1001 ----------------------------------
if command -v qemu-system-x86_64 >/dev/null; then
    qemu() {
        printf 'info pci\nquit\n' | as_user "$1" qemu-system-x86_64 -M q35 -accel tcg -m 64 -nodefaults -display none -S \
            -bios /lab/bios-256k.bin -monitor stdio -device vfio-pci,host=0000:00:03.0,rombar=0 2>&1
    }
    # Root raises only the memlock limit, to what `doctor --vm` says the VMM needs: it pins its
    # 64 MiB of RAM. Half of the RAM is not enough (type1 pins it all at realize).
    run doctor-vm v doctor --vm 64M --json
    limit=$(sed -n 's/.*"ulimit" *: *"ulimit -l \([0-9]*\)".*/\1/p' /out/doctor-vm.txt)
    (ulimit -l 32768; qemu 1000) > /out/qemu-1000-low.txt; rc=$?
    if [ $rc != 0 ] && grep -q "Cannot allocate memory" /out/qemu-1000-low.txt; then
        pass "QEMU as uid 1000 with a 32 MiB memlock limit cannot pin its 64 MiB: $(grep -o 'Region pc.ram: vfio_dma_map([^)]*) = -12 (Cannot allocate memory)' /out/qemu-1000-low.txt | head -n 1)"
    else fail "QEMU as uid 1000 with 32 MiB of memlock: exit $rc: $(tail -c 400 /out/qemu-1000-low.txt)"; fi
    if [ -n "$limit" ] && ulimit -l "$limit"; then
        pass "doctor --vm 64M: ulimit -l $limit (KiB) set for the VMM"
    else fail "doctor --vm 64M printed no ulimit line: $(head -c 300 /out/doctor-vm.txt)"; ulimit -l unlimited; fi
    qemu 1000 > /out/qemu-1000.txt; rc=$?
    if [ $rc = 0 ] && grep -qi "1234:11e8\|Class 00ff" /out/qemu-1000.txt; then
        pass "QEMU as uid 1000 realized vfio-pci host=00:03.0 with doctor's memlock limit (info pci lists 1234:11e8)"
    else fail "QEMU as uid 1000: exit $rc: $(tail -c 500 /out/qemu-1000.txt)"; fi
    qemu 1001 > /out/qemu-1001.txt; rc=$?
    if [ $rc != 0 ] && grep -q "Permission denied" /out/qemu-1001.txt; then
        pass "QEMU as uid 1001 is refused by the kernel: $(grep -o '[^:]*/dev/vfio/3[^,]*Permission denied' /out/qemu-1001.txt | head -n 1)"
    else fail "QEMU as uid 1001: exit $rc: $(tail -c 500 /out/qemu-1001.txt)"; fi
else
    fail "qemu-system-x86_64 is not in the guest"
fi

# --- a reservation survives attach without --release ----------------------------------------------
run reserve v reserve 3 --for vm1
expect_rc "reserve 3 --for vm1" 0 reserve
run attach-reserved v attach 3
expect_rc "attach of a reserved group is refused" 1 attach-reserved
[ "$(drv 0000:00:03.0)" = vfio-pci ] && pass "the reserved group stayed on vfio-pci" || fail "reserved group moved to $(drv 0000:00:03.0)"
run list-reserved v list
expect_text "list says reserved for vm1 (owner 1000)" "reserved for vm1 (owner 1000)" list-reserved
run explain-reserved v explain 3
expect_text "explain: not assignable for anyone but its owner" "NOT ASSIGNABLE" explain-reserved
run owners v owners
expect_text "owners lists it" "vm1 since" owners
run attach-release v attach 3 --release
expect_rc "attach --release" 0 attach-release
[ "$(drv 0000:00:03.0)" = none ] && pass "released: edu back to no driver" || fail "after --release edu is on $(drv 0000:00:03.0)"

# --- persistence through systemd-udevd: remove and rescan -----------------------------------------
if [ -x /lib/systemd/systemd-udevd ]; then
    mkdir -p /etc/udev/rules.d /run/udev
    /lib/systemd/systemd-udevd --daemon > /out/udevd.txt 2>&1
    udevadm settle
    run detach-persist v detach 00:02.0 --owner 1000:1000
    run persist v persist 2
    expect_rc "persist 2" 0 persist
    cp /etc/udev/rules.d/70-swift-vfio.rules /out/ 2>/dev/null
    replug_e1000e
    [ "$(drv 0000:00:02.0)" = vfio-pci ] && pass "persisted e1000e: after remove + rescan it is on vfio-pci" \
        || fail "persisted e1000e after rescan is on $(drv 0000:00:02.0)"
    expect_perm "persisted: after rescan udev gave the node its owner" /dev/vfio/2 "1000:1000 660"
    # Disowned: the rules are regenerated, so the next hot-plug gives the node to nobody.
    run disown-persisted v disown 2
    expect_rc "disown 2" 0 disown-persisted
    grep -q "chown 1000" /etc/udev/rules.d/70-swift-vfio.rules && fail "the rules still name uid 1000 after disown" \
        || pass "disown regenerated the rules: uid 1000 is gone from them"
    replug_e1000e
    [ "$(drv 0000:00:02.0)" = vfio-pci ] && pass "still persisted after disown: on vfio-pci after remove + rescan" \
        || fail "after disown + rescan the e1000e is on $(drv 0000:00:02.0)"
    expect_perm "after disown + rescan the node is root's, not the old owner's" /dev/vfio/2 "0:0 600"
    run reconcile v reconcile
    expect_rc "reconcile finds the ledger and sysfs agreeing" 0 reconcile
    run unpersist v persist 2 --remove
    expect_rc "persist --remove 2" 0 unpersist
    [ -e /etc/udev/rules.d/70-swift-vfio.rules ] && fail "the rules file is still there" || pass "the rules file is gone"
    replug_e1000e
    [ "$(drv 0000:00:02.0)" = e1000e ] && pass "after persist --remove, remove + rescan brings e1000e back" \
        || fail "after persist --remove the e1000e is on $(drv 0000:00:02.0)"
    v attach 2 > /out/attach-after-persist.txt 2>&1
    [ "$(drv 0000:00:02.0)" = e1000e ] && [ "$(ovr 0000:00:02.0)" = "(null)" ] \
        && pass "attach leaves the e1000e on e1000e without an override" || fail "after attach: $(drv 0000:00:02.0) $(cat /out/attach-after-persist.txt | head -c 300)"
else
    fail "systemd-udevd is not in the guest"
fi
finish
