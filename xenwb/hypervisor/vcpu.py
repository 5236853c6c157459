"""A PV vcpu: Xen's per-vcpu state plus the engine hooks that call into the hypervisor.

`Vcpu` holds what every PV vcpu has (struct vcpu and struct pv_vcpu, vcpu_info, timers,
guest memory access through its tables); `Vcpu32` is a 32-bit PV vcpu on its protected-mode
engine (kernel in ring 1, hypercalls by `int $0x82`); the 64-bit one is in vcpu64.py.
"""

from __future__ import annotations

import os
import struct
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR
from unicorn import x86_const as X

from xenwb.abi import constants as C
from xenwb.hypervisor import emulate, gate_op, ldt, segments, traps
from xenwb.hypervisor.cpu import CONTRIBUTORY_OR_PF, Cpu32, CpuBase
from xenwb.hypervisor.debugreg import DR6_DEFAULT, DR7_DEFAULT, DebugRegisters, debug_exception
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.paging import translate, walk
from xenwb.hypervisor.state import DomainCrash, TrapInfo, VcpuState
from xenwb.hypervisor.xenarea import GDT_WINDOW, PERDOMAIN_VA
from xenwb.iogate import IoGate

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
SOFT_INT_DIRECT = frozenset({3, 4})      # Xen's IDT has DPL3 gates for int3 and into


