"""One unicorn engine as a PV vcpu's physical CPU: set-up, registers, ring changes.

Facts this module relies on (measured on unicorn 2.1.4, see DESIGN.md):
* unicorn never delivers interrupts through an IDT: every exception and `int n`
  reaches UC_HOOK_INTR, and the hypervisor reflects it itself;
* after a hooked #PF or contributory fault unicorn leaves QEMU's
  `env->old_exception` set, so the next one would become #DF (unicorn #1883).
  `clear_pending_exception` resets it through a saved context; the offset of the
  field is calibrated once per process;
* SS cannot be written with another privilege level, so ring changes go through
  the call-gate trampoline of xenarea.py.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TB_REMOVE_CACHE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uclib

from xenwb.hypervisor.memory import MachineMemory
from xenwb.hypervisor.xenarea import (
    GDT_LIMIT,
    TRAMPOLINE_VA,
    XEN_TSS_SEL,
    XENWB_RING0_CS,
    XENWB_RING0_DS,
    XenArea,
)
from xenwb.vclock import PC_SYNC_HOOK, VClock

if TYPE_CHECKING:
    from xenwb.hypervisor.xenarea64 import XenArea64

_REG = {
    "eax": X.UC_X86_REG_EAX, "ebx": X.UC_X86_REG_EBX, "ecx": X.UC_X86_REG_ECX, "edx": X.UC_X86_REG_EDX,
    "esi": X.UC_X86_REG_ESI, "edi": X.UC_X86_REG_EDI, "ebp": X.UC_X86_REG_EBP, "esp": X.UC_X86_REG_ESP,
    "eip": X.UC_X86_REG_EIP, "eflags": X.UC_X86_REG_EFLAGS,
    "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS, "es": X.UC_X86_REG_ES,
    "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS,
    "cr0": X.UC_X86_REG_CR0, "cr2": X.UC_X86_REG_CR2, "cr3": X.UC_X86_REG_CR3, "cr4": X.UC_X86_REG_CR4,
}
HYPERCALL_REGS = [X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                  X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_CS, X.UC_X86_REG_EIP,
                  X.UC_X86_REG_ESP]
CR0_PE, CR0_MP, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 8, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE = 1 << 5
MSR_EFER = 0xC0000080
EFER_NXE = 1 << 11
# Exceptions after which QEMU's double-fault tracking must be reset.
CONTRIBUTORY_OR_PF = frozenset({0, 10, 11, 12, 13, 14})
EXIT_ADDRESS = TRAMPOLINE_VA + 0xFF0   # emu_start's "until": never executed


@cache
def old_exception_offset() -> int:
    """Offset of env->old_exception in a saved context, found by provoking one #DE."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, bytes([0x31, 0xC9, 0xF7, 0xF1, 0x90]))  # xor ecx,ecx ; div ecx
    uc.hook_add(UC_HOOK_INTR, lambda u, i, d: u.emu_stop())
    before = _blob(uc.context_save())
    uc.emu_start(0x1000, 0x1005)
    after = _blob(uc.context_save())
    hits = [o for o in range(0, len(before) - 3, 4)
            if struct.unpack_from("<i", before, o)[0] == -1 and struct.unpack_from("<i", after, o)[0] == 0]
    if len(hits) != 1:
        raise RuntimeError(f"cannot locate old_exception in unicorn's context ({len(hits)} candidates)")
    return hits[0]


def _blob(ctx) -> bytes:
    return ctypes.string_at(ctx.context, ctx.size)


class RegBatch:
    """A fixed set of registers read or written in one call to libunicorn.

    The Python binding's reg_read_batch costs tens of microseconds per call in
    argument conversion; hypercalls read seven registers each, so the workbench
    calls uc_reg_read_batch itself with preallocated ctypes arrays."""

    def __init__(self, uc: Uc, reg_ids: list[int]) -> None:
        n = len(reg_ids)
        self._uch = uc._uch
        self._n = n
        self._ids = (ctypes.c_int * n)(*reg_ids)
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])

    def read(self) -> list[int]:
        # each slot only ever receives the same register, of at most 4 bytes here,
        # so the upper bytes stay zero from allocation: no memset needed
        err = uclib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise UcError(err)
        return list(self._vals)

    def write(self, *values: int) -> None:
        """Write the registers, in the order given at construction, in one call."""
        vals = self._vals
        for i, v in enumerate(values):
            vals[i] = v
        err = uclib.uc_reg_write_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise UcError(err)


