#!/bin/sh
# Runs inside a q35-vtd guest (busybox sh, as root), driven by Tests/Integration/libvirt.sh:
# what Debian's libvirtd 9.0 does on its own (no hook) with the two e1000 behind the
# PCIe-to-PCI bridge, which share one IOMMU group: (b) managed='no' on the host driver,
# (c) managed='yes' naming one of the two, (d) managed='no' and (e) managed='yes' with both
# bound to vfio-pci by hand, (f) managed='yes' with both on e1000, (g) the same after a
# managed='no' domain in the same libvirtd. Judged by virsh's exit status and messages, QEMU's
# qtree, the owner of /dev/vfio/N, the driver links and driver_override sysfs shows (polled
# while virsh runs) and libvirt's PCI debug lines.
# One "PASS name" / "FAIL name: why" line per check in /out/checks, the closing line last;
# every virsh call's output in /out/NAME.out and NAME.err, durations in /out/libvirt-timings,
# where each domain left the functions in /out/libvirt-findings.
A=0000:01:01.0
B=0000:01:02.0
QEMU_UID=64055
QEMU_GID=64055
# What libvirt's PCI code decides (bind to the stub or not, unbind from it or not).
LIBVIRT_LOG_FILTERS="1:util.pci 1:hostdev"
TIMINGS=/out/libvirt-timings
# shellcheck source=../../lab/guest/lib.sh
. /lab/guest/lib.sh
: > "$TIMINGS"
# shellcheck source=libvirt-guest-lib.sh
. /lab/libvirt-guest-lib.sh
where() { echo "$1 on $(drv "$1"), driver_override $(ovr "$1")"; }
both() { echo "$(where $A); $(where $B)"; }
# expect_at NAME DRIVER OVERRIDE: both functions on DRIVER with driver_override OVERRIDE.
expect_at() {
    if [ "$(drv $A) $(ovr $A) $(drv $B) $(ovr $B)" = "$2 $3 $2 $3" ]; then pass "$1: $(both)"
    else fail "$1: $(both), expected $2 / $3"; fi
}
# to_vfio / to_host: what a manager does, per function (driver_override + drivers_probe).
to_vfio() { sh /lab/guest/bind.sh vfio-pci $A $B; }
to_host() { sh /lab/guest/bind.sh --host $A $B; }
# poll FILE: records "driver/override driver/override" of both functions whenever it changes,
# until /tmp/poll.stop appears.
poll() {
    rm -f /tmp/poll.stop
    _last=""
    while [ ! -e /tmp/poll.stop ]; do
        _s="$(drv $A)/$(ovr $A) $(drv $B)/$(ovr $B)"
        [ "$_s" = "$_last" ] || echo "$_s" >> "$1"
        _last=$_s
        sleep 0.05
    done
}
# observe NAME CMD...: runs CMD while poll records the functions' states in /out/NAME.states;
# libvirt's PCI and hostdev debug lines of that time go to /out/NAME.pci.log.
observe() {
    _w=$1
    shift
    _from=$(($(wc -l < /out/libvirtd.log) + 1))
    poll "/out/$_w.states" &
    _poller=$!
    "$@"
    touch /tmp/poll.stop
    wait "$_poller"
    tail -n "+$_from" /out/libvirtd.log | grep 'virPCI\|virHostdev' > "/out/$_w.pci.log"
}
states() { tr '\n' '>' < "/out/$1.states"; }
# said NAME PATTERN: how often libvirt's debug lines of NAME match PATTERN.
said() { grep -c -- "$2" "/out/$1.pci.log"; }
# create_and_inspect NAME MANAGED WHAT AFTER: a domain with both functions, paused; the qtree,
# the group node's owner while it runs and after virsh destroy (expected: AFTER, as perm prints
# it). WHAT says where the functions were before.
create_and_inspect() {
    _d=$1 _m="managed='$2', $3"
    libvirt_domain_xml "$_d" "$2" $A $B > "/out/$_d.xml"
    echo "before: $(both); /dev/vfio/$group $(perm "/dev/vfio/$group")" > "/out/$_d.where"
    timed "create-$_d" virsh create --paused "/out/$_d.xml"
    if [ "$rc" != 0 ]; then fail "$_m: virsh create --paused: $(why "create-$_d")"; return; fi
    pass "$_m: virsh create --paused succeeds ($secs)"
    virsh qemu-monitor-command --hmp "$_d" 'info qtree' > "/out/$_d.qtree" 2>&1
    if grep -q "host = \"$A\"" "/out/$_d.qtree" && grep -q "host = \"$B\"" "/out/$_d.qtree"; then
        pass "$_m: info qtree shows vfio-pci with host = \"$A\" and \"$B\""
    else fail "$_m: no vfio-pci host = $A / $B in info qtree: $(grep -A3 vfio-pci "/out/$_d.qtree" | head -c 400)"; fi
    echo "running: $(both)" >> "/out/$_d.where"
    # What libvirt will undo at destroy (<origstates>) is in the status XML only.
    cp "/run/libvirt/qemu/$_d.xml" "/out/$_d.status.xml" 2>/dev/null
    ls -ln /dev/vfio > "/out/$_d.vfio-running"
    expect_perm "$_m, running: libvirt chowned the group node to libvirt-qemu" "/dev/vfio/$group" "$QEMU_UID:$QEMU_GID 600"
    timed "destroy-$_d" virsh destroy "$_d"
    [ "$rc" = 0 ] && pass "$_m: virsh destroy ($secs)" || fail "$_m: virsh destroy: $(why "destroy-$_d")"
    ls -ln /dev/vfio > "/out/$_d.vfio-destroyed" 2>&1
    echo "destroyed: $(both)" >> "/out/$_d.where"
    if [ "$4" = absent ]; then
        expect_perm "$_m, after destroy: the group node is gone (no member on vfio-pci)" "/dev/vfio/$group" absent
    else expect_perm "$_m, after destroy: the group node is root's again" "/dev/vfio/$group" "$4"; fi
}
# origstates NAME: libvirt's <origstates> flags for the functions in the status XML, or none.
origstates() {
    _o=$(sed -n '/<origstates>/,/<\/origstates>/p' "/out/$1.status.xml" 2>/dev/null | tr -d ' \n')
    echo "${_o:-none}"
}

