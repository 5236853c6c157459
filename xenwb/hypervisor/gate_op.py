"""Call gates of a 32-bit PV guest, emulated as xen/arch/x86/pv/emul-gate-op.c does.

check_descriptor (descriptors.py) stores a guest call gate with DPL 0 and the guest's DPL in
the RPL of its target selector, so a far `call`/`jmp` through it always faults: #GP with the
gate's selector as error code. Xen (traps.c do_general_protection: a 32-bit vcpu's #GP with a
non-zero error code) then does the transfer itself: the gate's DPL and the selector's RPL
checked against the caller, the target code segment's privilege, for a call to an inner ring
the stack switch to kernel_ss:kernel_sp (SS, ESP and the gate's parameters copied), then CS
and the return EIP pushed. Refused: #GP with the selector as error code (or #NP, #TS, #SS).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from capstone import x86_const as CX

from xenwb.abi import constants as C
from xenwb.hypervisor import ldt
from xenwb.hypervisor.emulate import decode
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.traps import bounce_exception, descriptor_of

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

SEG_S, SEG_P, SEG_CODE, SEG_EC, SEG_WR = 1 << 12, 1 << 15, 1 << 11, 1 << 10, 1 << 9
SEG_TYPE, SEG_DPL, SEG_G = 0xF << 8, 3 << 13, 1 << 23
GUEST_KERNEL_RPL = 1
_SEG_REG = {CX.X86_REG_DS: "ds", CX.X86_REG_ES: "es", CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs",
            CX.X86_REG_SS: "ss", CX.X86_REG_CS: "cs"}
_GPR = {CX.X86_REG_EAX: "eax", CX.X86_REG_EBX: "ebx", CX.X86_REG_ECX: "ecx", CX.X86_REG_EDX: "edx",
        CX.X86_REG_ESI: "esi", CX.X86_REG_EDI: "edi", CX.X86_REG_EBP: "ebp", CX.X86_REG_ESP: "esp"}


class Refused(Exception):
    """The exception Xen injects instead of the transfer."""

    def __init__(self, vector: int, error_code: int | None) -> None:
        super().__init__(vector, error_code)
        self.vector, self.error_code = vector, error_code


def _raw_descriptor(vcpu: Vcpu, sel: int) -> int | None:
    """gdt_ldt_desc_ptr + get_unsafe: the descriptor as the vcpu's tables hold it (an LDT
    page is mapped, and so validated, first, as the access through the shadow would)."""
    if sel & 4:
        page = ((sel & ~7) >> 12) & 15
        if vcpu.ldt_mapped[page] is None and not ldt.map_ldt_shadow_page(vcpu, sel & ~7):
            return None
    return descriptor_of(vcpu, sel)


def read_gate_descriptor(vcpu: Vcpu, gate_sel: int) -> tuple[int, int, int] | None:
    """(target selector, offset, access rights with the guest's DPL) of a call gate, or None."""
    ents = vcpu.ldt_ents if gate_sel & 4 else vcpu.gdt_ents
    if gate_sel < 4 or gate_sel >> 3 >= ents:
        return None
    d = _raw_descriptor(vcpu, gate_sel)
    if d is None:
        return None
    a, b = d & 0xFFFFFFFF, d >> 32
    sel, off, ar = (a >> 16) & 0xFFFC, (a & 0xFFFF) | (b & 0xFFFF0000), b & 0xFFFF
    if ar & SEG_DPL:
        return None
    ar |= (a >> 3) & SEG_DPL
    if ar & 0x1F00 == 0x0400:
        off &= 0xFFFF
    elif ar & 0x1F00 != 0x0C00:
        return None
    return sel, off, ar


def read_descriptor(vcpu: Vcpu, sel: int) -> tuple[int, int, int] | None:
    """pv_emul_read_descriptor: (base, limit, access rights) of a segment selector; an LDT
    selector past the LDT reads as a zero descriptor; None when it cannot be read."""
    if sel < 4:
        return None
    if sel & 4 and sel >> 3 >= vcpu.ldt_ents:
        d = 0
    else:
        got = _raw_descriptor(vcpu, sel)
        if got is None:
            return None
        d = got
    a, b = d & 0xFFFFFFFF, d >> 32
    b &= ~(1 << 21)                               # not an instruction fetch: no L bit
    base = (a >> 16) + ((b & 0xFF) << 16) + (b & 0xFF000000)
    limit = (a & 0xFFFF) | (b & 0xF0000)
    if b & SEG_G:
        limit = ((limit + 1) << 12) - 1
    return base, limit, b & 0x00F0FF00


def _stack_ok(ar: int, limit: int, esp: int, decr: int) -> bool:
    """check_stack_limit (expand-down stacks too)."""
    lo, top = (esp - decr) & 0xFFFFFFFF, (esp - 1) & 0xFFFFFFFF
    if not lo < top:
        return False
    return top <= limit if not ar & SEG_EC else lo > limit


def _far_operand(vcpu: Vcpu, insn, regs: dict[str, int]) -> tuple[int, int] | None:
    """(jump: 0 call / 1 jmp, the selector operand) of a far call/jmp, or None."""
    opcode = insn.opcode[0]
    if opcode in (0x9A, 0xEA):
        return (0 if opcode == 0x9A else 1), insn.operands[0].imm & 0xFFFF
    reg = (insn.modrm >> 3) & 7
    if opcode == 0xFF and reg in (3, 5) and insn.operands and insn.operands[0].type == CX.X86_OP_MEM:
        m = insn.operands[0].mem
        ea = m.disp
        if m.base:
            ea += regs[_GPR[m.base]]
        if m.index:
            ea += regs[_GPR[m.index]] * m.scale
        seg = _SEG_REG.get(m.segment) if m.segment else ("ss" if m.base in (CX.X86_REG_EBP, CX.X86_REG_ESP)
                                                         else "ds")
        d = read_descriptor(vcpu, regs[seg])
        base = d[0] if d is not None else 0
        try:
            sel, = struct.unpack("<H", vcpu.read_virt((base + ea + 4) & 0xFFFFFFFF, 2))
        except GuestFault as e:
            raise Refused(C.TRAP_page_fault, e.va) from None
        return (0 if reg == 3 else 1), sel
    return None


def far_transfer_selector(vcpu: Vcpu, regs: dict[str, int]) -> int | None:
    """The #GP error code the CPU gave a far call/jmp that faulted: its selector (RPL
    cleared); None for another instruction."""
    insn = decode(vcpu, regs["eip"])
    if insn is None:
        return None
    try:
        far = _far_operand(vcpu, insn, regs)
    except (Refused, KeyError):
        return None
    return None if far is None else far[1] & 0xFFFC


def emulate_gate_op(vcpu: Vcpu, regs: dict[str, int], error_code: int) -> None:
    """pv_emulate_gate_op for the #GP(error_code) the vcpu took at regs."""
    try:
        _gate_op(vcpu, regs, error_code)
    except Refused as r:
        if r.vector == C.TRAP_page_fault:
            bounce_exception(vcpu, C.TRAP_page_fault, C.PFEC_write_access if r.error_code & 1 << 63 else 0,
                             r.error_code & 0xFFFFFFFF, regs=regs)
        else:
            bounce_exception(vcpu, r.vector, r.error_code, regs=regs)


def _gate_op(vcpu: Vcpu, regs: dict[str, int], ec: int) -> None:
    cs = regs["cs"]
    cpl = cs & 3
    gate = read_gate_descriptor(vcpu, ec)
    if gate is None or (gate[2] >> 13) & 3 < cpl or gate[2] & SEG_TYPE != 0xC00:
        raise Refused(C.TRAP_gp_fault, ec)
    sel, off, ar = gate
    if not ar & SEG_P:
        raise Refused(C.TRAP_no_segment, ec)
    dpl, nparm = (ar >> 13) & 3, ar & 0x1F
    code = read_descriptor(vcpu, cs)
    if code is None or not code[2] & SEG_S or not code[2] & SEG_P or not code[2] & SEG_CODE:
        raise Refused(C.TRAP_gp_fault, ec)
    insn = decode(vcpu, regs["eip"])
    far = _far_operand(vcpu, insn, regs) if insn is not None else None
    if far is None:
        raise Refused(C.TRAP_gp_fault, ec)
    jump, opnd_sel = far
    if opnd_sel & ~3 != ec or dpl < opnd_sel & 3:
        raise Refused(C.TRAP_gp_fault, ec)
    target = read_descriptor(vcpu, sel)
    if target is None:
        raise Refused(C.TRAP_gp_fault, sel)
    _base, limit, tar = target
    tdpl = (tar >> 13) & 3
    bad_priv = tdpl > cpl if (not jump or tar & SEG_EC) else tdpl != cpl
    if not tar & SEG_S or not tar & SEG_CODE or bad_priv:
        raise Refused(C.TRAP_gp_fault, sel)
    if not tar & SEG_P:
        raise Refused(C.TRAP_no_segment, sel)
    if off > limit:
        raise Refused(C.TRAP_gp_fault, 0)
    eip, esp, ss = regs["eip"], regs["esp"], regs["ss"]
    if not jump:
        pushes: list[int] = []
        if tdpl < cpl:
            sel |= tdpl
            if sel & 3 != GUEST_KERNEL_RPL:
                raise Refused(C.TRAP_gp_fault, ec)
            esp, ss = vcpu.kernel_sp, vcpu.kernel_ss
            sd = read_descriptor(vcpu, ss)
            if ss & 3 != sel & 3 or sd is None or (sd[2] >> 13) & 3 != sel & 3 or not sd[2] & SEG_S \
                    or sd[2] & SEG_CODE or not sd[2] & SEG_WR:
                raise Refused(C.TRAP_invalid_tss, ss & ~3)
            if not sd[2] & SEG_P or not _stack_ok(sd[2], sd[1], esp, (4 + nparm) * 4):
                raise Refused(C.TRAP_stack_error, ss & ~3)
            stack_base = sd[0]
            pushes += [regs["ss"], regs["esp"]]
            if nparm:
                ud = read_descriptor(vcpu, regs["ss"])
                if ud is None or (ud[2] >> 13) & 3 != cpl or not ud[2] & SEG_S or ud[2] & SEG_CODE \
                        or not ud[2] & SEG_WR or not _stack_ok(ud[2], ud[1], regs["esp"] + nparm * 4, nparm * 4):
                    raise Refused(C.TRAP_gp_fault, ec)
                user = (ud[0] + regs["esp"]) & 0xFFFFFFFF
                for i in reversed(range(nparm)):
                    try:
                        pushes.append(vcpu.read_u32((user + 4 * i) & 0xFFFFFFFF))
                    except GuestFault as e:
                        raise Refused(C.TRAP_page_fault, e.va) from None
        else:
            sel |= cpl
            sd = read_descriptor(vcpu, ss)
            if sd is None or (sd[2] >> 13) & 3 != sel & 3:
                raise Refused(C.TRAP_gp_fault, ec)
            if not _stack_ok(sd[2], sd[1], esp, 2 * 4):
                raise Refused(C.TRAP_stack_error, 0)
            stack_base = sd[0]
        pushes += [cs, (eip + insn.size) & 0xFFFFFFFF]
        new_esp = (esp - 4 * len(pushes)) & 0xFFFFFFFF
        frame = struct.pack(f"<{len(pushes)}I", *(p & 0xFFFFFFFF for p in reversed(pushes)))
        try:
            vcpu.write_virt((stack_base + new_esp) & 0xFFFFFFFF, frame)
        except GuestFault as e:
            raise Refused(C.TRAP_page_fault, e.va | 1 << 63) from None
        esp = new_esp
    else:
        sel |= cpl
    vcpu.domain.trace.emit_emulated(vcpu, eip, f"{insn.mnemonic} {insn.op_str}".strip())
    vcpu.cpu.transfer(off, sel, regs["eflags"] & ~(1 << 16), esp, ss)   # pv_emul_instruction_done: RF clear