EFLAGS_NT = 1 << 14
SEGMENT_REGS = frozenset({"cs", "ss", "ds", "es", "fs", "gs"})
_REMOVE_CACHE = (UC_CTL_IO_WRITE << 30) | (2 << 26) | UC_CTL_TB_REMOVE_CACHE   # uc_ctl's encoding, two args


class CpuBase:
    """What every vcpu engine has, whatever the guest's width: the virtual clock, the
    code hooks of breakpoints and exact stops, the translation cache, the run loop and
    the #DF artefact fix. Subclasses set up the engine for their mode."""

    uc: Uc
    clock: VClock

    def _init_engine(self, vcpu_id: int, uc: Uc, mem: MachineMemory, skip: tuple[int, int]) -> None:
        self.id = vcpu_id
        self.uc = uc
        mem.map_into(uc)
        # the hypervisor's range (transition stubs) does not count as guest instructions
        self.clock = VClock(uc, skip=skip)
        self._exact_reasons: set[str] = set()
        self._breakpoint_hooks: set[int] = set()
        self._pc_synced: set[tuple[int, int]] = set()
        self._pending_invalidations: list[tuple[int, int]] = []
        self._pc_buf = ctypes.c_uint64()
        self._oe_off = old_exception_offset()
        self.ring_switches = 0
        self.running = False                       # inside emu_start (a hook may be running)
        self._after_run: list[Callable[[], None]] = []

    exit_address: int = 0
    pc_reg: int = X.UC_X86_REG_EIP
    pc_mask: int = 0xFFFFFFFF

    @property
    def pc(self) -> int:
        """The guest's program counter through one raw uc_reg_read (the binding's reg_read
        costs several us)."""
        buf = self._pc_buf
        if uclib.uc_reg_read(self.uc._uch, self.pc_reg, ctypes.byref(buf)):
            return self.uc.reg_read(self.pc_reg)
        return buf.value & self.pc_mask

    @pc.setter
    def pc(self, v: int) -> None:
        self.uc.reg_write(self.pc_reg, v & self.pc_mask)

    def regs(self) -> dict[str, int]:
        raise NotImplementedError

    def set_reg(self, name: str, value: int) -> None:
        raise NotImplementedError

    xen: XenArea | XenArea64

    def mark_loaded(self, sel: int) -> None:
        """Before the engine loads a GDT selector for the hypervisor (a register write, an
        iret): the accessed bit the CPU sets (Xen's load_segments and exits run on the real
        CPU; unicorn's own store would fault on the read-only mapping, inside reg_write)."""
        if sel & 0xFFFC and not sel & 4:
            self.xen.mark_accessed(self.id, sel & 0xFFF8)

    def flush_tlb(self) -> None:
        """Drop unicorn's cached translations (UC_CTL_TLB_FLUSH)."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def protect(self, addr: int, size: int, perms: int) -> None:
        """uc.mem_protect with the CPU state kept: measured on unicorn 2.1.4, the region split
        leaves CR2 set to an address of the split, a #PF recorded as the exception in progress
        (which would make the next #PF/#GP a #DF, unicorn #1883) and its error code. None of
        that is the guest's: the debugger and the guest must see the CR2 the guest's own
        faults left. Only while the engine is stopped (see when_stopped)."""
        ctx = self.uc.context_save()
        self.uc.mem_protect(addr, size, perms)
        self.uc.context_restore(ctx)

    def clear_pending_exception(self) -> None:
        """Forget the exception just handled, so the next one is not a #DF (unicorn #1883)."""
        ctx = self.uc.context_save()
        ctypes.memmove(ctx.context.value + self._oe_off, struct.pack("<i", -1), 4)
        self.uc.context_restore(ctx)

    def run(self) -> None:
        """Run until a hook or the clock stops the engine; the clock is then settled, so it
        counts exactly the instructions that completed."""
        self.running = True
        try:
            self.uc.emu_start(self.pc, self.exit_address)
        finally:
            self.running = False
            self.clock.settle(self.pc)
            while self._after_run:
                self._after_run.pop(0)()
            while self._pending_invalidations:
                lo, hi = self._pending_invalidations.pop()
                try:
                    self.uc.ctl_remove_cache(lo, hi)
                except UcError:
                    self.flush_translations()

    def when_stopped(self, fn: Callable[[], None]) -> None:
        """Run fn now if the engine is not running, else as soon as it stops (and stop it:
        the stop is invisible, the turn goes on). For changes to the engine's memory map
        (mem_protect splits regions), which are not safe from a hook that runs inside a
        translation block (measured: the next instruction fetch after a split made from the
        SYSCALL hook faults)."""
        if not self.running:
            fn()
            return
        self._after_run.append(fn)
        self.uc.emu_stop()

    def after_this_run(self, fn: Callable[[], None]) -> None:
        """Run fn once the engine stops (something else stops it: a deadline)."""
        self._after_run.append(fn)

    def sync_pc_in(self, lo: int, hi: int) -> None:
        """Make the guest pc exact inside memory hooks for code in [lo, hi): unicorn updates it
        before each instruction a code hook covers, and otherwise only at block starts and
        some accesses (measured: a memory hook may see the start of the block). Callable from
        a hook: the block's cached translation is dropped when the engine stops."""
        if (lo, hi) in self._pc_synced or hi <= lo:
            return
        self._pc_synced.add((lo, hi))
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), UC_HOOK_CODE, ctypes.c_void_p(PC_SYNC_HOOK),
                                None, ctypes.c_uint64(lo), ctypes.c_uint64(hi - 1))
        if err:
            raise UcError(err)
        self._pending_invalidations.append((lo, hi))

    # -- code hooks and the translation cache --------------------------------------------------
    # Unicorn compiles code hooks into its translation blocks when it translates them: a hook
    # added later is not called from blocks already cached (measured on 2.1.4: a breakpoint
    # added after the code ran once never fires; emu_start(count=1) runs a whole cached block).
    # Memory hooks, by contrast, take effect at once. So adding a code hook drops the cached
    # translations it concerns; deleting one needs nothing (unicorn drops the blocks the hook
    # was compiled into).
    def flush_translations(self) -> None:
        self.uc.ctl_flush_tb()

    def drop_code(self, lo: int, hi: int) -> None:
        """Drop the translated code of guest-virtual [lo, hi) (as mapped now), after the
        hypervisor stored there: one raw uc_ctl(UC_CTL_TB_REMOVE_CACHE), about 0.4 us, nothing
        to do when the range holds no translated code. Safe from the hypercall hooks (the
        block in flight ends at the int/syscall; QEMU invalidates blocks while others run).
        Only for a range this engine could fetch from now: unicorn translates lo for an
        instruction fetch, and a fetch that faults leaves the #PF pending."""
        uclib.uc_ctl(self.uc._uch, _REMOVE_CACHE, ctypes.c_uint64(lo), ctypes.c_uint64(hi))

    def add_breakpoint_hook(self, callback, user_data: object, addr: int, *, everywhere: bool) -> int:
        """A code hook on one address. The cached translations of that address are dropped:
        in the current address space only, unless `everywhere` (an address another address
        space may map to other code, e.g. user space), which flushes the whole cache."""
        h = self.uc.hook_add(UC_HOOK_CODE, callback, user_data, addr, addr)
        self._breakpoint_hooks.add(h)
        if self.clock.insn_hook_installed:
            # keep the instruction counter last, so a breakpoint stops before it counts
            self.clock.remove_insn_hook()
            self.clock.install_insn_hook()
            self.flush_translations()
        elif everywhere:
            self.flush_translations()
        else:
            try:
                self.uc.ctl_remove_cache(addr, addr + 1)
            except UcError:
                self.flush_translations()
        return h

    def remove_hook(self, handle: int) -> None:
        self._breakpoint_hooks.discard(handle)
        self.uc.hook_del(handle)

    def need_exact(self, reason: str, on: bool) -> None:
        """Per-instruction counting and stops, needed while `reason` ("step", "watch",
        "limit") holds; costs about half the emulation speed, so only then."""
        if on:
            if not self._exact_reasons:
                self.clock.install_insn_hook()
                self.flush_translations()
            self._exact_reasons.add(reason)
        elif reason in self._exact_reasons:
            self._exact_reasons.discard(reason)
            if not self._exact_reasons:
                self.clock.remove_insn_hook()

    def stop_after_instructions(self, n: int) -> None:
        """Stop before the (n+1)-th guest instruction from now (needs need_exact)."""
        self.clock.insn_deadline = self.clock.insns + n