class Vcpu:
    """What Xen keeps for every PV vcpu; the width-specific engine and hooks are a subclass's."""

    cpu: CpuBase
    word = 4          # bytes in the guest's unsigned long

    def __init__(self, domain: Domain, vcpu_id: int, cpu: CpuBase) -> None:
        self.domain = domain
        self.id = vcpu_id
        self.cpu = cpu
        self.clock = self.cpu.clock
        self.state = VcpuState.down
        self.initialised = False
        # Xen's per-vcpu PV state (struct pv_vcpu)
        self.trap_ctxt: list[TrapInfo | None] = [None] * 256
        self.event_cs = self.event_eip = 0
        self.failsafe_cs = self.failsafe_eip = 0
        self.failsafe_mask = False
        self.callbacks: dict[int, tuple[int, int, int]] = {}
        # the syscall/sysenter callbacks and their mask-events flags (struct pv_vcpu)
        self.syscall_eip = self.syscall32_eip = self.sysenter_eip = 0
        self.syscall_mask = self.syscall32_mask = self.sysenter_mask = False
        self.kernel_ss = self.kernel_sp = 0
        self.iopl = 0
        self.virtual_ts = False
        self.cr2 = 0
        self.cr4 = 0
        self.debugreg = [0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT]   # DR0-3, -, -, DR6, DR7
        self.dr7_emul = 0                    # DR7's I/O breakpoint enables (pv.dr7_emul)
        self.debug = DebugRegisters(self)
        self.gdt_frames: list[int] = []
        self.gdt_ents = 0
        self.ldt_base = self.ldt_ents = 0
        self.ldt_mapped: list[int | None] = [None] * 16   # frames mapped in the LDT shadow (ldt.py)
        self.cr3_mfn = 0
        self._tcache: dict[tuple[int, bool], int | None] = {}   # (va page, write) -> machine page
        self._fetch_cache: dict[tuple[int, int, int], bool] = {}  # (va page, machine page, cpl) -> runs code
        self._tgen = self._ttop = -1
        self._pages: dict[int, tuple[memoryview, int]] = {}   # va page -> where it is in RAM (_page_at)
        self._vcpu_info_maddr = 0
        vi = domain.abi.vcpu_info
        self._vi_size = vi.size()
        self._mask_off = vi.offset("evtchn_upcall_mask")
        self._pending_off = vi.offset("evtchn_upcall_pending")
        self._sel_off = vi.offset("evtchn_pending_sel")
        self._sel_size = domain.abi.abi.word
        self._cr2_off = vi.offset("arch") + domain.abi.arch_vcpu_info.offset("cr2")
        si = domain.abi.shared_info
        self.vcpu_info_maddr = (domain.shared_info_mfn << 12) + si.offset("vcpu_info") + self._vi_size * vcpu_id
        self.in_multicall = False
        self.pending_iret_target: dict[int, int] | None = None
        self.hold_exit: Callable[[], None] | None = None   # a debugger stops this exit from the hypervisor
        self.on_resume: Callable[[], None] | None = None   # work deferred by that stop
        self.held_exception: int | None = None   # the vector whose delivery a debugger holds
        self.bounces = 0                # frames Xen pushed (exceptions, events, failsafe)
        self.rescheduled = False        # Xen would reload its segments (load_segments) on resume
        self.continuation: tuple[int, ...] | None = None   # set by a preempted hypercall
        # timers (xen/arch/x86/pv/domain.c: a 10 ms periodic VIRQ_TIMER from the start)
        self.periodic_period = 10_000_000
        self.periodic_last = 0               # v->periodic_last_event
        self.periodic_next = self.periodic_period
        self.misc_features_enables = 0       # MSR_INTEL_MISC_FEATURES_ENABLES (CPUID faulting)
        self.singleshot_deadline: int | None = None
        self.poll_ports: list[int] | None = None
        self.poll_deadline: int | None = None
        self.runstate_area: int | None = None
        self.time_area: int | None = None      # VCPUOP_register_vcpu_time_memory_area (a guest VA)
        self.vcpu_info_registered = False
        self.iobitmap: tuple[int, int] | None = None
        self.runstate_state = 3          # RUNSTATE_offline until brought up
        self.runstate_entry = 0
        self.runstate_time = [0, 0, 0, 0]

    # -- hooks every width has ----------------------------------------------------
    def _install_common_hooks(self) -> None:
        uc = self.cpu.uc
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        # RDTSC/RDTSCP: the virtual TSC is the clock (1 tick per ns), answered by a C hook
        if self.word == 8:
            self.clock.install_tsc_hooks(X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX)
        else:
            self.clock.install_tsc_hooks(X.UC_X86_REG_EAX, X.UC_X86_REG_EDX, X.UC_X86_REG_ECX)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self.io_gate = IoGate(uc, self._port_io)

    def _guarded(self, what: str, fn, *args):
        """Run hypervisor work for a hook: a DomainCrash crashes the domain; any other
        exception is a workbench bug, reported as a one-line crash instead of a traceback."""
        try:
            return fn(*args)
        except DomainCrash as e:
            self.domain.crash(self, str(e))
        except Exception as e:
            if os.environ.get("XENWB_DEBUG"):
                traceback.print_exc()
            self.domain.crash(self, f"xenwb internal error while handling {what}: {type(e).__name__}: {e} "
                                    "(please report; XENWB_DEBUG=1 shows the traceback)")
        return None

    def _on_cpuid(self, uc, _ud) -> int:
        self._guarded("CPUID", emulate.cpuid, self)
        return 1

    # Port I/O. Unicorn executes IN/OUT at any privilege level without consulting IOPL or
    # an I/O bitmap, so the native hook of iogate.py asks here, before the access, and raises
    # #GP(0) where Xen would (pv/emul-priv-op.c guest_io_okay: the virtual IOPL, else the
    # guest's I/O bitmap). An allowed access reads all ones and its writes are dropped: a domU
    # has no I/O ports (guest_io_read/guest_io_write).
    def _port_io(self, op: str, port: int, size: int, value: int) -> bool:
        allowed = self._guarded("port I/O", emulate.guest_io_okay, self, port, size)
        if allowed is None:
            return True                        # the domain crashed: let the instruction end
        if self.domain.trace.want_io:
            if op == "in":
                value = (1 << (8 * size)) - 1
            self.domain.trace.emit_io(self, op, port, size, value, self.cpu.pc, not allowed)
        return allowed

    def _invalid(self) -> None:
        if self._icebp():
            pass
        elif not emulate.invalid_opcode(self):
            traps.bounce_exception(self, C.TRAP_invalid_op)
        self._after_guest_exit()

    def _icebp(self) -> bool:
        """icebp (0xF1): a #DB trap with no DR6 status, as on hardware (unicorn's translator
        takes it for its own debugger exit and reports an invalid opcode)."""
        pc = self.cpu.pc
        try:
            if self.read_virt(pc, 1) != b"\xf1":
                return False
        except GuestFault:
            return False
        r, _ = self.guest_regs()
        nxt = (pc + 1) & self.domain.geo.va_mask
        r.update(pc=nxt, **{"rip" if self.word == 8 else "eip": nxt})
        debug_exception(self, r, icebp=True)
        return True

    def _on_invalid(self, uc, _ud) -> bool:
        self.clock.settle(self.cpu.pc)         # the invalid instruction did not complete
        self._guarded("an invalid opcode", self._invalid)
        return True

    def _after_guest_exit(self) -> None:
        """On the way back to the guest from the hypervisor. A debugger that holds this exit
        (hold_exit) stops the engine here; what the exit still had to do runs when the vcpu
        resumes, so the guest sees the same thing either way."""
        if self.domain.finished:
            self.cpu.uc.emu_stop()
            return
        if self.hold_exit is not None:
            self.on_resume, self.hold_exit = self.hold_exit, None
            self.cpu.uc.emu_stop()
            return
        self.return_to_guest()

    def return_to_guest(self) -> None:
        """Deliver pending events (Xen's test_all_events); stop if the vcpu no longer runs."""
        traps.deliver_event_upcall(self)
        if self.state is not VcpuState.running:
            self.cpu.uc.emu_stop()

    def accessed_bit_fault(self, cr2: int) -> bool:
        """A #PF on the CPU's store of a GDT descriptor's accessed bit as it loads a selector
        (the workbench maps the GDT read-only in Xen's area, Xen maps it writable): make the
        store, and the instruction runs again, as on Xen where the store just happens."""
        offset = cr2 - self.domain.xen.gdt_va(self.id)
        return 0 <= offset < GDT_WINDOW and self.domain.xen.mark_accessed(self.id, offset & ~7)

    # -- what each width defines ----------------------------------------------------------
    def code_bits(self) -> int:
        """The width of the code running now (capstone decodes with it)."""
        return 32

    def in_kernel_mode(self, regs: dict[str, int] | None = None) -> bool:
        """guest_kernel_mode (asm/x86_64/regs.h): ring 1 for a 32-bit guest."""
        cs = (regs or self.cpu.regs())["cs"]
        return cs & 3 == 1

    @property
    def active_top_mfn(self) -> int:
        """The top-level table the CPU uses now."""
        return self.cr3_mfn

    def cpu_regs(self) -> dict[str, int]:
        return self.cpu.regs()

    def bounce_vector(self, vector: int, error_code: int | None, *, regs: dict[str, int] | None = None) -> None:
        """Reflect an exception through the trap table (pv_inject_event)."""
        traps.bounce_exception(self, vector, error_code, regs=regs)

    def bounce(self, handler_cs: int, handler_ip: int, error_code: int | None, mask_events: bool, *,
               regs: dict[str, int] | None = None) -> None:
        """Push Xen's frame for this width and continue at the handler (create_bounce_frame)."""
        raise NotImplementedError

    def event_callback_registered(self) -> bool:
        raise NotImplementedError

    def guest_regs(self) -> tuple[dict[str, int], bool]:
        """The registers the guest resumes with (each dict also has "pc"), and whether a
        transfer the hypervisor started is still on its way through its stub."""
        raise NotImplementedError

    def set_guest_regs(self, **regs: int) -> None:
        raise NotImplementedError

    def prepare_rebounce(self) -> None:
        """A pending transfer's frame is about to be rebuilt (an event bounced on top)."""

    def failsafe(self, target: dict[str, int]) -> None:
        raise NotImplementedError

    def reload_segments(self) -> bool:
        """Xen reloads the data selectors when it switches to this vcpu (load_segments)."""
        return False

    # -- vcpu_info -------------------------------------------------------------
    # Fields of vcpu_info (public/xen.h), at the offsets the domain's ABI gives.
    @property
    def upcall_mask(self) -> int:
        return self._vi_view[self._vi_off + self._mask_off]

    @upcall_mask.setter
    def upcall_mask(self, v: int) -> None:
        old = self.upcall_mask
        self._vi_view[self._vi_off + self._mask_off] = v & 1
        if old != (v & 1):
            self.domain.trace.emit_mask(self, old, v & 1)

    @property
    def vcpu_info_maddr(self) -> int:
        """Machine address of this vcpu's vcpu_info (shared_info slot, or where
        VCPUOP_register_vcpu_info moved it)."""
        return self._vcpu_info_maddr

    @vcpu_info_maddr.setter
    def vcpu_info_maddr(self, maddr: int) -> None:
        self._vcpu_info_maddr = maddr
        self._vi_view, self._vi_off = self.domain.mem._where(maddr, self._vi_size)   # read on every exit
        self.domain.mask_observer.vcpu_info_moved(self)

    @property
    def upcall_pending(self) -> int:
        return self._vi_view[self._vi_off + self._pending_off]

    @upcall_pending.setter
    def upcall_pending(self, v: int) -> None:
        self._vi_view[self._vi_off + self._pending_off] = v & 1

    @property
    def pending_sel(self) -> int:
        """evtchn_pending_sel: one bit per word of shared_info's pending bitmap."""
        off = self._vi_off + self._sel_off
        return int.from_bytes(self._vi_view[off: off + self._sel_size], "little")

    @pending_sel.setter
    def pending_sel(self, v: int) -> None:
        off = self._vi_off + self._sel_off
        self._vi_view[off: off + self._sel_size] = (v & ((1 << (8 * self._sel_size)) - 1)).to_bytes(
            self._sel_size, "little")

    def write_vcpu_info_cr2(self, cr2: int) -> None:
        off = self._vi_off + self._cr2_off
        self._vi_view[off: off + self._sel_size] = (cr2 & ((1 << (8 * self._sel_size)) - 1)).to_bytes(
            self._sel_size, "little")

    @property
    def tsc_aux(self) -> int:
        """MSR_TSC_AUX: what RDTSCP returns in ECX (kept by the clock's C hook)."""
        return self.clock.tsc_aux

    @tsc_aux.setter
    def tsc_aux(self, v: int) -> None:
        self.clock.tsc_aux = v

    def set_virtual_ts(self, on: bool) -> None:
        self.virtual_ts = on
        self.cpu.set_ts(on)

    # -- guest memory through this vcpu's pagetables ---------------------------------
    def _check_range(self, va: int, n: int) -> None:
        if not self.domain.geo.guest_range_ok(va, n):
            raise GuestFault(va)

    def virt_to_maddr(self, va: int, write: bool = False) -> int | None:
        """copy_to/from_guest's translation through the kernel's tables. Walks are cached per
        page until a pagetable entry changes anywhere (MM.generation): a hypercall reads
        its arguments from a handful of pages, and each walk costs four table reads."""
        mm = self.domain.mm
        if self._tgen != mm.generation or self._ttop != self.cr3_mfn:
            self._tcache.clear()
            self._fetch_cache.clear()
            self._pages.clear()
            self._tgen, self._ttop = mm.generation, self.cr3_mfn
        key = (va >> 12, write)
        page = self._tcache.get(key, -1)
        if page == -1:
            maddr = translate(self.domain.mem, self.domain.mode, self.cr3_mfn, va & ~0xFFF, write)
            page = None if maddr is None else maddr >> 12
            if len(self._tcache) < 4096:
                self._tcache[key] = page
        return None if page is None else (page << 12) | (va & 0xFFF)

    def _fetchable(self, va: int, maddr: int) -> bool:
        """Could this engine run code at va, as mapped now, from the page at maddr? (Dropping
        translations makes unicorn translate va for an instruction fetch: where the fetch
        would fault, the fault is left pending, so only fetchable pages are dropped. Other
        vcpus' engines keep what they translated: a known gap for SMP.)"""
        cpl = self.cpu.cpl
        key = (va >> 12, maddr >> 12, cpl)
        ok = self._fetch_cache.get(key)
        if ok is None:
            w = walk(self.domain.mem, self.domain.mode, self.active_top_mfn, va & ~0xFFF)
            ok = (w.mapped and w.maddr >> 12 == maddr >> 12 and not w.nx and (w.user or cpl < 3))
            if len(self._fetch_cache) < 4096:
                self._fetch_cache[key] = ok
        return ok

    def read_virt(self, va: int, n: int) -> bytes:
        """copy_from_guest: guest-kernel view, the hypervisor range refused."""
        off = va & 0xFFF
        if off + n <= 4096:
            view, base = self._page_at(va)
            return bytes(view[base + off: base + off + n])
        self._check_range(va, n)
        return self._copy(va, n, None)

    def _page_at(self, va: int) -> tuple[memoryview, int]:
        """(RAM view, offset of va's page in it) for a read inside that page, or GuestFault
        (copy_from_guest's fast path: most hypercall arguments are a few bytes of a page or two).
        The pages found are kept while the translations are (virt_to_maddr clears both)."""
        if self._tgen == self.domain.mm.generation and self._ttop == self.cr3_mfn:
            hit = self._pages.get(va >> 12)
            if hit is not None:
                return hit
        self._check_range(va, 1)
        maddr = self.virt_to_maddr(va)
        loc = None if maddr is None else self.domain.mem.locate(maddr & ~0xFFF, 4096)
        if loc is None:
            raise GuestFault(va, False)
        if self.domain.geo.guest_range_ok(va & ~0xFFF, 4096) and len(self._pages) < 256:
            self._pages[va >> 12] = loc         # the whole page is guest space: any read in it is
        return loc

    def write_virt(self, va: int, data: bytes) -> None:
        """copy_to_guest: needs a writable mapping (Xen runs with CR0.WP set)."""
        self._check_range(va, len(data))
        self._copy(va, len(data), data)

    def _copy(self, va: int, n: int, data: bytes | None) -> bytes:
        mem = self.domain.mem
        out = bytearray()
        pos = 0
        while pos < n:
            cur = va + pos
            chunk = min(n - pos, 4096 - (cur & 0xFFF))
            maddr = self.virt_to_maddr(cur, write=data is not None)
            if maddr is None or not mem.valid(maddr, chunk):
                raise GuestFault(cur, data is not None)
            if data is None:
                out += mem.read(maddr, chunk)
            else:
                mem.write(maddr, data[pos: pos + chunk])
                if self._fetchable(cur, maddr):
                    self.cpu.drop_code(cur, cur + chunk)      # it may be code the guest runs
            pos += chunk
        return bytes(out)

    def read_u32(self, va: int) -> int:
        off = va & 0xFFF
        if off <= 4092:
            view, base = self._page_at(va)
            return _U32.unpack_from(view, base + off)[0]
        return _U32.unpack(self.read_virt(va, 4))[0]

    def read_u64(self, va: int) -> int:
        off = va & 0xFFF
        if off <= 4088:
            view, base = self._page_at(va)
            return _U64.unpack_from(view, base + off)[0]
        return _U64.unpack(self.read_virt(va, 8))[0]

    def kernel_bytes(self, va: int, n: int) -> bytes:
        """n bytes at va as the kernel maps them, for the hypervisor's own look at guest code
        (caller_pc's stub test): through the kept translations, or as the debugger reads
        (any mapped byte, up to a hole) where copy_from_guest would refuse."""
        try:
            return self.read_virt(va, n)
        except GuestFault:
            return self.debug_read(va, n)

    def read_ulong(self, va: int) -> int:
        """An unsigned long (or pointer, xen_pfn_t) of the guest's width."""
        return self.read_u64(va) if self.word == 8 else self.read_u32(va)

    def write_ulong(self, va: int, v: int) -> None:
        self.write_virt(va, (v & ((1 << (8 * self.word)) - 1)).to_bytes(self.word, "little"))

    def read_ulongs(self, va: int, n: int) -> list[int]:
        return list(struct.unpack(f"<{n}{'Q' if self.word == 8 else 'I'}", self.read_virt(va, n * self.word)))

    def debug_read(self, va: int, n: int) -> bytes:
        """Debugger read: any mapped byte, hypervisor range included; stops at a hole."""
        mem = self.domain.mem
        mode = self.domain.mode
        out = bytearray()
        pos = 0
        while pos < n:
            cur = (va + pos) & self.domain.geo.va_mask
            chunk = min(n - pos, 4096 - (cur & 0xFFF))
            maddr = translate(mem, mode, self.active_top_mfn, cur)
            if maddr is None or not mem.valid(maddr, chunk):
                break
            out += mem.read(maddr, chunk)
            pos += chunk
        return bytes(out)

    # -- description ---------------------------------------------------------------
    def describe(self) -> str:
        r = self.cpu.regs()
        pc = self.cpu.pc
        sym = self.domain.symbolize(pc)
        name = "rip" if self.word == 8 else "eip"
        return f"vcpu{self.id} {name} {pc:#0{2 + 2 * self.word}x}{f' <{sym}>' if sym else ''} cs {r['cs']:#x}"


