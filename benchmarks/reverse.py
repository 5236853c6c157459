#!/usr/bin/env python3
"""Time travel's costs, measured side by side in one run (issue 11).

1. reverse-stepi latency 10^6 guest instructions into a boot (host ms): the first one
   (which counts the instructions from the nearest checkpoint before: one re-execution of
   up to --checkpoint-every of virtual time), and the ones after it (a restore and a short
   re-execution each). Goal: < 100 ms.
2. A checkpoint's host time and memory: the first (the boot: the tracking starts there) and
   the periodic ones taken during the boot.
3. The boot (to poweroff) with --checkpoint-every 10 ms against none, runs interleaved,
   median of several; the ratio none/with. Goal: >= 0.8x.

The machine has two cores shared with other work: figures are host time and noisy; the
medians of interleaved runs and the process CPU time next to the wall time say how much.
Prints figures and ratios; it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xenwb.session import Session  # noqa: E402

EVERY_NS = 10_000_000


def reverse_latency(guest: str, vcpus: int, insns: int, steps: int) -> tuple[float, list[float], int]:
    """(first reverse-stepi ms, the next ones' ms, instructions executed)."""
    with Session(guest, vcpus=vcpus, plugins=(), console=lambda b: None, checkpoint_every_ns=EVERY_NS) as s:
        m = s.machine
        m.set_limits(max_instructions=insns)       # exact: the instruction hook counts from boot
        s.run()
        m.set_limits(None, None)
        done = m.instructions()
        vid = s.controller.last_stop.vcpu or 0
        t = time.perf_counter()
        s.reverse_step(vid)
        first = (time.perf_counter() - t) * 1e3
        after = []
        for _ in range(steps):
            t = time.perf_counter()
            s.reverse_step(vid)
            after.append((time.perf_counter() - t) * 1e3)
        return first, after, done


def checkpoint_costs(guest: str, vcpus: int) -> tuple[float, int, list[float], list[int], float]:
    """Boot checkpoint (ms, bytes), the periodic ones (ms, bytes each), MiB kept at the end."""
    with Session(guest, vcpus=vcpus, plugins=(), console=lambda b: None, checkpoint_every_ns=EVERY_NS) as s:
        s.run()
        cps = s.checkpoints()
        boot, rest = cps[0], cps[1:]
        return (boot.host_s * 1e3, boot.snap.size, [c.host_s * 1e3 for c in rest], [c.snap.size for c in rest],
                s.timetravel.memory_used() / 2**20)


def boot_once(guest: str, vcpus: int, every: int | None) -> tuple[float, float]:
    s = Session(guest, vcpus=vcpus, plugins=(), console=lambda b: None, history=every is not None,
                checkpoint_every_ns=every)
    w, c = time.perf_counter(), time.process_time()
    r = s.run()
    w, c = time.perf_counter() - w, time.process_time() - c
    assert r.reason.value == "shutdown", r
    s.close()
    return w, c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guest", default="pvdemo-pae")
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--runs", type=int, default=9, help="interleaved boots per configuration (default 9)")
    ap.add_argument("--steps", type=int, default=50, help="reverse-stepi after the first (default 50)")
    args = ap.parse_args()
    g, n = args.guest, args.vcpus
    print(f"xenwb time travel, {g} on {n} vcpu(s), checkpoints every {EVERY_NS / 1e6:g} ms of virtual time")

    first, after, done = reverse_latency(g, n, 10**6, args.steps)
    print(f"1. reverse-stepi {done:,} instructions into the boot: first {first:.1f} ms (counts from the nearest "
          f"checkpoint), then median {statistics.median(after):.1f} ms, max {max(after):.1f} ms over {len(after)}"
          f"   [goal < 100 ms: {'met' if max(first, *after) < 100 else 'NOT met'}]")

    bms, bsize, ms, sizes, kept = checkpoint_costs(g, n)
    print(f"2. checkpoint: the first (boot, starts the tracking) {bms:.1f} ms, {bsize / 1024:.0f} KiB; "
          f"the {len(ms)} periodic ones median {statistics.median(ms):.2f} ms (max {max(ms):.2f}), "
          f"median {statistics.median(sizes) / 1024:.0f} KiB each; {kept:.1f} MiB kept at poweroff")

    boot_once(g, n, None)                          # warm up: example build, imports, caches
    plain, with_cp = [], []
    for _ in range(args.runs):                     # interleaved: the machine's load hits both alike
        plain.append(boot_once(g, n, None))
        with_cp.append(boot_once(g, n, EVERY_NS))
    pw, pc = statistics.median(x[0] for x in plain), statistics.median(x[1] for x in plain)
    cw, cc = statistics.median(x[0] for x in with_cp), statistics.median(x[1] for x in with_cp)
    print(f"3. boot to poweroff: none {pw * 1e3:.1f} ms (cpu {pc * 1e3:.1f}), --checkpoint-every 10 ms "
          f"{cw * 1e3:.1f} ms (cpu {cc * 1e3:.1f}): {pw / cw:.2f}x wall, {pc / cc:.2f}x cpu, median of {args.runs}"
          f"   [goal >= 0.8x: {'met' if pw / cw >= 0.8 else 'NOT met'}]")


if __name__ == "__main__":
    main()
