"""One unicorn engine in long mode as a 64-bit PV vcpu's physical CPU.

A 64-bit PV kernel and its user space both run at CPL 3 (xen-pv64-abi.md section 4).
Facts this module relies on (unicorn 2.1.4, measured; xen-pv64-abi.md section 12):
* the engine enters CPL 3 only through a real iretq executed at CPL 0, and a change
  between 64-bit and 32-bit code needs an iretq too; both go through Xen's stub
  (xenarea64.py). Between 64-bit ring-3 segments a register write of CS/SS is enough;
* the SYSCALL instruction hook runs with RIP on the `syscall` and unicorn adds 2 to the
  RIP the hook leaves: inside that hook the pc this class shows is the address after the
  instruction (what Xen's saved frame holds), and a pc written is rewound by 2;
* unicorn neither checks EFER.SCE nor touches RCX/R11 on `syscall`: the vcpu produces
  the architectural side effects itself;
* CR4.FSGSBASE is on in unicorn's reset state; Xen's PV guests get #UD for
  RDFSBASE & co. unless they enable it, so it starts off here.
"""

from __future__ import annotations

import ctypes

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from xenwb.hypervisor.cpu import (
    CR0_ET,
    CR0_MP,
    CR0_NE,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR0_WP,
    SEGMENT_REGS,
    CpuBase,
    RegBatch,
)
from xenwb.hypervisor.memory import MachineMemory
from xenwb.hypervisor.xenarea64 import GDT_LIMIT64, HV64_END, HV64_START, STUB_VA, XenArea64

R = X
_REG64 = {
    "rax": R.UC_X86_REG_RAX, "rbx": R.UC_X86_REG_RBX, "rcx": R.UC_X86_REG_RCX, "rdx": R.UC_X86_REG_RDX,
    "rsi": R.UC_X86_REG_RSI, "rdi": R.UC_X86_REG_RDI, "rbp": R.UC_X86_REG_RBP, "rsp": R.UC_X86_REG_RSP,
    "r8": R.UC_X86_REG_R8, "r9": R.UC_X86_REG_R9, "r10": R.UC_X86_REG_R10, "r11": R.UC_X86_REG_R11,
    "r12": R.UC_X86_REG_R12, "r13": R.UC_X86_REG_R13, "r14": R.UC_X86_REG_R14, "r15": R.UC_X86_REG_R15,
    "rip": R.UC_X86_REG_RIP, "rflags": R.UC_X86_REG_RFLAGS,
    "cs": R.UC_X86_REG_CS, "ss": R.UC_X86_REG_SS, "ds": R.UC_X86_REG_DS, "es": R.UC_X86_REG_ES,
    "fs": R.UC_X86_REG_FS, "gs": R.UC_X86_REG_GS,
    "fs_base": R.UC_X86_REG_FS_BASE, "gs_base": R.UC_X86_REG_GS_BASE,
    "cr0": R.UC_X86_REG_CR0, "cr2": R.UC_X86_REG_CR2, "cr3": R.UC_X86_REG_CR3, "cr4": R.UC_X86_REG_CR4,
}
# 32-bit names a caller may use for the low halves (emulation of 32-bit operand sizes)
ALIASES32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi",
             "ebp": "rbp", "esp": "rsp", "eip": "rip", "eflags": "rflags"}
MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_SHADOW_GS_BASE = 0xC0000080, 0xC0000100, 0xC0000101, 0xC0000102
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
CR0_AM = 1 << 18
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM = 1 << 9, 3 << 12, 1 << 17
SYSCALL_LEN = 2
EXIT_ADDRESS64 = STUB_VA + 0xFF0          # emu_start's "until": mapped, never executed
HYPERCALL_REGS64 = [R.UC_X86_REG_RAX, R.UC_X86_REG_RDI, R.UC_X86_REG_RSI, R.UC_X86_REG_RDX,
                    R.UC_X86_REG_R10, R.UC_X86_REG_R8, R.UC_X86_REG_RIP, R.UC_X86_REG_RFLAGS,
                    R.UC_X86_REG_CS, R.UC_X86_REG_SS, R.UC_X86_REG_RSP]


class _SysretOut(RegBatch):
    """RCX and R11: a write replaces any deferred syscall effects (Cpu64.defer_syscall_effects)."""

    def __init__(self, uc: Uc, cpu: Cpu64) -> None:
        super().__init__(uc, [R.UC_X86_REG_RCX, R.UC_X86_REG_R11])
        self._cpu = cpu

    def write(self, *values: int) -> None:
        self._cpu._deferred = None
        super().write(*values)


