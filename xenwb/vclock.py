"""Virtual time: one clock unit per byte of guest code executed, exactly.

The counter lives in a C struct updated by a native unicorn block hook
(xenwb/_vclock.c), so counting costs little and stopping at a deadline (timer,
quantum, or a stop another thread asks for with `request_stop`: the hook stops the
engine on its own thread, which uc_emu_stop from another thread does not do safely)
needs no Python on the hot path. A block is counted when entered;
`settle` gives back the bytes of a block left part way (a stop before one of its
instructions, a fault), so the clock counts the bytes of completed instructions
only. The same guest with the same inputs executes the same instructions, so the
clock is deterministic, and a debugger stop, wherever it falls, changes nothing.

The optional native instruction hook counts instructions and stops the engine
before a given one (exact single steps, stops after a watched access,
--max-instructions). Unicorn compiles hooks into its translation blocks, so the
owner of the engine (hypervisor/cpu.py) flushes cached translations when it
installs the hook.
"""

from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_INS_RDTSC, UC_X86_INS_RDTSCP

from xenwb import _vclock

NEVER = (1 << 64) - 1


class _VClockStruct(ctypes.Structure):
    _fields_ = [("units", ctypes.c_uint64), ("deadline", ctypes.c_uint64),
                ("stop", ctypes.c_void_p), ("stops", ctypes.c_uint64),
                ("insns", ctypes.c_uint64), ("insn_deadline", ctypes.c_uint64),
                ("last_addr", ctypes.c_uint64), ("last_size", ctypes.c_uint64),
                ("skip_lo", ctypes.c_uint64), ("skip_hi", ctypes.c_uint64),
                ("insn_stops", ctypes.c_uint64), ("reg_write", ctypes.c_void_p),
                ("reg_ax", ctypes.c_int64), ("reg_dx", ctypes.c_int64), ("reg_cx", ctypes.c_int64),
                ("tsc_aux", ctypes.c_uint64), ("tsc_reads", ctypes.c_uint64),
                ("unit_target", ctypes.c_uint64), ("unit_stops", ctypes.c_uint64),
                ("exits", ctypes.c_uint64), ("exit_target", ctypes.c_uint64)]


_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
_REG_WRITE = ctypes.cast(uclib.uc_reg_write, ctypes.c_void_p).value
_RDTSC_HOOK = _vclock.rdtsc_hook_address()
_RDTSCP_HOOK = _vclock.rdtscp_hook_address()
_HOOK = _vclock.hook_address()
_INSN_HOOK = _vclock.insn_hook_address()
PC_SYNC_HOOK = _vclock.pc_sync_hook_address()
_INTR_HOOK = _vclock.intr_hook_address()
_INVALID_HOOK = _vclock.invalid_hook_address()


