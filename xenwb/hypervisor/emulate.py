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

from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as CX
from unicorn import x86_const as X

from xenwb.abi import constants as C
from xenwb.hypervisor import traps
from xenwb.hypervisor.debugreg import get_debugreg, set_debugreg
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import MMError, PageType, new_baseptr
from xenwb.hypervisor.paging import canonical, walk

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu


@cache
def _disasm(bits: int = 32) -> Cs:
    md = Cs(CS_ARCH_X86, CS_MODE_64 if bits == 64 else CS_MODE_32)
    md.detail = True
    return md


def decode(vcpu: Vcpu, pc: int):
    """The instruction at pc, decoded as the vcpu executes it (32-bit code in compat mode)."""
    try:
        code = vcpu.debug_read(pc, 16)
    except GuestFault:
        return None
    for insn in _disasm(vcpu.code_bits()).disasm(code, pc, 1):
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
        # PV-specific parameters: EBX = the machine address width (flsl(highest MFN) + 12)
        return 0, (vcpu.domain.mem.max_mfn - 1).bit_length() + 12, 0, 0
    if base < leaf <= base + 0xFF:
        return 0, 0, 0, 0
    if vcpu.word == 8:
        return cpuid_leaf64(vcpu, leaf, subleaf)
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


# Leaf 1, 7 and 0x80000001 feature bits a 64-bit PV guest sees: the features Xen offers PV
# guests at all (marked "A" in public/arch-x86/cpufeatureset.h: no PSE, PGE, MTRR, VME or
# PSE36, which are HVM-only, so Linux builds its direct map from 4 KiB pages) limited to what
# unicorn's TCG implements (measured, xen-pv64-abi.md section 12: no AVX, FMA, 1 GiB pages),
# on a host without XSAVE (so no XSETBV emulation is needed), FSGSBASE or machine checks.
CPUID64_1_EDX = sum(1 << b for b in (0, 2, 4, 5, 6, 8, 9, 11, 15, 16, 19, 23, 24, 25, 26))
# ECX: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1/4.2, MOVBE, POPCNT, AESNI, hypervisor (31). Not
# RDRAND: unicorn's RDRAND returns host entropy, which would make two runs of a guest differ
# (Linux seeds its RNG, slab freelists and stack canaries from it).
CPUID64_1_ECX = sum(1 << b for b in (0, 1, 9, 13, 19, 20, 22, 23, 25, 31))
CPUID64_7_EBX = sum(1 << b for b in (3, 8, 9))          # BMI1, BMI2, ERMS
CPUID64_EXT1_EDX = sum(1 << b for b in (11, 20, 27, 29))   # SYSCALL, NX, RDTSCP, LM
CPUID64_EXT1_ECX = sum(1 << b for b in (0, 5, 8))           # LAHF_LM, ABM, PREFETCHW
BRAND = b"xenwb virtual x86_64 CPU (unicorn)".ljust(48, b"\0")