class Cpu32(CpuBase):
    """The emulated CPU of one 32-bit PV vcpu (protected mode; the kernel in ring 1)."""

    exit_address = EXIT_ADDRESS

    def __init__(self, vcpu_id: int, mem: MachineMemory, xen: XenArea, pae: bool) -> None:
        self.xen = xen
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self._init_engine(vcpu_id, uc, mem, (xen.geo.hv_start, 1 << 32))
        xen.setup_vcpu(vcpu_id)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, xen.gdt_va(vcpu_id), GDT_LIMIT, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
        uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
        # type 9 (available 32-bit TSS): QEMU's stack switch insists on it
        uc.reg_write(X.UC_X86_REG_TR, (XEN_TSS_SEL, xen.tss_va(vcpu_id), 0x67, 0x8900))
        self.pae = pae
        self._hypercall_regs = RegBatch(uc, HYPERCALL_REGS)
        self.continuation_out = RegBatch(uc, [X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
                                              X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EIP])
        # fixed register sets of the instruction hooks (the binding's calls cost microseconds)
        self.cpuid_in = RegBatch(uc, [X.UC_X86_REG_EAX, X.UC_X86_REG_ECX])
        self.cpuid_out = RegBatch(uc, [X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX])
        self._all_names = list(_REG)
        self._all_regs = RegBatch(uc, [_REG[n] for n in self._all_names])
        self._cs_ss = RegBatch(uc, [X.UC_X86_REG_CS, X.UC_X86_REG_SS])        # transfer(): the hot path
        self._eip_esp_eflags = RegBatch(uc, [X.UC_X86_REG_EIP, X.UC_X86_REG_ESP, X.UC_X86_REG_EFLAGS])
        self._u32 = ctypes.c_uint32()
        self._eax_id = X.UC_X86_REG_EAX

    def start_paging(self, top_mfn: int) -> None:
        uc = self.uc
        if self.pae:
            uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE)
            uc.msr_write(MSR_EFER, EFER_NXE)
        uc.reg_write(X.UC_X86_REG_CR3, top_mfn << 12)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG)
        uc.reg_write(X.UC_X86_REG_CS, XENWB_RING0_CS)
        uc.reg_write(X.UC_X86_REG_SS, XENWB_RING0_DS)
        uc.reg_write(X.UC_X86_REG_DS, XENWB_RING0_DS)
        uc.reg_write(X.UC_X86_REG_ES, XENWB_RING0_DS)

    # -- registers -----------------------------------------------------------
    def reg(self, name: str) -> int:
        return self.uc.reg_read(_REG[name])

    def set_reg(self, name: str, value: int) -> None:
        if name in SEGMENT_REGS:
            self.mark_loaded(value)
        self.uc.reg_write(_REG[name], value & 0xFFFFFFFF)

    @property
    def eip(self) -> int:
        return self.pc

    @eip.setter
    def eip(self, v: int) -> None:
        self.pc = v

    @property
    def cpl(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3

    def regs(self) -> dict[str, int]:
        vals = self._all_regs.read()
        out = dict(zip(self._all_names, vals, strict=True))
        for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
            out[seg] &= 0xFFFF
        out["pc"] = out["eip"]
        return out

    def hypercall_regs(self) -> list[int]:
        """EAX, EBX, ECX, EDX, ESI, EDI, CS, EIP, ESP in one call (the hot path)."""
        return self._hypercall_regs.read()

    def set_eax(self, value: int) -> None:
        self._u32.value = value & 0xFFFFFFFF
        uclib.uc_reg_write(self.uc._uch, self._eax_id, ctypes.byref(self._u32))

    def set_cr3(self, top_mfn: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_CR3, top_mfn << 12)

    def set_ts(self, on: bool) -> None:
        cr0 = self.uc.reg_read(X.UC_X86_REG_CR0)
        self.uc.reg_write(X.UC_X86_REG_CR0, (cr0 | CR0_TS) if on else (cr0 & ~CR0_TS))

    # -- ring changes ------------------------------------------------------------
    def transfer(self, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        """Continue the guest at cs:eip with ss:esp, changing ring if needed."""
        uc = self.uc
        cur_cs, cur_ss = (r & 0xFFFF for r in self._cs_ss.read())
        if cur_cs == cs and cur_ss == ss:
            self._eip_esp_eflags.write(eip & 0xFFFFFFFF, esp & 0xFFFFFFFF, eflags & 0xFFFFFFFF)
            return
        self.xen.write_iret_frame(self.id, eip, cs, eflags, esp, ss)
        self.mark_loaded(cs)          # the iret loads both (QEMU's iret does not set the bit)
        self.mark_loaded(ss)
        self.ring_switches += 1
        live = uc.reg_read(X.UC_X86_REG_EFLAGS)
        if live & EFLAGS_NT:
            # Xen runs with NT clear (exception gates and its SYSCALL mask clear it, sysenter_entry
            # clears it by hand): the stub's iret must not be a task return
            uc.reg_write(X.UC_X86_REG_EFLAGS, live & ~EFLAGS_NT)
        if cur_cs & 3 == 0:
            uc.reg_write(X.UC_X86_REG_EIP, self.xen.stub_va(self.id))   # already in ring 0
        else:
            self.xen.arm_gate(self.id, True)
            uc.reg_write(X.UC_X86_REG_EIP, TRAMPOLINE_VA)

    def disarm(self) -> None:
        self.xen.arm_gate(self.id, False)
