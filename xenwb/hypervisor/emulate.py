"""Instruction emulation Xen performs for PV guests.

* the forced-emulation prefix `ud2; .ascii "xen"; cpuid` (pv/emul-inv-op.c) and the
  CPUID policy with Xen's leaves at 0x40000000 (arch/x86/cpuid.c, public/arch-x86/cpuid.h);
* privileged instructions a ring-1 kernel may use (pv/emul-priv-op.c): CLI/STI and port
  I/O under the virtual IOPL, CR and DR moves, CLTS, WBINVD, RDMSR/WRMSR (including the
  hypercall-page MSR, arch/x86/msr.c);
* the writable-pagetables assist (pv/ro-page-fault.c): a kernel write to a read-only
  mapped L1 page is emulated and validated like an mmu_update.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from capstone import x86_const as CX
from unicorn import x86_const as X

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.misc import set_debugreg
from xenwb.hypervisor.mm import MMError, PageType, new_baseptr
from xenwb.hypervisor.paging import walk

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu


@cache
def _disasm() -> Cs:
    md = Cs(CS_ARCH_X86, CS_MODE_32)
    md.detail = True
    return md


def decode(vcpu: Vcpu, eip: int):
    try:
        code = vcpu.debug_read(eip, 16)
    except GuestFault:
        return None
    for insn in _disasm().disasm(code, eip, 1):
        return insn
    return None


# ---------------------------------------------------------------- CPUID
def cpuid_leaf(vcpu: Vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The domain's CPUID policy: a plain i686-class CPU plus Xen's leaves."""
    base = C.XEN_CPUID_FIRST_LEAF
    if leaf == base:
        return base + 5, C.XEN_CPUID_SIGNATURE_EBX, C.XEN_CPUID_SIGNATURE_ECX, C.XEN_CPUID_SIGNATURE_EDX
    if leaf == base + 1:
        return (C.XEN_MAJOR << 16) | C.XEN_MINOR, 0, 0, 0
    if leaf == base + 2:
        return 1, C.XEN_HYPERCALL_MSR, 1, 0   # one page; MSR; ECX bit0 = MMU_PT_UPDATE_PRESERVE_AD
    if leaf == base + 3:
        if subleaf == 0:
            return 0, 0, vcpu.domain.time.tsc_khz, 0
        if subleaf == 1:
            t = vcpu.domain.time
            return 0, 0, t.mul_frac, t.shift & 0xFFFFFFFF
        if subleaf == 2:
            return vcpu.domain.time.tsc_khz, 0, 0, 0
        return 0, 0, 0, 0
    if leaf == base + 5:
        return 0, 36 if vcpu.domain.pae else 32, 0, 0
    if base < leaf <= base + 0xFF:
        return 0, 0, 0, 0
    if leaf == 0:
        ebx, edx, ecx = struct.unpack("<III", b"GenuineIntel")
        return 0xD, ebx, ecx, edx
    if leaf == 1:
        # family 6; FPU TSC MSR PAE CX8 CMOV(no PSE, no PGE: Xen hides them from PV guests)
        edx = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 15) | (1 << 23) | (1 << 24) \
            | (1 << 25) | (1 << 26)
        ecx = (1 << 31)   # hypervisor present
        return 0x000006F1, vcpu.id << 24, ecx, edx
    if leaf == 0x80000000:
        return 0x80000008, 0, 0, 0
    if leaf == 0x80000001:
        return 0, 0, 0, (1 << 20) if vcpu.domain.pae else 0   # NX
    if leaf == 0x80000008:
        return 0x3024, 0, 0, 0
    return 0, 0, 0, 0


CPUID_TRAP_COST_NS = 1000   # a faulting CPUID and Xen's emulation of it take about a microsecond


def cpuid(vcpu: Vcpu) -> None:
    """CPUID against the domain policy (Xen with CPUID faulting: every CPUID traps)."""
    cpu = vcpu.cpu
    leaf, sub = cpu.cpuid_in.read()
    cpu.cpuid_out.write(*cpuid_leaf(vcpu, leaf, sub))
    vcpu.clock.units += CPUID_TRAP_COST_NS


