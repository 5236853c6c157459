"""A 64-bit PV vcpu: kernel and user both at CPL 3 on a long-mode engine, hypercalls by
`syscall` in kernel mode (xen-pv64-abi.md sections 4-6).

What Xen keeps per 64-bit PV vcpu beyond the common state (struct pv_vcpu): the
kernel-mode flag (TF_kernel_mode), the user L4 (guest_table_user; the kernel L4 is
`cr3_mfn`), the cached GS bases, and one callback address per kind.
"""

from __future__ import annotations

import os
import struct
import traceback
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INSN, UC_HOOK_INTR
from unicorn import x86_const as X

from xenwb.abi import constants as C
from xenwb.hypervisor import emulate, ldt, traps, traps64
from xenwb.hypervisor.cpu import CONTRIBUTORY_OR_PF
from xenwb.hypervisor.cpu64 import MSR_FS_BASE, MSR_GS_BASE, RFLAGS_IF, RFLAGS_IOPL, RFLAGS_VM, Cpu64
from xenwb.hypervisor.debugreg import debug_exception
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.state import DomainCrash, VcpuState
from xenwb.hypervisor.vcpu import Vcpu
from xenwb.hypervisor.xenarea64 import STUB_VA

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain

FRAME_REGS = ("rip", "cs", "rflags", "rsp", "ss")
INT3, INT80 = 3, 0x80
_U64 = struct.Struct("<Q")


