"""event_channel_op: 2-level event channels (xen/common/event_channel.c, event_2l.c).

Raising port p on vcpu v (event_2l.c evtchn_2l_set_pending): test-and-set
evtchn_pending[p]; if it was clear, the port is unmasked, and the selector bit
p/32 in v's evtchn_pending_sel was clear, set evtchn_upcall_pending and kick v.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, EvtchnOp
from xenwb.hypervisor.hypercalls import hypercall
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOENT, EEXIST, ENOSPC, EPERM, ESRCH, ENOSYS = (
    -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOENT, -Errno.EEXIST, -Errno.ENOSPC, -Errno.EPERM,
    -Errno.ESRCH, -Errno.ENOSYS)
BACKEND_DOMID = 0       # the workbench's backends play dom0


class PortState(enum.IntEnum):
    """EVTCHNSTAT_* (public/event_channel.h)."""

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
    state: PortState = PortState.closed
    vcpu: int = 0
    remote_dom: int = 0
    remote_port: int = 0
    virq: int = 0
    backend: Backend | None = None


class EventChannels:
    """The domain's ports, and the 2-level pending/mask bitmaps in shared_info."""

    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.nr_ports = C.NR_EVTCHN_2L_PV32
        self.ports: list[Port] = [Port() for _ in range(self.nr_ports)]
        self.virq_ports: dict[tuple[int, int], int] = {}   # (virq, vcpu) -> port
        si = dom.abi.shared_info
        self.pending_off = (dom.shared_info_mfn << 12) + si.offset("evtchn_pending")
        self.mask_off = (dom.shared_info_mfn << 12) + si.offset("evtchn_mask")

    # -- bitmaps in shared_info ---------------------------------------------------
    def _bit(self, base: int, port: int) -> bool:
        return bool(self.dom.mem.read(base + port // 8, 1)[0] >> (port % 8) & 1)

    def _set_bit(self, base: int, port: int, on: bool) -> bool:
        addr = base + port // 8
        b = self.dom.mem.read(addr, 1)[0]
        old = bool(b >> (port % 8) & 1)
        b = (b | (1 << (port % 8))) if on else (b & ~(1 << (port % 8)))
        self.dom.mem.write(addr, bytes([b]))
        return old

    def is_pending(self, port: int) -> bool:
        return self._bit(self.pending_off, port)

    def is_masked(self, port: int) -> bool:
        return self._bit(self.mask_off, port)

    def alloc(self) -> int:
        for p in range(1, self.nr_ports):
            if self.ports[p].state == PortState.closed:
                return p
        return ENOSPC

    def valid(self, port: int) -> bool:
        return 0 < port < self.nr_ports

    # -- raising -----------------------------------------------------------------
    def set_pending(self, port: int) -> None:
        dom = self.dom
        p = self.ports[port]
        v = dom.vcpus[p.vcpu] if p.vcpu < len(dom.vcpus) else dom.vcpus[0]
        if self._set_bit(self.pending_off, port, True):
            return
        dom.trace.emit(v, "event", "set_pending", port=port, masked=self.is_masked(port))
        if not self.is_masked(port):
            self._mark_selector(v, port)
        dom.scheduler_wake_pollers(port)

    def _mark_selector(self, v: Vcpu, port: int) -> None:
        sel_addr = v.vcpu_info_maddr + 4
        sel = self.dom.mem.read_u32(sel_addr)
        bit = 1 << (port // 32)
        if not sel & bit:
            self.dom.mem.write_u32(sel_addr, sel | bit)
            v.upcall_pending = 1
            self.dom.kick(v)

    def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask: clear the mask, and re-raise if the port is pending."""
        self._set_bit(self.mask_off, port, False)
        if self.is_pending(port):
            p = self.ports[port]
            self._mark_selector(self.dom.vcpus[p.vcpu], port)

    def send_virq(self, vcpu: Vcpu, virq: int) -> bool:
        port = self.virq_ports.get((virq, vcpu.id if virq in C.PER_VCPU_VIRQS else 0))
        if port is None:
            return False
        self.set_pending(port)
        return True

    def notify_guest(self, port: int) -> None:
        """A backend signals the guest's end of an interdomain port."""
        if self.ports[port].state == PortState.interdomain:
            self.set_pending(port)

    def connect_backend(self, port: int, backend: Backend) -> None:
        self.ports[port] = Port(PortState.interdomain, 0, BACKEND_DOMID, 0x1000 + port, backend=backend)

    # -- operations ---------------------------------------------------------------
    def close(self, port: int) -> int:
        if not self.valid(port):
            return EINVAL
        p = self.ports[port]
        if p.state == PortState.closed:
            return EINVAL
        if p.state == PortState.virq:
            self.virq_ports.pop((p.virq, p.vcpu if p.virq in C.PER_VCPU_VIRQS else 0), None)
        if p.state == PortState.interdomain and p.remote_dom == self.dom.domid:
            peer = self.ports[p.remote_port]
            if peer.state == PortState.interdomain:
                peer.state, peer.remote_dom = PortState.unbound, self.dom.domid
        self.ports[port] = Port()
        self._set_bit(self.pending_off, port, False)
        return 0

    def send(self, vcpu: Vcpu, port: int) -> int:
        if not self.valid(port):
            return EINVAL
        p = self.ports[port]
        if p.state == PortState.interdomain:
            if p.backend is not None:
                p.backend.notify()
            elif p.remote_dom == self.dom.domid:
                self.set_pending(p.remote_port)
            return 0
        if p.state == PortState.ipi:
            self.set_pending(port)
            return 0
        if p.state == PortState.unbound:
            return 0            # silently dropped
        return EINVAL


def setup_domain_ports(dom: Domain) -> None:
    """The toolstack's ports: xenstore and console, bound by the backends (dom0)."""
    from xenwb.backends import ConsoleBackend, StoreBackend
    from xenwb.builder import CONSOLE_EVTCHN, STORE_EVTCHN
    ev = EventChannels(dom)
    dom.evtchn = ev  # type: ignore[attr-defined]
    dom.console_backend = ConsoleBackend(dom, CONSOLE_EVTCHN)  # type: ignore[attr-defined]
    dom.store_backend = StoreBackend(dom, STORE_EVTCHN)  # type: ignore[attr-defined]
    ev.connect_backend(CONSOLE_EVTCHN, dom.console_backend)  # type: ignore[attr-defined]
    ev.connect_backend(STORE_EVTCHN, dom.store_backend)  # type: ignore[attr-defined]


def _rd(vcpu: Vcpu, arg: int, L):
    return L.parse(vcpu.read_virt(arg, L.size()))


def _wr(vcpu: Vcpu, arg: int, obj) -> None:
    vcpu.write_virt(arg, bytes(obj))


def _self(dom: int) -> bool:
    return dom in (C.DOMID_SELF, 1)


def evtchn_op(vcpu: Vcpu, cmd: int, arg: int) -> int:
    dom = vcpu.domain
    ev: EventChannels = dom.evtchn  # type: ignore[attr-defined]
    L = dom.abi
    try:
        if cmd == EvtchnOp.alloc_unbound:
            a = _rd(vcpu, arg, L.evtchn_alloc_unbound)
            if not _self(a.dom):
                return EPERM
            port = ev.alloc()
            if port < 0:
                return port
            rdom = dom.domid if a.remote_dom == C.DOMID_SELF else a.remote_dom
            ev.ports[port] = Port(PortState.unbound, 0, rdom)
            a.port = port
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_interdomain:
            a = _rd(vcpu, arg, L.evtchn_bind_interdomain)
            if not _self(a.remote_dom):
                return ESRCH if a.remote_dom != BACKEND_DOMID else EINVAL
            rport = a.remote_port
            if not ev.valid(rport) or ev.ports[rport].state != PortState.unbound or \
                    ev.ports[rport].remote_dom != dom.domid:
                return EINVAL
            port = ev.alloc()
            if port < 0:
                return port
            ev.ports[port] = Port(PortState.interdomain, 0, dom.domid, rport)
            ev.ports[rport] = Port(PortState.interdomain, ev.ports[rport].vcpu, dom.domid, port)
            a.local_port = port
            _wr(vcpu, arg, a)
            ev.set_pending(port)
            return 0
        if cmd == EvtchnOp.bind_virq:
            a = _rd(vcpu, arg, L.evtchn_bind_virq)
            virq, vid = a.virq, a.vcpu
            if virq >= C.NR_VIRQS:
                return EINVAL
            if virq not in C.PER_VCPU_VIRQS and vid != 0:
                return EINVAL
            if vid >= len(dom.vcpus):
                return ENOENT
            key = (virq, vid)
            if key in ev.virq_ports:
                return EEXIST
            port = ev.alloc()
            if port < 0:
                return port
            ev.ports[port] = Port(PortState.virq, vid, virq=virq)
            ev.virq_ports[key] = port
            a.port = port
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_ipi:
            a = _rd(vcpu, arg, L.evtchn_bind_ipi)
            if a.vcpu >= len(dom.vcpus):
                return ENOENT
            port = ev.alloc()
            if port < 0:
                return port
            ev.ports[port] = Port(PortState.ipi, a.vcpu)
            a.port = port
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_pirq:
            return EPERM
        if cmd == EvtchnOp.close:
            return ev.close(_rd(vcpu, arg, L.evtchn_port).port)
        if cmd == EvtchnOp.send:
            return ev.send(vcpu, _rd(vcpu, arg, L.evtchn_port).port)
        if cmd == EvtchnOp.status:
            a = _rd(vcpu, arg, L.evtchn_status)
            if not _self(a.dom):
                return ESRCH
            if not ev.valid(a.port) and a.port != 0:
                return EINVAL
            p = ev.ports[a.port] if a.port else Port()
            a.status, a.vcpu, a.u0, a.u1 = int(p.state), p.vcpu, 0, 0
            if p.state == PortState.unbound:
                a.u0 = p.remote_dom
            elif p.state == PortState.interdomain:
                a.u0, a.u1 = p.remote_dom, p.remote_port
            elif p.state == PortState.virq:
                a.u0 = p.virq
            _wr(vcpu, arg, a)
            return 0
        if cmd == EvtchnOp.bind_vcpu:
            a = _rd(vcpu, arg, L.evtchn_bind_vcpu)
            if not ev.valid(a.port):
                return EINVAL
            if a.vcpu >= len(dom.vcpus):
                return ENOENT
            p = ev.ports[a.port]
            if p.state == PortState.virq and p.virq in C.PER_VCPU_VIRQS or p.state == PortState.ipi:
                return EINVAL
            if p.state in (PortState.closed,):
                return EINVAL
            p.vcpu = a.vcpu
            if p.state == PortState.virq:
                ev.virq_ports[(p.virq, 0)] = a.port
            return 0
        if cmd == EvtchnOp.unmask:
            port = _rd(vcpu, arg, L.evtchn_port).port
            if not ev.valid(port):
                return EINVAL
            ev.unmask(port)
            return 0
        if cmd == EvtchnOp.reset:
            a = _rd(vcpu, arg, L.evtchn_reset)
            if not _self(a.dom):
                return ESRCH
            for port in range(1, ev.nr_ports):
                if ev.ports[port].state not in (PortState.closed,) and ev.ports[port].backend is None:
                    ev.close(port)
            return 0
        if cmd in (EvtchnOp.init_control, EvtchnOp.expand_array, EvtchnOp.set_priority):
            return ENOSYS       # no FIFO ABI: guests stay on 2-level
    except GuestFault:
        return EFAULT
    return dom.unimplemented(f"event_channel_op command {cmd}")


def decode_evtchn(vcpu: Vcpu, cmd: int, arg: int) -> dict[str, Any]:
    L = vcpu.domain.abi
    try:
        name = EvtchnOp(cmd).name
    except ValueError:
        return {"cmd": str(cmd), "arg": f"{arg:#x}"}
    layout = {EvtchnOp.alloc_unbound: L.evtchn_alloc_unbound, EvtchnOp.bind_interdomain: L.evtchn_bind_interdomain,
              EvtchnOp.bind_virq: L.evtchn_bind_virq, EvtchnOp.bind_ipi: L.evtchn_bind_ipi,
              EvtchnOp.close: L.evtchn_port, EvtchnOp.send: L.evtchn_port, EvtchnOp.unmask: L.evtchn_port,
              EvtchnOp.status: L.evtchn_status, EvtchnOp.bind_vcpu: L.evtchn_bind_vcpu,
              EvtchnOp.reset: L.evtchn_reset}.get(EvtchnOp(cmd))
    out: dict[str, Any] = {"cmd": name}
    if layout is not None:
        try:
            out.update(_rd(vcpu, arg, layout).to_dict())
        except GuestFault:
            out["arg"] = f"{arg:#x} (unreadable)"
    if "virq" in out and cmd == EvtchnOp.bind_virq:
        try:
            out["virq_name"] = C.Virq(out["virq"]).name
        except ValueError:
            pass
    return out


@hypercall(C.Hypercall.event_channel_op, decoder=lambda v, cmd, arg, *_: decode_evtchn(v, cmd, arg))
def do_event_channel_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    return evtchn_op(vcpu, cmd, arg)


@hypercall(C.Hypercall.event_channel_op_compat, decoder=lambda v, arg, *_: _decode_compat(v, arg))
def do_event_channel_op_compat(vcpu: Vcpu, arg: int, *_: int) -> int:
    """The old form: {u32 cmd; union} with the union at offset 4."""
    try:
        cmd = vcpu.read_u32(arg)
    except GuestFault:
        return EFAULT
    return evtchn_op(vcpu, cmd, arg + 4)


def _decode_compat(vcpu: Vcpu, arg: int) -> dict[str, Any]:
    try:
        return decode_evtchn(vcpu, vcpu.read_u32(arg), arg + 4)
    except GuestFault:
        return {"arg": f"{arg:#x} (unreadable)"}
