#!/usr/bin/env python3
"""Event channels and idle time, measured side by side in one run.

1. Events delivered per second, tracing off:
   * one vcpu sending to itself: bind_ipi + EVTCHNOP_send in a loop, with events unmasked,
     so every send is delivered by an upcall on the way out of the hypercall (send hypercall,
     bounce to the event callback, the callback's scan, iret hypercall);
   * two vcpus ping-ponging IPIs: vcpu 0 sends, blocks until the answer; vcpu 1 wakes,
     takes the upcall and answers from its callback (two events per round trip, each with a
     wake-up of a blocked vcpu and a switch between engines).
2. The cost of an idle vcpu: the guest only blocks (SCHEDOP_block) with Xen's default 10 ms
   periodic timer bound; virtual time jumps from tick to tick. Host CPU time per virtual
   second (goal: near zero), the same with a second idle vcpu, and a single long sleep (a
   single-shot timer far ahead), which shows what the idle jump itself costs.

The guest is tests/guests/ev_timer.S (the tests' tiny guest). Prints figures; passes or
fails nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from ev_support import EvGuest, build_ev_guest  # noqa: E402

MS = 1_000_000


def timed(g: EvGuest) -> tuple[float, float]:
    """(wall seconds, host CPU seconds) of the run."""
    w, c = time.perf_counter(), time.process_time()
    r = g.run()
    dw, dc = time.perf_counter() - w, time.process_time() - c
    assert r.reason.value == "shutdown", r
    return dw, dc


def self_ipi(elf: Path, n: int) -> tuple[float, EvGuest]:
    base, _ = timed(EvGuest(elf, "self_ipi", count=0))
    g = EvGuest(elf, "self_ipi", count=n)
    dt, _ = timed(g)
    assert g.u32("ipis") == n
    return max(dt - base, 1e-9), g


def pingpong(elf: Path, n: int) -> tuple[float, EvGuest]:
    g0 = EvGuest(elf, "pingpong", vcpus=2, count=0)
    g0.start_ap()
    base, _ = timed(g0)
    g = EvGuest(elf, "pingpong", vcpus=2, count=n)
    g.start_ap()
    dt, _ = timed(g)
    assert g.u32("ipis", 0) == n and g.u32("ipis", 1) == n
    return max(dt - base, 1e-9), g


def idle(elf: Path, ticks: int, vcpus: int) -> tuple[float, float, EvGuest]:
    g = EvGuest(elf, "idle", vcpus=vcpus, count=ticks)
    if vcpus > 1:
        g.start_ap()                     # vcpu 1 blocks in ap_entry for the whole run
    wall, cpu = timed(g)
    assert g.u32("ticks") == ticks
    return wall, cpu, g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000, help="self-sent events")
    ap.add_argument("--rounds", type=int, default=5_000, help="IPI ping-pong round trips")
    ap.add_argument("--idle-seconds", type=int, default=100, help="virtual seconds of idling")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_ev_guest(Path(tmp))

        dt, g = self_ipi(elf, a.events)
        hc = g.dom.stats["hypercalls"]
        print(f"events, one vcpu sending to itself ({a.events} events, tracing off):")
        print(f"  delivered                  {a.events / dt:10,.0f} events/s   ({dt / a.events * 1e6:.1f} us each)")
        print(f"  hypercalls                 {hc / dt:10,.0f} /s          (send + iret per event)")
        print(f"  virtual time per event     {g.m.now() / a.events:10.0f} ns")

        dt, g = pingpong(elf, a.rounds)
        ev = 2 * a.rounds
        print(f"events, two vcpus ping-ponging IPIs ({a.rounds} round trips):")
        print(f"  delivered                  {ev / dt:10,.0f} events/s   ({dt / ev * 1e6:.1f} us each, "
              f"with a wake-up and an engine switch)")
        print(f"  round trips                {a.rounds / dt:10,.0f} /s")
        print(f"  virtual time per round     {g.m.now() / a.rounds:10.0f} ns")

        ticks = a.idle_seconds * 100
        for vcpus in (1, 2):
            wall, cpu, g = idle(elf, ticks, vcpus)
            virt = g.m.now() / 1e9
            what = ("1 vcpu blocked with a 10 ms periodic timer" if vcpus == 1 else
                    "2 vcpus: vcpu 0 as above, vcpu 1 blocked with no timer bound")
            print(f"idle, {what} ({virt:.0f} virtual s, {ticks} ticks):")
            print(f"  host CPU per virtual s     {cpu / virt * 1e3:10.3f} ms    (goal: near zero)")
            print(f"  host wall per virtual s    {wall / virt * 1e3:10.3f} ms")
            print(f"  speed-up over real time    {virt / wall:10,.0f} x")
            print(f"  host CPU per tick          {cpu / ticks * 1e6:10.1f} us    (the guest's upcall, iret, block)")
        base, _ = timed(EvGuest(elf, "singleshot", deadline=1))
        g = EvGuest(elf, "singleshot", deadline=a.idle_seconds * 1_000_000_000)
        wall, cpu = timed(g)
        print(f"idle, 1 vcpu in one long sleep (a single-shot timer {a.idle_seconds} virtual s ahead):")
        print(f"  host CPU for the sleep     {max(cpu - base, 0) * 1e3:10.3f} ms    "
              f"({max(cpu - base, 0) / a.idle_seconds * 1e6:.1f} us per virtual s)")


if __name__ == "__main__":
    main()