def invalid_opcode(vcpu: Vcpu) -> bool:
    """#UD: the forced-emulation prefix followed by CPUID is emulated, anything else is #UD."""
    eip = vcpu.cpu.eip
    try:
        code = vcpu.read_virt(eip, 7)
    except GuestFault:
        return False
    if code[:5] == C.XEN_EMULATE_PREFIX and code[5:7] == b"\x0f\xa2":
        cpuid(vcpu)
        vcpu.cpu.eip = eip + 7
        return True
    return False


# ---------------------------------------------------------------- #PF error code
def _writes_memory(insn, cr2: int, regs: dict[str, int]) -> bool:
    if insn is None:
        return False
    m = insn.mnemonic
    if m.startswith(("push", "call", "enter", "stos", "movs", "ins")):
        return True
    try:
        _, written = insn.regs_access()
    except Exception:
        written = []
    for op in insn.operands:
        if op.type == CX.X86_OP_MEM and op.access & 2:   # CS_AC_WRITE
            return True
    return bool(m.startswith(("xchg", "cmpxchg")) and written is not None)


def page_fault_error_code(vcpu: Vcpu, regs: dict[str, int], cr2: int) -> int:
    """Unicorn does not expose the hardware #PF error code: rebuild it (P from a walk,
    W from the instruction, U from guest user mode, I/D for fetches with NX on)."""
    w = walk(vcpu.domain.mem, vcpu.domain.mode, vcpu.cr3_mfn, cr2)
    ec = 0
    if w.mapped:
        ec |= C.PFEC_present
    eip = regs["eip"]
    fetch = (cr2 & ~0xFFF) == (eip & ~0xFFF) and (not w.mapped or w.nx) or cr2 == eip
    if fetch:
        if vcpu.domain.pae:
            ec |= C.PFEC_insn_fetch
    elif w.mapped and not w.writable:
        ec |= C.PFEC_write_access     # a supervisor read of a present page cannot fault
    elif _writes_memory(decode(vcpu, eip), cr2, regs):
        ec |= C.PFEC_write_access
    if regs["cs"] & 3 == 3:
        ec |= C.PFEC_user_mode
    return ec


# ---------------------------------------------------------------- writable pagetables
_REG_BY_CS = {
    CX.X86_REG_EAX: "eax", CX.X86_REG_EBX: "ebx", CX.X86_REG_ECX: "ecx", CX.X86_REG_EDX: "edx",
    CX.X86_REG_ESI: "esi", CX.X86_REG_EDI: "edi", CX.X86_REG_EBP: "ebp", CX.X86_REG_ESP: "esp",
    CX.X86_REG_AX: "eax", CX.X86_REG_BX: "ebx", CX.X86_REG_CX: "ecx", CX.X86_REG_DX: "edx",
    CX.X86_REG_AL: "eax", CX.X86_REG_BL: "ebx", CX.X86_REG_CL: "ecx", CX.X86_REG_DL: "edx",
    CX.X86_REG_SI: "esi", CX.X86_REG_DI: "edi",
}


def _reg_value(regs: dict[str, int], reg: int, size: int) -> int:
    return regs[_REG_BY_CS[reg]] & ((1 << (8 * size)) - 1)


