"""Disassembly for people, one syntax everywhere: AT&T, as gdb prints it (capstone).

The hypervisor's instruction decoding (hypervisor/emulate.py) uses its own Intel-syntax
capstone engine with operand details; this one is for the shell's pane, the `disas`
command and crash reports.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine


@cache
def _engine(bits: int) -> Cs:
    md = Cs(CS_ARCH_X86, CS_MODE_64 if bits == 64 else CS_MODE_32)
    md.syntax = CS_OPT_SYNTAX_ATT
    return md


def disassemble(m: Machine, v: Vcpu, addr: int, count: int, before: int = 0) -> list[tuple[int, str]]:
    """Lines `ADDR <sym+off>: insn operands` from addr (and up to `before` instructions
    before it, when an instruction boundary that decodes into addr can be found)."""
    md = _engine(v.code_bits())           # 64-bit, or the compat code a 64-bit guest's user may run
    start = addr
    if before:
        for back in range(before * 7, 0, -1):
            code = v.debug_read(addr - back, back + 16)
            insns = list(md.disasm(code, addr - back))
            if any(i.address == addr for i in insns):
                keep = [i for i in insns if i.address < addr][-before:]
                start = keep[0].address if keep else addr
                break
    code = v.debug_read(start, (count + before) * 16)
    out = []
    width = 16 if m.domain.word == 8 else 8
    for insn in md.disasm(code, start):
        sym = m.domain.symbolize(insn.address)
        label = f"<{sym}>" if sym else ""
        out.append((insn.address, f"{insn.address:0{width}x} {label:<24} {insn.mnemonic} {insn.op_str}".rstrip()))
        if len(out) >= count + before:
            break
    return out
