"""An independent judge of single steps: where may one x86 instruction take the pc?

Decoded with capstone (Intel syntax, with operand details) from guest memory and the
registers before the step: the next instruction, a branch's target (direct, or computed from
registers and memory for indirect ones), a `ret`'s return address, the iret hypercall's
target; and, since any instruction may fault or return from the hypervisor with an event,
the vcpu's trap handlers and callbacks.
"""

from __future__ import annotations

import struct
from functools import cache

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from capstone import x86_const as X

from xenwb.hypervisor.vcpu import Vcpu

REGS = {X.X86_REG_EAX: "eax", X.X86_REG_EBX: "ebx", X.X86_REG_ECX: "ecx", X.X86_REG_EDX: "edx",
        X.X86_REG_ESI: "esi", X.X86_REG_EDI: "edi", X.X86_REG_EBP: "ebp", X.X86_REG_ESP: "esp"}


@cache
def _cs() -> Cs:
    md = Cs(CS_ARCH_X86, CS_MODE_32)
    md.detail = True
    return md


def decode(v: Vcpu, pc: int):
    code = v.debug_read(pc, 16)
    return next(_cs().disasm(code, pc, 1), None)


def _u32(v: Vcpu, va: int) -> int | None:
    data = v.debug_read(va & 0xFFFFFFFF, 4)
    return struct.unpack("<I", data)[0] if len(data) == 4 else None


def _operand_target(v: Vcpu, op, regs: dict[str, int]) -> int | None:
    if op.type == X.X86_OP_IMM:
        return op.imm & 0xFFFFFFFF
    if op.type == X.X86_OP_REG:
        return regs.get(REGS.get(op.reg, ""), None)
    if op.type == X.X86_OP_MEM:
        m = op.mem
        addr = m.disp
        if m.base:
            addr += regs[REGS[m.base]]
        if m.index:
            addr += regs[REGS[m.index]] * m.scale
        return _u32(v, addr)
    return None


def successors(v: Vcpu, regs: dict[str, int]) -> tuple[object, set[int]]:
    """(the instruction at the pc, the pcs one step of it may lead to)."""
    pc = regs["eip"]
    insn = decode(v, pc)
    assert insn is not None, f"cannot decode at {pc:#x}"
    out = {pc + insn.size}
    groups = set(insn.groups)
    m = insn.mnemonic
    if X.X86_GRP_JUMP in groups or X.X86_GRP_CALL in groups:
        t = _operand_target(v, insn.operands[0], regs)
        if t is not None:
            out.add(t)
        if m in ("jmp", "call", "ljmp", "lcall"):
            out.discard(pc + insn.size)
            if t is None:
                out.add(-1)
    if X.X86_GRP_RET in groups:
        out = {_u32(v, regs["esp"]) or -1}
    if m == "int" and insn.operands[0].imm == 0x82 and regs["eax"] == 23:
        out.add(_u32(v, regs["esp"] + 4) or -1)      # iret hypercall: EAX, EIP, CS ... on the stack
    for t in v.trap_ctxt:
        if t is not None:
            out.add(t.address)
    out |= {v.event_eip, v.failsafe_eip}
    return insn, out