def ptwr(vcpu: Vcpu, regs: dict[str, int], cr2: int, ec: int) -> bool:
    """Emulate a kernel write to a read-only mapped L1 page (VMASST writable_pagetables)."""
    dom = vcpu.domain
    if not dom.vm_assist & (1 << C.Vmasst.writable_pagetables):
        return False
    if regs["cs"] & 3 != 1 or ec & (C.PFEC_present | C.PFEC_write_access) != 3:
        return False
    w = walk(dom.mem, dom.mode, vcpu.cr3_mfn, cr2)
    if not w.mapped:
        return False
    pi = dom.mm.pages.get(w.mfn)
    if pi is None or pi.type != PageType.l1 or not pi.type_count:
        return False
    insn = decode(vcpu, regs["eip"])
    if insn is None:
        return False
    m = insn.mnemonic
    mem_ops = [o for o in insn.operands if o.type == CX.X86_OP_MEM]
    if len(mem_ops) != 1:
        return False
    size = mem_ops[0].size
    off = cr2 & 0xFFF
    if size not in (1, 2, 4, 8) or off % size or off + size > 4096:
        return False
    pte_size = dom.mode.pte_size
    idx = off // pte_size
    entry_maddr = (w.mfn << 12) + idx * pte_size
    old_entry = dom.mem.read_u64(entry_maddr) if pte_size == 8 else dom.mem.read_u32(entry_maddr)
    within = off - idx * pte_size
    old_val = (old_entry >> (8 * within)) & ((1 << (8 * size)) - 1)
    src = next((o for o in insn.operands if o.type != CX.X86_OP_MEM), None)
    srcv = None
    if src is not None:
        srcv = src.imm & ((1 << (8 * size)) - 1) if src.type == CX.X86_OP_IMM else _reg_value(regs, src.reg, size)
    write_back: dict[str, int] = {}
    flags_zf: bool | None = None
    if m == "mov":
        new_val = srcv
    elif m == "xchg":
        new_val = srcv
        write_back[_REG_BY_CS[src.reg]] = old_val
    elif m == "cmpxchg":
        if old_val == regs["eax"] & ((1 << (8 * size)) - 1):
            new_val, flags_zf = srcv, True
        else:
            new_val, flags_zf = old_val, False
            write_back["eax"] = old_val
    elif m == "cmpxchg8b":
        cmp = regs["eax"] | (regs["edx"] << 32)
        if old_val == cmp:
            new_val, flags_zf = regs["ebx"] | (regs["ecx"] << 32), True
        else:
            new_val, flags_zf = old_val, False
            write_back["eax"], write_back["edx"] = old_val & 0xFFFFFFFF, old_val >> 32
    elif m in ("and", "or", "xor", "add", "sub"):
        op = {"and": int.__and__, "or": int.__or__, "xor": int.__xor__, "add": int.__add__,
              "sub": int.__sub__}[m]
        new_val = op(old_val, srcv) & ((1 << (8 * size)) - 1)
    else:
        return False
    mask = ((1 << (8 * size)) - 1) << (8 * within)
    new_entry = (old_entry & ~mask) | (new_val << (8 * within))
    try:
        if new_entry != old_entry:
            dom.mm.mod_entry(w.mfn, idx, new_entry)
    except MMError:
        if pte_size == 8 and within == 4 and new_entry & C._PAGE_PRESENT:
            # PAE: high half written first; store it not-present and wait for the low half
            try:
                dom.mm.mod_entry(w.mfn, idx, new_entry & ~C._PAGE_PRESENT)
            except MMError:
                return False
        else:
            return False
    dom.trace.emit_ptwr(vcpu, cr2, entry_maddr, old_entry, new_entry)
    uc = vcpu.cpu.uc
    for reg, v in write_back.items():
        vcpu.cpu.set_reg(reg, (regs[reg] & ~((1 << (8 * size)) - 1)) | v if size < 4 else v)
    if flags_zf is not None:
        ef = uc.reg_read(X.UC_X86_REG_EFLAGS)
        uc.reg_write(X.UC_X86_REG_EFLAGS, (ef | 0x40) if flags_zf else (ef & ~0x40))
    vcpu.cpu.eip = regs["eip"] + insn.size
    return True


# ---------------------------------------------------------------- privileged instructions
MSR_APIC_BASE, MSR_EFER, MSR_PAT, MSR_TSC, MSR_MISC_ENABLE = 0x1B, 0xC0000080, 0x277, 0x10, 0x1A0
MSR_PERF_CAPABILITIES = 0x345


def _iopl_ok(vcpu: Vcpu) -> bool:
    return vcpu.iopl >= 1