# --- setup: both e1000 on their host driver (the lab binds them to vfio-pci at boot) ----------
insmod /lab/e1000.ko
to_host
expect_at "setup: both e1000 on their host driver" e1000 "(null)"
group=$(group_of $A)
members=$(ls "/sys/kernel/iommu_groups/$group/devices" | tr '\n' ' ')
echo "group $group: $members" > /out/group.txt
if [ "$(group_of $B)" = "$group" ]; then
    pass "setup: $A and $B share IOMMU group $group ($members)"
else fail "setup: $A is in group $group ($members), $B is not"; fi

# --- a: libvirtd comes up ---------------------------------------------------------------------
timed prepare libvirt_prepare_guest
if [ "$rc" != 0 ]; then
    fail "libvirtd comes up: $(why prepare) $(tail -c 600 /out/libvirtd.log)"
    finish
fi
echo "libvirtd-answers $LIBVIRT_START_TIME" >> /out/libvirt-timings
pass "libvirtd comes up: virsh version answers after $LIBVIRT_START_TIME ($(grep -i 'running hypervisor\|using library' /out/libvirt-version.txt | tr -s ' ' | tr '\n' ' '))"

# --- b: managed='no' while the function is on its host driver ---------------------------------
libvirt_domain_xml nohook-unmanaged no $A > /out/nohook-unmanaged.xml
timed nohook-unmanaged virsh create --paused /out/nohook-unmanaged.xml
if [ "$rc" != 0 ] && grep -q "Unmanaged PCI device $A must be manually detached from the host" /out/nohook-unmanaged.err; then
    pass "managed='no', $A on e1000: virsh create fails ($secs): \"$(grep -o 'error: [^:]*: Unmanaged.*' /out/nohook-unmanaged.err)\""
