"""Call gates of a 32-bit PV guest: Xen stores them with DPL 0 (descriptor-tables.c
check_descriptor) and emulates the far call or jump through one (pv/emul-gate-op.c
pv_emulate_gate_op): the gate's DPL against CPL and the selector's RPL, the stack switch to
kernel_ss:kernel_sp with the gate's parameters for a call from ring 3, #GP with the gate's
selector when refused. The guest is tests/guests/gate.S."""

from __future__ import annotations

import struct

from support.harness import Hv

from xenwb.machine import Machine, StopReason

FLAT_KERNEL_CS, FLAT_KERNEL_DS, FLAT_USER_CS, FLAT_USER_DS = 0xE019, 0xE021, 0xE02B, 0xE033


def test_call_gates_from_ring1_and_ring3(guests) -> None:
    g = guests["gate"]
    s = g.symbols
    hv = Hv(Machine(g.path))
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    hv.m.set_limits(max_instructions=200_000)
    r = hv.m.run()
    assert r.reason is StopReason.shutdown and b"".join(out) == b"(d1) gate: done\n", (r, b"".join(out))
    assert hv.u32(s["set_gdt_rc"]) == 0
    ret, cs, esp = struct.unpack("<3I", hv.get(s["k_frame"], 12))
    assert (ret, cs, esp) == (s["k_call_ret"], FLAT_KERNEL_CS, hv.u32(s["k_esp_before"]) - 8)
    eip, ucs, parm, uesp, uss, kesp, gate_cs = struct.unpack("<7I", hv.get(s["u_frame"], 28))
    assert (eip, ucs, parm) == (s["u_call_ret"], FLAT_USER_CS, 0x5EED)
    assert (uesp, uss) == (hv.u32(s["u_esp_before"]), FLAT_USER_DS)
    assert kesp == s["kstack_top"] - 20 and gate_cs & 0xFFFF == FLAT_KERNEL_CS
    n = hv.u32(s["ngp"])
    log = struct.unpack(f"<{2 * n}I", hv.get(s["gp_log"], 8 * n))
    assert [(log[2 * i], log[2 * i + 1]) for i in range(n)] == [(0x08, s["k_refused"]), (0x18, s["u_refused"])]
