"""event_channel_op: 2-level event channels, as xen/common/event_channel.c and event_2l.c define them.

The rules, each with the Xen function it comes from:

* Ports live in buckets of 64 (EVTCHNS_PER_BUCKET = PAGE_SIZE / sizeof(struct evtchn),
  xen/include/xen/sched.h). A port is *valid* once its bucket exists (port_is_valid,
  xen/include/xen/event.h); an operation on a port beyond the allocated buckets is -EINVAL,
  a valid but free port is "closed". Port 0 is reserved (evtchn_init). New ports take the
  lowest free number (get_free_port); the 2-level ABI of a 32-bit guest has 32 * 32 = 1024
  ports (max_evtchns: BITS_PER_EVTCHN_WORD squared), so the 1024th allocation is -ENOSPC
  (evtchn_allocate_port). The per-ABI port operations (pending, mask, unmask) are behind an
  ops table, as Xen's evtchn_port_ops: event_2l.py.
* Raising port p for vcpu v (evtchn_2l_set_pending): test-and-set evtchn_pending[p]; if it
  was already set, stop. If evtchn_mask[p] is clear and the test-and-set of bit p/32 of v's
  evtchn_pending_sel was clear, mark events pending on v (vcpu_mark_events_pending,
  xen/arch/x86/domain.c: test-and-set evtchn_upcall_pending, and kick v if it was clear).
  Then wake the pollers of p (evtchn_check_pollers). A masked port keeps its pending bit
  but loses the edge: nothing reaches the vcpu until the port is unmasked.
* Unmask (evtchn_2l_unmask): if test-and-clear of the mask bit found it set, and the port is
  pending, and the selector bit was clear, mark events pending on the port's vcpu.
  Free and reserved ports are not "usable" (evtchn_usable): unmask, set_pending and
  clear_pending do nothing on them.
* VIRQs (get_virq_type): TIMER, DEBUG, XENOPROF and XENPMU are per vcpu; ARGO is per domain;
  the rest are global and belong to the hardware domain unless redirected
  (get_global_virq_handler), so a domU's bind is -EBUSY. A non-per-vcpu VIRQ must be bound
  with vcpu 0 (-EINVAL), a missing vcpu is -ENOENT, a VIRQ already bound on that vcpu
  -EEXIST (evtchn_bind_virq).
* Closing (evtchn_close) frees the port (clears its pending bit, keeps its mask bit, notify
  vcpu back to 0: evtchn_free); the peer of an interdomain port becomes unbound towards
  this domain. Sending (evtchn_send): interdomain -> the peer port, IPI -> the port itself
  on its vcpu, unbound -> silently dropped, anything else -EINVAL.

Domains: the guest is domain 1; the workbench's backends (console, xenstore) play domain 0,
the hardware domain, with a small port table of their own. Every other domain id is
-ESRCH (rcu_lock_domain_by_any_id). Operations on domain 0's ports from the guest are
refused by the dummy XSM policy with -EPERM (xsm_evtchn_unbound/status/reset, XSM_TARGET).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, EvtchnOp
from xenwb.hypervisor.event_2l import TwoLevel
from xenwb.hypervisor.event_fifo import LINK_BITS, Fifo, init_control
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.sched import evtchn_check_pollers, vcpu_kick

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOENT, EEXIST, ENOSPC, EPERM, ESRCH, ENOSYS, EBUSY = (
    -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOENT, -Errno.EEXIST, -Errno.ENOSPC, -Errno.EPERM,
    -Errno.ESRCH, -Errno.ENOSYS, -Errno.EBUSY)
BACKEND_DOMID = 0          # the workbench's backends play the hardware domain
MAX_EVTCHN_PORT = 1023     # the toolstack's limit (libxl event_channels default: max_evtchn_port)
EVTCHNS_PER_BUCKET = 64    # PAGE_SIZE / next_power_of_2(sizeof(struct evtchn)) (64-byte aligned)
NR_PIRQS_DOMU = 24 + 32    # nr_static_irqs (a 24-pin IO-APIC) + extra_domU_irqs (common/domain.c)
EVTCHN_OP_SIZE = 4 + 24    # struct evtchn_op: cmd + the largest member (evtchn_status)
COMPAT_OPS = frozenset({EvtchnOp.bind_interdomain, EvtchnOp.bind_virq, EvtchnOp.bind_pirq, EvtchnOp.close,
                        EvtchnOp.send, EvtchnOp.status, EvtchnOp.alloc_unbound, EvtchnOp.bind_ipi,
                        EvtchnOp.bind_vcpu, EvtchnOp.unmask})


class PortState(enum.IntEnum):
    """EVTCHNSTAT_* (public/event_channel.h), as EVTCHNOP_status reports them."""

    closed = 0
    unbound = 1
    interdomain = 2
    pirq = 3
    virq = 4
    ipi = 5


class Backend(Protocol):
    def notify(self) -> None: ...


@dataclass
class Port:
    """struct evtchn (xen/include/xen/sched.h), the fields a PV domU can reach."""

    state: PortState = PortState.closed
    vcpu: int = 0              # notify_vcpu_id
    remote_dom: int = 0        # unbound: remote_domid; interdomain: the peer's domain
    remote_port: int = 0
    virq: int = 0
    backend: Backend | None = None   # domain 0's ports: the workbench backend behind it
    reserved: bool = False     # port 0 (ECS_RESERVED)

    @property
    def usable(self) -> bool:
        """evtchn_usable: state > ECS_RESERVED."""
        return self.state != PortState.closed and not self.reserved


def virq_type(virq: int) -> str:
    """get_virq_type (common/event_channel.c); x86 has no per-arch VIRQ types."""
    if virq in C.PER_VCPU_VIRQS:
        return "vcpu"
    if virq == C.Virq.ARGO:
        return "domain"
    return "global"


class PortTable:
    """One domain's port array, grown bucket by bucket (evtchn_allocate_port)."""

    def __init__(self, domid: int, max_ports: int) -> None:
        self.domid = domid
        self.max_ports = max_ports
        self.ports: list[Port] = []
        self._grow(0)
        self.ports[0].reserved = True          # evtchn_init: port 0 is ECS_RESERVED

    def _grow(self, port: int) -> None:
        while len(self.ports) <= port:
            self.ports.extend(Port() for _ in range(EVTCHNS_PER_BUCKET))

    def valid(self, port: int) -> bool:
        """port_is_valid: inside an allocated bucket."""
        return 0 <= port < len(self.ports)

    def get_free_port(self) -> int:
        """Lowest free port, allocating its bucket; -ENOSPC past the ABI limit."""
        for port in range(self.max_ports):
            if port >= len(self.ports):
                self._grow(port)
            p = self.ports[port]
            if p.state == PortState.closed and not p.reserved:
                return port
        return ENOSPC


