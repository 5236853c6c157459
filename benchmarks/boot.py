#!/usr/bin/env python3
"""Speed of the emulated PV machines, 32-bit and 64-bit, measured side by side in one run.

1. Guest instructions per second: the same compute loop (5 instructions per
   iteration, with a load and a store) under xenwb (a booted PV domain: paging,
   the kernel in ring 1 (32-bit) or at CPL 3 in long mode (64-bit), the
   virtual-clock hook) and in bare unicorn with no hooks at all (UC_MODE_32,
   UC_MODE_64). Goal: ratio >= 0.5 for each width.
2. Hypercalls per second for a cheap hypercall (xen_version(XENVER_version)),
   `int $0x82` on 32-bit, an inline `syscall` on 64-bit; tracing off, and with a
   JSONL trace being written, best of --reps runs each, alternated. Goals: >= 100,000/s
   off, for each width; traced >= 0.75x of off.
3. The 64-bit example (pvdemo64) booted to poweroff on 1 and 2 vcpus: host and virtual time.
4. With --rss: peak RSS (VmHWM) of a process that runs the guest through
   --rss-hypercalls cheap hypercalls (default 10^6) with every plugin on (their history
   bounded by --history), against the same process with 0 hypercalls; and the same with
   a JSONL trace written too. Goal: under 200 MB.

Prints figures and ratios; it passes or fails nothing. Timings are host wall-clock
times: on a shared machine, compare the figures of one run with each other.
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


def run_xenwb(elf: Path, iters: int, hcalls: int, trace: bool = False, cpu: list[float] | None = None
              ) -> tuple[float, Machine]:
    m = Machine(elf)
    img = m.image
    v = m.vcpus[0]
    fmt = "<Q" if m.domain.word == 8 else "<I"
    v.write_virt(img.lookup("bench_iterations").address, struct.pack(fmt, iters))
    v.write_virt(img.lookup("bench_hypercalls").address, struct.pack(fmt, hcalls))
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


def measure(elf: Path, iterations: int, hypercalls: int, reps: int, label: str) -> None:
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
    h_best = t_best = float("inf")
    base_cpu: list[float] = []
    h_cpu: list[float] = []
    t_cpu: list[float] = []
    run_xenwb(elf, 0, 0, cpu=base_cpu)
    for _ in range(reps):                                 # alternated, best of each
        h_dt, m = run_xenwb(elf, 0, hypercalls, cpu=h_cpu)
        t_dt, _ = run_xenwb(elf, 0, hypercalls, trace=True, cpu=t_cpu)
        h_best, t_best = min(h_best, h_dt), min(t_best, t_dt)
    h_rate = hypercalls / max(h_best - base_dt, 1e-9)
    t_rate = hypercalls / max(t_best - base_dt, 1e-9)
    h_crate = hypercalls / max(min(h_cpu) - base_cpu[0], 1e-9)
    t_crate = hypercalls / max(min(t_cpu) - base_cpu[0], 1e-9)
    print(f"{label}: cheap hypercall (xen_version by {how}), {hypercalls} calls, best of {reps} "
          "(wall; per host CPU second):")
    print(f"  tracing off                {h_rate:10,.0f} hypercalls/s   cpu {h_crate:10,.0f}/s   (goal >= 100,000)")
    print(f"  JSONL trace on             {t_rate:10,.0f} hypercalls/s   cpu {t_crate:10,.0f}/s   "
          f"(ratio {t_rate / h_rate:.2f}, cpu {t_crate / h_crate:.2f}; goal >= 0.75)")
    print(f"  virtual time per call      {m.now() / hypercalls:8.0f} ns")


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
    ap.add_argument("--reps", type=int, default=3, help="runs of each hypercall measurement (best kept)")
    ap.add_argument("--width", choices=("32", "64", "both"), default="both")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS of a long run with every plugin on")
    ap.add_argument("--rss-hypercalls", type=int, default=1_000_000)
    ap.add_argument("--history", type=int, default=100_000, help="records each plugin keeps (--rss)")
    ap.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        elf, n, hist, trace = a.rss_child
        rss_child(elf, int(n), int(hist), trace == "1")
        return
    print(f"host load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (on {os.cpu_count()} cpus)")
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_guest(Path(tmp), 32)
        if a.width in ("32", "both"):
            measure(elf, a.iterations, a.hypercalls, a.reps, "32-bit PV, ring 1")
        if a.width in ("64", "both"):
            measure(build_guest(Path(tmp), 64), a.iterations, a.hypercalls, a.reps, "64-bit PV, long mode")
            boot_example("pvdemo64", 1)
            boot_example("pvdemo64", 2)
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
