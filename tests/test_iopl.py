"""Port I/O and CLI/STI under the virtual IOPL, from a guest's kernel and user mode: what
xen/arch/x86/pv/emul-priv-op.c (iopl_ok, guest_io_okay), physdev.c (PHYSDEVOP_set_iopl,
PHYSDEVOP_set_iobitmap) and pv/iret.c (VMASST_TYPE_architectural_iopl takes the IOPL of the
iret frame) allow, and #GP(0) with EIP on the instruction where they do not. Unicorn would
execute every IN/OUT; the native hook of xenwb/iogate.py refuses them."""

from __future__ import annotations

import struct

from support.harness import Hv, run_to_guest
from support.harness64 import KERNEL_CS, PAGE, Hv64

from xenwb.abi import constants as C
from xenwb.machine import Machine, StopReason


def test_port_io_follows_the_virtual_iopl(guests) -> None:
    g = guests["iopl"]
    s = g.symbols
    hv = Hv(Machine(g.path))
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    events: list[dict] = []
    hv.dom.trace.subscribe(events.append, {"io", "fault"})
    hv.m.set_limits(max_instructions=200_000)
    r = hv.m.run()
    assert r.reason is StopReason.shutdown, (r, b"".join(out))
    assert b"".join(out) == b"(d1) iopl: done\n"
    n = hv.u32(s["nfaults"])
    log = struct.unpack(f"<{2 * n}I", hv.get(s["gp_log"], 8 * n))
    faults = [(log[2 * i], log[2 * i + 1]) for i in range(n)]
    assert faults == [(0, s[name]) for name in (
        "k_in_imm", "k_out_imm", "k_in_dx", "k_cli", "k_sti",      # kernel, vIOPL 0
        "u_in1", "u_cli1",                                          # user, vIOPL 1
        "u_in3",                                                    # user, architectural, iret IOPL 0
        "u_in81")], [hex(e) for _, e in faults]                    # user, the bitmap refuses 0x81
    assert [hv.u32(s["k_results"] + 4 * i) & 0xFF for i in range(2)] == [0xFF, 0xFF]
    assert [hv.u32(s["u_results"] + 4 * i) & 0xFF for i in range(3)] == [0xFF, 0xFF, 0xFF]
    assert hv.u32(s["iobitmap_rc"]) == 0
    assert hv.v.io_gate.refused == 6                                # the CLI/STIs fault natively
    io = [(e["name"], e["port"], e["gp"]) for e in events if e["kind"] == "io"]
    assert io[:3] == [("in", 0x80, True), ("out", 0x80, True), ("in", 0x80, True)]
    assert sum(gp for _, _, gp in io) == 6 and len(io) == 6 + 5   # six refused, five allowed
    assert sum(e["kind"] == "fault" and e["name"] == "#GP" for e in events) == n


def test_port_io_64bit_kernel_mode() -> None:
    """A 64-bit guest kernel runs at CPL 3 and Xen tells its modes apart (guest_kernel_mode):
    `in`/`out` from kernel mode are #GP(0) with vIOPL 0, allowed with vIOPL 1
    (PHYSDEVOP_set_iopl), and always allowed with architectural_iopl (iopl_ok: kernel "CPL 0")."""
    hv = Hv64.example("pvdemo64")
    run_to_guest(hv.m)
    v = hv.v
    code = hv.scratch_page()
    handler = code + 0x800
    stack = hv.scratch_page() + PAGE
    v.write_virt(code, bytes([0xE4, 0x80, 0x90, 0xE6, 0x80, 0x90]))      # in $0x80,%al; nop; out %al,$0x80
    assert hv.set_trap_table((13, 0, KERNEL_CS, handler)) == 0

    def run(offset: int) -> tuple[bool, int, int]:
        """(ran, RAX, the #GP error code) for the instruction at code + offset."""
        cpu = v.cpu
        cpu.set_reg("rsp", stack)
        cpu.set_reg("rax", 0)
        bounces = v.bounces
        cpu.pc = code + offset
        cpu.uc.emu_start(code + offset, handler, count=1)
        if v.bounces == bounces:
            return True, cpu.reg("rax"), 0
        assert cpu.pc == handler
        frame = hv.u64s(cpu.reg("rsp"), 4)                # RCX, R11, error code, RIP (traps64.py)
        assert frame[3] == code + offset                  # RIP on the instruction
        return False, 0, frame[2]

    assert run(0) == (False, 0, 0) and run(3) == (False, 0, 0)
    assert hv.call(C.Hypercall.physdev_op, 6, hv.put_u32(1)) == 0
    assert run(0) == (True, 0xFF, 0) and run(3)[0]
    assert hv.call(C.Hypercall.physdev_op, 6, hv.put_u32(0)) == 0
    assert not run(0)[0]
    assert hv.call(C.Hypercall.vm_assist, 0, C.Vmasst.architectural_iopl) == 0
    assert run(0) == (True, 0xFF, 0)