class EventChannels:
    """The guest's ports, the 2-level pending/mask bitmaps in shared_info, and domain 0's
    side of the channels that reach the workbench's backends."""

    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.ops: TwoLevel | Fifo = TwoLevel(dom)   # evtchn_port_ops (event_2l.c, event_fifo.c)
        self.nr_ports = min(self.ops.max_ports, MAX_EVTCHN_PORT + 1)
        self.table = PortTable(dom.domid, self.nr_ports)
        self.dom0 = PortTable(BACKEND_DOMID, self.nr_ports)
        # v->virq_to_evtchn[]: (virq, vcpu id) -> port; global VIRQs live on vcpu 0
        self.virq_ports: dict[tuple[int, int], int] = {}
        self._backend_ports: dict[int, int] = {}   # guest port at connect time -> dom0 port
        self.stats = {"set_pending": 0, "edges": 0, "sends": 0}

    def switch_ops(self, ops: TwoLevel | Fifo) -> None:
        """The domain changes event channel ABI (the first EVTCHNOP_init_control, or back
        to 2-level at a reset)."""
        self.ops = ops
        self.nr_ports = min(ops.max_ports, MAX_EVTCHN_PORT + 1)
        self.table.max_ports = self.nr_ports

    # -- compatibility views ----------------------------------------------------------
    @property
    def ports(self) -> list[Port]:
        return self.table.ports

    def valid(self, port: int) -> bool:
        return self.table.valid(port)

    def is_pending(self, port: int) -> bool:
        return self.ops.is_pending(port)

    def is_masked(self, port: int) -> bool:
        return self.ops.is_masked(port)

    def set_mask(self, port: int, on: bool) -> None:
        """What a guest does with a locked bts/btr on evtchn_mask (tests, tools)."""
        self.ops.set_mask(port, on)

    # -- raising ----------------------------------------------------------------------
    def set_pending(self, port: int, vcpu_id: int | None = None) -> None:
        """evtchn_port_set_pending(d, vcpu_id, chn) -> evtchn_2l_set_pending (event_2l.c)."""
        p = self.table.ports[port]
        if not p.usable:
            return
        dom = self.dom
        vid = p.vcpu if vcpu_id is None else vcpu_id
        v = dom.vcpus[vid]
        self.stats["set_pending"] += 1
        already, masked, edge = self.ops.set_pending(v, port)
        dom.trace.emit_event_set_pending(v, port, vid, edge, masked, already)
        if not already:
            evtchn_check_pollers(dom, port)

    def mark_events_pending(self, v: Vcpu) -> None:
        """vcpu_mark_events_pending (arch/x86/domain.c): test-and-set bit 0 of
        evtchn_upcall_pending; if it was clear, vcpu_kick."""
        old = v.upcall_pending
        v.upcall_pending = 1
        if not old & 1:
            self.stats["edges"] += 1
            vcpu_kick(v)

    def unmask(self, port: int) -> bool:
        """evtchn_2l_unmask: True when it re-raised the event."""
        p = self.table.ports[port]
        if not p.usable:
            return False
        return self.ops.unmask(self.dom.vcpus[p.vcpu], port)

    def send_virq(self, vcpu: Vcpu, virq: int) -> bool:
        """send_guest_vcpu_virq / send_guest_domain_virq."""
        if virq_type(virq) == "vcpu":
            port = self.virq_ports.get((virq, vcpu.id))
            if port is None:
                return False
            self.set_pending(port, vcpu.id)
            return True
        port = self.virq_ports.get((virq, 0))
        if port is None:
            return False
        self.set_pending(port)          # to the port's notify vcpu
        return True

    def virq_bound(self, virq: int, vcpu_id: int) -> bool:
        return (virq, vcpu_id if virq_type(virq) == "vcpu" else 0) in self.virq_ports

    # -- the workbench's backends (domain 0) ---------------------------------------------
    def connect_backend(self, port: int, backend: Backend) -> int:
        """The toolstack's channel: guest `port` interdomain with a new dom0 port that the
        backend serves. Returns the dom0 port."""
        rport = self.dom0.get_free_port()
        self.dom0.ports[rport] = Port(PortState.interdomain, 0, self.dom.domid, port, backend=backend)
        self.table._grow(port)
        self.table.ports[port] = Port(PortState.interdomain, 0, BACKEND_DOMID, rport)
        self._backend_ports[port] = rport
        return rport

    def offer_backend(self, backend: Backend) -> int:
        """A dom0 port left unbound towards the guest (what a backend does with
        alloc_unbound): the guest connects with EVTCHNOP_bind_interdomain(0, port)."""
        rport = self.dom0.get_free_port()
        self.dom0.ports[rport] = Port(PortState.unbound, 0, self.dom.domid, backend=backend)
        return rport

    def notify_guest(self, port: int) -> None:
        """A backend signals its end of the channel first connected to guest `port`
        (evtchn_send from domain 0: dropped while the channel is unbound)."""
        rport = self._backend_ports.get(port)
        if rport is None:
            return
        self.dom0_send(rport)

    def dom0_send(self, rport: int) -> None:
        r = self.dom0.ports[rport]
        if r.state == PortState.interdomain and r.remote_dom == self.dom.domid:
            self.set_pending(r.remote_port)

    # -- operations (event_channel.c) -------------------------------------------------------
    def _lookup(self, domid: int) -> str | None:
        """rcu_lock_domain_by_any_id: 'self', 'dom0' or None (-ESRCH)."""
        if domid in (C.DOMID_SELF, self.dom.domid):
            return "self"
        if domid == BACKEND_DOMID:
            return "dom0"
        return None

    def alloc_unbound(self, dom: int, remote_dom: int) -> int:
        who = self._lookup(dom)
        if who is None:
            return ESRCH
        if who == "dom0":
            return EPERM                 # xsm_evtchn_unbound (XSM_TARGET)
        port = self.table.get_free_port()
        if port < 0:
            return port
        rdom = self.dom.domid if remote_dom == C.DOMID_SELF else remote_dom
        self.table.ports[port] = Port(PortState.unbound, 0, rdom)
        self.ops.init_port(port)
        return port

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        who = self._lookup(remote_dom)
        if who is None:
            return ESRCH
        lport = self.table.get_free_port()
        if lport < 0:
            return lport
        rtable = self.table if who == "self" else self.dom0
        if not rtable.valid(remote_port):
            return EINVAL
        r = rtable.ports[remote_port]
        if r.state != PortState.unbound or r.reserved or r.remote_dom != self.dom.domid:
            return EINVAL
        rdomid = self.dom.domid if who == "self" else BACKEND_DOMID
        self.table.ports[lport] = Port(PortState.interdomain, 0, rdomid, remote_port)
        self.ops.init_port(lport)
        r.state, r.remote_dom, r.remote_port = PortState.interdomain, self.dom.domid, lport
        # "We may have lost notifications on the remote unbound port": always pending
        self.set_pending(lport)
        return lport

    def bind_virq(self, virq: int, vid: int) -> int:
        if not 0 <= virq < C.NR_VIRQS:
            return EINVAL
        kind = virq_type(virq)
        if kind != "vcpu" and vid != 0:
            return EINVAL
        if not 0 <= vid < len(self.dom.vcpus):
            return ENOENT
        if kind == "global":
            return EBUSY                 # get_global_virq_handler(virq) is the hardware domain
        if (virq, vid) in self.virq_ports:
            return EEXIST
        port = self.table.get_free_port()
        if port < 0:
            return port
        self.table.ports[port] = Port(PortState.virq, vid, virq=virq)
        self.ops.init_port(port)
        self.virq_ports[(virq, vid)] = port
        return port

    def bind_ipi(self, vid: int) -> int:
        if not 0 <= vid < len(self.dom.vcpus):
            return ENOENT
        port = self.table.get_free_port()
        if port < 0:
            return port
        self.table.ports[port] = Port(PortState.ipi, vid)
        self.ops.init_port(port)
        return port

    def bind_pirq(self, pirq: int) -> int:
        if pirq >= NR_PIRQS_DOMU:
            return EINVAL
        return EPERM                     # pirq_access_permitted: no IRQ is granted to a domU

    def _free(self, port: int) -> None:
        """evtchn_free: clear pending, keep the mask bit, back to vcpu 0."""
        self.ops.clear_pending(port)
        self.table.ports[port] = Port()

    def close(self, port: int) -> int:
        if not self.table.valid(port):
            return EINVAL
        p = self.table.ports[port]
        if not p.usable:
            return EINVAL
        if p.state == PortState.virq:
            vid = p.vcpu if virq_type(p.virq) == "vcpu" else 0
            self.virq_ports.pop((p.virq, vid), None)
        elif p.state == PortState.interdomain:
            rtable = self.table if p.remote_dom == self.dom.domid else self.dom0
            peer = rtable.ports[p.remote_port]
            self._free(port)
            peer.state, peer.remote_dom, peer.remote_port = PortState.unbound, self.dom.domid, 0
            return 0
        self._free(port)
        return 0

    def send(self, port: int) -> int:
        if not self.table.valid(port):
            return EINVAL
        p = self.table.ports[port]
        self.stats["sends"] += 1
        if p.state == PortState.interdomain and not p.reserved:
            if p.remote_dom == self.dom.domid:
                self.set_pending(p.remote_port)
            else:
                r = self.dom0.ports[p.remote_port]
                if r.backend is not None:
                    r.backend.notify()
            return 0
        if p.state == PortState.ipi:
            self.set_pending(port)
            return 0
        if p.state == PortState.unbound and not p.reserved:
            return 0                     # silently drop the notification
        return EINVAL

    def status(self, dom: int, port: int) -> tuple[int, Port] | int:
        who = self._lookup(dom)
        if who is None:
            return ESRCH
        table = self.table if who == "self" else self.dom0
        if not table.valid(port):
            return EINVAL                # _evtchn_from_port in that domain's table
        if who == "dom0":
            return EPERM                 # xsm_evtchn_status (XSM_TARGET)
        return 0, self.table.ports[port]

    def bind_vcpu(self, port: int, vid: int) -> int:
        if not 0 <= vid < len(self.dom.vcpus):
            return ENOENT
        if not self.table.valid(port):
            return EINVAL
        p = self.table.ports[port]
        if p.reserved:
            return EINVAL
        if p.state == PortState.virq:
            if virq_type(p.virq) == "vcpu":
                return EINVAL
            p.vcpu = vid
            return 0
        if p.state in (PortState.unbound, PortState.interdomain):
            p.vcpu = vid
            return 0
        return EINVAL                    # free, IPI (and PIRQ, which a domU cannot have)

    def do_unmask(self, port: int) -> int:
        if not self.table.valid(port):
            return EINVAL
        raised = self.unmask(port)
        self.dom.trace.emit_event_unmask(self.dom.current, port, raised)
        return 0

    def reset(self, dom: int) -> int:
        """evtchn_reset: close every port of the domain (the backends' ends become unbound)."""
        who = self._lookup(dom)
        if who is None:
            return ESRCH
        if who == "dom0":
            return EPERM                 # xsm_evtchn_reset (XSM_TARGET)
        for port in range(1, len(self.table.ports)):
            self.close(port)
        if isinstance(self.ops, Fifo):          # evtchn_reset -> evtchn_fifo_destroy
            self.ops.release()
            self.switch_ops(TwoLevel(self.dom))
        return 0

    def set_priority(self, port: int, priority: int) -> int:
        """evtchn_set_priority (event_channel.c): a port that is not valid is -EINVAL before
        the ABI is asked; -ENOSYS without the FIFO ABI (no set_priority op)."""
        if not self.table.valid(port):
            return EINVAL
        if not isinstance(self.ops, Fifo):
            return ENOSYS
        return self.ops.set_priority(port, priority)

    def describe(self) -> list[dict[str, Any]]:
        """Every usable port with its state, pending and mask bits (for UIs and plugins)."""
        out = []
        for n, p in enumerate(self.table.ports):
            if not p.usable:
                continue
            d: dict[str, Any] = {"port": n, "state": p.state.name, "vcpu": p.vcpu,
                                 "pending": self.is_pending(n), "masked": self.is_masked(n)}
            if isinstance(self.ops, Fifo):
                d["priority"] = self.ops.priority.get(n)
                d["linked"] = self.ops.is_linked(n)
            if p.state == PortState.virq:
                d["virq"] = _virq_name(p.virq)
            elif p.state in (PortState.interdomain, PortState.unbound):
                d["remote_dom"] = p.remote_dom
                if p.state == PortState.interdomain:
                    d["remote_port"] = p.remote_port
            out.append(d)
        return out