def privileged_op(vcpu: Vcpu, regs: dict[str, int]) -> bool:
    """#GP(0) from the guest kernel: emulate what Xen emulates. False: reflect #GP."""
    if regs["cs"] & 3 == 3:
        return False
    insn = decode(vcpu, regs["eip"])
    if insn is None:
        return False
    m = insn.mnemonic
    nxt = regs["eip"] + insn.size
    cpu = vcpu.cpu
    if m in ("cli", "sti"):
        if not _iopl_ok(vcpu):
            return False
    elif m in ("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"):
        if not _iopl_ok(vcpu):
            return False
        if m == "in":
            size = insn.operands[0].size
            reg = "eax"
            cur = regs[reg]
            cpu.set_reg(reg, (cur & ~((1 << (8 * size)) - 1)) | ((1 << (8 * size)) - 1) if size < 4 else 0xFFFFFFFF)
    elif m == "clts":
        vcpu.set_virtual_ts(False)
    elif m == "wbinvd" or m == "invd":
        pass
    elif m == "mov" and len(insn.operands) == 2 and any(
            o.type == CX.X86_OP_REG and CX.X86_REG_CR0 <= o.reg <= CX.X86_REG_CR15 for o in insn.operands):
        if not _mov_cr(vcpu, insn, regs):
            return False
    elif m == "mov" and len(insn.operands) == 2 and any(
            o.type == CX.X86_OP_REG and CX.X86_REG_DR0 <= o.reg <= CX.X86_REG_DR15 for o in insn.operands):
        if not _mov_dr(vcpu, insn, regs):
            return False
    elif m == "rdmsr":
        v = read_msr(vcpu, regs["ecx"])
        if v is None:
            return False
        cpu.set_reg("eax", v & 0xFFFFFFFF)
        cpu.set_reg("edx", v >> 32)
    elif m == "wrmsr":
        if not write_msr(vcpu, regs["ecx"], regs["eax"] | (regs["edx"] << 32)):
            return False
    else:
        return False
    vcpu.domain.trace.emit_emulated(vcpu, regs["eip"], f"{insn.mnemonic} {insn.op_str}".strip())
    cpu.eip = nxt
    return True


def _mov_cr(vcpu: Vcpu, insn, regs: dict[str, int]) -> bool:
    dst, src = insn.operands
    if dst.type == CX.X86_OP_REG and CX.X86_REG_CR0 <= dst.reg <= CX.X86_REG_CR15:
        crn, val = dst.reg - CX.X86_REG_CR0, regs[_REG_BY_CS[src.reg]]
        if crn == 0:
            cur = read_cr(vcpu, 0)
            if (cur ^ val) & ~8:
                return False   # only TS may change
            vcpu.set_virtual_ts(bool(val & 8))
        elif crn == 2:
            vcpu.cr2 = val
            vcpu.write_vcpu_info_cr2(val)
        elif crn == 3:
            return new_baseptr(vcpu, (val >> 12) & 0xFFFFF) == 0
        elif crn == 4:
            vcpu.cr4 = val & ~(1 << 5 | 1 << 7)   # sanitised: PAE/PGE stay Xen's
        else:
            return False
        return True
    crn = src.reg - CX.X86_REG_CR0
    v = read_cr(vcpu, crn)
    if v is None:
        return False
    vcpu.cpu.set_reg(_REG_BY_CS[dst.reg], v)
    return True


def read_cr(vcpu: Vcpu, n: int) -> int | None:
    if n == 0:
        cr0 = vcpu.cpu.reg("cr0")
        return (cr0 & ~8) | (8 if vcpu.virtual_ts else 0)
    if n == 2:
        return vcpu.cr2
    if n == 3:
        return vcpu.cr3_mfn << 12
    if n == 4:
        return vcpu.cr4
    return None


