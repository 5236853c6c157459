#!/usr/bin/env python3
"""Cost of tracing, measured side by side in one run.

1. The example boot (pvdemo-pae) with every plugin enabled and a JSONL trace being
   written, against the same boot with everything off: guest instructions per
   second (the boot's instruction count is measured once, exactly). Goal: ratio >= 0.9.
2. Trace events written per second by each writer (events recorded from real boots).
   Goal: >= 100,000/s.

Prints figures and ratios; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xenwb.examples import resolve_guest  # noqa: E402
from xenwb.machine import Machine  # noqa: E402
from xenwb.session import ALL_PLUGINS, Session  # noqa: E402
from xenwb.trace_events import Formatter  # noqa: E402
from xenwb.tracefile import JsonlWriter, PerfettoWriter  # noqa: E402


def boot_instructions(elf: Path) -> int:
    m = Machine(elf)
    m.domain.console_sink = lambda b: None
    m.set_limits(max_instructions=1 << 62)
    m.run()
    return m.instructions()


def time_boot(elf: Path, plugins: tuple[str, ...], trace: bool) -> tuple[float, float]:
    """One boot: (wall seconds, host CPU seconds of this process)."""
    s = Session(elf, plugins=plugins, console=lambda b: None)
    if trace:
        s.record(os.devnull, "jsonl")
    t, c = time.perf_counter(), time.process_time()
    s.run()
    dt, dc = time.perf_counter() - t, time.process_time() - c
    s.close()
    return dt, dc


def recorded_events(elf: Path, boots: int) -> tuple[list[tuple], Formatter]:
    """The records of real boots (as writers receive them), and a formatter bound to the guest."""
    recs: list[tuple] = []
    fmt = None
    for _ in range(boots):
        s = Session(elf, plugins=ALL_PLUGINS, console=lambda b: None)
        s.machine.domain.trace.subscribe_records(recs.append)
        s.run()
        fmt = s.machine.domain.trace.formatter
    assert fmt is not None
    return recs, fmt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    elf = resolve_guest("pvdemo-pae")
    n = boot_instructions(elf)
    best = {False: [float("inf")] * 2, True: [float("inf")] * 2}
    for _ in range(a.reps):                        # alternated: a busy machine slows both alike
        for on in (False, True):
            dt, dc = time_boot(elf, ALL_PLUGINS if on else (), on)
            best[on] = [min(best[on][0], dt), min(best[on][1], dc)]
    (off, off_cpu), (on, on_cpu) = best[False], best[True]
    print(f"example boot (pvdemo-pae), {n} guest instructions, best of {a.reps} (wall; host CPU time):")
    print(f"  plugins off, no trace        {off * 1e3:8.2f} ms   {n / off / 1e6:7.2f} M instructions/s"
          f"   cpu {off_cpu * 1e3:7.2f} ms")
    print(f"  all plugins + JSONL trace    {on * 1e3:8.2f} ms   {n / on / 1e6:7.2f} M instructions/s"
          f"   cpu {on_cpu * 1e3:7.2f} ms")
    print(f"  ratio on / off               {off / on:8.2f}   cpu {off_cpu / on_cpu:.2f}   (goal >= 0.9)")
    evs, fmt = recorded_events(elf, 20)
    for cls in (JsonlWriter, PerfettoWriter):
        w = cls.open(os.devnull, fmt)
        t = time.perf_counter()
        for i, ev in enumerate(evs):
            w.add(ev)
            if i % 400 == 399:
                w.flush_pending()                   # a vcpu turn
        w.close()
        dt = time.perf_counter() - t
        print(f"  {cls.format:<8} writer: {len(evs)} events in {dt * 1e3:7.1f} ms = {len(evs) / dt:10,.0f} events/s"
              f"   (goal >= 100,000)")


if __name__ == "__main__":
    main()
