#!/usr/bin/env python3
"""Host-side checker for one topology run of lab/suite.

Compares three things with the kernel's ground truth (facts.txt from lab/guest/facts.sh):
  * the topology's declarative expectations (lab/topologies/NAME.expect),
  * `vfioctl list --json` (groups and members, driver, reset methods, BARs per device),
  * the tree written by `vfioctl capture` (device links, group and driver links), and
    the host's replay of it (`vfioctl list --json --root TREE`) against the live list.
Prints one PASS/FAIL/SKIP line per check and, last, the closing line every lab harness
ends with, `integration: N passed, M failed` (lab/lib/checks.sh; lab/suite reads it back).
Exits 1 when any check failed.
"""
import argparse
import json
import os
import sys


class Facts:
    """The kernel's view, parsed from facts.txt lines (format: lab/guest/facts.sh)."""

    def __init__(self, path):
        self.devices, self.driver, self.reset, self.bars, self.resources = {}, {}, {}, {}, {}
        self.groups, self.group_type, self.group_of = {}, {}, {}
        self.sriov, self.physfn, self.modules = {}, {}, {}
        self.iommus, self.devs, self.kernel = set(), set(), ""
        with open(path) as f:
            for line in f:
                kind, *a = line.split()
                if kind == "kernel":
                    self.kernel = a[0]
                elif kind == "iommu":
                    self.iommus.add(a[0])
                elif kind == "device":
                    self.devices[a[0]] = {"vendor": a[1], "device": a[2], "class": a[3]}
                elif kind == "driver":
                    self.driver[a[0]] = None if a[1] == "-" else a[1]
                elif kind == "reset":
                    self.reset[a[0]] = [] if a[1:] in (["-"], ["absent"]) else a[1:]
                elif kind == "bar":
                    self.bars.setdefault(a[0], {})[int(a[1])] = (int(a[2]), int(a[3]))
                elif kind == "resource":
                    self.resources.setdefault(a[0], {})[int(a[1])] = (int(a[2]), int(a[3]))
                elif kind == "group":
                    self.groups.setdefault(int(a[0]), set())
                    self.group_type[int(a[0])] = a[1]
                elif kind == "member":
                    self.groups.setdefault(int(a[0]), set()).add(a[1])
                    self.group_of[a[1]] = int(a[0])
                elif kind == "sriov":
                    self.sriov[a[0]] = (int(a[1]), int(a[2]))
                elif kind == "vf":
                    self.physfn[a[0]] = a[1]
                elif kind == "module":
                    self.modules[a[0]] = a[1]
                elif kind == "dev":
                    self.devs.add(a[0])


class Checks:
    def __init__(self, topology):
        self.topology, self.passed, self.failed = topology, 0, 0

    def record(self, name, problems):
        """problems: list of strings; empty means the check passed."""
        if problems:
            self.failed += 1
            print(f"FAIL {self.topology}: {name}")
            for p in problems[:20]:
                print(f"       {p}")
            if len(problems) > 20:
                print(f"       ... and {len(problems) - 20} more")
        else:
            self.passed += 1
            print(f"PASS {self.topology}: {name}")


# Expectation kinds: each returns a list of problems (empty = holds).
def exp_same_group(k, bdfs):
    gs = {b: k.group_of.get(b) for b in bdfs}
    if None in gs.values() or len(set(gs.values())) != 1:
        return [f"groups: {gs}"]
    return []


def exp_group_exactly(k, bdfs):
    p = exp_same_group(k, bdfs)
    if p:
        return p
    members = k.groups[k.group_of[bdfs[0]]]
    return [] if members == set(bdfs) else [f"group {k.group_of[bdfs[0]]} is {sorted(members)}"]


def exp_own_group(k, bdfs):
    out = []
    for b in bdfs:
        g = k.group_of.get(b)
        if g is None:
            out.append(f"{b} has no group")
        elif k.groups[g] != {b}:
            out.append(f"{b} shares group {g} with {sorted(k.groups[g] - {b})}")
    return out


def exp_separate_groups(k, bdfs):
    gs = [k.group_of.get(b) for b in bdfs]
    return [] if None not in gs and len(set(gs)) == len(gs) else [f"groups: {dict(zip(bdfs, gs))}"]


def exp_no_group(k, bdfs):
    return [f"{b} is in group {k.group_of[b]}" for b in bdfs if b in k.group_of]


def exp_group_type(k, args):
    b, t = args
    g = k.group_of.get(b)
    got = k.group_type.get(g)
    return [] if got == t else [f"{b}: group {g} type {got}"]


def exp_driver(k, args):
    b, want = args[0], (None if args[1] == "-" else args[1])
    if b not in k.devices:
        return [f"no device {b}"]
    return [] if k.driver.get(b) == want else [f"{b} driver is {k.driver.get(b) or '-'}"]


