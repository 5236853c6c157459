"""Guest stores to evtchn_upcall_mask, seen as they happen, for the trace.

Guests flip their vcpu_info's evtchn_upcall_mask with plain stores (Linux's
xen_irq_disable): the hypervisor never sees them. While somebody wants "mask" events, each
vcpu's engine sees the page holding its vcpu_info as read-only (machine addresses:
unicorn's protection and hooks see them), and a UC_HOOK_MEM_WRITE_PROT hook on that page
completes every store to it: the hook (native, xenwb/_traceenc.c maskwatch_hook) writes the
bytes itself (unicorn then drops its own write to the read-only page) and calls Python only
for a store that changes the mask bit, reported with the instruction that made it. Changes
the hypervisor makes itself are emitted where it makes them (vcpu.py upcall_mask).

Why not a UC_HOOK_MEM_WRITE hook on the mask byte: while any such hook exists, unicorn
sends every load and store of the engine to its slow path (tcg_uc_has_hookmem in unicorn's
tcg.h): a third of the example boot's time. The protection costs only the stores to that
one page (the shared_info page, or the page VCPUOP_register_vcpu_info chose).
"""

from __future__ import annotations

import ctypes
import functools
import os
import traceback
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, UcError
from unicorn.unicorn_py3.unicorn import uclib

from xenwb import _traceenc
from xenwb.hypervisor.emulate import store_site

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

PAGE = 4096
_HOOK = _traceenc.maskwatch_hook_address()


class MaskObserver:
    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.enabled = False
        self._hooks: dict[int, tuple[int, int, int, object]] = {}   # vcpu -> (hook, mask maddr, page, watch)

    def set_enabled(self, on: bool) -> None:
        if on == self.enabled:
            return
        self.enabled = on
        for v in self.dom.vcpus:
            self._unhook(v)
            if on:
                self._hook(v)

    def vcpu_info_moved(self, v: Vcpu) -> None:
        if self.enabled:
            def rehook() -> None:
                if self.enabled:
                    self._unhook(v)
                    self._hook(v)
            v.cpu.when_stopped(rehook)

    def _protect(self, v: Vcpu, page: int, perms: int) -> None:
        v.cpu.protect(page, PAGE, perms)

    def _hook(self, v: Vcpu) -> None:
        maddr = v.vcpu_info_maddr + self.dom.abi.vcpu_info.offset("evtchn_upcall_mask")
        page = maddr & ~(PAGE - 1)
        watch = _traceenc.MaskWatch(page, PAGE, self.dom.mem.frame(page >> 12), maddr,
                                    functools.partial(self._changed, v))     # (old, new, size)
        self._protect(v, page, UC_PROT_READ | UC_PROT_EXEC)
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(v.cpu.uc._uch, ctypes.byref(handle), UC_HOOK_MEM_WRITE_PROT, ctypes.c_void_p(_HOOK),
                                ctypes.c_void_p(watch.address), ctypes.c_uint64(page),
                                ctypes.c_uint64(page + PAGE - 1))
        if err:
            self._protect(v, page, UC_PROT_ALL)
            raise UcError(err)
        self._hooks[v.id] = (handle.value, maddr, page, watch)

    def _unhook(self, v: Vcpu) -> None:
        old = self._hooks.pop(v.id, None)
        if old is not None:
            err = uclib.uc_hook_del(v.cpu.uc._uch, ctypes.c_size_t(old[0]))
            if err:
                raise UcError(err)
            self._protect(v, old[2], UC_PROT_ALL)

    def _changed(self, v: Vcpu, old: int, new: int, size: int) -> None:
        """A guest store is about to flip the mask bit (called from the native hook)."""
        try:
            block, block_size = v.clock.last_block
            pc = v.cpu.pc
            eip = store_site(v, pc, block, block_size, size)
            if pc == block and block_size:
                v.cpu.sync_pc_in(block, block + block_size)    # exact from now on, whatever it decoded
            self.dom.trace.emit_mask(v, old, new, eip, "guest")
        except BaseException as e:  # as unicorn's Python hooks do: stop, and raise from emu_start
            if os.environ.get("XENWB_DEBUG"):
                traceback.print_exc()
            uc = v.cpu.uc
            if uc._hook_exception is None:
                uc._hook_exception = e
            uc.emu_stop()