else fail "managed='no', $A on e1000: $(why nohook-unmanaged)"; fi
expect_at "managed='no' refused: libvirt left both on e1000" e1000 "(null)"

# --- c: managed='yes' naming one function of a two-function group -------------------------------
libvirt_domain_xml nohook-managed yes $A > /out/nohook-managed.xml
observe nohook-managed timed nohook-managed virsh create --paused /out/nohook-managed.xml
if [ "$rc" != 0 ] && grep -q "group $group is not viable" /out/nohook-managed.err; then
    pass "managed='yes' naming $A only: QEMU fails ($secs): \"$(grep -o "vfio $A: group $group is not viable" /out/nohook-managed.err) $(grep -o '^Please ensure.*' /out/nohook-managed.err)\""
else fail "managed='yes' naming $A only: $(why nohook-managed)"; fi
# Seen while virsh ran: the function libvirt moved, and that the sibling never moved.
if grep -q "^vfio-pci/vfio-pci e1000/(null)$" /out/nohook-managed.states && ! grep -q " vfio-pci" /out/nohook-managed.states; then
    pass "managed='yes' naming $A only: libvirt bound $A to vfio-pci (driver_override vfio-pci), $B stayed on e1000 ($(states nohook-managed))"
else fail "managed='yes' naming $A only: states seen: $(states nohook-managed)"; fi
both > /out/nohook-managed.after
expect_at "managed='yes' failed: libvirt gave $A back" e1000 "(null)"

# --- d: both on vfio-pci by hand, managed='no' --------------------------------------------------
to_vfio
expect_at "d: both bound to vfio-pci by hand" vfio-pci vfio-pci
create_and_inspect unmanaged no "both on vfio-pci" "0:0 600"
expect_at "managed='no': after destroy libvirt left both on vfio-pci" vfio-pci vfio-pci
to_host
expect_at "d: both given back to e1000 by hand" e1000 "(null)"

# libvirtd keeps the functions of a destroyed managed='no' domain in its in-memory list of
# detached devices, marked unmanaged ("Not reattaching unmanaged PCI device" at destroy), and a
# later managed='yes' domain takes that entry and its flags: it binds functions on e1000 to
# vfio-pci but does not give them back (g shows it). A fresh libvirtd, so that e and f show
# managed='yes' on its own.
libvirt_stop_guest
timed restart libvirt_prepare_guest
[ "$rc" = 0 ] && pass "libvirtd restarted ($LIBVIRT_START_TIME)" || fail "libvirtd restart: $(why restart)"

# --- e: both on vfio-pci by hand, managed='yes' -------------------------------------------------
to_vfio
expect_at "e: both bound to vfio-pci by hand" vfio-pci vfio-pci
observe managed create_and_inspect managed yes "both on vfio-pci beforehand" "0:0 600"
both > /out/managed.after
echo "managed='yes', both on vfio-pci (driver_override vfio-pci) beforehand: after destroy $(both); states while virsh ran: $(states managed); origstates: $(origstates managed)" >> /out/libvirt-findings
# libvirt leaves a function it found on the stub driver there (unbind_from_stub stays false)
# and does not clear a driver_override it did not write.
expect_at "managed='yes', both on vfio-pci beforehand: after destroy libvirt left both there" vfio-pci vfio-pci
if [ "$(said managed "Device \($A\|$B\) is already bound to vfio-pci")" = 2 ] \
    && [ "$(said managed "Unbind from stub skipped for PCI device \($A\|$B\)")" = 2 ]; then
    pass "managed='yes', both on vfio-pci beforehand: libvirt says \"Device $A is already bound to vfio-pci\" at create and \"Unbind from stub skipped for PCI device $A\" at destroy (both functions; status XML origstates: $(origstates managed))"
else fail "managed='yes', both on vfio-pci beforehand: libvirt's PCI code said: $(grep -o 'Device [0-9a-f:.]* is already bound.*\|Unbind from stub skipped.*\|Removing PCI device.*\|Not reattaching.*' /out/managed.pci.log | tr '\n' ';')"; fi
to_host
expect_at "e: both given back to e1000 by hand" e1000 "(null)"