def exp_reset(k, args):
    b, want = args[0], ([] if args[1:] in (["-"], ["absent"]) else args[1:])
    if b not in k.devices:
        return [f"no device {b}"]
    return [] if k.reset.get(b) == want else [f"{b} reset_method is {' '.join(k.reset.get(b) or []) or '(none)'}"]


def exp_bar(k, args):
    b, i, size = args[0], int(args[1]), int(args[2], 0)
    got = k.bars.get(b, {}).get(i)
    return [] if got and got[1] == size else [f"{b} BAR{i} is {got[1] if got else 'absent'}"]


def exp_vfs(k, args):
    pf, n = args[0], int(args[1])
    vfs = sorted(v for v, p in k.physfn.items() if p == pf)
    out = []
    if k.sriov.get(pf, (0, 0))[1] != n or len(vfs) != n:
        out.append(f"{pf}: sriov {k.sriov.get(pf)}, VFs {vfs}")
    if "each-own-group" in args[2:]:
        out += exp_own_group(k, vfs + [pf])
        out += exp_separate_groups(k, vfs + [pf])
    return out


def exp_dev(k, args):
    return [f"{p} missing" for p in args if p not in k.devs]


def exp_no_dev(k, args):
    return [f"{p} present" for p in args if p in k.devs]


def exp_vfio_group(k, bdfs):
    out = []
    for b in bdfs:
        g = k.group_of.get(b)
        if g is None or f"/dev/vfio/{g}" not in k.devs:
            out.append(f"{b}: group {g}, no /dev/vfio/{g}")
    return out


def exp_module(k, args):
    name, state = args
    got = k.modules.get(name, "absent")
    return [] if got == state else [f"module {name} is {got}"]


def exp_iommu(k, args):
    return [f"no /sys/class/iommu/{n} (have {sorted(k.iommus)})" for n in args if n not in k.iommus]


def exp_kernel(k, args):
    return [] if k.kernel.startswith(args[0]) else [f"kernel is {k.kernel}"]


EXPECTATIONS = {
    "same-group": exp_same_group, "group-exactly": exp_group_exactly,
    "own-group": exp_own_group, "separate-groups": exp_separate_groups,
    "no-group": exp_no_group, "group-type": exp_group_type, "driver": exp_driver,
    "reset": exp_reset, "bar": exp_bar, "vfs": exp_vfs, "dev": exp_dev, "no-dev": exp_no_dev,
    "vfio-group": exp_vfio_group, "module": exp_module, "iommu": exp_iommu, "kernel": exp_kernel,
}


def check_expectations(c, k, path):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            kind, *args = line.split()
            if kind in ("guest", "guest-sh"):
                continue  # run in the guest and judged by lab/suite
            fn = EXPECTATIONS.get(kind)
            if fn is None:
                c.record(f"expect {line} ({os.path.basename(path)}:{n})", [f"unknown expectation '{kind}'"])
                continue
            try:
                problems = fn(k, args)
            except (IndexError, ValueError) as e:
                problems = [f"malformed: {e}"]
            c.record(f"expect {line}", problems)


def load_json(c, name, *paths):
    """The parsed files, or None after a failed check NAME saying why."""
    try:
        docs = []
        for path in paths:
            with open(path) as f:
                docs.append(json.load(f))
        return docs
    except (OSError, ValueError) as e:
        c.record(name, [str(e)])
        return None


