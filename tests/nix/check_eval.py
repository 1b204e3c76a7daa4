"""Checks one evaluation of the host module (tests/nix/eval.nix output) against the example
config it came from: units, binaries, TAP/NAT, polkit, dirs and the MAC derivation.

usage: check_eval.py EXAMPLE.json EVAL.json BINDIR DOCUMENT.json [--binaries]
(--binaries: also check that the binaries the units name accept those command lines)
"""

import hashlib
import json
import shlex
import subprocess
import sys

example = json.load(open(sys.argv[1]))
ev = json.load(open(sys.argv[2]))
bindir = sys.argv[3]
document_path = sys.argv[4]
errors = []


def expect(cond, msg):
    if not cond:
        errors.append(msg)


def run_help(binary, args):
    """Run the real binary's --help for a subcommand path: proves it accepts that command line."""
    try:
        proc = subprocess.run([f"{bindir}/{binary}", *args, "--help"], capture_output=True, text=True)
    except FileNotFoundError:
        return 127, f"{bindir}/{binary} does not exist"
    return proc.returncode, proc.stdout + proc.stderr


user = example["user"]
pkg = ev["package"]
sw = ev["vmSwitchPackage"]
vms = example.get("nixosVms", [])

expect(ev["failedAssertions"] == [], f"assertions failed: {ev['failedAssertions']}")
expect(ev["etc"].get("vmsilo/config.json", "").endswith("-vmsilo-config.json"),
       "environment.etc.\"vmsilo/config.json\" is not the checked config")

for vm in vms:
    n = vm["name"]
    sock = ev["sockets"].get(f"vmsilo-{n}", {}).get("socketConfig", {})
    expect(sock.get("ListenStream") == f"/run/vmsilo/{n}-command.socket", f"{n}: socket path {sock}")
    expect(sock.get("SocketUser") == user and sock.get("SocketMode") == "0600", f"{n}: socket owner/mode {sock}")

    doc_vm = next(v for v in ev["document"]["nixosVms"] if v["name"] == n)
    for key in ("kernel", "initramfs", "rootDisk"):
        if key in vm:
            expect(doc_vm[key] == vm[key], f"{n}: {key} {vm[key]!r} became {doc_vm[key]!r}")
        elif key == "rootDisk":
            expect(doc_vm[key]["path"].endswith(f"-vmsilo-root-{n}.img"), f"{n}: rootDisk is not the built image")
        else:
            expect(doc_vm[key].startswith("/nix/store/") and f"-guest-{n}/" in doc_vm[key], f"{n}: {key} is not the built guest's")
    bridge_of = {t: b for b, v in ev["bridges"].items() for t in v.get("interfaces", [])}
    for ifname, iface in vm.get("network", {}).get("interfaces", {}).items():
        if iface.get("type") == "tap" and iface.get("tap", {}).get("bridge"):
            tapn = iface["tap"].get("name") or f"{n}-{sorted(vm['network']['interfaces']).index(ifname)}"
            expect(bridge_of.get(tapn) == iface["tap"]["bridge"], f"{n}.{ifname}: {tapn} not in bridge {iface['tap']['bridge']}")

    proxy = ev["services"].get(f"vmsilo-{n}", {})
    expect(shlex.split(proxy.get("serviceConfig", {}).get("ExecStart", "")) == [f"{pkg}/bin/vmsilo", "proxy", n],
           f"{n}: proxy ExecStart {proxy.get('serviceConfig')}")
    expect(proxy.get("requires") == [f"vmsilo-{n}.socket"], f"{n}: proxy requires {proxy.get('requires')}")
    transport = vm.get("vsock", {}).get("transport", "vhost-vsock")
    expect(proxy.get("serviceConfig", {}).get("User") == (user if transport == "vhost-vsock" else "root"),
           f"{n}: proxy user {proxy.get('serviceConfig', {}).get('User')} for transport {transport}")

    vmsvc = ev["services"].get(f"vmsilo-{n}-vm", {})
    sc = vmsvc.get("serviceConfig", {})
    expect(shlex.split(sc.get("ExecStart", "")) == [f"{pkg}/bin/vmsilo", "vm", "run", n], f"{n}: VM ExecStart {sc}")
    expect(sc.get("Type") == "notify", f"{n}: VM service Type {sc.get('Type')}")
    expect(("multi-user.target" in vmsvc.get("wantedBy", [])) == bool(vm.get("autoStart", False)),
           f"{n}: autoStart vs wantedBy {vmsvc.get('wantedBy')}")
    for dep in vm.get("dependsOn", []):
        expect(f"vmsilo-{dep}-vm.service" in vmsvc.get("wants", []), f"{n}: dependsOn {dep} not wanted")

    for ifname, iface in sorted(vm.get("network", {}).get("interfaces", {}).items()):
        if iface.get("type", "vm-switch") == "vm-switch":
            net = iface["vmNetwork"]["name"]
            expect(f"vm-switch-{net}.service" in vmsvc.get("requires", []), f"{n}: does not require vm-switch-{net}")
            swsvc = ev["services"].get(f"vm-switch-{net}", {}).get("serviceConfig", {})
            level = example.get("vm-switch", {}).get("logLevel", "info")
            expect(shlex.split(swsvc.get("ExecStart", ""))[:7] == [
                f"{sw}/bin/vm-switch", "--name", net, "--config-dir", f"/run/vm-switch/{net}", "--log-level", level],
                f"vm-switch-{net}: ExecStart {swsvc}")
            expect(f"d /run/vm-switch/{net} 0750 root root -" in ev["tmpfiles"], f"no config dir for {net}")
        else:
            index = sorted(vm["network"]["interfaces"]).index(ifname)
            tap = iface.get("tap", {}).get("name") or f"{n}-{index}"
            dev = ev["interfaces"].get(tap, {})
            unit = "sys-subsystem-net-devices-" + tap.replace("-", "\\x2d") + ".device"
            expect(unit in vmsvc.get("requires", []), f"{n}: VM service does not require {unit}")
            expect(dev.get("virtualType") == "tap" and dev.get("virtualOwner") == user, f"{n}.{ifname}: TAP {tap} {dev}")
            host = iface.get("tap", {}).get("hostAddress")
            if host:
                addr, plen = host.split("/")
                expect({"address": addr, "prefixLength": int(plen)} in dev.get("ipv4", {}).get("addresses", []),
                       f"{n}.{ifname}: host address {host} not on {tap}")
                if example.get("hostNetworking", {}).get("nat", {}).get("enable"):
                    expect(tap in ev["nat"].get("internalInterfaces", []), f"{tap} not NATed")
            doc_vm = next(v for v in ev["document"]["nixosVms"] if v["name"] == n)
            expect(doc_vm["network"]["interfaces"][ifname]["tap"]["name"] == tap,
                   f"{n}.{ifname}: config.json TAP name differs from the created device {tap}")

        # MAC: first 6 bytes of SHA1("<vm>-<if>"), locally administered unicast.
        want = iface.get("macAddress")
        if want is None:
            b = bytearray(hashlib.sha1(f"{n}-{ifname}".encode()).digest()[:6])
            b[0] = (b[0] & 0xFE) | 0x02
            want = ":".join(f"{x:02x}" for x in b)
        expect(ev["macs"].get(f"{n}-{ifname}") == want.lower(),
               f"{n}.{ifname}: Nix MAC {ev['macs'].get(f'{n}-{ifname}')} != {want}")

    expect(f'"vmsilo-{n}-vm.service"' in ev["polkit"] and f'subject.user !== "{user}"' in ev["polkit"],
           f"{n}: polkit rule does not cover the VM service for {user}")