# --- f: both on e1000, managed='yes': libvirt moves both and gives both back ---------------------
observe managed-host create_and_inspect managed-host yes "both on e1000 beforehand" absent
both > /out/managed-host.after
echo "managed='yes', both on e1000 beforehand: after destroy $(both); states while virsh ran: $(states managed-host); origstates: $(origstates managed-host)" >> /out/libvirt-findings
expect_at "managed='yes', both on e1000 beforehand: after destroy libvirt gave both back" e1000 "(null)"
if grep -q "^vfio-pci/vfio-pci vfio-pci/vfio-pci$" /out/managed-host.states; then
    pass "managed='yes', both on e1000 beforehand: libvirt bound both to vfio-pci with driver_override ($(states managed-host))"
else fail "managed='yes', both on e1000 beforehand: states seen: $(states managed-host)"; fi
to_host

# --- g: the same libvirtd after a managed='no' domain: managed='yes' with both on e1000 ---------
to_vfio
create_and_inspect unmanaged-again no "both on vfio-pci, again" "0:0 600"
to_host
expect_at "g: both given back to e1000 by hand" e1000 "(null)"
observe stale create_and_inspect stale yes "both on e1000, after a managed='no' domain" "0:0 600"
both > /out/stale.after
echo "managed='yes', both on e1000 beforehand, same libvirtd after a managed='no' domain: after destroy $(both); states while virsh ran: $(states stale); origstates: $(origstates stale); libvirt: $(grep -o 'Not reattaching.*\|Reattaching managed.*' /out/stale.pci.log | tr '\n' ';')" >> /out/libvirt-findings
# libvirt bound both itself, but its stale unmanaged entries decide at destroy.
expect_at "managed='yes' after a managed='no' domain: after destroy libvirt left both on vfio-pci" vfio-pci vfio-pci
if grep -q "^vfio-pci/vfio-pci vfio-pci/vfio-pci$" /out/stale.states && grep -q "^e1000/(null) e1000/(null)$" /out/stale.states \
    && [ "$(said stale "Not reattaching unmanaged PCI device \($A\|$B\)")" = 2 ]; then
    pass "managed='yes' after a managed='no' domain: libvirt bound both to vfio-pci, and at destroy \"Not reattaching unmanaged PCI device $A\" (both; status XML origstates: $(origstates stale))"
else fail "managed='yes' after a managed='no' domain: states $(states stale); libvirt: $(grep -o 'Not reattaching.*\|Reattaching managed.*' /out/stale.pci.log | tr '\n' ';')"; fi
to_host
expect_at "g: both given back to e1000 by hand at the end" e1000 "(null)"

# === With swift-vfio's hook =====================================================================
# `vfioctl libvirt-hook --install` puts /etc/libvirt/hooks/qemu.d/swift-vfio in place; libvirtd
# finds hooks when it starts. The same domains now start with only one function named, and
# the hook gives both back when they stop.
BRIDGE=0000:00:04.0
bridge_before=$(drv $BRIDGE)
run install v libvirt-hook --install
expect_rc "libvirt-hook --install" 0 install
expect_text "the hook says libvirtd must be restarted" "restart libvirtd" install
if [ -x /etc/libvirt/hooks/qemu.d/swift-vfio ] && grep -q "exec /usr/bin/vfioctl libvirt-hook --state $S -- \"\$@\"" /etc/libvirt/hooks/qemu.d/swift-vfio; then
    pass "the hook script execs the installed vfioctl with the state directory: $(grep '^exec' /etc/libvirt/hooks/qemu.d/swift-vfio)"
else fail "the hook script: $(cat /etc/libvirt/hooks/qemu.d/swift-vfio 2>&1 | tail -n 2)"; fi
cp /etc/libvirt/hooks/qemu.d/swift-vfio /out/hook-script.txt 2>/dev/null
libvirt_stop_guest
timed restart-hooked libvirt_prepare_guest
[ "$rc" = 0 ] || fail "libvirtd restart with the hook: $(why restart-hooked)"
to_host
expect_at "hook: both e1000 on their host driver" e1000 "(null)"