def cpuid_leaf64(vcpu: Vcpu, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """The standard and extended leaves of a 64-bit domain's CPUID policy (cpuid.c
    guest_cpuid over the PV max policy, trimmed to what the emulated CPU executes)."""
    if leaf == 0:
        ebx, edx, ecx = struct.unpack("<III", b"GenuineIntel")
        return 0xD, ebx, ecx, edx
    if leaf == 1:
        # family 6 model 0x3c stepping 3; EBX: CLFLUSH line 8 qwords, one logical cpu, APIC id
        return 0x000306C3, (vcpu.id << 24) | (1 << 16) | (8 << 8), CPUID64_1_ECX, CPUID64_1_EDX
    if leaf == 7:
        return (0, CPUID64_7_EBX, 0, 0) if subleaf == 0 else (0, 0, 0, 0)
    if leaf == 0x80000000:
        return 0x80000008, 0, 0, 0
    if leaf == 0x80000001:
        return 0, 0, CPUID64_EXT1_ECX, CPUID64_EXT1_EDX
    if 0x80000002 <= leaf <= 0x80000004:
        return struct.unpack_from("<4I", BRAND, 16 * (leaf - 0x80000002))
    if leaf == 0x80000008:
        return 0x3028, 0, 0, 0                # 40 physical, 48 virtual address bits
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
    pc = vcpu.cpu.pc
    try:
        code = vcpu.read_virt(pc, 7)
    except GuestFault:
        return False
    if code[:5] == C.XEN_EMULATE_PREFIX and code[5:7] == b"\x0f\xa2":
        cpuid(vcpu)
        vcpu.cpu.pc = pc + 7
        return True
    return False


# ---------------------------------------------------------------- #PF error code
# instructions that write memory without naming it as a written operand: the stack pushes
# and the string stores (capstone's string forms have only memory operands, or none)
_STACK_WRITERS = ("push", "call", "enter")
_STRING_STORES = frozenset({"movsb", "movsw", "movsd", "movsq", "stosb", "stosw", "stosd", "stosq",
                            "insb", "insw", "insd"})


def _writes_memory(insn, cr2: int, regs: dict[str, int]) -> bool:
    """Did the instruction that faulted write memory (the #PF error code's W bit)?"""
    if insn is None:
        return False
    m = insn.mnemonic.split()[-1]       # without rep/lock prefixes
    if m.startswith(_STACK_WRITERS):
        return True
    mem = [op for op in insn.operands if op.type == CX.X86_OP_MEM]
    if m in _STRING_STORES and len(mem) == len(insn.operands):
        return True                     # not SSE's movsd xmm, xmm/m64
    if m.startswith("cmpxchg") and mem:
        return True                     # writes its destination back even when the compare fails
    return any(op.access & 2 for op in mem)   # CS_AC_WRITE


def page_fault_error_code(vcpu: Vcpu, regs: dict[str, int], cr2: int) -> int:
    """Unicorn does not expose the hardware #PF error code: rebuild it (P from a walk,
    W from the instruction, U from guest user mode, I/D for fetches with NX on)."""
    w = walk(vcpu.domain.mem, vcpu.domain.mode, vcpu.active_top_mfn, cr2)
    ec = 0
    pc = regs["pc"]
    fetch = (cr2 & ~0xFFF) == (pc & ~0xFFF) and (not w.mapped or w.nx) or cr2 == pc
    cpl3 = regs["cs"] & 3 == 3
    if w.mapped:
        ec |= C.PFEC_present          # mapped, yet it faulted: a protection violation
    if fetch:
        if vcpu.domain.pae:
            ec |= C.PFEC_insn_fetch
    elif w.mapped and not w.writable and (w.user or not cpl3):
        ec |= C.PFEC_write_access     # a read of a present, accessible page cannot fault
    elif _writes_memory(decode(vcpu, pc), cr2, regs):
        ec |= C.PFEC_write_access
    if cpl3:
        ec |= C.PFEC_user_mode        # the hardware's view; pv_inject_event rewrites it for the guest
    return ec


# ---------------------------------------------------------------- writable pagetables
_REG_BY_CS = {
    CX.X86_REG_EAX: "eax", CX.X86_REG_EBX: "ebx", CX.X86_REG_ECX: "ecx", CX.X86_REG_EDX: "edx",
    CX.X86_REG_ESI: "esi", CX.X86_REG_EDI: "edi", CX.X86_REG_EBP: "ebp", CX.X86_REG_ESP: "esp",
    CX.X86_REG_AX: "eax", CX.X86_REG_BX: "ebx", CX.X86_REG_CX: "ecx", CX.X86_REG_DX: "edx",
    CX.X86_REG_AL: "eax", CX.X86_REG_BL: "ebx", CX.X86_REG_CL: "ecx", CX.X86_REG_DL: "edx",
    CX.X86_REG_SI: "esi", CX.X86_REG_DI: "edi",
}
_GPR64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + [f"r{i}" for i in range(8, 16)]
_REG_BY_CS64: dict[int, str] = {}
for _i, _n in enumerate(_GPR64):
    for _suffix in ("", "D", "W", "B") if _i >= 8 else ():
        _REG_BY_CS64[getattr(CX, f"X86_REG_{_n.upper()}{_suffix}")] = _n
for _n32, _n64 in zip(("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"), _GPR64[:8], strict=True):
    _REG_BY_CS64[getattr(CX, f"X86_REG_{_n64.upper()}")] = _n64
    _REG_BY_CS64[getattr(CX, f"X86_REG_{_n32}")] = _n64
    _REG_BY_CS64[getattr(CX, f"X86_REG_{_n32[1:]}")] = _n64
for _n8, _n64 in (("AL", "rax"), ("CL", "rcx"), ("DL", "rdx"), ("BL", "rbx"), ("SPL", "rsp"), ("BPL", "rbp"),
                  ("SIL", "rsi"), ("DIL", "rdi")):
    _REG_BY_CS64[getattr(CX, f"X86_REG_{_n8}")] = _n64


def _reg_name(vcpu: Vcpu, reg: int) -> str:
    """The register dict name of a capstone register (the full register it is part of)."""
    return (_REG_BY_CS64 if vcpu.word == 8 else _REG_BY_CS)[reg]


def _reg_value(vcpu: Vcpu, regs: dict[str, int], reg: int, size: int) -> int:
    return regs[_reg_name(vcpu, reg)] & ((1 << (8 * size)) - 1)


def _acc(vcpu: Vcpu) -> tuple[str, str, str, str]:
    """The accumulator, data, base and count registers' names (cmpxchg, cmpxchg8b/16b)."""
    return ("rax", "rdx", "rbx", "rcx") if vcpu.word == 8 else ("eax", "edx", "ebx", "ecx")


def _write_reg(vcpu: Vcpu, regs: dict[str, int], name: str, value: int, size: int) -> None:
    """A register write of `size` bytes: 4-byte writes zero-extend in 64-bit mode, 1 and 2
    keep the rest of the register."""
    full = regs[name]
    if size >= vcpu.word or (size == 4 and vcpu.word == 8):
        new = value
    else:
        mask = (1 << (8 * size)) - 1
        new = (full & ~mask) | (value & mask)
    vcpu.cpu.set_reg(name, new)


def ptwr(vcpu: Vcpu, regs: dict[str, int], cr2: int, ec: int) -> bool:
    """Emulate a kernel write to a read-only mapped L1 page (VMASST writable_pagetables)."""
    dom = vcpu.domain
    if not dom.vm_assist & (1 << C.Vmasst.writable_pagetables):
        return False
    if not vcpu.in_kernel_mode(regs) or ec & (C.PFEC_present | C.PFEC_write_access) != 3:
        return False
    w = walk(dom.mem, dom.mode, vcpu.active_top_mfn, cr2)
    if not w.mapped:
        return False
    pi = dom.mm.pages.get(w.mfn)
    if pi is None or pi.type != PageType.l1 or not pi.type_count:
        return False
    insn = decode(vcpu, regs["pc"])
    if insn is None:
        return False
    m = insn.mnemonic.split()[-1]       # without a lock prefix (an SMP guest locks its PTE updates)
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
        srcv = (src.imm & ((1 << (8 * size)) - 1) if src.type == CX.X86_OP_IMM
                else _reg_value(vcpu, regs, src.reg, size))
    write_back: dict[str, tuple[int, int]] = {}      # register -> (value, operand size)
    flags_zf: bool | None = None
    a, d, b, c = _acc(vcpu)
    if m == "mov":
        new_val = srcv
    elif m == "xchg":
        new_val = srcv
        write_back[_reg_name(vcpu, src.reg)] = (old_val, size)
    elif m == "cmpxchg":
        if old_val == regs[a] & ((1 << (8 * size)) - 1):
            new_val, flags_zf = srcv, True
        else:
            new_val, flags_zf = old_val, False
            write_back[a] = (old_val, size)
    elif m == "cmpxchg8b":
        cmp = (regs[a] & 0xFFFFFFFF) | ((regs[d] & 0xFFFFFFFF) << 32)
        if old_val == cmp:
            new_val, flags_zf = (regs[b] & 0xFFFFFFFF) | ((regs[c] & 0xFFFFFFFF) << 32), True
        else:
            new_val, flags_zf = old_val, False
            write_back[a], write_back[d] = (old_val & 0xFFFFFFFF, 4), (old_val >> 32, 4)
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
    for reg, (v, sz) in write_back.items():
        _write_reg(vcpu, regs, reg, v, sz)
    if flags_zf is not None:
        ef = uc.reg_read(X.UC_X86_REG_EFLAGS)
        uc.reg_write(X.UC_X86_REG_EFLAGS, (ef | 0x40) if flags_zf else (ef & ~0x40))
    vcpu.cpu.pc = regs["pc"] + insn.size
    return True


# ---------------------------------------------------------------- privileged instructions
MSR_APIC_BASE, MSR_EFER, MSR_PAT, MSR_TSC, MSR_MISC_ENABLE = 0x1B, 0xC0000080, 0x277, 0x10, 0x1A0
MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE, MSR_TSC_AUX = 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103
MSR_IA32_PLATFORM_ID, MSR_IA32_UCODE_REV, MSR_INTEL_PLATFORM_INFO = 0x17, 0x8B, 0xCE
MSR_INTEL_MISC_FEATURES_ENABLES, MSR_IA32_PERF_STATUS, MSR_IA32_PERF_CTL = 0x140, 0x198, 0x199
PLATFORM_INFO_CPUID_FAULTING = 1 << 31
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
MSR_PERF_CAPABILITIES = 0x345


def _iopl_ok(vcpu: Vcpu, kernel: bool = True) -> bool:
    """emul-priv-op.c iopl_ok: the virtual IOPL must reach the guest's "ring": 3 in user mode;
    in kernel mode 1, or 0 (always allowed) with VMASST_TYPE_architectural_iopl."""
    if kernel:
        cpl = 0 if vcpu.domain.vm_assist & (1 << C.Vmasst.architectural_iopl) else 1
    else:
        cpl = 3
    return cpl <= vcpu.iopl


def guest_io_okay(vcpu: Vcpu, port: int, size: int, regs: dict[str, int] | None = None) -> bool:
    """emul-priv-op.c guest_io_okay: the virtual IOPL, else the guest's I/O bitmap
    (PHYSDEVOP_set_iobitmap) for the ports below its limit, read through the kernel's tables
    (a byte that cannot be read counts as 0xff: no access); a clear bit for every port allows."""
    if _iopl_ok(vcpu, vcpu.in_kernel_mode(regs)):
        return True
    if vcpu.iobitmap is None:
        return False
    bitmap, limit = vcpu.iobitmap
    if port + size > limit:
        return False
    raw = bytearray(b"\xff\xff")
    for i in range(2):
        try:
            raw[i] = vcpu.read_virt(bitmap + (port >> 3) + i, 1)[0]
        except GuestFault:
            break                       # __copy_from_guest_offset: the rest stays ~0
    mask = raw[0] | raw[1] << 8
    return not mask & (((1 << size) - 1) << (port & 7))


def privileged_op(vcpu: Vcpu, regs: dict[str, int]) -> bool:
    """#GP(0) from the guest: emulate what Xen emulates (pv/emul-priv-op.c). False: reflect
    #GP. Only guest kernel mode gets the privileged instructions; port I/O and CLI/STI follow
    the virtual IOPL in either mode."""
    insn = decode(vcpu, regs["pc"])
    if insn is None:
        return False
    m = insn.mnemonic
    kernel = vcpu.in_kernel_mode(regs)
    if not kernel and m not in ("cli", "sti", "in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"):
        return False
    nxt = regs["pc"] + insn.size
    cpu = vcpu.cpu
    a, d, _, c = _acc(vcpu)
    if m in ("cli", "sti"):
        if not _iopl_ok(vcpu, kernel):
            return False
    elif m in ("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"):
        # the #GP the port I/O hook raised (iogate.py) for an access guest_io_okay refuses
        return False
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
        outcome = _mov_dr(vcpu, insn, regs)
        if outcome == C.TRAP_invalid_op:
            traps.bounce_exception(vcpu, C.TRAP_invalid_op, regs=regs)    # no such register: #UD
            return True
        if outcome is not None:
            return False
    elif m == "rdmsr":
        v = read_msr(vcpu, regs[c] & 0xFFFFFFFF)
        if v is None:
            return False
        cpu.set_reg(a, v & 0xFFFFFFFF)
        cpu.set_reg(d, v >> 32)
    elif m == "wrmsr":
        if not write_msr(vcpu, regs[c] & 0xFFFFFFFF, (regs[a] & 0xFFFFFFFF) | ((regs[d] & 0xFFFFFFFF) << 32)):
            return False
    else:
        return False
    vcpu.domain.trace.emit_emulated(vcpu, regs["pc"], f"{insn.mnemonic} {insn.op_str}".strip())
    cpu.pc = nxt
    return True


def _mov_cr(vcpu: Vcpu, insn, regs: dict[str, int]) -> bool:
    dst, src = insn.operands
    if dst.type == CX.X86_OP_REG and CX.X86_REG_CR0 <= dst.reg <= CX.X86_REG_CR15:
        crn, val = dst.reg - CX.X86_REG_CR0, regs[_reg_name(vcpu, src.reg)]
        if crn == 0:
            cur = read_cr(vcpu, 0)
            if (cur ^ val) & ~8:
                return False   # only TS may change
            vcpu.set_virtual_ts(bool(val & 8))
        elif crn == 2:
            vcpu.cr2 = val
            vcpu.write_vcpu_info_cr2(val)
        elif crn == 3:
            if vcpu.word == 8:
                return new_baseptr(vcpu, (val >> 12) & ((1 << 40) - 1)) == 0     # xen_cr3_to_pfn
            return new_baseptr(vcpu, (val >> 12) & 0xFFFFF) == 0
        elif crn == 4:
            if vcpu.word == 8:
                vcpu.cr4 = pv_fixup_guest_cr4(val)
            else:
                vcpu.cr4 = val & ~(1 << 5 | 1 << 7)   # sanitised: PAE/PGE stay Xen's
        else:
            return False
        return True
    crn = src.reg - CX.X86_REG_CR0
    v = read_cr(vcpu, crn)
    if v is None:
        return False
    vcpu.cpu.set_reg(_reg_name(vcpu, dst.reg), v)
    return True


# pv/domain.c pv_fixup_guest_cr4: the guest controls TSD, DE, FSGSBASE and OSXSAVE within its
# CPUID policy (this one has TSC and DE, no FSGSBASE, no XSAVE) and sees Xen's PAE, MCE,
# OSFXSR and OSXMMEXCPT (PV_CR4_GUEST_MASK, PV_CR4_GUEST_VISIBLE_MASK).
CR4_TSD, CR4_DE, CR4_PAE, CR4_MCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 2, 1 << 3, 1 << 5, 1 << 6, 1 << 9, 1 << 10
CR4_GUEST_CONTROLLED64 = CR4_TSD | CR4_DE
CR4_XEN_VISIBLE64 = CR4_PAE | CR4_MCE | CR4_OSFXSR | CR4_OSXMMEXCPT


def pv_fixup_guest_cr4(cr4: int) -> int:
    return (cr4 & CR4_GUEST_CONTROLLED64) | CR4_XEN_VISIBLE64


def read_cr(vcpu: Vcpu, n: int) -> int | None:
    if n == 0:
        cr0 = vcpu.cpu.reg("cr0")
        return (cr0 & ~8) | (8 if vcpu.virtual_ts else 0)
    if n == 2:
        return vcpu.cr2
    if n == 3:
        return vcpu.cr3_mfn << 12               # the kernel's table (guest_table), both modes
    if n == 4:
        return vcpu.cr4
    return None


def _mov_dr(vcpu: Vcpu, insn, regs: dict[str, int]) -> int | None:
    """`mov` to or from a debug register (x86_emulate.c x86emul_write_dr/x86emul_read_dr):
    None when done, else the exception: #UD for a register there is not (-ENODEV), #GP for a
    value set_debugreg refuses."""
    dst, src = insn.operands
    if dst.type == CX.X86_OP_REG and CX.X86_REG_DR0 <= dst.reg <= CX.X86_REG_DR15:
        rc = set_debugreg(vcpu, dst.reg - CX.X86_REG_DR0, regs[_reg_name(vcpu, src.reg)])
        return None if rc == 0 else C.TRAP_invalid_op if rc == -C.Errno.ENODEV else C.TRAP_gp_fault
    value = get_debugreg(vcpu, src.reg - CX.X86_REG_DR0)
    if value is None:
        return C.TRAP_invalid_op
    vcpu.cpu.set_reg(_reg_name(vcpu, dst.reg), value)
    return None


def guest_efer(vcpu: Vcpu) -> int:
    """emul-priv-op.c guest_efer: Xen's EFER, LME/LMA (and SCE on Intel) hidden from 32-bit
    guests."""
    if vcpu.word == 8:
        return EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
    return EFER_NXE if vcpu.domain.pae else 0


def read_msr(vcpu: Vcpu, msr: int) -> int | None:
    if msr == MSR_APIC_BASE:
        return 0xFEE00900 if vcpu.id == 0 else 0xFEE00800
    if msr == MSR_EFER:
        return guest_efer(vcpu)
    if vcpu.word == 8 and msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        return vcpu.read_base_msr(msr)
    if msr == MSR_TSC_AUX:
        return vcpu.tsc_aux
    # msr.c guest_rdmsr (Intel vendor): the microcode revision of Xen's last load (none here),
    # the platform ID, PLATFORM_INFO with CPUID faulting, MISC_FEATURES_ENABLES, and the
    # read-as-zero PERF_STATUS/PERF_CTL
    if msr in (MSR_IA32_UCODE_REV, MSR_IA32_PLATFORM_ID, MSR_IA32_PERF_STATUS, MSR_IA32_PERF_CTL):
        return 0
    if msr == MSR_INTEL_PLATFORM_INFO:
        return PLATFORM_INFO_CPUID_FAULTING
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        return vcpu.misc_features_enables
    if msr == MSR_PAT:
        return 0x0000050100070406
    if msr == MSR_TSC:
        return vcpu.domain.time.tsc(vcpu)
    if msr == MSR_MISC_ENABLE:
        return 1 << 0 | 1 << 11 | 1 << 12  # fast strings, BTS/PEBS unavailable
    if msr == MSR_PERF_CAPABILITIES:
        return 0
    ti = vcpu.trap_ctxt[C.TRAP_gp_fault]
    if (ti is None or not ti.address) and msr >> 16 != 0x4000:
        return 0   # Xen's kludge for early Linux: unknown RDMSR reads 0 with no #GP handler
    return None


def write_msr(vcpu: Vcpu, msr: int, value: int) -> bool:
    if msr == C.XEN_HYPERCALL_MSR:
        if value & 0xFFF:
            return False
        return vcpu.domain.write_hypercall_page(value >> 12)
    if msr == MSR_EFER:
        return value == guest_efer(vcpu)           # "Linux depends on being able to write back"
    if vcpu.word == 8 and msr in (MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE):
        if not canonical(value):
            return False
        vcpu.write_base_msr(msr, value)
        return True
    if msr in (MSR_PAT, MSR_MISC_ENABLE, MSR_TSC):
        return True   # accepted and ignored
    if msr == MSR_IA32_UCODE_REV:
        return value == 0               # guest_wrmsr: Intel documents writing 0 before reading it
    if msr == MSR_TSC_AUX:
        if value >> 32:
            return False
        vcpu.tsc_aux = value
        return True
    if msr == MSR_INTEL_MISC_FEATURES_ENABLES:
        if value & ~1:                  # only CPUID faulting can be enabled
            return False
        vcpu.misc_features_enables = value
        return True
    return False


def gp_error_code(vcpu: Vcpu, regs: dict[str, int]) -> int:
    """#GP error code for a fault unicorn reports without one: the selector for
    segment loads, 0 otherwise."""
    insn = decode(vcpu, regs["pc"])
    if insn is None:
        return 0
    m = insn.mnemonic
    if m == "mov" and insn.operands and insn.operands[0].type == CX.X86_OP_REG and \
            CX.X86_REG_CS <= insn.operands[0].reg <= CX.X86_REG_SS or \
            insn.operands and insn.operands[0].type == CX.X86_OP_REG and insn.operands[0].reg in (
                CX.X86_REG_DS, CX.X86_REG_ES, CX.X86_REG_FS, CX.X86_REG_GS, CX.X86_REG_SS) and m == "mov":
        src = insn.operands[1]
        if src.type == CX.X86_OP_REG and src.reg in (_REG_BY_CS64 if vcpu.word == 8 else _REG_BY_CS):
            return regs[_reg_name(vcpu, src.reg)] & 0xFFFC
    if m.startswith("pop") and insn.operands and insn.operands[0].type == CX.X86_OP_REG and \
            insn.operands[0].reg in (CX.X86_REG_DS, CX.X86_REG_ES, CX.X86_REG_FS, CX.X86_REG_GS):
        try:
            return vcpu.read_u32(regs["rsp" if vcpu.word == 8 else "esp"]) & 0xFFFC
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
    key = (block, code, vcpu.code_bits(), size)
    site = _store_sites.get(key)
    if site is None:
        site = pc
        for insn in _disasm(key[2]).disasm(code, block):
            if any(op.type == CX.X86_OP_MEM and op.access & 2 and op.size == size    # CS_AC_WRITE
                   for op in insn.operands):
                site = insn.address
                break
        if len(_store_sites) >= 4096:
            _store_sites.clear()
        _store_sites[key] = site
    return site


# (block, its bytes, code bits, store size) -> the storing instruction: a block's disassembly
# does not change while its bytes do not
_store_sites: dict[tuple[int, bytes, int, int], int] = {}
