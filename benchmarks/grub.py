#!/usr/bin/env python3
"""Boot Debian's GRUB for Xen (grub-i386-xen.bin, package grub-xen-host) to its `grub>` prompt.

Prints, for each of --runs boots: the host time to build the domain, the host and
virtual time from the first guest instruction to the prompt, the hypercalls made; then
the time one `echo hello` takes and the `halt` that shuts the domain down.
Goal: under 10 s host time to the prompt. It passes or fails nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from xenwb.machine import Machine, StopReason  # noqa: E402

GRUB = Path("/usr/lib/grub-xen/grub-i386-xen.bin")
PROMPT = b"grub> "


class Console:
    """Collects the console; stops the machine once `want` has appeared after `mark`."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.buf = bytearray()
        self.mark = 0
        self.want: bytes | None = None
        m.domain.console_sink = self.sink

    def sink(self, data: bytes) -> None:
        self.buf += data
        if self.want is not None and self.want in self.buf[self.mark:]:
            self.m.stop()

    def run_until(self, want: bytes, virtual_limit_ns: int = 200_000_000) -> tuple[float, int]:
        """Host seconds and virtual ns until `want` appears in new output."""
        self.want = want
        v0 = self.m.now()
        self.m.set_limits(timeout_ns=v0 + virtual_limit_ns)
        t = time.perf_counter()
        r = self.m.run()
        dt = time.perf_counter() - t
        if r.reason is not StopReason.requested:
            raise SystemExit(f"grub: stopped early: {r.reason.value} {r.detail}")
        self.mark = len(self.buf)
        return dt, self.m.now() - v0


def boot(memory: int) -> tuple[Machine, Console, dict[str, float]]:
    t = time.perf_counter()
    m = Machine(GRUB, memory_mib=memory)
    build = time.perf_counter() - t
    c = Console(m)
    host, virt = c.run_until(PROMPT)
    return m, c, {"build": build, "host": host, "virtual": virt / 1e9,
                  "hypercalls": m.domain.stats["hypercalls"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", type=int, default=64, help="guest memory in MiB (GRUB needs 32 or more)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not GRUB.exists():
        raise SystemExit(f"{GRUB} is missing: apt-get install grub-xen-host")
    print(f"{GRUB} ({GRUB.stat().st_size:,} bytes), {a.memory} MiB")
    print("run  build_s  host_to_prompt_s  virtual_to_prompt_s  hypercalls")
    best = None
    for i in range(a.runs):
        m, c, r = boot(a.memory)
        print(f"{i + 1:3}  {r['build']:7.3f}  {r['host']:16.3f}  {r['virtual']:19.6f}  {r['hypercalls']:10}")
        best = r if best is None or r["host"] < best["host"] else best
    assert best is not None
    total = best["build"] + best["host"]
    print(f"best: {total:.3f} s host from start (build + boot) to `grub>`, "
          f"{best['virtual']:.6f} s virtual   (goal < 10 s host)")
    m.console_input(b"echo hello\r")
    host, virt = c.run_until(b"\rhello\n\r" + PROMPT)
    print(f"`echo hello`: {host:.3f} s host, {virt / 1e9:.6f} s virtual")
    m.console_input(b"halt\r")
    m.set_limits(timeout_ns=m.now() + 200_000_000)
    t = time.perf_counter()
    r = m.run()
    host = time.perf_counter() - t
    print(f"`halt`: {r.reason.value} ({r.detail}) after {host:.3f} s host")


if __name__ == "__main__":
    main()
