#!/usr/bin/env python3
"""Boot Debian's Linux kernel with the busybox initramfs to its shell prompt, then `poweroff -f`:
QEMU TCG against xenwb, side by side in one run.

Both boot the same vmlinuz and initramfs (scripts/fetch-linux) with the same kernel options but the
console: QEMU (`qemu-system-x86_64 -accel tcg`) boots the kernel natively on `console=ttyS0`, xenwb
(`xenwb run VMLINUZ --module INITRD`) as a Xen PV guest on `console=hvc0`. For each run and each
target: host seconds from starting the process to the shell prompt, then from typing `poweroff -f`
to the process's exit; the ratio xenwb / QEMU of the best runs. A target that fails says how and
the other's figures still print. It passes or fails nothing.

    .venv/bin/python benchmarks/linux.py [--flavour cloud-amd64|amd64] [--runs 3] [--memory 256]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xenwb.bzimage import compressor_of, parse_setup_header  # noqa: E402
from xenwb.linuxguest import DEFAULT_FLAVOUR, FLAVOURS, PROMPT, LinuxGuest, fetch_linux  # noqa: E402

POWEROFF = b"poweroff -f\n"


@dataclass
class Boot:
    """One boot: seconds to the prompt and from poweroff to exit, or why it failed."""

    prompt_s: float | None = None
    poweroff_s: float | None = None
    failure: str = ""
    summary: str = ""       # xenwb's own line: hypercalls, faults, virtual time (the whole run)


def ensure_qemu() -> str | None:
    q = shutil.which("qemu-system-x86_64")
    if q or os.geteuid() != 0 or not shutil.which("apt-get"):
        return q
    print("qemu-system-x86_64 missing: installing Debian's qemu-system-x86 ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"], env=env,
                   capture_output=True)
    return shutil.which("qemu-system-x86_64")


def qemu_command(qemu: str, g: LinuxGuest, memory: int, append: str, vcpus: int = 1) -> list[str]:
    return [qemu, "-accel", "tcg", "-m", str(memory), "-smp", str(vcpus), "-nodefaults", "-no-user-config",
            "-display", "none",
            "-serial", "stdio", "-no-reboot", "-kernel", str(g.vmlinuz), "-initrd", str(g.initrd),
            "-append", f"console=ttyS0 {append}"]


def xenwb_command(g: LinuxGuest, memory: int, append: str, vcpus: int = 1) -> list[str]:
    return [sys.executable, "-m", "xenwb", "run", str(g.vmlinuz), "--module", str(g.initrd),
            "--memory", str(memory), "--vcpus", str(vcpus), "--cmdline", f"console=hvc0 {append}"]


SUMMARY = re.compile(rb"xenwb: \S+.*?; (\d+) hypercalls \(\+(\d+) multicall entries\), (\d+) faults bounced, "
                     rb"([\d.]+) s virtual time")


def boot(cmd: list[str], timeout: float) -> Boot:
    """Start cmd, wait for the prompt on its stdout, type poweroff, wait for it to exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    out = bytearray()
    result = Boot()
    t_prompt = None
    try:
        while True:
            left = timeout - (time.perf_counter() - t0)
            ready, _, _ = select.select([p.stdout], [], [], max(left, 0))
            if not ready:
                result.failure = f"no {'exit' if t_prompt else 'prompt'} after {timeout:.0f} s"
                return result
            data = os.read(p.stdout.fileno(), 65536)
            if not data:
                break
            out += data
            if t_prompt is None and PROMPT.encode() in out:
                t_prompt = time.perf_counter()
                result.prompt_s = t_prompt - t0
                p.stdin.write(POWEROFF)
                p.stdin.flush()
        rc = p.wait()
        err = p.stderr.read() or b""
        m = SUMMARY.search(err)
        if m:
            hc, mc, faults, vt = m.groups()
            result.summary = (f"{int(hc):,} hypercalls (+{int(mc):,} multicall entries), {int(faults):,} faults "
                              f"bounced, {float(vt):.3f} s virtual time")
        if t_prompt is None:
            lines = (err or bytes(out)).decode(errors="replace").strip().splitlines()
            result.failure = f"exit {rc} before the prompt: {lines[-1] if lines else 'no output'}"
        elif rc != 0:
            result.failure = f"exit {rc} after poweroff"
        else:
            result.poweroff_s = time.perf_counter() - t_prompt
        return result
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def cell(b: Boot) -> str:
    if b.failure:
        return f"{'failed':>10} {'':>10}"
    return f"{b.prompt_s:10.2f} {b.poweroff_s:10.2f}"


def best(boots: list[Boot]) -> Boot | None:
    ok = [b for b in boots if not b.failure]
    return min(ok, key=lambda b: b.prompt_s) if ok else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", choices=FLAVOURS, default=DEFAULT_FLAVOUR)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=256, help="guest memory in MiB, both targets")
    ap.add_argument("--append", default="quiet panic=-1",
                    help="kernel options after console= (no workaround options: a domU's defaults)")
    ap.add_argument("--vcpus", type=int, default=1, help="vcpus (xenwb) and -smp (QEMU)")
    ap.add_argument("--timeout", type=float, default=300, help="host seconds allowed per boot")
    a = ap.parse_args()

    g = fetch_linux(a.flavour)
    blob = g.vmlinuz.read_bytes()
    hdr = parse_setup_header(blob)
    payload = compressor_of(blob[hdr.payload_start: hdr.payload_start + hdr.payload_length])
    print(f"{g.vmlinuz.name} (Debian {g.version}, bzImage with a {payload} payload, {len(blob):,} bytes), "
          f"initramfs {g.initrd.stat().st_size:,} bytes (uncompressed cpio), {a.memory} MiB")
    print(f"kernel options: console=ttyS0|hvc0 {a.append}; {a.vcpus} vcpu(s)")
    print(f"host: {os.cpu_count()} cpus, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    qemu = ensure_qemu()
    if qemu:
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        print(f"QEMU: {version}, TCG")
    print("\nhost seconds: start -> prompt, then `poweroff -f` -> exit")
    print(f"{'run':>3}  {'QEMU prompt':>10} {'poweroff':>10}  {'xenwb prompt':>10} {'poweroff':>10}")
    qboots: list[Boot] = []
    xboots: list[Boot] = []
    for i in range(a.runs):
        q = (boot(qemu_command(qemu, g, a.memory, a.append, a.vcpus), a.timeout) if qemu
             else Boot(failure="QEMU missing"))
        x = boot(xenwb_command(g, a.memory, a.append, a.vcpus), a.timeout)
        qboots.append(q)
        xboots.append(x)
        print(f"{i + 1:3}  {cell(q)}  {cell(x)}")
    qb, xb = best(qboots), best(xboots)
    print()
    for name, b, boots in (("QEMU", qb, qboots), ("xenwb", xb, xboots)):
        if b is None:
            print(f"{name}: failed: {boots[-1].failure}")
        else:
            print(f"{name}: best {b.prompt_s:.2f} s to the prompt, {b.poweroff_s:.2f} s to power off"
                  + (f"; {b.summary}" if b.summary else ""))
    if qb and xb:
        print(f"xenwb / QEMU to the prompt: {xb.prompt_s / qb.prompt_s:.2f}x")
    else:
        print("xenwb / QEMU: - (a target failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