for bdf in example.get("isolatedPciDevices", []):
    full = bdf if bdf.count(":") == 2 else f"0000:{bdf}"
    expect(f'KERNEL=="{full}", ATTR{{driver_override}}="vfio-pci"' in ev["vfio"]["udev"], f"vfio rule for {bdf}")

tray = ev["userServices"].get("vmsilo-tray", {})
expect(tray.get("serviceConfig", {}).get("ExecStart") == f"{pkg}/bin/vmsilo-tray", f"tray ExecStart {tray}")
expect(f"d /shared 0755 {user} users -" in ev["tmpfiles"], "/shared not owned by the user")
expect(f"d /var/lib/vmsilo/home-template 0700 {user} users -" in ev["tmpfiles"], "home template not owned by the user")

# `vmsilo plan --json` on the generated document: the Rust side must derive the same unit names,
# TAP names and MACs as Nix, and use the guest images Nix built.
proc = subprocess.run([f"{bindir}/vmsilo", "plan", "--json", document_path], capture_output=True, text=True)
if proc.returncode != 0:
    expect(False, f"vmsilo plan --json failed: {proc.stderr.strip()[:300]}")
else:
    plan = {v["name"]: v for v in json.loads(proc.stdout)["vms"]}
    for doc_vm in ev["document"]["nixosVms"]:
        n = doc_vm["name"]
        pv = plan.get(n)
        if pv is None:
            expect(False, f"{n}: missing from vmsilo plan")
            continue
        expect(pv["units"] == {"socket": f"vmsilo-{n}.socket", "proxy": f"vmsilo-{n}.service",
                               "vm": f"vmsilo-{n}-vm.service"}, f"{n}: plan units {pv['units']}")
        expect(pv["images"]["kernel"] == doc_vm["kernel"] and pv["images"]["initramfs"] == doc_vm["initramfs"]
               and pv["images"]["rootDisk"] == doc_vm["rootDisk"]["path"], f"{n}: plan images {pv['images']}")
        for t in pv["taps"]:
            expect(t["tap"] in ev["interfaces"], f"{n}: plan TAP {t['tap']} is not a NixOS TAP device")
            expect(ev["macs"].get(f"{n}-{t['interface']}") == t["mac"], f"{n}.{t['interface']}: plan MAC {t['mac']}")
        for p in pv["switchPorts"]:
            expect(ev["macs"].get(f"{n}-{p['interface']}") == p["mac"], f"{n}.{p['interface']}: plan MAC {p['mac']}")
            expect(f"vm-switch-{p['network']}" in ev["services"], f"{n}: no vm-switch unit for {p['network']}")

# The binaries the units name must accept those command lines.
for binary, args in ([] if "--binaries" not in sys.argv else [
        ("vmsilo", ["proxy"]), ("vmsilo", ["vm", "run"]), ("vmsilo", ["check"]),
        ("vmsilo", ["desktop"]), ("vmsilo", ["completions"])]):
    code, out = run_help(binary, args)
    expect(code == 0, f"`vmsilo {' '.join(args)} --help` failed ({code}): {out.strip()[:300]}")
if "--binaries" in sys.argv:
    code, out = run_help("vm-switch", [])
    expect(code == 0 and all(f in out for f in ["--name", "--config-dir", "--log-level"]),
           f"vm-switch --help lacks --name/--config-dir/--log-level: {out.strip()[:300]}")
    code, out = run_help("vmsilo", ["desktop"])
    expect(all(f in out for f in ["--config", "--out", "--vm-run"]),
           f"vmsilo desktop lacks --config/--out/--vm-run: {out.strip()[:300]}")
    code, out = run_help("vmsilo-tray", [])
    expect(code == 0, f"vmsilo-tray --help failed ({code}): {out.strip()[:300]}")

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
