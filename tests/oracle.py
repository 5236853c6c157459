"""An independent judge of single steps: where may one x86 instruction take the pc?

Decoded with capstone (Intel syntax, with operand details) from guest memory and the
registers before the step, in the width of the code the vcpu runs (32-bit PV, or 64-bit and
compat code of a 64-bit PV guest: Vcpu.code_bits): the next instruction, a branch's target
(direct, or computed from registers and memory for indirect ones, RIP-relative and FS/GS-based
operands included), a `ret`'s or `iretq`'s return address, the iret hypercall's target (`int
$0x82` with EAX 23 on 32-bit; `syscall` with RAX 23 in 64-bit kernel mode: struct iret_context
at RSP), a 64-bit `syscall` from user mode (the syscall callback, or #UD), the forced-emulation
prefix (`ud2; .ascii "xen"; cpuid`: 7 bytes); and, since any instruction may fault or return
from the hypervisor with an event, the vcpu's trap handlers and callbacks. A rep-prefixed string
instruction may also stop on itself (one iteration per step, as TF does on hardware).
"""

from __future__ import annotations

from functools import cache

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as X

from xenwb.hypervisor.vcpu import Vcpu

REGS32 = {X.X86_REG_EAX: "eax", X.X86_REG_EBX: "ebx", X.X86_REG_ECX: "ecx", X.X86_REG_EDX: "edx",
          X.X86_REG_ESI: "esi", X.X86_REG_EDI: "edi", X.X86_REG_EBP: "ebp", X.X86_REG_ESP: "esp"}
REGS64 = {getattr(X, f"X86_REG_{n.upper()}"): n for n in
          ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
           "r15")}
REGS64 |= {getattr(X, f"X86_REG_{n.upper()}"): full for n, full in
           (("eax", "rax"), ("ebx", "rbx"), ("ecx", "rcx"), ("edx", "rdx"), ("esi", "rsi"), ("edi", "rdi"),
            ("ebp", "rbp"), ("esp", "rsp"))}
FORCED_EMULATION = bytes.fromhex("0f0b78656e0fa2")
IRET = 23


@cache
def _cs(bits: int) -> Cs:
    md = Cs(CS_ARCH_X86, CS_MODE_64 if bits == 64 else CS_MODE_32)
    md.detail = True
    return md


def decode(v: Vcpu, pc: int, bits: int | None = None):
    code = v.debug_read(pc, 16)
    return next(_cs(bits or v.code_bits()).disasm(code, pc, 1), None)


def _word(v: Vcpu, va: int, size: int) -> int | None:
    data = v.debug_read(va & ((1 << 64) - 1), size)
    return int.from_bytes(data, "little") if len(data) == size else None


def _reg(regs: dict[str, int], reg: int, bits: int) -> int | None:
    if bits == 64:
        name = REGS64.get(reg)
        if name is None:
            return None
        value = regs[name]
        return value & 0xFFFFFFFF if reg in REGS32 else value
    name = REGS32.get(reg)
    return None if name is None else regs[name]


def _operand_target(v: Vcpu, insn, op, regs: dict[str, int], bits: int) -> int | None:
    mask = (1 << bits) - 1
    if op.type == X.X86_OP_IMM:
        return op.imm & mask
    if op.type == X.X86_OP_REG:
        return _reg(regs, op.reg, bits)
    if op.type == X.X86_OP_MEM:
        m = op.mem
        addr = m.disp
        if m.base == X.X86_REG_RIP:
            addr += insn.address + insn.size
        elif m.base:
            addr += _reg(regs, m.base, bits) or 0
        if m.index:
            addr += (_reg(regs, m.index, bits) or 0) * m.scale
        if m.segment == X.X86_REG_FS:
            addr += regs.get("fs_base", 0)
        elif m.segment == X.X86_REG_GS:
            addr += regs.get("gs_base", 0)
        return _word(v, addr & mask, op.size or bits // 8)
    return None


def successors(v: Vcpu, regs: dict[str, int]) -> tuple[object, set[int]]:
    """(the instruction at the pc, the pcs one step of it may lead to)."""
    bits = v.code_bits()
    pc = regs["pc"] if "pc" in regs else regs["eip"]
    sp = regs["rsp"] if bits == 64 else regs["esp"]
    word = 8 if bits == 64 else 4
    insn = decode(v, pc, bits)
    assert insn is not None, f"cannot decode at {pc:#x}"
    out = {pc + insn.size}
    groups = set(insn.groups)
    m = insn.mnemonic
    if X.X86_GRP_JUMP in groups or X.X86_GRP_CALL in groups:
        t = _operand_target(v, insn, insn.operands[0], regs, bits)
        if t is not None:
            out.add(t)
        if m in ("jmp", "call", "ljmp", "lcall"):
            out.discard(pc + insn.size)
            if t is None:
                out.add(-1)
    if X.X86_GRP_RET in groups or m in ("iretq", "iretd", "iret"):
        out = {_word(v, sp, word if m != "iretd" else 4) or -1}
    if insn.prefix[0] in (X.X86_PREFIX_REP, X.X86_PREFIX_REPNE) and X.X86_GRP_JUMP not in groups:
        out.add(pc)                                   # one iteration of a rep string instruction
    if m == "int" and insn.operands[0].imm == 0x82 and regs.get("eax") == IRET:
        out.add(_word(v, sp + 4, 4) or -1)           # iret hypercall: EAX, EIP, CS ... on the stack
    if m == "syscall" and bits == 64:
        if getattr(v, "kernel_mode", True):
            if regs["rax"] & 0xFFFFFFFF == IRET:
                out.add(_word(v, sp + 32, 8) or -1)   # struct iret_context: rax r11 rcx flags rip ...
        else:
            out.add(v.syscall_eip)                    # bounced to the syscall callback
    if v.debug_read(pc, len(FORCED_EMULATION)) == FORCED_EMULATION:
        out.add(pc + len(FORCED_EMULATION))
    for t in v.trap_ctxt:
        if t is not None:
            out.add(t.address)
    out |= {v.event_eip, v.failsafe_eip}
    return insn, out
