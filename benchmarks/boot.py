#!/usr/bin/env python3
"""Speed of the emulated PV machines, 32-bit and 64-bit, measured side by side in one run.

1. Guest instructions per second: the same compute loop (5 instructions per
   iteration, with a load and a store) under xenwb (a booted PV domain: paging,
   the kernel in ring 1 (32-bit) or at CPL 3 in long mode (64-bit), the
   virtual-clock hook) and in bare unicorn with no hooks at all (UC_MODE_32,
   UC_MODE_64). Goal: ratio >= 0.5 for each width.
2. Hypercalls per second for a cheap hypercall (xen_version(XENVER_version)),
   `int $0x82` on 32-bit, an inline `syscall` on 64-bit; tracing off, and with a
   JSONL trace being written. Goal: >= 100,000/s off, for each width.
3. The 64-bit example (pvdemo64) booted to poweroff: host and virtual time.

Prints figures and ratios; it passes or fails nothing. Timings are host wall-clock
times: on a shared machine, compare the figures of one run with each other.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_MODE_64, Uc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xenwb.examples import resolve_guest  # noqa: E402
from xenwb.loader import load_guest  # noqa: E402
from xenwb.machine import Machine  # noqa: E402
from xenwb.tracefile import JsonlWriter  # noqa: E402

INSNS_PER_ITER = 5


def build_guest(out: Path, bits: int = 32) -> Path:
    if bits == 64:
        obj, elf = out / "bench64.o", out / "bench64"
        subprocess.run(["gcc", "-m64", "-c", str(HERE / "guests" / "bench64.S"), "-o", str(obj)], check=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext-segment=0xffffffff80000000", "--build-id=none",
                        "-z", "noexecstack", "-o", str(elf), str(obj)], check=True)
        return elf
    obj = out / "bench.o"
    elf = out / "bench"
    subprocess.run(["gcc", "-m32", "-c", str(HERE / "guests" / "bench.S"), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext-segment=0xC0000000", "--build-id=none",
                    "-o", str(elf), str(obj)], check=True)
    return elf


def run_xenwb(elf: Path, iters: int, hcalls: int, trace: bool = False) -> tuple[float, Machine]:
    m = Machine(elf)
    img = m.image
    v = m.vcpus[0]
    fmt = "<Q" if m.domain.word == 8 else "<I"
    v.write_virt(img.lookup("bench_iterations").address, struct.pack(fmt, iters))
    v.write_virt(img.lookup("bench_hypercalls").address, struct.pack(fmt, hcalls))
    writer = None
    if trace:
        writer = JsonlWriter.open(os.devnull)
        m.domain.trace.subscribe(writer.write)
    t = time.perf_counter()
    r = m.run()
    dt = time.perf_counter() - t
    if writer:
        writer.close()
    assert r.reason.value == "shutdown", r
    return dt, m


def run_bare(elf: Path, iters: int) -> float:
    """The compute loop's bytes, no paging, no hooks: flat 32-bit mode at the link address, or
    64-bit mode with the image moved low (the 64-bit loop addresses its data RIP-relative)."""
    img = load_guest(elf)
    bits = img.elfclass
    uc = Uc(UC_ARCH_X86, UC_MODE_64 if bits == 64 else UC_MODE_32)
    lo = min(seg.vaddr for seg in img.segments) & ~0xFFF
    shift = lo - 0x400000 if bits == 64 else 0
    for seg in img.segments:
        base = (seg.vaddr & ~0xFFF) - shift
        size = ((seg.vaddr + seg.memsz + 0xFFF) & ~0xFFF) - shift - base
        uc.mem_map(base, size)
        uc.mem_write(seg.vaddr - shift, seg.data)
    uc.mem_write(img.lookup("bench_iterations").address - shift, struct.pack("<Q" if bits == 64 else "<I", iters))
    start, stop = img.lookup("_start").address - shift, img.lookup("compute_done").address - shift
    t = time.perf_counter()
    uc.emu_start(start, stop)
    return time.perf_counter() - t


def measure(elf: Path, iterations: int, hypercalls: int, label: str) -> None:
    base_dt, _ = run_xenwb(elf, 0, 0)                     # boot + shutdown alone
    insns = iterations * INSNS_PER_ITER
    x_dt, m = run_xenwb(elf, iterations, 0)
    b_dt = run_bare(elf, iterations)
    x_rate = insns / max(x_dt - base_dt, 1e-9)
    b_rate = insns / b_dt
    bits = m.domain.word * 8
    mode = "UC_MODE_64" if bits == 64 else "UC_MODE_32"
    how = "syscall" if bits == 64 else "int $0x82"
    print(f"{label}: compute loop, {insns / 1e6:.0f} M guest instructions:")
    print(f"  bare unicorn ({mode}), no hooks {b_rate / 1e6:8.1f} M instructions/s")
    print(f"  xenwb ({label:<22})  {x_rate / 1e6:8.1f} M instructions/s")
    print(f"  ratio xenwb / bare                {x_rate / b_rate:8.2f}   (goal >= 0.5)")
    h_dt, m = run_xenwb(elf, 0, hypercalls)
    h_rate = hypercalls / max(h_dt - base_dt, 1e-9)
    t_dt, _ = run_xenwb(elf, 0, hypercalls, trace=True)
    t_rate = hypercalls / max(t_dt - base_dt, 1e-9)
    print(f"{label}: cheap hypercall (xen_version by {how}), {hypercalls} calls:")
    print(f"  tracing off                       {h_rate:10,.0f} hypercalls/s   (goal >= 100,000)")
    print(f"  JSONL trace on                    {t_rate:10,.0f} hypercalls/s   (ratio {t_rate / h_rate:.2f})")
    print(f"  virtual time per call             {m.now() / hypercalls:8.0f} ns")


def boot_example(name: str, vcpus: int) -> None:
    m = Machine(resolve_guest(name), vcpus=vcpus)
    out: list[bytes] = []
    m.domain.console_sink = out.append
    t = time.perf_counter()
    r = m.run()
    dt = time.perf_counter() - t
    checks = b"".join(out).count(b"\n")
    print(f"{name} --vcpus {vcpus} to {r.reason.value}: {dt:6.2f} s host, {m.now() / 1e6:6.1f} ms virtual, "
          f"{m.domain.stats['hypercalls']} hypercalls, {checks} console lines")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20_000_000)
    ap.add_argument("--hypercalls", type=int, default=200_000)
    ap.add_argument("--width", choices=("32", "64", "both"), default="both")
    a = ap.parse_args()
    print(f"host load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (on {os.cpu_count()} cpus)")
    with tempfile.TemporaryDirectory() as tmp:
        if a.width in ("32", "both"):
            measure(build_guest(Path(tmp), 32), a.iterations, a.hypercalls, "32-bit PV, ring 1")
        if a.width in ("64", "both"):
            measure(build_guest(Path(tmp), 64), a.iterations, a.hypercalls, "64-bit PV, long mode")
            boot_example("pvdemo64", 1)
            boot_example("pvdemo64", 2)


if __name__ == "__main__":
    main()