def check_list_json(c, k, path):
    docs = load_json(c, "vfioctl list --json parses", path)
    if docs is None:
        return
    doc = docs[0]
    c.record("vfioctl list --json schemaVersion 1",
             [] if doc.get("schemaVersion") == 1 else [f"schemaVersion {doc.get('schemaVersion')}"])

    got_groups = {g["id"]: set(g.get("devices", [])) for g in doc.get("groups", [])}
    want_groups = {g: m for g, m in k.groups.items()}
    problems = []
    for g in sorted(set(got_groups) | set(want_groups)):
        if got_groups.get(g) != want_groups.get(g):
            problems.append(f"group {g}: vfioctl {sorted(got_groups.get(g, []))}, kernel {sorted(want_groups.get(g, []))}")
    c.record("groups and members match the kernel", problems)

    devices = {d["address"]: d for d in doc.get("devices", [])}
    missing = sorted(set(k.devices) - set(devices))
    extra = sorted(set(devices) - set(k.devices))
    c.record("device list matches the kernel",
             ([f"missing {missing}"] if missing else []) + ([f"extra {extra}"] if extra else []))

    ids, drivers, groups, resets, bars, others = [], [], [], [], [], []
    for b, fd in sorted(k.devices.items()):
        d = devices.get(b)
        if d is None:
            continue
        if (str(d.get("vendorID", "")).lower(), str(d.get("deviceID", "")).lower()) != (fd["vendor"], fd["device"]):
            ids.append(f"{b}: vfioctl {d.get('vendorID')}:{d.get('deviceID')}, kernel {fd['vendor']}:{fd['device']}")
        if d.get("driver") != k.driver.get(b):
            drivers.append(f"{b}: vfioctl {d.get('driver')}, kernel {k.driver.get(b)}")
        if d.get("iommuGroup") != k.group_of.get(b):
            groups.append(f"{b}: vfioctl {d.get('iommuGroup')}, kernel {k.group_of.get(b)}")
        if list(d.get("resetMethods") or []) != k.reset.get(b, []):
            resets.append(f"{b}: vfioctl {d.get('resetMethods')}, kernel {k.reset.get(b)}")
        # BARs proper (role "bar") against resource lines 0-5; every entry, whatever its
        # role (ROM, bridge window, VF BAR), against the resource line of the same index.
        entries = [x for x in d.get("bars", []) if x.get("size")]
        got = {x["index"]: (x.get("start"), x.get("size")) for x in entries if x.get("role", "bar") == "bar"}
        want = k.bars.get(b, {})
        if got != want:
            bars.append(f"{b}: vfioctl {got}, kernel {want}")
        got_all = {x["index"]: (x.get("start"), x.get("size")) for x in entries}
        want_all = k.resources.get(b, {})
        if got_all != want_all:
            others.append(f"{b}: vfioctl {got_all}, kernel {want_all}")
    c.record("vendor/device IDs match", ids)
    c.record("drivers match", drivers)
    c.record("per-device IOMMU group matches", groups)
    c.record("reset methods match", resets)
    c.record("BAR starts and sizes match", bars)
    c.record("all resources (ROM, bridge windows, VF BARs) match", others)


def check_capture(c, k, tree):
    """The captured tree must hold each device with the kernel's group and driver links."""
    if not os.path.isdir(tree):
        c.record("vfioctl capture wrote a tree", [f"no {tree}"])
        return
    problems = []
    for b in sorted(k.devices):
        link = os.path.join(tree, "sys/bus/pci/devices", b)
        if not os.path.islink(link):
            problems.append(f"{b}: no sys/bus/pci/devices/{b} symlink")
            continue
        d = os.path.realpath(link)
        if not d.startswith(os.path.realpath(tree)) or not os.path.isdir(d):
            problems.append(f"{b}: link does not resolve inside the tree")
            continue
        g = os.path.join(d, "iommu_group")
        got_g = int(os.path.basename(os.readlink(g))) if os.path.islink(g) else None
        if got_g != k.group_of.get(b):
            problems.append(f"{b}: iommu_group {got_g}, kernel {k.group_of.get(b)}")
        drv = os.path.join(d, "driver")
        got_d = os.path.basename(os.readlink(drv)) if os.path.islink(drv) else None
        if got_d != k.driver.get(b):
            problems.append(f"{b}: driver {got_d}, kernel {k.driver.get(b)}")
    c.record("vfioctl capture tree has the kernel's devices, groups and drivers", problems)


# Names come from the pci.ids database of whichever machine runs vfioctl (the host has
# one, the guest does not), so they legitimately differ between live run and replay.
HOST_DEPENDENT_KEYS = {"name", "vendorName", "deviceName", "className", "subsystemName"}


def json_differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in HOST_DEPENDENT_KEYS:
                continue
            if key not in a or key not in b:
                out.append(f"{path}/{key}: only in {'live' if key in a else 'replay'}")
            else:
                out += json_differences(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries live, {len(b)} in replay"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: live {a!r}, replay {b!r}"]


def check_replay(c, live_path, replay_path):
    """`vfioctl list --json --root TREE` on the host must reproduce the guest's live list."""
    docs = load_json(c, "replaying the capture on the host gives the live list", live_path, replay_path)
    if docs is None:
        return
    live, replay = docs
    c.record("replaying the capture on the host gives the live list (pci.ids names aside)",
             json_differences(live, replay))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topology", required=True)
    ap.add_argument("--facts", required=True)
    ap.add_argument("--expect", help="expectations file")
    ap.add_argument("--list-json", help="output of vfioctl list --json")
    ap.add_argument("--tree", help="directory written by vfioctl capture")
    ap.add_argument("--replay-json", help="host's vfioctl list --json --root TREE")
    a = ap.parse_args()

    c = Checks(a.topology)
    k = Facts(a.facts)
    if a.expect:
        check_expectations(c, k, a.expect)
    if a.list_json:
        check_list_json(c, k, a.list_json)
    if a.tree:
        check_capture(c, k, a.tree)
    if a.replay_json and a.list_json:
        check_replay(c, a.list_json, a.replay_json)
    print(f"integration: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
