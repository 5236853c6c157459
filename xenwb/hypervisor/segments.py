"""Segment checks for a 32-bit PV guest's data accesses, which unicorn does not make.

The CPU checks a data access against its segment (null selector, limit, expand-down) before
paging; QEMU only adds the segment base. So an access past a limit either works (when the
linear address is mapped: beyond the workbench's reach) or ends up as a #PF. At that #PF the
workbench asks what the CPU would have done first: for the faulting instruction's memory
operands, in the order it accesses them up to the one that faulted, the segment the CPU uses
(an override; SS for an EBP or ESP base and for the stack; ES for a string destination; DS
otherwise) and its descriptor. A null selector (not SS) gives #GP(0); an offset outside the
limit #GP(0), or #SS(0) for an SS-based operand (Intel SDM vol. 3, 5.3 "Limit checking"; Xen
reflects the hardware's exception as it is, traps.c).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capstone import x86_const as CX

from xenwb.abi import constants as C
from xenwb.hypervisor.emulate import decode
from xenwb.hypervisor.traps import descriptor_of

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

_SEG = {CX.X86_REG_DS: "ds", CX.X86_REG_ES: "es", CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs",
        CX.X86_REG_SS: "ss", CX.X86_REG_CS: "cs"}
_GPR = {CX.X86_REG_EAX: "eax", CX.X86_REG_EBX: "ebx", CX.X86_REG_ECX: "ecx", CX.X86_REG_EDX: "edx",
        CX.X86_REG_ESI: "esi", CX.X86_REG_EDI: "edi", CX.X86_REG_EBP: "ebp", CX.X86_REG_ESP: "esp",
        CX.X86_REG_AX: "eax", CX.X86_REG_BX: "ebx", CX.X86_REG_CX: "ecx", CX.X86_REG_DX: "edx",
        CX.X86_REG_SI: "esi", CX.X86_REG_DI: "edi", CX.X86_REG_BP: "ebp", CX.X86_REG_SP: "esp"}
_STACK_BASES = (CX.X86_REG_EBP, CX.X86_REG_ESP, CX.X86_REG_BP, CX.X86_REG_SP)
_PUSHES = ("push", "call", "pushal", "pushad", "pushfd", "pushf")
_POPS = ("pop", "ret", "popal", "popad", "popfd", "popf", "leave")


def _limits(d: int) -> tuple[int, int]:
    """The valid offsets [lo, hi] of a data segment descriptor (expand-down: above the limit)."""
    a, b = d & 0xFFFFFFFF, d >> 32
    limit = (a & 0xFFFF) | (b & 0xF0000)
    if b & (1 << 23):
        limit = (limit << 12) | 0xFFF
    if (b >> 8) & 0xC == 0x4:                    # data, expand-down
        return limit + 1, 0xFFFFFFFF if b & (1 << 22) else 0xFFFF
    return 0, limit


def _accesses(vcpu: Vcpu, insn, regs: dict[str, int]) -> list[tuple[str, int, int]]:
    """(segment register, offset, size) of each memory access, in the order the CPU makes them."""
    out = []
    mnemonic = insn.mnemonic.split()[-1]
    mems = [op for op in insn.operands if op.type == CX.X86_OP_MEM]
    if mnemonic.startswith(("movs", "cmps")) and len(mems) == 2:
        mems.reverse()                            # the source (DS:ESI) is read first
    if mnemonic == "lea" or mnemonic.startswith("nop"):
        mems = []
    for op in mems:
        m = op.mem
        off = m.disp
        if m.base:
            off += regs[_GPR[m.base]]
        if m.index:
            off += regs[_GPR[m.index]] * m.scale
        seg = _SEG[m.segment] if m.segment else ("ss" if m.base in _STACK_BASES else "ds")
        out.append((seg, off & 0xFFFFFFFF, op.size))
    esp = regs["esp"]
    if mnemonic.startswith(_PUSHES) and not mnemonic.startswith("pushal") or mnemonic == "enter":
        out.append(("ss", (esp - 4) & 0xFFFFFFFF, 4))
    elif mnemonic in ("pushal", "pushad"):
        out.append(("ss", (esp - 32) & 0xFFFFFFFF, 32))
    elif mnemonic.startswith(_POPS) and mnemonic != "leave":
        out.append(("ss", esp, 32 if mnemonic in ("popal", "popad") else 4))
    return out


def segment_fault(vcpu: Vcpu, regs: dict[str, int], cr2: int) -> int | None:
    """The vector (#GP or #SS, error code 0) the CPU would have raised instead of the #PF at
    cr2, or None when the access was within its segment."""
    insn = decode(vcpu, regs["eip"])
    if insn is None:
        return None
    try:
        accesses = _accesses(vcpu, insn, regs)
    except KeyError:
        return None                               # an addressing form not modelled here
    for seg, off, size in accesses:
        sel = regs[seg]
        d = None if not sel & ~3 else descriptor_of(vcpu, sel)
        if d is None:
            if seg == "ss":
                return None                       # SS cannot be null in protected mode
            return C.TRAP_gp_fault               # a null (or vanished) selector
        lo, hi = _limits(d)
        if off < lo or off + size - 1 > hi:
            return C.TRAP_stack_error if seg == "ss" else C.TRAP_gp_fault
        base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
        if (base + off) & ~0xFFF <= cr2 < (base + off + size + 0xFFF) & ~0xFFF:
            return None                           # this access took the #PF, within its segment
    return None
