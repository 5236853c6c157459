#!/usr/bin/env python3
"""Speed of the emulated PV machine, measured side by side in one run.

1. Guest instructions per second: the same compute loop (5 instructions per
   iteration, with a load and a store) under xenwb (a booted PV domain: paging,
   ring 1, the virtual-clock hook) and in bare unicorn with no hooks at all.
   Goal: ratio >= 0.5.
2. Hypercalls per second for a cheap hypercall (xen_version(XENVER_version)),
   tracing off, and with a JSONL trace being written, best of --reps runs each,
   alternated. Goals: >= 100,000/s off; traced >= 0.75x of off.
3. With --rss: peak RSS (ru_maxrss) of a process that runs the guest through
   --rss-hypercalls cheap hypercalls (default 10^6) with every plugin on (their history
   bounded by --history), against the same process with 0 hypercalls; and the same with
   a JSONL trace written too. Goal: under 200 MB.

Prints figures and ratios; it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
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


def run_xenwb(elf: Path, iters: int, hcalls: int, trace: bool = False, cpu: list[float] | None = None
              ) -> tuple[float, Machine]:
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
    t, c = time.perf_counter(), time.process_time()
    r = m.run()
    dt = time.perf_counter() - t
    if cpu is not None:
        cpu.append(time.process_time() - c)
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


def rss_child(elf: str, hcalls: int, history: int, trace: bool) -> None:
    """In a fresh process: the guest's hypercall loop with every plugin on; print ru_maxrss (KiB)."""
    from xenwb.session import ALL_PLUGINS, Session
    s = Session(elf, plugins=ALL_PLUGINS, console=lambda b: None, history=history)
    v = s.machine.vcpus[0]
    v.write_virt(s.image.lookup("bench_hypercalls").address, struct.pack("<I", hcalls))
    if trace:
        s.record(os.devnull, "jsonl")
    t = time.perf_counter()
    r = s.run()
    dt = time.perf_counter() - t
    assert r.reason.value == "shutdown", r
    kept = len(s.plugins.get("hypercalls").records)       # type: ignore[attr-defined]
    print(peak_kib(), kept, f"{dt:.1f}")


def peak_kib() -> int:
    """Peak RSS of this process in KiB: VmHWM (Linux), else ru_maxrss. (ru_maxrss of a
    process just started by subprocess carries its parent's peak over the exec on Linux.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss(elf: Path, hcalls: int, history: int, trace: bool) -> tuple[float, int, str]:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(elf), str(hcalls), str(history),
                          "1" if trace else "0"], check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]) / 1024, int(out[1]), out[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20_000_000)
    ap.add_argument("--hypercalls", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3, help="runs of each hypercall measurement (best kept)")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS of a long run with every plugin on")
    ap.add_argument("--rss-hypercalls", type=int, default=1_000_000)
    ap.add_argument("--history", type=int, default=100_000, help="records each plugin keeps (--rss)")
    ap.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        elf, n, hist, trace = a.rss_child
        rss_child(elf, int(n), int(hist), trace == "1")
        return
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
        h_best = t_best = float("inf")
        base_cpu: list[float] = []
        h_cpu: list[float] = []
        t_cpu: list[float] = []
        run_xenwb(elf, 0, 0, cpu=base_cpu)
        for _ in range(a.reps):                               # alternated, best of each
            h_dt, m = run_xenwb(elf, 0, a.hypercalls, cpu=h_cpu)
            t_dt, _ = run_xenwb(elf, 0, a.hypercalls, trace=True, cpu=t_cpu)
            h_best, t_best = min(h_best, h_dt), min(t_best, t_dt)
        h_rate = a.hypercalls / max(h_best - base_dt, 1e-9)
        t_rate = a.hypercalls / max(t_best - base_dt, 1e-9)
        h_crate = a.hypercalls / max(min(h_cpu) - base_cpu[0], 1e-9)
        t_crate = a.hypercalls / max(min(t_cpu) - base_cpu[0], 1e-9)
        print(f"cheap hypercall (xen_version), {a.hypercalls} calls, best of {a.reps} (wall; per host CPU second):")
        print(f"  tracing off                {h_rate:10,.0f} hypercalls/s   cpu {h_crate:10,.0f}/s   "
              f"(goal >= 100,000)")
        print(f"  JSONL trace on             {t_rate:10,.0f} hypercalls/s   cpu {t_crate:10,.0f}/s   "
              f"(ratio {t_rate / h_rate:.2f}, cpu {t_crate / h_crate:.2f}; goal >= 0.75)")
        print(f"  virtual time per call      {m.now() / a.hypercalls:8.0f} ns")
        if a.rss:
            print(f"peak RSS, every plugin on (history {a.history:,} records each):")
            for trace in (False, True):
                base, _, _ = peak_rss(elf, 0, a.history, trace)
                peak, kept, secs = peak_rss(elf, a.rss_hypercalls, a.history, trace)
                what = "plugins + JSONL trace" if trace else "plugins"
                print(f"  {what:<22} 0 hypercalls {base:6.0f} MB; {a.rss_hypercalls:,} hypercalls {peak:6.0f} MB "
                      f"({kept:,} kept by `hypercalls`, {secs} s)   (goal < 200 MB)")


if __name__ == "__main__":
    main()
