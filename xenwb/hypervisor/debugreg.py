"""Debug registers and #DB of a PV vcpu, as Xen 4.17 gives them to a guest.

Xen keeps DR0-3, DR6 and DR7 per vcpu (start values DR6 0xffff0ff0, DR7 0x400:
x86-defns.h X86_DR6_DEFAULT/X86_DR7_DEFAULT), changed by set_debugreg (pv/misc-hypercalls.c,
also the kernel's emulated `mov %drN`: x86_emulate.c x86emul_write_dr/x86emul_read_dr), and
loads them into the CPU while the vcpu runs: what the guest arms, the hardware raises as #DB,
which do_debug (traps.c) reflects with the status bits merged into the vcpu's DR6.

Unicorn has no debug registers, so the armed ones are built from hooks that exist only while
armed (no cost otherwise): an instruction breakpoint is a code hook on its address (a fault:
the #DB comes before the instruction, which then runs once with EFLAGS.RF); a data watchpoint
is a memory hook on the machine addresses its linear range maps to when armed (a trap: the
#DB comes after the accessing instruction, so the vcpu counts instructions while one is
armed). These are the guest's own: gdb's breakpoints and watchpoints are other hooks.
I/O breakpoints (RW = 10b, CR4.DE) are kept in dr7_emul as Xen does; unicorn never checks
port accesses, so they do not fire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor import traps
from xenwb.hypervisor.paging import walk
from xenwb.hypervisor.state import DomainCrash
from xenwb.hypervisor.xenarea64 import HV64_END

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EPERM, ENODEV = -Errno.EINVAL, -Errno.EPERM, -Errno.ENODEV
DR6_DEFAULT, DR7_DEFAULT = 0xFFFF0FF0, 0x400
DR6_KEEP, DR7_KEEP = 0xFFFFEFFF, 0xFFFF27FF       # ~DR_STATUS/CONTROL_RESERVED_ZERO (debugreg.h)
DR7_GD = 1 << 13                                  # DR_GENERAL_DETECT
DR7_ACTIVE = 0xFF                                 # L0-3, G0-3
DR6_BS = 1 << 14                                  # DR_STEP
RW_EXEC, RW_WRITE, RW_IO, RW_ACCESS = 0, 1, 2, 3
CR4_DE = 1 << 3
EFLAGS_TF, EFLAGS_RF = 1 << 8, 1 << 16
LENGTHS = {0: 1, 1: 2, 2: 8, 3: 4}                # the LEN field
EXACT = "debugreg"


def breakpoint_addr_ok(vcpu: Vcpu, addr: int) -> bool:
    """breakpoint_addr_ok = __addr_ok (x86_64/uaccess.h): below 2^47 or above Xen's range
    (a compat guest's 32-bit addresses are all fine, Xen living above 4 GiB)."""
    return addr < (1 << 47) or (vcpu.word == 8 and addr >= HV64_END)


def set_debugreg(vcpu: Vcpu, reg: int, value: int) -> int:
    """pv/misc-hypercalls.c set_debugreg."""
    value &= (1 << (8 * vcpu.word)) - 1
    de = bool(vcpu.cr4 & CR4_DE)
    if reg < 4:
        if not breakpoint_addr_ok(vcpu, value):
            return EPERM
        vcpu.debugreg[reg] = value
    elif reg in (4, 6) and not (reg == 4 and de):
        if value >> 32:
            return EINVAL                 # "The upper 32 bits are strictly reserved."
        vcpu.debugreg[6] = (value & DR6_KEEP) | DR6_DEFAULT
    elif reg in (5, 7) and not (reg == 5 and de):
        if value >> 32:
            return EINVAL
        value = (value & DR7_KEEP) | DR7_DEFAULT
        if value & DR7_GD:
            return EPERM
        io_enable = 0
        if value & DR7_ACTIVE:
            for i in range(4):
                if (value >> (16 + 4 * i)) & 3 == RW_IO:
                    if not de:
                        return EPERM
                    io_enable |= value & (3 << (2 * i))
        vcpu.dr7_emul = io_enable
        vcpu.debugreg[7] = value & ~io_enable
    else:
        return ENODEV
    vcpu.debug.rearm()
    return 0


def load_debugregs(vcpu: Vcpu, values: list[int]) -> None:
    """arch_set_info_guest (domain.c): back to the start values, then set_debugreg of DR0-3,
    DR6 and DR7 from the context, each refused value silently left out."""
    vcpu.debugreg = [0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT]
    vcpu.dr7_emul = 0
    for reg in (0, 1, 2, 3, 6, 7):
        set_debugreg(vcpu, reg, values[reg])
    vcpu.debug.rearm()


def get_debugreg(vcpu: Vcpu, reg: int) -> int | None:
    """x86emul_read_dr: DR7 reads back with the emulated I/O enables; DR4/DR5 alias DR6/DR7
    unless CR4.DE; None for a register there is not (-ENODEV, or #UD for `mov`)."""
    de = bool(vcpu.cr4 & CR4_DE)
    if 0 <= reg < 4:
        return vcpu.debugreg[reg]
    if reg == 6 or (reg == 4 and not de):
        return vcpu.debugreg[6]
    if reg == 7 or (reg == 5 and not de):
        return vcpu.debugreg[7] | vcpu.dr7_emul
    return None


def raise_debug(vcpu: Vcpu, status: int, regs: dict[str, int]) -> None:
    """do_debug: merge what caused this #DB into the vcpu's DR6 (`dr6 |= hw & ~DEFAULT;
    dr6 &= hw | ~DEFAULT`, the status bits stay until the guest clears them) and reflect #DB."""
    hw = DR6_DEFAULT | status
    dr6 = vcpu.debugreg[6] | (hw & ~DR6_DEFAULT)
    vcpu.debugreg[6] = dr6 & (hw | ~DR6_DEFAULT) & 0xFFFFFFFF
    traps.bounce_exception(vcpu, C.TRAP_debug, None, regs=regs)


def debug_exception(vcpu: Vcpu, regs: dict[str, int], icebp: bool) -> None:
    """A #DB the engine raised: single-step by EFLAGS.TF (DR6.BS), or icebp (no status)."""
    raise_debug(vcpu, 0 if icebp or not regs.get("eflags", regs.get("rflags", 0)) & EFLAGS_TF else DR6_BS,
                regs)


class DebugRegisters:
    """The hooks that make a vcpu's armed DR0-3 fire."""

    def __init__(self, vcpu: Vcpu) -> None:
        self.vcpu = vcpu
        self._hooks: list[int] = []
        self._watching = False
        self._pending = 0                 # status bits of watchpoints hit by this instruction
        self._saved_deadline = 0

    def armed(self) -> list[tuple[int, int, int, int]]:
        """(index, address, rw, length) of each breakpoint DR7 enables."""
        v = self.vcpu
        dr7 = v.debugreg[7]
        out = []
        for i in range(4):
            if dr7 >> (2 * i) & 3:
                rw = (dr7 >> (16 + 4 * i)) & 3
                if rw != RW_IO:
                    out.append((i, v.debugreg[i], rw, LENGTHS[(dr7 >> (18 + 4 * i)) & 3]))
        return out

    def rearm(self) -> None:
        """Hooks for what DR7 enables now (nothing at all when it enables nothing)."""
        v = self.vcpu
        cpu = v.cpu
        for h in self._hooks:
            cpu.remove_hook(h)
        self._hooks = []
        watching = False
        code = False
        for i, addr, rw, length in self.armed():
            if rw == RW_EXEC:
                self._hooks.append(cpu.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, i, addr, addr))
                code = True
                continue
            watching = True
            kind = UC_HOOK_MEM_WRITE if rw == RW_WRITE else UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE
            for lo, hi in self._machine_ranges(addr & ~(length - 1), length):
                self._hooks.append(cpu.uc.hook_add(kind, self._on_access, (i, rw, lo, hi), max(0, lo - 15), hi - 1))
        if watching != self._watching:
            # counting instructions (a trap after the access) flushes translations: not from
            # inside the block a hypercall hook runs in, but as the engine stops (at once)
            self._watching = watching
            cpu.when_stopped(lambda: cpu.need_exact(EXACT, watching))
        if code:
            # code hooks are compiled into translations: drop those already made
            cpu.when_stopped(cpu.flush_translations)

    def _machine_ranges(self, va: int, length: int) -> list[tuple[int, int]]:
        """Where a watched linear range is in machine memory, through the vcpu's tables (both
        L4s of a 64-bit vcpu)."""
        v = self.vcpu
        dom = v.domain
        tops = dict.fromkeys(t for t in (v.cr3_mfn, getattr(v, "user_cr3_mfn", 0)) if t)
        out = []
        pos = 0
        while pos < length:
            cur = va + pos
            n = min(length - pos, 4096 - (cur & 0xFFF))
            for top in tops:
                w = walk(dom.mem, dom.mode, top, cur)
                if w.mapped and w.maddr is not None and (w.maddr, w.maddr + n) not in out:
                    out.append((w.maddr, w.maddr + n))
            pos += n
        return out

    # -- the hooks -------------------------------------------------------------------------------
    def _on_breakpoint(self, uc, address: int, size: int, index: int) -> None:
        """An instruction breakpoint: #DB before the instruction, unless EFLAGS.RF (set by the
        guest in the frame it returns through) lets it run once. The engine stops before the
        instruction and the #DB is raised from there."""
        v = self.vcpu
        flags = v.cpu.reg("rflags" if v.word == 8 else "eflags")
        if flags & EFLAGS_RF:
            return
        v.cpu.when_stopped(lambda: self._deliver(1 << index))

    def _on_access(self, uc, access: int, address: int, size: int, value: int, data) -> None:
        """A data watchpoint: #DB once the accessing instruction completed."""
        index, rw, lo, hi = data
        if address + size <= lo or address >= hi or (rw == RW_WRITE and access != UC_MEM_WRITE):
            return
        v = self.vcpu
        if not self._pending:
            self._saved_deadline = v.clock.insn_deadline
            v.clock.insn_deadline = min(v.clock.insn_deadline, v.clock.insns)   # stop before the next
            v.cpu.after_this_run(self._deliver_watch)
        self._pending |= 1 << index

    def _deliver_watch(self) -> None:
        status, self._pending = self._pending, 0
        self.vcpu.clock.insn_deadline = self._saved_deadline
        self._deliver(status)

    def _deliver(self, status: int) -> None:
        """Raise the #DB with the engine stopped (between instructions)."""
        v = self.vcpu
        try:
            r, _ = v.guest_regs()
            raise_debug(v, status, r)
            v.return_to_guest()
        except DomainCrash as e:
            v.domain.crash(v, str(e))
