"""Virtual time: one clock unit per byte of guest code executed.

The counter lives in a C struct updated by a native unicorn block hook
(xenwb/_vclock.c), so counting costs little and stopping at a deadline (timer,
quantum) needs no Python on the hot path. The same guest with the same inputs
executes the same blocks, so the clock is deterministic.
"""

from __future__ import annotations

import ctypes

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

from xenwb import _vclock

NEVER = (1 << 64) - 1


class _VClockStruct(ctypes.Structure):
    _fields_ = [("units", ctypes.c_uint64), ("deadline", ctypes.c_uint64),
                ("stop", ctypes.c_void_p), ("stops", ctypes.c_uint64),
                ("insns", ctypes.c_uint64), ("insn_deadline", ctypes.c_uint64)]


_STOP = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
_HOOK = _vclock.hook_address()
_INSN_HOOK = _vclock.insn_hook_address()


class VClock:
    """Execution counter of one engine, with a stop deadline."""

    def __init__(self, uc: Uc) -> None:
        self._c = _VClockStruct(0, NEVER, _STOP, 0, 0, NEVER)
        self._uc = uc  # the hook lives as long as the engine
        self._add(UC_HOOK_BLOCK, _HOOK)
        self.counting_instructions = False

    def _add(self, kind: int, fn: int) -> None:
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(self._uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(fn),
                                ctypes.cast(ctypes.byref(self._c), ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise UcError(err)

    def count_instructions(self) -> None:
        """Also count instructions exactly (for --max-instructions); slows emulation."""
        if not self.counting_instructions:
            self._add(UC_HOOK_CODE, _INSN_HOOK)
            self.counting_instructions = True

    @property
    def insns(self) -> int:
        return self._c.insns

    @property
    def insn_deadline(self) -> int:
        return self._c.insn_deadline

    @insn_deadline.setter
    def insn_deadline(self, v: int) -> None:
        self._c.insn_deadline = min(v, NEVER)

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

    @property
    def stops(self) -> int:
        return self._c.stops