# hooked NAME MANAGED: a domain naming only $A starts with the hook, both functions on
# vfio-pci, the bridge untouched, QEMU has $A, /dev/vfio/$group is libvirt-qemu's and the
# ledger says reserved for NAME and owned by it; destroy gives both back to e1000.
hooked() {
    _d=$1 _m="hook, managed='$2', $A named"
    libvirt_domain_xml "$_d" "$2" $A > "/out/$_d.xml"
    timed "create-$_d" virsh create --paused "/out/$_d.xml"
    if [ "$rc" != 0 ]; then fail "$_m: virsh create --paused: $(why "create-$_d")"; return; fi
    pass "$_m: virsh create --paused succeeds ($secs)"
    expect_at "$_m, running: the hook moved both functions of group $group" vfio-pci vfio-pci
    if [ "$(drv $BRIDGE)" = "$bridge_before" ]; then pass "$_m, running: the bridge $BRIDGE stayed on $bridge_before"
    else fail "$_m, running: the bridge $BRIDGE is on $(drv $BRIDGE), was $bridge_before"; fi
    virsh qemu-monitor-command --hmp "$_d" 'info qtree' > "/out/$_d.qtree" 2>&1
    grep -q "host = \"$A\"" "/out/$_d.qtree" && pass "$_m, running: info qtree shows vfio-pci host = \"$A\"" \
        || fail "$_m, running: no host = $A in info qtree: $(grep -A3 vfio-pci "/out/$_d.qtree" | head -c 300)"
    expect_perm "$_m, running: the group node is libvirt-qemu's (the hook's owner and libvirt's label agree)" "/dev/vfio/$group" "$QEMU_UID:$QEMU_GID 600"
    run "owners-$_d" v owners
    expect_text "$_m, running: vfioctl owners says group $group is reserved for $_d and owned by libvirt-qemu" \
        "^$group  *detached  *$QEMU_UID:$QEMU_GID mode 0600 .* $_d since" "owners-$_d"
    timed "destroy-$_d" virsh destroy "$_d"
    [ "$rc" = 0 ] && pass "$_m: virsh destroy ($secs)" || fail "$_m: virsh destroy: $(why "destroy-$_d")"
    expect_at "$_m, destroyed: the hook gave both back, no driver_override left" e1000 "(null)"
    run "status-$_d" v status $group
    expect_text "$_m, destroyed: the ledger has group $group back with the host" "host" "status-$_d"
    expect_perm "$_m, destroyed: no group node is left" "/dev/vfio/$group" absent
}
hooked hooked no
hooked hooked-managed yes

# libvirtd restarted while the domain runs: the hook's reconnect changes nothing, and the
# destroy by the new libvirtd gives the group back.
libvirt_domain_xml survivor no $A > /out/survivor.xml
timed create-survivor virsh create --paused /out/survivor.xml
[ "$rc" = 0 ] || fail "survivor: virsh create --paused: $(why create-survivor)"
run reconcile-alive v reconcile
expect_text "while libvirtd runs the domain, reconcile leaves group $group alone" "^IOMMU group $group: ok" reconcile-alive
libvirt_stop_guest
timed restart-survivor libvirt_prepare_guest
virsh list > /out/survivor-list.txt 2>&1
if grep -q "survivor *paused" /out/survivor-list.txt; then pass "a restarted libvirtd reconnects to the running domain (hook: reconnect begin)"
else fail "after the restart: $(cat /out/survivor-list.txt)"; fi
expect_at "after libvirtd's restart both are still on vfio-pci" vfio-pci vfio-pci
timed destroy-survivor virsh destroy survivor
expect_at "the restarted libvirtd's destroy gives both back" e1000 "(null)"

