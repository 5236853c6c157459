"""The 2-level event channel ABI (xen/common/event_2l.c): a port's pending and mask bits in
shared_info's evtchn_pending[] and evtchn_mask[] bitmaps, and one selector bit per bitmap word
in the notified vcpu's evtchn_pending_sel. A guest word is 32 bits for a 32-bit PV guest and
64 for a 64-bit one, so the ABI has 32 * 32 = 1024 or 64 * 64 = 4096 ports (max_evtchns:
BITS_PER_EVTCHN_WORD squared).

These are the port operations event_channel.py calls through its ops table, as Xen's
evtchn_port_ops; the FIFO ABI (event_fifo.c) provides the same operations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu


class TwoLevel:
    """evtchn_port_ops_2l."""

    name = "2-level"

    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        si = dom.abi.shared_info
        self.bits_per_word = 8 * dom.abi.abi.word            # BITS_PER_EVTCHN_WORD(d)
        self.max_ports = self.bits_per_word ** 2
        self._si = dom.mem.frame(dom.shared_info_mfn)
        self._pending = si.offset("evtchn_pending")
        self._mask = si.offset("evtchn_mask")

    # guest_test_and_set_bit & co. on the shared_info bitmaps (bit p of the array)
    def _test_and_set(self, base: int, port: int, on: bool) -> bool:
        si = self._si
        i = base + (port >> 3)
        bit = 1 << (port & 7)
        old = si[i]
        si[i] = (old | bit) if on else (old & ~bit)
        return bool(old & bit)

    def init_port(self, port: int) -> None:
        """evtchn_port_init: nothing to do for the 2-level ABI."""

    def is_pending(self, port: int) -> bool:
        return bool(self._si[self._pending + (port >> 3)] >> (port & 7) & 1)

    def is_masked(self, port: int) -> bool:
        return bool(self._si[self._mask + (port >> 3)] >> (port & 7) & 1)

    def set_mask(self, port: int, on: bool) -> None:
        self._test_and_set(self._mask, port, on)

    def clear_pending(self, port: int) -> None:
        self._test_and_set(self._pending, port, False)

    def set_pending(self, v: Vcpu, port: int) -> tuple[bool, bool, bool]:
        """evtchn_2l_set_pending: test-and-set the pending bit; if it was clear and the port
        is not masked, test-and-set the selector bit and, on its 0 -> 1 change, mark events
        pending on the vcpu. (already pending, masked, edge)."""
        if self._test_and_set(self._pending, port, True):
            return True, self.is_masked(port), False
        masked = self.is_masked(port)
        return False, masked, (not masked) and self._mark_selector(v, port)

    def unmask(self, v: Vcpu, port: int) -> bool:
        """evtchn_2l_unmask: if the mask bit was set, the port is pending and the selector bit
        was clear, mark events pending on the port's vcpu. True when it re-raised the event."""
        if not self._test_and_set(self._mask, port, False):
            return False
        if not self.is_pending(port):
            return False
        return self._mark_selector(v, port)

    def _mark_selector(self, v: Vcpu, port: int) -> bool:
        sel = v.pending_sel
        bit = 1 << (port // self.bits_per_word)
        if sel & bit:
            return False
        v.pending_sel = sel | bit
        self.dom.evtchn.mark_events_pending(v)
        return True