class Cpu64(CpuBase):
    """The emulated CPU of one 64-bit PV vcpu."""

    exit_address = EXIT_ADDRESS64
    pc_reg = R.UC_X86_REG_RIP
    pc_mask = (1 << 64) - 1

    def __init__(self, vcpu_id: int, mem: MachineMemory, xen: XenArea64) -> None:
        self.xen = xen
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self._init_engine(vcpu_id, uc, mem, (HV64_START, HV64_END))
        xen.setup_vcpu(vcpu_id)
        uc.reg_write(R.UC_X86_REG_GDTR, (0, xen.gdt_va(vcpu_id), GDT_LIMIT64, 0))
        uc.reg_write(R.UC_X86_REG_IDTR, (0, 0, 0, 0))
        uc.reg_write(R.UC_X86_REG_LDTR, (0, 0, 0, 0))
        self.at_cpl3 = False              # set once the first iretq ran
        self.pc_bias = 0                  # SYSCALL_LEN inside the syscall hook
        # False only while a hypercall runs that has left RIP, RFLAGS, CS, SS, RCX and R11 as
        # its `syscall` found them: every write of those (pc, set_reg, transfer) sets it
        self.exit_dirty = True
        self._hypercall_regs = RegBatch(uc, HYPERCALL_REGS64)
        self.hypercall_exit = RegBatch(uc, [R.UC_X86_REG_RAX])
        self.continuation_out = RegBatch(uc, [R.UC_X86_REG_RDI, R.UC_X86_REG_RSI, R.UC_X86_REG_RDX,
                                              R.UC_X86_REG_R10, R.UC_X86_REG_R8])
        self._deferred: tuple[int, int] | None = None     # RCX, R11 the syscall left, not yet written
        self.sysret_out = _SysretOut(uc, self)
        self._result_out = RegBatch(uc, [R.UC_X86_REG_RAX, R.UC_X86_REG_RCX, R.UC_X86_REG_R11])
        self.sysret_in = RegBatch(uc, [R.UC_X86_REG_RIP, R.UC_X86_REG_RFLAGS, R.UC_X86_REG_CS, R.UC_X86_REG_SS,
                                       R.UC_X86_REG_RCX, R.UC_X86_REG_R11])
        self.cpuid_in = RegBatch(uc, [R.UC_X86_REG_EAX, R.UC_X86_REG_ECX])
        self.cpuid_out = RegBatch(uc, [R.UC_X86_REG_RAX, R.UC_X86_REG_RBX, R.UC_X86_REG_RCX, R.UC_X86_REG_RDX])
        self._all_names = list(_REG64)
        self._all_regs = RegBatch(uc, [_REG64[n] for n in self._all_names])
        self._cs_ss = RegBatch(uc, [R.UC_X86_REG_CS, R.UC_X86_REG_SS])
        self._rip_rsp_rflags = RegBatch(uc, [R.UC_X86_REG_RIP, R.UC_X86_REG_RSP, R.UC_X86_REG_RFLAGS])
        self._u64 = ctypes.c_uint64()
        self._rax_id = R.UC_X86_REG_RAX

    def start_paging(self, top_mfn: int) -> None:
        """Long mode with paging on, at CPL 0 until the first transfer (Xen's own view:
        EFER LME|LMA|SCE|NXE, CR0 PE|MP|ET|NE|WP|AM|PG, CR4 PAE|OSFXSR|OSXMMEXCPT)."""
        uc = self.uc
        uc.reg_write(R.UC_X86_REG_CR4, CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT)
        uc.msr_write(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE)
        uc.reg_write(R.UC_X86_REG_CR3, top_mfn << 12)
        uc.reg_write(R.UC_X86_REG_CR0, CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG)

    # -- registers -------------------------------------------------------------
    @property
    def pc(self) -> int:
        return CpuBase.pc.fget(self) + self.pc_bias          # type: ignore[attr-defined]

    @pc.setter
    def pc(self, v: int) -> None:
        self.exit_dirty = True
        self.uc.reg_write(R.UC_X86_REG_RIP, (v - self.pc_bias) & self.pc_mask)

    @property
    def rip(self) -> int:
        return self.pc

    @rip.setter
    def rip(self, v: int) -> None:
        self.pc = v

    # -- the syscall's own effects, written with the hypercall's result -------------------
    def defer_syscall_effects(self, rcx: int, r11: int) -> None:
        """RCX/R11 as the `syscall` leaves them, written with RAX by set_rax (one call instead
        of two on the hypercall path), or by the first register access that comes before."""
        self._deferred = (rcx, r11)

    def flush_syscall_effects(self) -> None:
        d = self._deferred
        if d is not None:
            self.sysret_out.write(*d)

    def reg(self, name: str) -> int:
        if self._deferred is not None:
            self.flush_syscall_effects()
        name = ALIASES32.get(name, name)
        if name == "rip":
            return self.pc
        if name == "k_gs_base":
            return self.uc.msr_read(MSR_SHADOW_GS_BASE)
        return self.uc.reg_read(_REG64[name])

    def set_reg(self, name: str, value: int) -> None:
        self.exit_dirty = True
        if self._deferred is not None:
            self.flush_syscall_effects()
        name = ALIASES32.get(name, name)
        if name == "rip":
            self.pc = value
        elif name == "k_gs_base":
            self.uc.msr_write(MSR_SHADOW_GS_BASE, value & self.pc_mask)
        else:
            if name in SEGMENT_REGS:
                self.mark_loaded(value)
            self.uc.reg_write(_REG64[name], value & self.pc_mask)

    @property
    def cpl(self) -> int:
        return 3 if self.at_cpl3 else 0

    def regs(self) -> dict[str, int]:
        if self._deferred is not None:
            self.flush_syscall_effects()
        vals = self._all_regs.read()
        out = dict(zip(self._all_names, vals, strict=True))
        out["rip"] = (out["rip"] + self.pc_bias) & self.pc_mask
        for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
            out[seg] &= 0xFFFF
        out["k_gs_base"] = self.uc.msr_read(MSR_SHADOW_GS_BASE)
        out["pc"] = out["rip"]
        return out

    def hypercall_regs(self) -> list[int]:
        """RAX, RDI, RSI, RDX, R10, R8, RIP, RFLAGS, CS, SS, RSP in one call (the hot path)."""
        return self._hypercall_regs.read()

    def set_rax(self, value: int) -> None:
        d = self._deferred
        if d is not None:                       # the hypercall's result and the syscall's RCX/R11
            self._deferred = None
            self._result_out.write(value & self.pc_mask, d[0], d[1])
            return
        self._u64.value = value & self.pc_mask
        uclib.uc_reg_write(self.uc._uch, self._rax_id, ctypes.byref(self._u64))

    def set_cr3(self, top_mfn: int) -> None:
        self.uc.reg_write(R.UC_X86_REG_CR3, top_mfn << 12)

    def set_ts(self, on: bool) -> None:
        cr0 = self.uc.reg_read(R.UC_X86_REG_CR0)
        self.uc.reg_write(R.UC_X86_REG_CR0, (cr0 | CR0_TS) if on else (cr0 & ~CR0_TS))

    @property
    def gs_base(self) -> int:
        return self.uc.msr_read(MSR_GS_BASE)

    @gs_base.setter
    def gs_base(self, v: int) -> None:
        self.uc.msr_write(MSR_GS_BASE, v & self.pc_mask)

    @property
    def shadow_gs_base(self) -> int:
        return self.uc.msr_read(MSR_SHADOW_GS_BASE)

    @shadow_gs_base.setter
    def shadow_gs_base(self, v: int) -> None:
        self.uc.msr_write(MSR_SHADOW_GS_BASE, v & self.pc_mask)

    @property
    def fs_base(self) -> int:
        return self.uc.msr_read(MSR_FS_BASE)

    @fs_base.setter
    def fs_base(self, v: int) -> None:
        self.uc.msr_write(MSR_FS_BASE, v & self.pc_mask)

    def swapgs(self) -> None:
        """The active and shadow GS bases trade places (Xen's swapgs in toggle_guest_mode)."""
        a, b = self.gs_base, self.shadow_gs_base
        self.gs_base, self.shadow_gs_base = b, a

    # -- transfers ---------------------------------------------------------------
    def transfer(self, rip: int, cs: int, rflags: int, rsp: int, ss: int, *, same_kind: bool) -> None:
        """Continue the guest at cs:rip with ss:rsp. `same_kind`: the target code segment is of
        the kind (64-bit or 32-bit) the engine runs now, so register writes suffice; otherwise,
        and before the first entry to CPL 3, the stub's iretq makes the transfer."""
        self.exit_dirty = True
        if self._deferred is not None:
            self.flush_syscall_effects()
        cur_cs, cur_ss = (r & 0xFFFF for r in self._cs_ss.read())
        if self.at_cpl3 and same_kind:
            if cur_cs != cs:
                self.mark_loaded(cs)
                self.uc.reg_write(R.UC_X86_REG_CS, cs)
            if cur_ss != ss:
                self.mark_loaded(ss)
                self.uc.reg_write(R.UC_X86_REG_SS, ss)
            self._rip_rsp_rflags.write((rip - self.pc_bias) & self.pc_mask, rsp & self.pc_mask,
                                       rflags & self.pc_mask)
            return
        self.xen.write_iret_frame(self.id, rip & self.pc_mask, cs, rflags, rsp & self.pc_mask, ss)
        self.mark_loaded(cs)          # the iretq loads both (QEMU's iret does not set the bit)
        self.mark_loaded(ss)
        self.ring_switches += 1
        self.uc.reg_write(R.UC_X86_REG_RSP, self.xen.frame_va(self.id))
        self.pc = STUB_VA
        self.at_cpl3 = True            # from the stub on, the engine is at CPL 3

    @property
    def in_stub(self) -> bool:
        """A transfer through the stub is on its way: the guest's RIP, CS, RFLAGS, RSP and
        SS are in the stub's frame."""
        return self.pc == STUB_VA