# libvirtd killed with its QEMU: no release ever comes; reconcile puts it right.
libvirt_domain_xml crashy no $A > /out/crashy.xml
timed create-crashy virsh create --paused /out/crashy.xml
[ "$rc" = 0 ] || fail "crashy: virsh create --paused: $(why create-crashy)"
qemu_pid=$(cat /run/libvirt/qemu/crashy.pid 2>/dev/null)
kill -9 "$LIBVIRTD_PID" "$qemu_pid"
sleep 1
LIBVIRTD_PID=""
expect_at "libvirtd and QEMU killed (kill -9): the group stays detached" vfio-pci vfio-pci
run reconcile-dead v reconcile
expect_text "reconcile: the group of a domain whose libvirtd is gone goes back" "^IOMMU group $group: ended" reconcile-dead
expect_text "reconcile says why" "reserved for crashy while pid [0-9]* ran it, and that process is gone" reconcile-dead
expect_at "after reconcile both are on e1000" e1000 "(null)"
timed restart-crashy libvirt_prepare_guest
virsh list --all > /out/crashy-list.txt 2>&1
if ! grep -q crashy /out/crashy-list.txt; then pass "a restarted libvirtd forgets the dead domain (its release hook finds nothing to give back)"
else fail "after the restart: $(cat /out/crashy-list.txt)"; fi
expect_at "and both stay on e1000" e1000 "(null)"

# A domain marked to keep its groups: stopped, they stay detached and reserved for it, the
# node root's; another domain cannot have them; attach --release ends it.
libvirt_domain_xml keeper no $A | sed "s|</name>|</name><metadata><vfio:groups xmlns:vfio='https://swift-vfio.dev/xmlns/libvirt/1' keep='reserved'/></metadata>|" > /out/keeper.xml
timed create-keeper virsh create --paused /out/keeper.xml
[ "$rc" = 0 ] || fail "keeper: virsh create --paused: $(why create-keeper)"
timed destroy-keeper virsh destroy keeper
expect_at "keep='reserved': after destroy both stay on vfio-pci" vfio-pci vfio-pci
expect_perm "keep='reserved': the group node is root's again" "/dev/vfio/$group" "0:0 600"
run owners-keeper v owners
expect_text "keep='reserved': owners says reserved for keeper, no owner" "^$group  *detached  *-  .*keeper since" owners-keeper
libvirt_domain_xml intruder no $B > /out/intruder.xml
timed create-intruder virsh create --paused /out/intruder.xml
if [ "$rc" != 0 ] && grep -q "reserved for keeper" /out/create-intruder.err; then
    pass "another domain naming $B is refused: \"$(grep -o 'IOMMU group [0-9]* is reserved for keeper' /out/create-intruder.err | head -n 1)\""
else fail "another domain naming $B: $(why create-intruder)"; fi
run release-keeper v attach $group --release
expect_at "attach --release gives the kept group back" e1000 "(null)"

# A device the host uses: the hook refuses with its reasons in libvirt's error; nothing moves.
NVME=0000:02:00.0
if grep -q nvme0n1 /proc/partitions && mkswap /dev/nvme0n1 >/dev/null 2>&1 && swapon /dev/nvme0n1 2>/dev/null; then
    libvirt_domain_xml swapper no $NVME > /out/swapper.xml
    timed create-swapper virsh create --paused /out/swapper.xml
    cp /out/create-swapper.err /out/hook-refusal.txt
    if [ "$rc" != 0 ] && grep -q "nothing was changed" /out/create-swapper.err && grep -q "swap" /out/create-swapper.err; then
        pass "a domain asking for the nvme under active swap is refused with the hook's reasons ($secs): \"$(grep -o 'nvme0n1 is in use as swap' /out/create-swapper.err | head -n 1)\""
    else fail "the nvme under swap: $(why create-swapper)"; fi
    [ "$(drv $NVME)" = nvme ] && pass "the refused nvme stayed on nvme" || fail "the nvme is on $(drv $NVME)"
    swapoff /dev/nvme0n1
else
    skip_check "swap: this kernel cannot swap on nvme0n1"
fi
run uninstall v libvirt-hook --uninstall
expect_text "libvirt-hook --uninstall removes the script" "removed /etc/libvirt/hooks/qemu.d/swift-vfio" uninstall

libvirt_stop_guest
mkdir -p /out/qemu-logs
cp /var/log/libvirt/qemu/*.log /out/qemu-logs/ 2>/dev/null
finish