def _mov_dr(vcpu: Vcpu, insn, regs: dict[str, int]) -> bool:
    dst, src = insn.operands
    if dst.type == CX.X86_OP_REG and CX.X86_REG_DR0 <= dst.reg <= CX.X86_REG_DR15:
        return set_debugreg(vcpu, dst.reg - CX.X86_REG_DR0, regs[_REG_BY_CS[src.reg]]) == 0
    n = src.reg - CX.X86_REG_DR0
    if n > 7:
        return False
    vcpu.cpu.set_reg(_REG_BY_CS[dst.reg], vcpu.debugreg[n])
    return True


def read_msr(vcpu: Vcpu, msr: int) -> int | None:
    if msr == MSR_APIC_BASE:
        return 0xFEE00900 if vcpu.id == 0 else 0xFEE00800
    if msr == MSR_EFER:
        return (1 << 11) if vcpu.domain.pae else 0        # NXE; LME/LMA hidden
    if msr == MSR_PAT:
        return 0x0000050100070406
    if msr == MSR_TSC:
        return vcpu.domain.time.tsc(vcpu)
    if msr == MSR_MISC_ENABLE:
        return 1 << 0 | 1 << 11 | 1 << 12  # fast strings, BTS/PEBS unavailable
    if msr == MSR_PERF_CAPABILITIES:
        return 0
    if vcpu.trap_ctxt[C.TRAP_gp_fault] is None:
        return 0   # Xen's kludge for early Linux: unknown RDMSR reads 0 with no #GP handler
    return None


def write_msr(vcpu: Vcpu, msr: int, value: int) -> bool:
    if msr == C.XEN_HYPERCALL_MSR:
        if value & 0xFFF:
            return False
        return vcpu.domain.write_hypercall_page(value >> 12)
    if msr == MSR_EFER:
        return value == read_msr(vcpu, MSR_EFER)
    if msr in (MSR_PAT, MSR_MISC_ENABLE, MSR_TSC):
        return True   # accepted and ignored
    return False


def gp_error_code(vcpu: Vcpu, regs: dict[str, int]) -> int:
    """#GP error code for a fault unicorn reports without one: the selector for
    segment loads, 0 otherwise."""
    insn = decode(vcpu, regs["eip"])
    if insn is None:
        return 0
    m = insn.mnemonic
    if m == "mov" and insn.operands and insn.operands[0].type == CX.X86_OP_REG and \
            CX.X86_REG_CS <= insn.operands[0].reg <= CX.X86_REG_SS or \
            insn.operands and insn.operands[0].type == CX.X86_OP_REG and insn.operands[0].reg in (
                CX.X86_REG_DS, CX.X86_REG_ES, CX.X86_REG_FS, CX.X86_REG_GS, CX.X86_REG_SS) and m == "mov":
        src = insn.operands[1]
        if src.type == CX.X86_OP_REG and src.reg in _REG_BY_CS:
            return regs[_REG_BY_CS[src.reg]] & 0xFFFC
    if m.startswith("pop") and insn.operands and insn.operands[0].type == CX.X86_OP_REG and \
            insn.operands[0].reg in (CX.X86_REG_DS, CX.X86_REG_ES, CX.X86_REG_FS, CX.X86_REG_GS):
        try:
            return vcpu.read_u32(regs["esp"]) & 0xFFFC
        except GuestFault:
            return 0
    return 0


# ---------------------------------------------------------------- store attribution
def store_site(vcpu: Vcpu, pc: int, block: int, block_size: int, size: int) -> int:
    """The instruction that made a store of `size` bytes seen by a memory hook at `pc`.

    Unicorn's pc inside a memory hook is exact, or (when it did not resynchronise it) the
    start of the translation block running: then the store is the first instruction of the
    block, from pc on, with a memory destination of that size."""
    if pc != block or not block_size:
        return pc
    code = vcpu.debug_read(block, block_size)
    for insn in _disasm().disasm(code, block):
        for op in insn.operands:
            if op.type == CX.X86_OP_MEM and op.access & 2 and op.size == size:   # CS_AC_WRITE
                return insn.address
    return pc
