"""Port I/O checked as Xen checks it: the native IN/OUT hook of xenwb/_iogate.c.

Unicorn executes IN/OUT without an IOPL or I/O bitmap check and a hook cannot stop the
instruction, so the C hook asks a Python callable whether the access is allowed and, when it
is not, raises #GP(0) inside QEMU (raise_exception_err), which leaves the translation block
with EIP on the instruction; the #GP then reaches the vcpu's interrupt hook like any other.

QEMU's CPU state is not reachable through unicorn's API: where it is (the CPU pointer in
unicorn's uc_struct, the CPUX86State inside the CPU) is found once per process by
calibration, as cpu.py finds old_exception: write two marker values into RAX and RCX of a
scratch engine (env->regs[] starts CPUX86State) and look, through /proc/self/mem (a read of
an unmapped address is an error, not a crash), for the one pointer-sized field of the
uc_struct that points to memory holding them.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from functools import cache

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from xenwb import _iogate

_IN_HOOK = _iogate.in_hook_address()
_OUT_HOOK = _iogate.out_hook_address()
UC_STRUCT_SCAN = 1 << 12          # bytes of the uc_struct searched for the CPU pointer (it is at 440 on 2.1.4)
CPU_SCAN = 1 << 16                # bytes of the CPU searched for env (35408 in on 2.1.4)


class _IoGateStruct(ctypes.Structure):
    _fields_ = [("decide", ctypes.py_object), ("raise_exc", ctypes.c_void_p), ("cpu_off", ctypes.c_uint64),
                ("env_off", ctypes.c_uint64), ("refused", ctypes.c_uint64)]


def _read(fd: int, addr: int, n: int) -> bytes:
    try:
        return os.pread(fd, n, addr)
    except OSError:
        return b""


KNOWN_OFFSETS = (440, 35408)       # what the calibration finds on unicorn 2.1.4 (x86_64 Linux)
MARKER = (0x58454E57_42494F47, 0x41544521_1F0E0D0C)   # unlikely values for RAX, RCX


def _scratch_engine() -> tuple[Uc, int]:
    """An engine with the marker values in RAX and RCX, and its uc_struct's address."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_RAX, MARKER[0])
    uc.reg_write(X.UC_X86_REG_RCX, MARKER[1])
    return uc, uc._uch.value if isinstance(uc._uch, ctypes.c_void_p) else int(uc._uch)


def _holds(fd: int, uch: int, off: int, at: int) -> bool:
    """Does the uc_struct field at `off` point to memory holding env at `at`?"""
    raw = _read(fd, uch + off, 8)
    if len(raw) != 8:
        return False
    ptr, = struct.unpack("<Q", raw)
    return 0x10000 <= ptr < 1 << 47 and _read(fd, ptr + at, 16) == struct.pack("<QQ", *MARKER)


def _candidates(fd: int) -> set[tuple[int, int]]:
    """(field offset, env offset) pairs for which a scratch engine's uc_struct field points to
    memory holding env (the marker values in RAX, RCX) at that env offset."""
    _uc, uch = _scratch_engine()
    marker = struct.pack("<QQ", *MARKER)
    fields = _read(fd, uch, UC_STRUCT_SCAN)
    hits = set()
    for off in range(0, len(fields) - 7, 8):
        ptr, = struct.unpack_from("<Q", fields, off)
        if not 0x10000 <= ptr < 1 << 47:
            continue
        at = _read(fd, ptr, CPU_SCAN).find(marker)
        if at >= 0 and at % 8 == 0:
            hits.add((off, at))
    return hits


@cache
def qemu_env_offsets() -> tuple[int, int]:
    """(offset of the CPU pointer in the uc_struct, offset of env in the CPU), by calibration:
    the known offsets when a scratch engine confirms them, else a search on two scratch engines
    keeping, of the relations both show, the nearest (env lies inside the CPU object, 35 KiB in
    on unicorn 2.1.4; another field may point to an allocation before it)."""
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        _uc, uch = _scratch_engine()
        if _holds(fd, uch, *KNOWN_OFFSETS):
            return KNOWN_OFFSETS
        hits = _candidates(fd) & _candidates(fd)
    finally:
        os.close(fd)
    if not hits:
        raise RuntimeError("cannot locate QEMU's CPU state in unicorn's engine")
    return min(hits, key=lambda h: h[1])


class IoGate:
    """The IN/OUT hooks of one engine; `decide(op, port, size, value)` (op "in" or "out")
    says whether the access is allowed, and may trace it."""

    def __init__(self, uc: Uc, decide: Callable[[str, int, int, int], bool]) -> None:
        cpu_off, env_off = qemu_env_offsets()
        raise_exc = ctypes.cast(uclib.raise_exception_err_x86_64, ctypes.c_void_p).value
        self._decide = decide
        self._c = _IoGateStruct(self._ask, raise_exc, cpu_off, env_off, 0)
        self._uc = uc  # the hooks live as long as the engine
        for insn, fn in ((X.UC_X86_INS_IN, _IN_HOOK), (X.UC_X86_INS_OUT, _OUT_HOOK)):
            handle = ctypes.c_size_t()
            err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.c_void_p(fn),
                                    ctypes.cast(ctypes.byref(self._c), ctypes.c_void_p), ctypes.c_uint64(1),
                                    ctypes.c_uint64(0), ctypes.c_int(insn))
            if err:
                raise UcError(err)

    def _ask(self, op: int, port: int, size: int, value: int) -> bool:
        return self._decide("out" if op else "in", port, size, value)

    @property
    def refused(self) -> int:
        """Accesses answered with #GP(0)."""
        return self._c.refused
