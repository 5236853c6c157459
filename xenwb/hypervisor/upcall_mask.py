"""Guest stores to evtchn_upcall_mask, seen as they happen, for the trace.

Guests flip their vcpu_info's evtchn_upcall_mask with plain stores (Linux's
xen_irq_disable): the hypervisor never sees them. While somebody listens to the trace, a
unicorn write hook limited to each vcpu's mask byte (machine addresses: unicorn's memory
hooks see them) reports each change with the instruction that made it. Changes the
hypervisor makes itself are emitted where it makes them (vcpu.py upcall_mask).

A write hook puts every store of the engine on unicorn's slow path, so it exists only while
the trace has listeners.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_HOOK_MEM_WRITE

from xenwb.hypervisor.emulate import store_site

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

WIDEST_STORE = 8


class MaskObserver:
    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.enabled = False
        self._hooks: dict[int, tuple[int, int]] = {}      # vcpu -> (hook handle, maddr)

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
            self._unhook(v)
            self._hook(v)

    def _hook(self, v: Vcpu) -> None:
        maddr = v.vcpu_info_maddr + self.dom.abi.vcpu_info.offset("evtchn_upcall_mask")
        h = v.cpu.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write, v, maddr - WIDEST_STORE + 1, maddr)
        self._hooks[v.id] = (h, maddr)

    def _unhook(self, v: Vcpu) -> None:
        old = self._hooks.pop(v.id, None)
        if old is not None:
            v.cpu.uc.hook_del(old[0])

    def _on_write(self, uc, access: int, address: int, size: int, value: int, v: Vcpu) -> None:
        maddr = self._hooks[v.id][1]
        if not address <= maddr < address + size:
            return
        new = (value >> (8 * (maddr - address))) & 1
        old = self.dom.mem.read(maddr, 1)[0] & 1
        if new == old:
            return
        block, block_size = v.clock.last_block
        pc = v.cpu.pc
        eip = store_site(v, pc, block, block_size, size)
        if pc == block and block_size:
            v.cpu.sync_pc_in(block, block + block_size)    # exact from now on, whatever it decoded
        trace = self.dom.trace
        trace.emit(v, "mask", "upcall_mask", old=old, new=new, eip=eip, symbol=self.dom.symbolize(eip), by="guest")