class Vcpu32(Vcpu):
    """A 32-bit PV vcpu: the kernel in ring 1, hypercalls by `int $0x82`, ring changes
    through the call-gate trampoline (xenarea.py)."""

    cpu: Cpu32

    def __init__(self, domain: Domain, vcpu_id: int) -> None:
        super().__init__(domain, vcpu_id, Cpu32(vcpu_id, domain.mem, domain.xen, domain.pae))
        self.hypercall_sp = 0              # ESP at the int $0x82 being handled (caller_pc)
        self._install_common_hooks()
        uc = self.cpu.uc
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, X.UC_X86_INS_SYSENTER)
        stub = self.domain.xen.stub_va(self.id)
        uc.hook_add(UC_HOOK_CODE, self._on_stub, None, stub, stub)

    def _on_stub(self, uc, address, size, _ud) -> None:
        """The ring-0 transition stub runs: close the call gate again."""
        self.cpu.disarm()

    # SYSCALL and SYSENTER: unicorn calls the hook in place of the instruction (EIP on it) and
    # then adds the instruction's length to EIP, whatever the hook set; so the hook leaves
    # EIP two bytes short of where the guest goes on.
    def _on_syscall(self, uc, _ud) -> None:
        self._fast_system_call("SYSCALL", True)

    def _on_sysenter(self, uc, _ud) -> None:
        self._fast_system_call("SYSENTER", False)

    def _fast_system_call(self, what: str, syscall: bool) -> None:
        cpu = self.cpu
        eip = cpu.eip
        self.clock.settle(eip + 2)                 # the instruction completed
        try:
            self._guarded(what, self._enter_fast_system_call, eip, syscall)
        finally:
            cpu.eip = (cpu.eip - 2) & 0xFFFFFFFF

    def _enter_fast_system_call(self, eip: int, syscall: bool) -> None:
        r = self.cpu.regs()
        r["eip"] = r["pc"] = (eip + 2) & 0xFFFFFFFF
        if syscall:
            self.cpu.set_reg("ecx", r["eip"])        # what the instruction itself does (RCX = next RIP)
            r["ecx"] = r["eip"]
            traps.syscall_entry(self, r)
        else:
            traps.sysenter_entry(self, r)
        self._after_guest_exit()

    def _on_interrupt(self, uc, intno: int, _ud) -> None:
        # a fault leaves EIP on the faulting instruction, `int n` after it: either way the
        # clock keeps only the instructions that completed
        self.clock.settle(self.cpu.eip)
        if intno == 0x82:                       # the hot path: a hypercall from the kernel
            vals = self.cpu.hypercall_regs()
            if vals[6] & 3 == 1:
                self.hypercall_sp = vals[8]
                try:
                    self.domain.hypercall(self, vals[0], tuple(vals[1:6]), vals[7])
                    self._after_guest_exit()
                except DomainCrash as e:
                    self.domain.crash(self, str(e))
                return
        self._guarded(f"interrupt {intno:#x}", self._interrupt, intno)

    def _interrupt(self, intno: int) -> None:
        if intno == 0x82:
            vals = self.cpu.hypercall_regs()
            if vals[6] & 3 == 1:
                self.hypercall_sp = vals[8]
                self.domain.hypercall(self, vals[0], tuple(vals[1:6]), vals[7])
                self._after_guest_exit()
                return
        r = self.cpu.regs()
        cr2 = r["cr2"] if intno == 14 else None
        if intno in CONTRIBUTORY_OR_PF:
            self.cpu.clear_pending_exception()
        if intno == C.TRAP_page_fault:
            offset = ldt.ldt_offset(self, cr2)
            if offset is not None and ldt.handle_ldt_mapping_fault(self, offset, r):
                self._after_guest_exit()
                return
        if r["cs"] & 3 == 0 and r["eip"] >= PERDOMAIN_VA:
            # the trampoline's iret faulted (a selector of its target does not load): Xen
            # reports that very exception on the iret's target (x86_64/compat/entry.S:
            # .Lft0 -> handle_exception; the failsafe callback is load_segments' alone)
            self.pending_iret_target = None
            target = traps.iret_target(self, r)
            traps.bounce_exception(self, intno, traps.iret_fault_error_code(self, target), regs=target)
            self._after_guest_exit()
            return
        soft = self._software_int(intno, r)
        if soft is not None:
            self._soft_int(intno, soft, r)
        elif intno == C.TRAP_page_fault:
            if self.accessed_bit_fault(cr2):
                self.cpu.set_reg("cr2", self.cr2)    # the guest never saw this fault
            elif (seg_vector := segments.segment_fault(self, r, cr2)) is not None:
                # the segment check the CPU makes before paging (unicorn makes none)
                traps.bounce_exception(self, seg_vector, 0, regs=r)
            else:
                ec = emulate.page_fault_error_code(self, r, cr2)
                if not emulate.ptwr(self, r, cr2, ec):
                    traps.bounce_exception(self, 14, ec, cr2, regs=r)
        elif intno == C.TRAP_gp_fault:
            far = gate_op.far_transfer_selector(self, r)
            if far:
                # traps.c do_general_protection: a 32-bit vcpu's #GP with an error code
                gate_op.emulate_gate_op(self, r, far)
            elif not emulate.privileged_op(self, r):
                traps.bounce_exception(self, 13, emulate.gp_error_code(self, r), regs=r)
        elif intno == C.TRAP_no_device:
            self.cpu.set_ts(False)
            traps.bounce_exception(self, 7, regs=r)
        elif intno == C.TRAP_debug:
            debug_exception(self, r, icebp=False)   # icebp reaches _invalid (unicorn's decoder)
        else:
            ec = 0 if intno in C.VECTORS_WITH_ERROR_CODE else None
            traps.bounce_exception(self, intno, ec, regs=r)
        self._after_guest_exit()

    def _software_int(self, intno: int, r: dict[str, int]) -> int | None:
        """Length of the `int n`/int3/into that raised intno, or None for an exception."""
        eip = r["eip"]
        if intno >= 32:
            return 2
        try:
            before = self.read_virt((eip - 2) & 0xFFFFFFFF, 2)
        except GuestFault:
            return None
        if before == bytes([0xCD, intno]):
            return 2
        if intno == 3 and before[1] == 0xCC:
            return 1
        if intno == 4 and before[1] == 0xCE:
            return 1
        return None

    def _soft_int(self, n: int, length: int, r: dict[str, int]) -> None:
        """`int n` from the guest: Xen's IDT gates and do_general_protection rules."""
        ring = r["cs"] & 3
        ti = self.trap_ctxt[n]
        if n in SOFT_INT_DIRECT:
            traps.bounce_exception(self, n, regs=r)
            return
        needed = 1 if ring == 1 else 3
        if ti is not None and (ti.flags & 3) >= needed and ti.cs & ~3:
            traps.bounce_exception(self, n, regs=r)
            return
        # #GP with the IDT error code, EIP back on the int instruction
        r = dict(r, eip=(r["eip"] - length) & 0xFFFFFFFF)
        self.cpu.eip = r["eip"]
        traps.bounce_exception(self, 13, (n << 3) | 2, regs=r)

    # -- the hypercall ABI: int $0x82, EAX = number, EBX..EDI = arguments ------------------
    def caller_pc(self, pc: int) -> int:
        """Where a hypercall came from: the `int $0x82` itself, or, inside a hypercall-page
        stub (`mov $n,%eax; int $0x82; ret`), the return address the caller pushed."""
        cache = self.domain.stub_cache
        stub = cache.get(pc)
        if stub is None:
            code = self.kernel_bytes(pc - 7, 8)
            stub = len(code) == 8 and code[0] == 0xB8 and code[5:7] == b"\xcd\x82" and code[7] == 0xC3
            if len(cache) < 4096:
                cache[pc] = stub
        if stub:
            try:
                return self.read_u32(self.hypercall_sp)       # the caller's return address
            except GuestFault:
                pass
        return pc - 2

    def set_hypercall_result(self, ret: int) -> None:
        self.cpu.set_eax(ret)

    def restart_hypercall(self, args: tuple[int, ...], pc: int) -> None:
        """A preempted hypercall: new arguments in EBX..EDI, EIP back on the int $0x82."""
        self.cpu.continuation_out.write(*(a & 0xFFFFFFFF for a in args), pc)

    def do_iret(self) -> None:
        traps.do_iret(self)

    # -- frames and registers of the compat ABI (traps.py) -------------------------------
    def bounce(self, handler_cs: int, handler_ip: int, error_code: int | None, mask_events: bool, *,
               regs: dict[str, int] | None = None) -> None:
        traps.create_bounce_frame(self, handler_cs, handler_ip, error_code, mask_events, regs=regs)

    def event_callback_registered(self) -> bool:
        return bool(self.event_cs & ~3)

    def guest_regs(self) -> tuple[dict[str, int], bool]:
        r, pending = traps.guest_regs(self)
        r["pc"] = r["eip"]
        return r, pending

    def set_guest_regs(self, **regs: int) -> None:
        if "pc" in regs:
            regs["eip"] = regs.pop("pc")
        traps.set_guest_regs(self, **regs)

    def prepare_rebounce(self) -> None:
        self.cpu.disarm()              # the frame is rebuilt; transfer re-arms if needed

    def failsafe(self, target: dict[str, int]) -> None:
        traps.failsafe_callback(self, target)

    def reload_segments(self) -> bool:
        return traps.reload_segments(self)