def _virq_name(virq: int) -> str:
    try:
        return C.Virq(virq).name
    except ValueError:
        return str(virq)


# ---------------------------------------------------------------- the hypercall
def _rd(vcpu: Vcpu, arg: int, L):
    return L.parse(vcpu.read_virt(arg, L.size()))


def _wr(vcpu: Vcpu, arg: int, obj) -> None:
    vcpu.write_virt(arg, bytes(obj))


def evtchn_op(vcpu: Vcpu, cmd: int, arg: int) -> int:
    """do_event_channel_op: copy in, act, copy out (-EFAULT when a copy fails)."""
    dom = vcpu.domain
    ev = dom.evtchn
    L = dom.abi
    try:
        if cmd == EvtchnOp.alloc_unbound:
            a = _rd(vcpu, arg, L.evtchn_alloc_unbound)
            rc = ev.alloc_unbound(a.dom, a.remote_dom)
            if rc < 0:
                return rc
            a.port = rc
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_interdomain:
            a = _rd(vcpu, arg, L.evtchn_bind_interdomain)
            rc = ev.bind_interdomain(a.remote_dom, a.remote_port)
            if rc < 0:
                return rc
            a.local_port = rc
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_virq:
            a = _rd(vcpu, arg, L.evtchn_bind_virq)
            rc = ev.bind_virq(a.virq, a.vcpu)
            if rc < 0:
                return rc
            a.port = rc
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_ipi:
            a = _rd(vcpu, arg, L.evtchn_bind_ipi)
            rc = ev.bind_ipi(a.vcpu)
            if rc < 0:
                return rc
            a.port = rc
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_pirq:
            a = _rd(vcpu, arg, L.evtchn_bind_pirq)
            return ev.bind_pirq(a.pirq)
        if cmd == EvtchnOp.close:
            return ev.close(_rd(vcpu, arg, L.evtchn_port).port)
        if cmd == EvtchnOp.send:
            return ev.send(_rd(vcpu, arg, L.evtchn_port).port)
        if cmd == EvtchnOp.status:
            a = _rd(vcpu, arg, L.evtchn_status)
            res = ev.status(a.dom, a.port)
            if isinstance(res, int):
                return res
            _, p = res
            a.status, a.vcpu, a.u0, a.u1 = int(p.state), p.vcpu, 0, 0
            if p.reserved:
                a.status = PortState.closed
            elif p.state == PortState.unbound:
                a.u0 = p.remote_dom & 0xFFFF
            elif p.state == PortState.interdomain:
                a.u0, a.u1 = p.remote_dom & 0xFFFF, p.remote_port
            elif p.state == PortState.virq:
                a.u0 = p.virq
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_vcpu:
            a = _rd(vcpu, arg, L.evtchn_bind_vcpu)
            return ev.bind_vcpu(a.port, a.vcpu)
        if cmd == EvtchnOp.unmask:
            return ev.do_unmask(_rd(vcpu, arg, L.evtchn_port).port)
        if cmd in (EvtchnOp.reset, EvtchnOp.reset_cont):
            return ev.reset(_rd(vcpu, arg, L.evtchn_reset).dom)
        if cmd == EvtchnOp.init_control:
            a = _rd(vcpu, arg, L.evtchn_init_control)
            a.link_bits = LINK_BITS
            if not 0 <= a.vcpu < len(dom.vcpus):
                return ENOENT                        # domain_vcpu() == NULL
            rc = init_control(dom, dom.vcpus[a.vcpu], a.control_gfn, a.offset)
            if rc == 0:
                _wr(vcpu, arg, a)
                dom.trace.emit_event_init_control(vcpu, ev.ops.name, a.vcpu, a.control_gfn, a.offset)
            return rc
        if cmd == EvtchnOp.expand_array:
            a = _rd(vcpu, arg, L.evtchn_expand_array)
            if not isinstance(ev.ops, Fifo):
                return -Errno.EOPNOTSUPP
            return ev.ops.expand_array(a.array_gfn)
        if cmd == EvtchnOp.set_priority:
            a = _rd(vcpu, arg, L.evtchn_set_priority)
            return ev.set_priority(a.port, a.priority)
    except GuestFault:
        return EFAULT
    return ENOSYS                        # do_event_channel_op: default -ENOSYS


