#!/usr/bin/env python3
"""Speed of the emulated PV machine, measured side by side in one run.

1. Guest instructions per second: the same compute loop (5 instructions per
   iteration, with a load and a store) under xenwb (a booted PV domain: paging,
   ring 1, the virtual-clock hook) and in bare unicorn with no hooks at all.
   Goal: ratio >= 0.5.
2. Hypercalls per second for a cheap hypercall (xen_version(XENVER_version)),
   tracing off, and with a JSONL trace being written. Goal: >= 100,000/s off.

Prints figures and ratios; it passes or fails nothing.
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

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xenwb.machine import Machine  # noqa: E402
from xenwb.tracefile import JsonlWriter  # noqa: E402

INSNS_PER_ITER = 5


def build_guest(out: Path) -> Path:
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
    v.write_virt(img.lookup("bench_iterations").address, struct.pack("<I", iters))
    v.write_virt(img.lookup("bench_hypercalls").address, struct.pack("<I", hcalls))
    writer = None
    if trace:            # as Session.record does: records in, JSON lines out after every vcpu turn
        writer = JsonlWriter.open(os.devnull, m.domain.trace.formatter)
        m.domain.trace.subscribe_records(writer.add)
        m.turn_hooks.append(writer.flush_pending)
    t = time.perf_counter()
    r = m.run()
    dt = time.perf_counter() - t
    if writer:
        writer.close()
    assert r.reason.value == "shutdown", r
    return dt, m


def run_bare(elf: Path, iters: int) -> float:
    """The compute loop's bytes, flat 32-bit mode, no paging, no hooks."""
    from xenwb.loader import load_guest
    img = load_guest(elf)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    for seg in img.segments:
        base = seg.vaddr & ~0xFFF
        size = ((seg.vaddr + seg.memsz + 0xFFF) & ~0xFFF) - base
        uc.mem_map(base, size)
        uc.mem_write(seg.vaddr, seg.data)
    uc.mem_write(img.lookup("bench_iterations").address, struct.pack("<I", iters))
    start, stop = img.lookup("_start").address, img.lookup("compute_done").address
    t = time.perf_counter()
    uc.emu_start(start, stop)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20_000_000)
    ap.add_argument("--hypercalls", type=int, default=200_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_guest(Path(tmp))
        base_dt, _ = run_xenwb(elf, 0, 0)                     # boot + shutdown alone
        insns = a.iterations * INSNS_PER_ITER
        x_dt, m = run_xenwb(elf, a.iterations, 0)
        b_dt = run_bare(elf, a.iterations)
        x_rate = insns / max(x_dt - base_dt, 1e-9)
        b_rate = insns / b_dt
        print(f"compute loop, {insns / 1e6:.0f} M guest instructions:")
        print(f"  bare unicorn, no hooks     {b_rate / 1e6:8.1f} M instructions/s")
        print(f"  xenwb (PV domain, ring 1)  {x_rate / 1e6:8.1f} M instructions/s")
        print(f"  ratio xenwb / bare         {x_rate / b_rate:8.2f}   (goal >= 0.5)")
        h_dt, m = run_xenwb(elf, 0, a.hypercalls)
        h_rate = a.hypercalls / max(h_dt - base_dt, 1e-9)
        t_dt, _ = run_xenwb(elf, 0, a.hypercalls, trace=True)
        t_rate = a.hypercalls / max(t_dt - base_dt, 1e-9)
        print(f"cheap hypercall (xen_version), {a.hypercalls} calls:")
        print(f"  tracing off                {h_rate:10,.0f} hypercalls/s   (goal >= 100,000)")
        print(f"  JSONL trace on             {t_rate:10,.0f} hypercalls/s   (ratio {t_rate / h_rate:.2f})")
        print(f"  virtual time per call      {m.now() / a.hypercalls:8.0f} ns")


if __name__ == "__main__":
    main()