class Vcpu64(Vcpu):
    """A 64-bit PV vcpu."""

    cpu: Cpu64
    word = 8

    def __init__(self, domain: Domain, vcpu_id: int) -> None:
        super().__init__(domain, vcpu_id, Cpu64(vcpu_id, domain.mem, domain.xen))
        self.kernel_mode = True                # TF_kernel_mode
        self.user_cr3_mfn = 0                  # guest_table_user (0: none)
        self.gs_base_kernel = self.gs_base_user = 0
        self.fs_base = 0
        self.sysret_exit = False               # Xen leaves by sysretq (TRAP_syscall) this time
        self.hypercall_sp = 0                  # RSP at the syscall being handled (caller_pc)
        self._compat_code = False              # the engine runs 32-bit code (compat user mode)
        self._install_common_hooks()
        uc = self.cpu.uc
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)

    # -- modes -------------------------------------------------------------------------
    def code_bits(self) -> int:
        return 32 if self._compat_code else 64

    def in_kernel_mode(self, regs: dict[str, int] | None = None) -> bool:
        return self.kernel_mode

    @property
    def active_top_mfn(self) -> int:
        return self.cr3_mfn if self.kernel_mode else self.user_cr3_mfn

    def is_long_code(self, cs: int) -> bool:
        """Is cs a 64-bit code segment (descriptor L bit)? Xen's flat 0xe033 is; 0xe023 is not."""
        d = traps.descriptor_of(self, cs)
        return d is None or bool(d >> 53 & 1) or not d >> 44 & 1

    # -- leaving the hypervisor ---------------------------------------------------------
    def exit_to(self, rip: int, cs: int, rflags: int, rsp: int, ss: int, *, sysret: bool) -> None:
        """Set the state the guest resumes with; `sysret`: Xen leaves by sysretq (the RCX/R11
        and CS/SS side effects are applied when the vcpu really returns, after any event)."""
        cpu = self.cpu
        long_target = self.is_long_code(cs)
        cpu.transfer(rip, cs, rflags, rsp, ss, same_kind=long_target != self._compat_code)
        self._compat_code = not long_target
        self.sysret_exit = sysret

    def return_to_guest(self) -> None:
        traps.deliver_event_upcall(self)
        if self.sysret_exit:
            self._apply_sysret()
        if self.state is not VcpuState.running:
            self.cpu.uc.emu_stop()

    def _apply_sysret(self) -> None:
        """restore_all_guest's sysret path: RCX = RIP, R11 = RFLAGS, CS/SS from STAR.

        The hot path of every hypercall: one batch read of RIP, RFLAGS, CS, SS, RCX and R11,
        and writes only for what changes (after a plain hypercall, nothing: _on_syscall left
        RCX/R11 as sysret makes them). A transfer through the stub takes the general path."""
        self.sysret_exit = False
        cpu = self.cpu
        if not cpu.exit_dirty:
            return          # _on_syscall left RCX/R11 as sysretq makes them; nothing else moved
        cpu.flush_syscall_effects()
        raw_rip, rflags, cs_now, ss_now, rcx_now, r11_now = cpu.sysret_in.read()
        rip = (raw_rip + cpu.pc_bias) & cpu.pc_mask
        if rip == STUB_VA:
            self._apply_sysret_framed()
            return
        cs_now &= 0xFFFF
        out = traps64.sysret_registers(rip, rflags, cs_now)
        if out is None:
            return                          # non-canonical RIP: Xen uses iretq, RCX/R11 restored
        rcx, r11, cs, ss = out
        if (rcx, r11) != (rcx_now, r11_now):
            cpu.sysret_out.write(rcx, r11)
        # sysretq also loads RFLAGS from R11 (x86_64/entry.S restore_all_guest: IOPL and VM
        # cleared, IF set), so a frame's IOPL never reaches the real flags
        if (cs, ss, r11) != (cs_now, ss_now & 0xFFFF, rflags):
            cpu.transfer(rip, cs, r11, cpu.reg("rsp"), ss, same_kind=True)

    def _apply_sysret_framed(self) -> None:
        """The sysret exit while the guest's RIP..SS wait in the stub's frame."""
        r, pending = self.guest_regs()
        out = traps64.sysret_registers(r["rip"], r["rflags"], r["cs"])
        if out is None:
            return                          # non-canonical RIP: Xen uses iretq, RCX/R11 restored
        rcx, r11, cs, ss = out
        cpu = self.cpu
        cpu.sysret_out.write(rcx, r11)
        # sysretq also loads RFLAGS from R11 (x86_64/entry.S restore_all_guest: IOPL and VM
        # cleared, IF set), so a frame's IOPL never reaches the real flags
        if (cs, ss, r11) != (r["cs"], r["ss"], r["rflags"]):
            if pending:
                self.domain.xen.write_iret_frame(self.id, r["rip"], cs, r11, r["rsp"], ss)
            else:
                cpu.transfer(r["rip"], cs, r11, r["rsp"], ss, same_kind=True)

    # -- hooks ----------------------------------------------------------------------------
    def _on_syscall(self, uc, _ud) -> None:
        """`syscall`: a hypercall in kernel mode (lstar_enter -> pv_hypercall), a system call
        to bounce in user mode (switch_to_kernel)."""
        cpu = self.cpu
        vals = cpu.hypercall_regs()              # rax rdi rsi rdx r10 r8 rip rflags cs ss rsp
        rip, rflags = vals[6], vals[7]
        self.clock.settle(rip + 2)               # the syscall completed
        cpu.pc_bias = 2                          # unicorn adds 2 to RIP after this hook
        try:
            # the instruction's own effects: RCX = the next RIP, R11 = RFLAGS (written with the
            # result when nothing looks at the registers before: no debugger)
            if self.domain.observer is None:
                cpu.defer_syscall_effects(rip + 2, rflags)
            else:
                cpu.sysret_out.write(rip + 2, rflags)
            if self.kernel_mode:
                self.sysret_exit = True
                # the sysretq exit changes nothing more unless the hypercall moves the guest, or
                # CS/SS are not STAR's or RFLAGS not what sysretq loads (IF set, IOPL/VM clear)
                cpu.exit_dirty = ((vals[8] & 0xFFFF) != C.FLAT_USER_CS64 or (vals[9] & 0xFFFF) != C.FLAT_USER_SS64
                                  or rflags & (RFLAGS_IOPL | RFLAGS_VM) or not rflags & RFLAGS_IF)
                self.hypercall_sp = vals[10]
                self.domain.hypercall(self, vals[0], (vals[1], vals[2], vals[3], vals[4], vals[5]), rip + 2)
            else:
                r = cpu.regs()
                traps64.syscall_from_user(self, r, compat=self._compat_code)
            self._after_guest_exit()
        except DomainCrash as e:
            self.domain.crash(self, str(e))
        except Exception as e:       # a workbench bug: one line, not a traceback
            if os.environ.get("XENWB_DEBUG"):
                traceback.print_exc()
            self.domain.crash(self, f"xenwb internal error while handling a syscall: {type(e).__name__}: {e} "
                                    "(please report; XENWB_DEBUG=1 shows the traceback)")
        finally:
            cpu.flush_syscall_effects()
            cpu.pc_bias = 0
            cpu.exit_dirty = True                # an exit deferred by a debugger takes the full path

    def _on_sysenter(self, uc, _ud) -> None:
        """SYSENTER (unicorn: otherwise a silent no-op): sysenter_entry. Xen's SYSENTER MSRs send
        it to Xen from any mode; the guest sees its sysenter callback or #GP(0)."""
        cpu = self.cpu
        self.clock.settle(cpu.pc + 2)
        cpu.pc_bias = 2                          # unicorn adds 2 to RIP after this hook
        try:
            self._guarded("SYSENTER", self._sysenter)
        finally:
            cpu.pc_bias = 0

    def _sysenter(self) -> None:
        r = self.cpu.regs()                      # RIP already past the instruction (pc_bias)
        traps64.sysenter_from_user(self, r)
        self._after_guest_exit()

    def _on_interrupt(self, uc, intno: int, _ud) -> None:
        self.clock.settle(self.cpu.pc)
        self._guarded(f"interrupt {intno:#x}", self._interrupt, intno)

    def _interrupt(self, intno: int) -> None:
        cpu = self.cpu
        r = cpu.regs()
        if intno in CONTRIBUTORY_OR_PF or intno == 8:
            cpu.clear_pending_exception()
        if intno == C.TRAP_page_fault:
            offset = ldt.ldt_offset(self, r["cr2"])
            if offset is not None and ldt.handle_ldt_mapping_fault(self, offset, r):
                self._after_guest_exit()
                return
        if cpu.in_stub:
            # the stub's iretq faulted: the target selectors do not load. Xen reflects the
            # fault to the guest with the state it was returning to (entry.S: .Lft0 ->
            # handle_exception), the hardware's vector and error code.
            target, _ = self.guest_regs()
            traps.bounce_exception(self, intno, traps.iret_fault_error_code(self, target), regs=target)
            self._after_guest_exit()
            return
        soft = self._software_int(intno, r)
        if soft is not None:
            self._soft_int(intno, soft, r)
        elif intno == C.TRAP_page_fault:
            cr2 = r["cr2"]
            if self.accessed_bit_fault(cr2):
                cpu.set_reg("cr2", self.cr2)         # the guest never saw this fault
            else:
                ec = emulate.page_fault_error_code(self, r, cr2)
                if not emulate.ptwr(self, r, cr2, ec):
                    traps.bounce_exception(self, 14, ec, cr2, regs=r)
        elif intno == C.TRAP_gp_fault:
            if not emulate.privileged_op(self, r):
                traps.bounce_exception(self, 13, emulate.gp_error_code(self, r), regs=r)
        elif intno == C.TRAP_no_device:
            cpu.set_ts(False)
            traps.bounce_exception(self, 7, regs=r)
        elif intno == C.TRAP_debug:
            debug_exception(self, r, icebp=False)
        else:
            traps.bounce_exception(self, intno, 0 if intno in traps64.HAVE_EC else None, regs=r)
        self._after_guest_exit()

    def _software_int(self, intno: int, r: dict[str, int]) -> int | None:
        """Length of the `int n`/int3 that raised intno, or None for an exception."""
        pc = r["pc"]
        if intno >= 32:
            return 2
        try:
            before = self.read_virt(pc - 2, 2) if self.domain.geo.guest_range_ok(pc - 2, 2) else b""
        except GuestFault:
            before = b""
        if before == bytes([0xCD, intno]):
            return 2
        if len(before) == 2 and intno == 3 and before[1] == 0xCC:
            return 1                    # (icebp never comes here: unicorn reports it as invalid)
        return None

    def _soft_int(self, n: int, length: int, r: dict[str, int]) -> None:
        """`int n` (traps.c do_general_protection, entry.S int80_direct_trap): int3 goes
        straight to its vector (icebp: Vcpu._icebp); `int $0x80` to trap_ctxt[0x80] when it has an address;
        any other vector when its trap_info DPL permits it (>= 1 from kernel mode, 3 from user
        mode, permit_softint); otherwise #GP with the IDT error code, RIP on the int."""
        ti = self.trap_ctxt[n]
        if n == INT3:
            traps.bounce_exception(self, n, regs=r)
            return
        if n == INT80 and ti is not None and ti.address:
            traps.bounce_exception(self, n, regs=r)
            return
        needed = 1 if self.kernel_mode else 3
        if ti is not None and (ti.flags & 3) >= needed:
            traps.bounce_exception(self, n, regs=r)
            return
        r = dict(r, rip=r["pc"] - length, pc=r["pc"] - length)
        self.cpu.pc = r["pc"]
        traps.bounce_exception(self, 13, (n << 3) | 2, regs=r)

    # -- the hypercall ABI: syscall, RAX = number, RDI RSI RDX R10 R8 = arguments ----------------
    def caller_pc(self, pc: int) -> int:
        """The `syscall` itself, or, inside a hypercall-page stub (push %rcx; push %r11;
        mov $n,%eax; syscall; pop %r11; pop %rcx; ret), the caller's return address."""
        cache = self.domain.stub_cache
        stub = cache.get(pc)
        if stub is None:
            code = self.kernel_bytes(pc - 10, 14)
            stub = (len(code) == 14 and code[:3] == b"\x51\x41\x53" and code[3] == 0xB8
                    and code[8:10] == b"\x0f\x05" and code[10:] == b"\x41\x5b\x59\xc3")
            if len(cache) < 4096:
                cache[pc] = stub
        if stub:
            try:
                return self.read_u64(self.hypercall_sp + 16)      # above the pushed rcx and r11
            except GuestFault:
                pass
        return pc - 2

    def set_hypercall_result(self, ret: int) -> None:
        self.cpu.set_rax(ret)

    def restart_hypercall(self, args: tuple[int, ...], pc: int) -> None:
        """A preempted hypercall: new arguments in RDI..R8, RIP back on the syscall (Xen then
        leaves by sysretq: RCX = that RIP)."""
        self.cpu.continuation_out.write(*args)
        self.cpu.pc = pc

    def do_iret(self) -> None:
        traps64.do_iret(self)

    # -- frames and registers ----------------------------------------------------------------
    def bounce(self, handler_cs: int, handler_ip: int, error_code: int | None, mask_events: bool, *,
               regs: dict[str, int] | None = None) -> None:
        traps64.create_bounce_frame(self, handler_ip, error_code, mask_events, regs=regs)

    def event_callback_registered(self) -> bool:
        return bool(self.event_eip)

    def guest_regs(self) -> tuple[dict[str, int], bool]:
        r = self.cpu.regs()
        if not self.cpu.in_stub:
            return r, False
        rip, cs, rflags, rsp, ss = self.domain.xen.read_iret_frame(self.id)
        r.update(rip=rip, pc=rip, cs=cs & 0xFFFF, rflags=rflags, rsp=rsp, ss=ss & 0xFFFF)
        return r, True

    def set_guest_regs(self, **regs: int) -> None:
        if "pc" in regs:
            regs["rip"] = regs.pop("pc")
        r, pending = self.guest_regs()
        framed = {k: v for k, v in regs.items() if k in FRAME_REGS}
        if pending and framed:
            r.update(framed)
            self.domain.xen.write_iret_frame(self.id, *(r[k] for k in FRAME_REGS))
            regs = {k: v for k, v in regs.items() if k not in framed}
        for name, value in regs.items():
            self.cpu.set_reg(name, value)

    def failsafe(self, target: dict[str, int]) -> None:
        traps64.failsafe_callback(self, target)

    def reload_segments(self) -> bool:
        """load_segments when Xen switches to this vcpu: DS, ES, FS, GS must still load at
        CPL 3; otherwise the failsafe callback gets the selectors."""
        if self.cpu.in_stub or not self.cpu.at_cpl3:
            return False
        r = self.cpu.regs()
        bad = [s for s in ("ds", "es", "fs", "gs") if not traps.data_segment_loadable(self, r[s], 3)]
        if not bad:
            return False
        fs_base, gs_base = self.cpu.fs_base, self.cpu.gs_base
        for s in bad:
            self.cpu.set_reg(s, 0)
        self.cpu.fs_base, self.cpu.gs_base = fs_base, gs_base     # Xen writes the bases back
        self.failsafe(r)
        return True

    # -- MSRs Xen emulates for the bases (emul-priv-op.c read_msr/write_msr) ---------------------
    def read_base_msr(self, msr: int) -> int:
        if msr == MSR_FS_BASE:
            return self.cpu.fs_base
        if msr == MSR_GS_BASE:
            return self.cpu.gs_base
        return self.cpu.shadow_gs_base if self.kernel_mode else self.gs_base_user

    def write_base_msr(self, msr: int, value: int) -> None:
        if msr == MSR_FS_BASE:
            self.cpu.fs_base = value
        elif msr == MSR_GS_BASE:
            self.cpu.gs_base = value
        else:
            self.cpu.shadow_gs_base = value
            self.gs_base_user = value

    def describe(self) -> str:
        s = super().describe()
        return f"{s} {'kernel' if self.kernel_mode else 'user'}"