class VClock:
    """Execution counter of one engine, with a stop deadline and an optional exact
    instruction counter."""

    def __init__(self, uc: Uc, skip: tuple[int, int] = (0, 0)) -> None:
        self._c = _VClockStruct(0, NEVER, _STOP, 0, 0, NEVER, 0, 0, skip[0], skip[1], 0, _REG_WRITE)
        self._c.unit_target = NEVER
        self._uc = uc  # the hooks live as long as the engine
        self._add(UC_HOOK_BLOCK, _HOOK)
        # before the hypervisor's own hooks (unicorn calls hooks in the order they were added)
        self._add(UC_HOOK_INTR, _INTR_HOOK)
        self._add(UC_HOOK_INSN_INVALID, _INVALID_HOOK)
        self._insn_handle: int | None = None

    def _add(self, kind: int, fn: int) -> int:
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(fn),
                                ctypes.cast(ctypes.byref(self._c), ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise UcError(err)
        return handle.value

    def install_tsc_hooks(self, ax: int, dx: int, cx: int) -> None:
        """Answer RDTSC and RDTSCP from the clock in C, writing the given registers (RAX/RDX/
        RCX on a 64-bit engine: the upper halves are cleared, as the instruction does)."""
        c = self._c
        c.reg_ax, c.reg_dx, c.reg_cx = ax, dx, cx
        for insn, fn in ((UC_X86_INS_RDTSC, _RDTSC_HOOK), (UC_X86_INS_RDTSCP, _RDTSCP_HOOK)):
            handle = ctypes.c_size_t()
            err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.c_void_p(fn),
                                    ctypes.cast(ctypes.byref(c), ctypes.c_void_p), ctypes.c_uint64(1),
                                    ctypes.c_uint64(0), ctypes.c_int(insn))
            if err:
                raise UcError(err)

    @property
    def tsc_aux(self) -> int:
        return self._c.tsc_aux

    @tsc_aux.setter
    def tsc_aux(self, v: int) -> None:
        self._c.tsc_aux = v & 0xFFFFFFFF

    @property
    def tsc_reads(self) -> int:
        return self._c.tsc_reads

    # -- the instruction hook (installed and ordered by hypervisor/cpu.py) -----------------
    @property
    def insn_hook_installed(self) -> bool:
        return self._insn_handle is not None

    def install_insn_hook(self) -> None:
        """Add the instruction hook at the end of the engine's code hooks (so a breakpoint
        hook at the same address runs, and stops, before the instruction is counted)."""
        if self._insn_handle is None:
            self._insn_handle = self._add(UC_HOOK_CODE, _INSN_HOOK)

    def remove_insn_hook(self) -> None:
        """Unicorn drops the translations the hook was compiled into by itself."""
        if self._insn_handle is not None:
            err = uclib.uc_hook_del(self._uc._uch, ctypes.c_size_t(self._insn_handle))
            if err:
                raise UcError(err)
            self._insn_handle = None

    # -- settling --------------------------------------------------------------------------
    def settle(self, pc: int) -> None:
        """Execution left the last block at pc (a stop, a fault, an emulated instruction):
        give back the bytes from pc to the block's end, which did not execute."""
        c = self._c
        size = c.last_size
        if size:
            off = pc - c.last_addr
            if 0 <= off < size:
                c.units -= size - off
            c.last_size = 0

    @property
    def last_block(self) -> tuple[int, int]:
        """(start, size) of the translation block executing now (inside a hook)."""
        return self._c.last_addr, self._c.last_size

    def forget_block(self) -> None:
        """The hypervisor moved the pc itself (a bounce, an emulated instruction already
        accounted for): nothing left to settle."""
        self._c.last_size = 0

    # -- counters ----------------------------------------------------------------------------
    @property
    def insns(self) -> int:
        return self._c.insns

    @insns.setter
    def insns(self, v: int) -> None:
        self._c.insns = max(v, 0)

    @property
    def insn_deadline(self) -> int:
        return self._c.insn_deadline

    @insn_deadline.setter
    def insn_deadline(self, v: int) -> None:
        self._c.insn_deadline = min(max(v, 0), NEVER)

    @property
    def units(self) -> int:
        return self._c.units

    @units.setter
    def units(self, v: int) -> None:
        self._c.units = v

    @property
    def deadline(self) -> int:
        return self._c.deadline

    @deadline.setter
    def deadline(self, v: int) -> None:
        self._c.deadline = min(v, NEVER)

    def request_stop(self) -> None:
        """Stop the engine before the next block it enters (callable from any thread): the
        deadline becomes 0, so the block hook stops the engine from inside itself, with
        nothing to settle. Whoever runs the engine next sets the deadline again."""
        self._c.deadline = 0

    @property
    def stops(self) -> int:
        return self._c.stops

    @property
    def insn_stops(self) -> int:
        """How many times an instruction deadline stopped the engine."""
        return self._c.insn_stops

    # -- time travel ---------------------------------------------------------------------------
    @property
    def unit_target(self) -> int:
        """Stop before the first instruction starting at or past this unit (needs the
        instruction hook); NEVER when unset. Cleared when it fires."""
        return self._c.unit_target

    @unit_target.setter
    def unit_target(self, v: int) -> None:
        self._c.unit_target = min(max(v, 0), NEVER)

    @property
    def unit_stops(self) -> int:
        return self._c.unit_stops

    @property
    def exits(self) -> int:
        """Exceptions and invalid opcodes that reached the hypervisor: with units and the
        bounces they name every instruction boundary of this vcpu (an instruction Xen emulates
        moves no clock)."""
        return self._c.exits

    @property
    def exit_target(self) -> int:
        """unit_target applies once exits has reached this."""
        return self._c.exit_target

    @exit_target.setter
    def exit_target(self, v: int) -> None:
        self._c.exit_target = max(v, 0)

    def save(self) -> bytes:
        """The whole counter state (time travel: a checkpoint of the engine's clock)."""
        return bytes(self._c)

    def load(self, state: bytes) -> None:
        """Put back a state from save(); the stop requests (deadlines, targets) are cleared."""
        ctypes.memmove(ctypes.addressof(self._c), state, ctypes.sizeof(self._c))
        c = self._c
        c.insn_deadline = c.unit_target = NEVER
        c.exit_target = 0
        c.last_size = 0
