"""Segment limits, expand-down segments and null selectors in a 32-bit PV guest: where the
access faults under unicorn (a #PF, as it checks no limit), the guest gets what the CPU gives
before paging, #GP(0) or #SS(0) for an SS-based operand (Intel SDM vol. 3, 5.3; Xen's traps.c
reflects them as they are). The guest is tests/guests/seg.S."""

from __future__ import annotations

import struct

from support.harness import Hv

from xenwb.machine import Machine, StopReason

GP, SS, PF = 13, 12, 14


def test_segment_checks_before_paging(guests) -> None:
    g = guests["seg"]
    s = g.symbols
    hv = Hv(Machine(g.path))
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    hv.m.set_limits(max_instructions=200_000)
    r = hv.m.run()
    assert r.reason is StopReason.shutdown and b"".join(out) == b"(d1) seg: done\n", (r, b"".join(out))
    assert hv.u32(s["set_gdt_rc"]) == 0
    n = hv.u32(s["nfaults"])
    log = struct.unpack(f"<{3 * n}I", hv.get(s["flog"], 12 * n))
    faults = [log[3 * i: 3 * i + 3] for i in range(n)]
    assert faults == [
        (GP, 0, s["p1"]),          # past a 4 KiB limit
        (SS, 0, s["p2"]),          # an EBP-based operand: SS, past its limit
        (GP, 0, s["p3"]),          # below an expand-down segment's offsets
        (GP, 0, s["p5"]),          # a null FS
        (PF, 0, s["p6"]),          # inside the flat segment: the #PF itself (read, not present)
        (PF, 2, s["p7"]),          # stosl: ES:EDI, a write
    ], [tuple(hex(x) for x in f) for f in faults]
    assert hv.u32(s["window_word"]) == 0x5E65E6   # the expand-down segment's valid part
