"""The FIFO event channel ABI (xen/common/event_fifo.c, public/event_channel.h), behind the
same port-operations table as the 2-level ABI (event_2l.py).

Each port has a 32-bit event word in an event array the guest gives Xen page by page
(EVTCHNOP_expand_array): PENDING (bit 31), MASKED (30), LINKED (29), BUSY (28) and a 17-bit
LINK to the next port of its queue. Each vcpu has a control block (EVTCHNOP_init_control)
with a `ready` bitmap and the heads of 16 priority queues. Raising an unmasked port that
is not linked appends it to its queue on its vcpu: Xen links it after the queue's tail
(only while the tail is still LINKED: the guest unlinks the events it consumes) or makes
it the head, and a queue that becomes ready marks events pending on the vcpu.

The first EVTCHNOP_init_control switches the domain from the 2-level ABI: ports already
pending there are remembered and raised again once the array page holding them exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi.constants import Errno
from xenwb.abi.structs import PV64
from xenwb.hypervisor.mm import MMError, PageType

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

PENDING, MASKED, LINKED, BUSY = 1 << 31, 1 << 30, 1 << 29, 1 << 28
LINK_BITS = 17
LINK_MASK = (1 << LINK_BITS) - 1
NR_CHANNELS = 1 << LINK_BITS                     # EVTCHN_FIFO_NR_CHANNELS
WORDS_PER_PAGE = 4096 // 4
MAX_ARRAY_PAGES = NR_CHANNELS // WORDS_PER_PAGE
MAX_QUEUES = 16
PRIORITY_MIN, PRIORITY_DEFAULT = 15, 7
CONTROL_BLOCK = PV64.evtchn_fifo_control_block  # the same 32-bit fields on both ABIs
CONTROL_BLOCK_SIZE = CONTROL_BLOCK.size()
READY_OFFSET = CONTROL_BLOCK.offset("ready")
HEAD_OFFSET = CONTROL_BLOCK.offset("head")
EINVAL, ENOENT, ENOSPC, EOPNOTSUPP = -Errno.EINVAL, -Errno.ENOENT, -Errno.ENOSPC, -Errno.EOPNOTSUPP


class Fifo:
    """evtchn_port_ops_fifo and the domain's FIFO state (struct evtchn_fifo_domain, the
    vcpus' struct evtchn_fifo_vcpu, each port's priority and last queue)."""

    name = "FIFO"
    max_ports = NR_CHANNELS

    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.event_array: list[int] = []             # mfns of the array pages
        self.control: dict[int, int] = {}            # vcpu id -> machine address of its control block
        self.tail: dict[tuple[int, int], int] = {}   # (vcpu, priority) -> q->tail
        self.priority: dict[int, int] = {}           # port -> evtchn->priority
        self.lastq: dict[int, tuple[int, int]] = {}  # port -> fifo_lastq (vcpu, priority)
        self.saved_pending: set[int] = set()         # evtchn->pending: raised while its page was missing

    @property
    def num_evtchns(self) -> int:
        return len(self.event_array) * WORDS_PER_PAGE

    # -- event words ---------------------------------------------------------------------
    def _word_maddr(self, port: int) -> int | None:
        """evtchn_fifo_word_from_port: None past the array's pages."""
        if not 0 <= port < self.num_evtchns:
            return None
        return (self.event_array[port // WORDS_PER_PAGE] << 12) + 4 * (port % WORDS_PER_PAGE)

    def word(self, port: int) -> int | None:
        a = self._word_maddr(port)
        return None if a is None else self.dom.mem.read_u32(a)

    def _write(self, port: int, w: int) -> None:
        a = self._word_maddr(port)
        if a is not None:
            self.dom.mem.write_u32(a, w)

    def is_pending(self, port: int) -> bool:
        w = self.word(port)
        return w is not None and bool(w & PENDING)

    def is_masked(self, port: int) -> bool:
        w = self.word(port)
        return w is None or bool(w & MASKED)

    def is_linked(self, port: int) -> bool:
        w = self.word(port)
        return w is not None and bool(w & LINKED)

    def set_mask(self, port: int, on: bool) -> None:
        """What a guest does with a locked bts/btr of MASKED (tests, tools)."""
        w = self.word(port)
        if w is not None:
            self._write(port, (w | MASKED) if on else (w & ~MASKED))

    def clear_pending(self, port: int) -> None:
        """evtchn_fifo_clear_pending: just the P bit; the guest unlinks on its own."""
        self.saved_pending.discard(port)
        w = self.word(port)
        if w is not None:
            self._write(port, w & ~PENDING)

    def init_port(self, port: int) -> None:
        """evtchn_fifo_init, when a port is bound: the default priority."""
        self.priority[port] = PRIORITY_DEFAULT

    # -- raising ------------------------------------------------------------------------
    def _set_link(self, tail: int, port: int) -> bool:
        """evtchn_fifo_set_link: LINK = port iff the tail word is still LINKED (BUSY cleared)."""
        w = self.word(tail)
        if w is None or not w & LINKED:
            return False
        self._write(tail, (w & ~(BUSY | LINK_MASK)) | port)
        return True

    def set_pending(self, v: Vcpu, port: int) -> tuple[bool, bool, bool]:
        """evtchn_fifo_set_pending: (already pending, masked, events marked pending on v)."""
        w = self.word(port)
        if w is None:
            self.saved_pending.add(port)          # raised again by expand_array
            return False, True, False
        cb = self.control.get(v.id)
        if cb is None:
            return False, bool(w & MASKED), False   # no control block: the event is dropped
        prio = self.priority.get(port, PRIORITY_DEFAULT)
        q = (v.id, prio)
        old_q = self.lastq.get(port, (0, 0))
        already = bool(w & PENDING)
        w |= PENDING
        linked = True
        if not w & MASKED and not w & LINKED:
            w |= LINKED
            self._write(port, w)
            if self.tail.get(old_q) == port:
                self.tail[old_q] = 0              # the old queue is now empty
            if old_q != q:
                self.lastq[port] = q
            linked = False
            tail = self.tail.get(q, 0)
            if tail:
                linked = self._set_link(tail, port)
            if not linked:
                self.dom.mem.write_u32(cb + HEAD_OFFSET + 4 * prio, port)     # *q->head = port
            self.tail[q] = port
        else:
            self._write(port, w)
        edge = False
        if not linked:
            ready = self.dom.mem.read_u32(cb + READY_OFFSET)
            if not ready & (1 << prio):
                self.dom.mem.write_u32(cb + READY_OFFSET, ready | (1 << prio))
                self.dom.evtchn.mark_events_pending(v)
                edge = True
        return already, bool(w & MASKED), edge

    def unmask(self, v: Vcpu, port: int) -> bool:
        """evtchn_fifo_unmask: clear MASKED; relink if pending. True when it marked events
        pending on the vcpu."""
        w = self.word(port)
        if w is None:
            return False
        self._write(port, w & ~MASKED)
        if w & PENDING:
            return self.set_pending(v, port)[2]
        return False

    def set_priority(self, port: int, priority: int) -> int:
        """evtchn_fifo_set_priority: for future events only."""
        if priority > PRIORITY_MIN:
            return EINVAL
        self.priority[port] = priority
        return 0

    # -- the guest's pages ------------------------------------------------------------------
    def _map_guest_page(self, mfn: int) -> int:
        """map_guest_page: a frame of the guest's (a PV guest's gfn is its mfn), taken with a
        writable type reference, else -EINVAL."""
        mm = self.dom.mm
        if not mm.is_owned(mfn):
            return EINVAL
        try:
            mm.get_page(mfn)
        except MMError:
            return EINVAL
        try:
            mm.get_page_type(mfn, PageType.writable)
        except MMError:
            mm.put_page(mfn)
            return EINVAL
        return 0

    def map_control_block(self, v: Vcpu, gfn: int, offset: int) -> int:
        if v.id in self.control:
            return EINVAL
        rc = self._map_guest_page(gfn)
        if rc:
            return rc
        self.control[v.id] = (gfn << 12) + offset
        return 0

    def expand_array(self, gfn: int) -> int:
        """add_page_to_event_array: one more page of 1024 event words; the ports in it that
        were raised while it was missing are raised now."""
        if len(self.event_array) >= MAX_ARRAY_PAGES:
            return ENOSPC
        rc = self._map_guest_page(gfn)
        if rc:
            return rc
        first = self.num_evtchns
        self.event_array.append(gfn)
        ev = self.dom.evtchn
        for port in range(first, self.num_evtchns):
            if not ev.valid(port):
                break
            if port in self.saved_pending:
                self.saved_pending.discard(port)
                p = ev.table.ports[port]
                self.set_pending(self.dom.vcpus[p.vcpu], port)
        return 0

    def release(self) -> None:
        """evtchn_fifo_destroy: every page mapped for the ABI is given back."""
        mm = self.dom.mm
        for maddr in self.control.values():
            mm.put_page_type(maddr >> 12)
            mm.put_page(maddr >> 12)
        for mfn in self.event_array:
            mm.put_page_type(mfn)
            mm.put_page(mfn)
        self.control.clear()
        self.event_array.clear()

    def control_block(self, vid: int) -> Any:
        """The vcpu's evtchn_fifo_control_block as it is in guest memory (None before
        EVTCHNOP_init_control on that vcpu)."""
        cb = self.control.get(vid)
        return None if cb is None else CONTROL_BLOCK.parse(self.dom.mem.read(cb, CONTROL_BLOCK_SIZE))

    def queues(self) -> dict[int, dict[int, list[int]]]:
        """vcpu -> priority -> the ports linked in that queue, from its head (for the UIs)."""
        out: dict[int, dict[int, list[int]]] = {}
        for vid in self.control:
            block = self.control_block(vid)
            ready = block.ready
            for prio, head in enumerate(block.head):
                chain: list[int] = []
                port = head
                while port and len(chain) < 64:
                    w = self.word(port)
                    if w is None or not w & LINKED:
                        break
                    chain.append(port)
                    port = w & LINK_MASK
                if chain or ready >> prio & 1:
                    out.setdefault(vid, {})[prio] = chain
        return out


def init_control(dom: Domain, v: Vcpu, gfn: int, offset: int) -> int:
    """evtchn_fifo_init_control: the checks in Xen's order (the vcpu, then the offset: the
    control block may not cross the page, and is 8-byte aligned); the first call switches
    the domain to the FIFO ABI, remembering which 2-level ports were pending (setup_ports)."""
    if offset > 4096 - CONTROL_BLOCK_SIZE or offset & 7:
        return EINVAL
    ev = dom.evtchn
    if isinstance(ev.ops, Fifo):
        return ev.ops.map_control_block(v, gfn, offset)
    fifo = Fifo(dom)
    rc = fifo.map_control_block(v, gfn, offset)
    if rc:
        return rc
    prev = ev.ops
    for port in range(1, len(ev.table.ports)):
        if prev.is_pending(port):
            fifo.saved_pending.add(port)
        fifo.priority[port] = PRIORITY_DEFAULT
    ev.switch_ops(fifo)
    return 0