# the struct each command's argument points to, by layout name (decode_evtchn)
_DECODED_LAYOUT = {EvtchnOp.alloc_unbound: "evtchn_alloc_unbound", EvtchnOp.bind_interdomain: "evtchn_bind_interdomain",
                   EvtchnOp.bind_virq: "evtchn_bind_virq", EvtchnOp.bind_ipi: "evtchn_bind_ipi",
                   EvtchnOp.bind_pirq: "evtchn_bind_pirq", EvtchnOp.close: "evtchn_port",
                   EvtchnOp.send: "evtchn_port", EvtchnOp.unmask: "evtchn_port", EvtchnOp.status: "evtchn_status",
                   EvtchnOp.bind_vcpu: "evtchn_bind_vcpu", EvtchnOp.reset: "evtchn_reset"}
_OP_NAMES = {int(op): op.name for op in EvtchnOp}


def decode_evtchn(vcpu: Vcpu, cmd: int, arg: int) -> dict[str, Any]:
    name = _OP_NAMES.get(cmd)
    if name is None:
        return {"cmd": str(cmd), "arg": f"{arg:#x}"}
    layout_name = _DECODED_LAYOUT.get(cmd)
    layout = None if layout_name is None else getattr(vcpu.domain.abi, layout_name)
    out: dict[str, Any] = {"cmd": name}
    if layout is not None:
        try:
            out.update(_rd(vcpu, arg, layout).to_dict())
        except GuestFault:
            out["arg"] = f"{arg:#x} (unreadable)"
    if "virq" in out and cmd == EvtchnOp.bind_virq:
        out["virq_name"] = _virq_name(out["virq"])
    return out


def do_event_channel_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    return evtchn_op(vcpu, cmd, arg)


def do_event_channel_op_compat(vcpu: Vcpu, arg: int, *_: int) -> int:
    """The old form (xen/arch/x86/compat.c do_event_channel_op_compat): struct evtchn_op
    {u32 cmd; union u} with the union at offset 4, copied in whole (28 bytes) first; only
    the original ten commands are accepted (reset and the FIFO ops are -ENOSYS)."""
    try:
        cmd = struct.unpack("<I", vcpu.read_virt(arg, EVTCHN_OP_SIZE)[:4])[0]
    except GuestFault:
        return EFAULT
    if cmd not in COMPAT_OPS:
        return ENOSYS
    return evtchn_op(vcpu, cmd, arg + 4)


def _decode_compat(vcpu: Vcpu, arg: int) -> dict[str, Any]:
    try:
        return decode_evtchn(vcpu, vcpu.read_u32(arg), arg + 4)
    except GuestFault:
        return {"arg": f"{arg:#x} (unreadable)"}


def decode_event_channel_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> Any:
    return decode_evtchn(vcpu, cmd, arg)


def decode_event_channel_op_compat(vcpu: Vcpu, arg: int, *_: int) -> Any:
    return _decode_compat(vcpu, arg)
