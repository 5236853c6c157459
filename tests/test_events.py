"""2-level event channels (#32 event_channel_op, #16 the compat form) and event upcalls.

Each rule is the one of xen/common/event_channel.c (evtchn_alloc_unbound, evtchn_bind_interdomain,
evtchn_bind_virq, evtchn_bind_ipi, evtchn_close, evtchn_send, evtchn_status, evtchn_bind_vcpu,
evtchn_unmask, evtchn_reset, get_free_port, port_is_valid), xen/common/event_2l.c
(evtchn_2l_set_pending, evtchn_2l_unmask), xen/arch/x86/domain.c (vcpu_mark_events_pending) and
xen/arch/x86/x86_64/compat/entry.S (compat_test_guest_events, compat_create_bounce_frame).
The machines are built, not run: hypercalls are issued on vcpu 0 as its `int $0x82` would.
"""

from __future__ import annotations

import struct

import pytest
from support.harness import Hv

from xenwb.abi import constants as C
from xenwb.abi.constants import EvtchnOp as E
from xenwb.hypervisor import traps
from xenwb.hypervisor.event_channel import EVTCHNS_PER_BUCKET

H = C.Hypercall
EPERM, ENOENT, ESRCH, EFAULT, EBUSY, EEXIST, EINVAL, ENOSPC, ENOSYS = (
    -1, -2, -3, -14, -16, -17, -22, -28, -38)
DOMID_SELF = 0x7FF0
SI_PENDING, SI_MASK = 2048, 2176        # shared_info.evtchn_pending / evtchn_mask (PV32)
CLOSED, UNBOUND, INTERDOMAIN, PIRQ, VIRQ, IPI = range(6)
VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_XENOPROF, VIRQ_ARGO, VIRQ_XENPMU = 0, 1, 2, 7, 11, 13
FLAT_KERNEL_CS, FLAT_KERNEL_SS = 0xE019, 0xE021
FLAT_USER_CS, FLAT_USER_SS = 0xE02B, 0xE033


# ---------------------------------------------------------------- helpers
def op(hv: Hv, cmd: int, fmt: str, *vals: int, hypercall: int = H.event_channel_op) -> tuple[int, tuple]:
    arg = hv.put(struct.pack(fmt, *vals))
    if hypercall == H.event_channel_op_compat:
        rc = hv.call(hypercall, arg)                            # the command is in the struct
    else:
        rc = hv.call(hypercall, int(cmd), arg)
    return rc, struct.unpack(fmt, hv.get(arg, struct.calcsize(fmt)))


def alloc_unbound(hv: Hv, remote: int = DOMID_SELF, dom: int = DOMID_SELF) -> int:
    rc, out = op(hv, E.alloc_unbound, "<HHI", dom, remote, 0)
    return rc if rc else out[2]


def bind_interdomain(hv: Hv, rdom: int, rport: int) -> int:
    rc, out = op(hv, E.bind_interdomain, "<HHII", rdom, 0, rport, 0)
    return rc if rc else out[3]


def bind_virq(hv: Hv, virq: int, vcpu: int = 0) -> int:
    rc, out = op(hv, E.bind_virq, "<III", virq, vcpu, 0)
    return rc if rc else out[2]


def bind_ipi(hv: Hv, vcpu: int = 0) -> int:
    rc, out = op(hv, E.bind_ipi, "<II", vcpu, 0)
    return rc if rc else out[1]


def port_op(hv: Hv, cmd: int, port: int) -> int:
    return op(hv, cmd, "<I", port)[0]


def bind_vcpu(hv: Hv, port: int, vcpu: int) -> int:
    return op(hv, E.bind_vcpu, "<II", port, vcpu)[0]


def status(hv: Hv, port: int, dom: int = DOMID_SELF) -> tuple[int, ...]:
    """(rc, status, vcpu, u0, u1): the 24-byte struct evtchn_status."""
    rc, out = op(hv, E.status, "<H2xIIIII", dom, port, 0xAAAA, 0xBBBB, 0xCCCC, 0xDDDD)
    return (rc,) + out[2:]


def bit(hv: Hv, base: int, port: int) -> bool:
    return bool(hv.dom.mem.read(hv.shared_info_maddr() + base + port // 8, 1)[0] >> (port % 8) & 1)


def pending(hv: Hv, port: int) -> bool:
    return bit(hv, SI_PENDING, port)


def masked(hv: Hv, port: int) -> bool:
    return bit(hv, SI_MASK, port)


def set_mask(hv: Hv, port: int, on: bool = True) -> None:
    hv.dom.evtchn.set_mask(port, on)


def sel(hv: Hv, vcpu: int = 0) -> int:
    return hv.dom.mem.read_u32(hv.dom.vcpus[vcpu].vcpu_info_maddr + 4)


def clear_vcpu_info(hv: Hv, vcpu: int = 0) -> None:
    """What the guest's upcall does: upcall_pending = 0, pending_sel = 0."""
    v = hv.dom.vcpus[vcpu]
    v.upcall_pending = 0
    hv.dom.mem.write_u32(v.vcpu_info_maddr + 4, 0)


@pytest.fixture
def hv2() -> Hv:
    return Hv.example("pvdemo-pae", vcpus=2)


# ================================================================ ports and their numbers
def test_port_zero_is_reserved_and_ports_are_lowest_free(hv: Hv) -> None:
    """evtchn_init reserves port 0; get_free_port takes the lowest free port (1 and 2 are the
    toolstack's xenstore and console ports)."""
    assert status(hv, 0)[:2] == (0, CLOSED)
    assert port_op(hv, E.close, 0) == EINVAL
    assert port_op(hv, E.send, 0) == EINVAL
    assert bind_vcpu(hv, 0, 0) == EINVAL
    a, b = alloc_unbound(hv), alloc_unbound(hv)
    assert (a, b) == (3, 4)
    assert port_op(hv, E.close, a) == 0
    assert alloc_unbound(hv) == 3


def test_port_limit_is_1024_and_buckets_make_ports_valid(hv: Hv) -> None:
    """2-level ABI of a 32-bit guest: 32 x 32 ports (max_evtchns), the 1024th allocation is
    -ENOSPC. Ports are valid (port_is_valid) bucket by bucket of 64: beyond the allocated
    buckets every operation is -EINVAL, inside them a free port is merely closed."""
    assert EVTCHNS_PER_BUCKET == 64
    assert status(hv, 63)[:2] == (0, CLOSED)
    assert status(hv, 64)[0] == EINVAL
    assert port_op(hv, E.unmask, 64) == EINVAL
    ports = [alloc_unbound(hv) for _ in range(1021)]          # 3 .. 1023
    assert ports == list(range(3, 1024))
    assert status(hv, 64)[:2] == (0, UNBOUND)
    assert alloc_unbound(hv) == ENOSPC
    assert bind_ipi(hv) == ENOSPC
    assert bind_virq(hv, VIRQ_TIMER) == ENOSPC
    assert status(hv, 1023)[:2] == (0, UNBOUND)
    assert status(hv, 1024)[0] == EINVAL
    assert port_op(hv, E.close, 1000) == 0
    assert bind_ipi(hv) == 1000


# ================================================================ alloc_unbound / bind_interdomain
def test_alloc_unbound_domains(hv: Hv) -> None:
    """dom must be DOMID_SELF (or our id); domain 0 exists but XSM refuses (-EPERM); an unknown
    domain is -ESRCH. remote_dom DOMID_SELF is recorded as our own id."""
    p = alloc_unbound(hv)
    rc, st, vcpu, u0, _ = status(hv, p)
    assert (rc, st, vcpu) == (0, UNBOUND, 0)
    assert u0 & 0xFFFF == hv.dom.domid
    q = alloc_unbound(hv, remote=0)
    assert status(hv, q)[3] & 0xFFFF == 0
    assert alloc_unbound(hv, dom=hv.dom.domid) > 0
    assert alloc_unbound(hv, dom=0) == EPERM
    assert alloc_unbound(hv, dom=7) == ESRCH
    assert hv.call(H.event_channel_op, E.alloc_unbound, 0x1000) == EFAULT


def test_interdomain_loopback(hv: Hv) -> None:
    """bind_interdomain with ourselves as the remote end: both ports interdomain; the new local
    port is set pending at once (lost-notification rule); a send raises the peer; close makes
    the peer unbound towards us again, and a send on it is then silently dropped."""
    a = alloc_unbound(hv)
    b = bind_interdomain(hv, DOMID_SELF, a)
    assert b > a
    dom = hv.dom.domid
    assert status(hv, b)[:5] == (0, INTERDOMAIN, 0, dom, a)
    assert status(hv, a)[:5] == (0, INTERDOMAIN, 0, dom, b)
    assert pending(hv, b) and not pending(hv, a)
    assert port_op(hv, E.send, b) == 0
    assert pending(hv, a)
    assert port_op(hv, E.close, a) == 0
    assert not pending(hv, a)                                   # evtchn_free clears pending
    assert status(hv, b)[:4] == (0, UNBOUND, 0, dom)
    hv.dom.evtchn.ops.clear_pending(b)                         # what the guest's upcall does
    assert port_op(hv, E.send, b) == 0
    assert not pending(hv, b)                                   # unbound: dropped
    # the unbound end can be connected again
    c = bind_interdomain(hv, DOMID_SELF, b)
    assert status(hv, c)[:5] == (0, INTERDOMAIN, 0, dom, b)


def test_bind_interdomain_errors(hv: Hv) -> None:
    a = alloc_unbound(hv)
    assert bind_interdomain(hv, 9, a) == ESRCH                  # no such domain
    assert bind_interdomain(hv, DOMID_SELF, 1000) == EINVAL     # beyond the valid ports
    assert bind_interdomain(hv, DOMID_SELF, 40) == EINVAL       # a free port
    ipi = bind_ipi(hv)
    assert bind_interdomain(hv, DOMID_SELF, ipi) == EINVAL      # not unbound
    other = alloc_unbound(hv, remote=5)                         # unbound for domain 5
    assert bind_interdomain(hv, DOMID_SELF, other) == EINVAL
    assert bind_interdomain(hv, 0, 1) == EINVAL                 # dom0's port 1 is connected


def test_backend_ports_close_and_rebind(hv: Hv) -> None:
    """The xenstore/console ports are interdomain with the workbench's backends (domain 0).
    Closing one leaves domain 0's end unbound towards us; bind_interdomain(0, that port)
    connects again; then the backend's notifications reach the new port and our sends reach
    the backend."""
    ev = hv.dom.evtchn
    store = hv.m.store
    si_store = hv.u32(hv.layout.start_info.va + 48)
    rc, st, _, rdom, rport = status(hv, si_store)
    assert (rc, st, rdom) == (0, INTERDOMAIN, 0)
    n = store.notifications
    assert port_op(hv, E.send, si_store) == 0
    assert store.notifications == n + 1
    assert port_op(hv, E.close, si_store) == 0
    assert ev.dom0.ports[rport].state.name == "unbound"
    ev.notify_guest(si_store)                                   # the backend signals: dropped
    assert not pending(hv, si_store)
    new = bind_interdomain(hv, 0, rport)
    assert new > 0 and status(hv, new)[:5] == (0, INTERDOMAIN, 0, 0, rport)
    assert pending(hv, new)
    ev.ops.clear_pending(new)
    ev.notify_guest(si_store)
    assert pending(hv, new)
    assert port_op(hv, E.send, new) == 0
    assert store.notifications == n + 2
    # a backend can also offer a fresh unbound port of domain 0
    offered = ev.offer_backend(store)
    p = bind_interdomain(hv, 0, offered)
    assert status(hv, p)[:5] == (0, INTERDOMAIN, 0, 0, offered)
    assert bind_interdomain(hv, 0, offered) == EINVAL           # no longer unbound


# ================================================================ VIRQs and IPIs
def test_bind_virq_rules(hv2: Hv) -> None:
    """get_virq_type: TIMER, DEBUG, XENOPROF, XENPMU per vcpu; ARGO per domain; the rest
    global. Non-per-vcpu VIRQs need vcpu 0 (-EINVAL), a missing vcpu is -ENOENT, a global VIRQ
    belongs to the hardware domain (-EBUSY for a domU), an existing binding -EEXIST."""
    hv = hv2
    t0, t1 = bind_virq(hv, VIRQ_TIMER, 0), bind_virq(hv, VIRQ_TIMER, 1)
    assert t0 > 0 and t1 > 0 and t0 != t1
    assert status(hv, t1)[:4] == (0, VIRQ, 1, VIRQ_TIMER)
    assert bind_virq(hv, VIRQ_TIMER, 1) == EEXIST
    for virq in (VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU):
        assert bind_virq(hv, virq, 1) > 0
    assert bind_virq(hv, VIRQ_DEBUG, 2) == ENOENT
    assert bind_virq(hv, VIRQ_CONSOLE, 1) == EINVAL             # global, vcpu != 0
    assert bind_virq(hv, VIRQ_CONSOLE, 5) == EINVAL             # the type check comes first
    assert bind_virq(hv, VIRQ_CONSOLE, 0) == EBUSY              # the hardware domain's
    assert bind_virq(hv, VIRQ_ARGO, 1) == EINVAL
    argo = bind_virq(hv, VIRQ_ARGO, 0)
    assert argo > 0 and bind_virq(hv, VIRQ_ARGO, 0) == EEXIST
    assert bind_virq(hv, 24, 0) == EINVAL                       # NR_VIRQS
    assert bind_virq(hv, 0xFFFFFFFF, 0) == EINVAL
    assert port_op(hv, E.send, t0) == EINVAL                    # a VIRQ port cannot be sent on
    assert port_op(hv, E.close, t1) == 0
    assert bind_virq(hv, VIRQ_TIMER, 1) == t1                   # unbound again, rebinding works


def test_virq_delivery_goes_to_the_bound_vcpu(hv2: Hv) -> None:
    hv = hv2
    ev = hv.dom.evtchn
    t1 = bind_virq(hv, VIRQ_TIMER, 1)
    assert ev.send_virq(hv.dom.vcpus[1], VIRQ_TIMER)
    assert pending(hv, t1)
    assert sel(hv, 1) == 1 << (t1 // 32) and sel(hv, 0) == 0
    assert hv.dom.vcpus[1].upcall_pending == 1 and hv.dom.vcpus[0].upcall_pending == 0
    assert not ev.send_virq(hv.dom.vcpus[0], VIRQ_TIMER)       # nothing bound on vcpu 0


def test_ipi_ports(hv2: Hv) -> None:
    """bind_ipi: the port notifies the given vcpu (-ENOENT for none); any vcpu may send on it."""
    hv = hv2
    assert bind_ipi(hv, 2) == ENOENT
    p = bind_ipi(hv, 1)
    assert status(hv, p)[:3] == (0, IPI, 1)
    assert port_op(hv, E.send, p) == 0
    assert pending(hv, p) and sel(hv, 1) & 1 << (p // 32) and sel(hv, 0) == 0


def test_bind_vcpu(hv2: Hv) -> None:
    """evtchn_bind_vcpu: -ENOENT for a missing vcpu (checked first), -EINVAL for an invalid or
    free port, an IPI port or a per-vcpu VIRQ; unbound, interdomain and global VIRQ ports move."""
    hv = hv2
    ipi = bind_ipi(hv, 0)
    timer = bind_virq(hv, VIRQ_TIMER, 0)
    argo = bind_virq(hv, VIRQ_ARGO, 0)
    a = alloc_unbound(hv)
    b = bind_interdomain(hv, DOMID_SELF, a)
    assert bind_vcpu(hv, 9999, 5) == ENOENT
    assert bind_vcpu(hv, 9999, 1) == EINVAL
    assert bind_vcpu(hv, 50, 1) == EINVAL                        # free
    assert bind_vcpu(hv, ipi, 1) == EINVAL
    assert bind_vcpu(hv, timer, 1) == EINVAL
    for p in (argo, a, b):
        assert bind_vcpu(hv, p, 1) == 0
        assert status(hv, p)[2] == 1
    clear_vcpu_info(hv, 0)
    hv.dom.evtchn.ops.clear_pending(a)
    assert port_op(hv, E.send, b) == 0                          # raises a, now on vcpu 1
    assert sel(hv, 1) and not sel(hv, 0)
    assert port_op(hv, E.close, a) == 0
    assert status(hv, a)[:3] == (0, CLOSED, 0)                  # evtchn_free: back to vcpu 0


# ================================================================ send / close / status / unmask / reset
def test_send_and_close_errors(hv: Hv) -> None:
    assert port_op(hv, E.send, 5000) == EINVAL
    assert port_op(hv, E.send, 30) == EINVAL                    # free
    assert port_op(hv, E.close, 30) == EINVAL
    assert port_op(hv, E.close, 64) == EINVAL                   # not valid (no bucket)
    p = bind_ipi(hv)
    set_mask(hv, p)
    assert port_op(hv, E.send, p) == 0
    assert pending(hv, p)
    assert port_op(hv, E.close, p) == 0
    assert not pending(hv, p) and masked(hv, p)                 # the mask bit outlives the port
    assert bind_ipi(hv) == p and masked(hv, p)


def test_status_layout_and_domains(hv: Hv) -> None:
    """struct evtchn_status (24 bytes): status @8, vcpu @12, union @16 (unbound.dom;
    interdomain.dom + port @20; virq). Domain 0 -> -EPERM (XSM), unknown -> -ESRCH."""
    t = bind_virq(hv, VIRQ_TIMER)
    assert status(hv, t) == (0, VIRQ, 0, VIRQ_TIMER, 0)
    i = bind_ipi(hv)
    assert status(hv, i) == (0, IPI, 0, 0, 0)
    assert status(hv, 40) == (0, CLOSED, 0, 0, 0)
    assert status(hv, t, dom=0)[0] == EPERM
    assert status(hv, t, dom=3)[0] == ESRCH
    assert status(hv, t, dom=hv.dom.domid)[:2] == (0, VIRQ)


def test_unmask(hv: Hv) -> None:
    """evtchn_2l_unmask: clears the mask; re-raises only if the mask was set, the port pending
    and its selector bit clear. A free port is not usable: unmask does nothing (rc 0)."""
    p = bind_ipi(hv)
    set_mask(hv, p)
    assert port_op(hv, E.send, p) == 0
    assert pending(hv, p) and sel(hv) == 0 and hv.v.upcall_pending == 0   # lost edge
    assert port_op(hv, E.send, p) == 0                          # already pending: nothing
    assert sel(hv) == 0 and hv.v.upcall_pending == 0
    assert port_op(hv, E.unmask, p) == 0
    assert not masked(hv, p) and sel(hv) == 1 << (p // 32) and hv.v.upcall_pending == 1
    clear_vcpu_info(hv)
    assert port_op(hv, E.unmask, p) == 0                        # mask was clear: no re-raise
    assert sel(hv) == 0 and hv.v.upcall_pending == 0
    set_mask(hv, 40)
    assert port_op(hv, E.unmask, 40) == 0 and masked(hv, 40)    # free: untouched
    assert port_op(hv, E.unmask, 2000) == EINVAL


def test_reset_closes_every_port(hv: Hv) -> None:
    ev = hv.dom.evtchn
    ports = [bind_ipi(hv), alloc_unbound(hv), bind_virq(hv, VIRQ_TIMER)]
    assert op(hv, E.reset, "<H", 0)[0] == EPERM
    assert op(hv, E.reset, "<H", 4)[0] == ESRCH
    assert op(hv, E.reset, "<H", DOMID_SELF)[0] == 0
    for p in ports + [1, 2]:
        assert status(hv, p)[1] == CLOSED
    assert all(p.state.name == "unbound" for p in ev.dom0.ports if p.backend is not None)
    assert bind_virq(hv, VIRQ_TIMER) == 1                       # lowest free again


def test_fifo_ops_pirq_and_unknown(hv: Hv) -> None:
    """Still on the 2-level ABI (event_channel.c, event_fifo.c): set_priority has no 2-level op
    (-ENOSYS), expand_array needs the FIFO ABI first (-EOPNOTSUPP), init_control with gfn 0 (a
    frame the domU does not own) fails to map it (-EINVAL) and leaves the domain on 2-level;
    a domU has no PIRQ access (-EPERM, -EINVAL past nr_pirqs); unknown commands -ENOSYS."""
    assert hv.call(H.event_channel_op, E.set_priority, hv.alloc(16)) == ENOSYS
    assert hv.call(H.event_channel_op, E.expand_array, hv.alloc(16)) == -95          # -EOPNOTSUPP
    assert hv.call(H.event_channel_op, E.init_control, hv.alloc(16)) == EINVAL
    assert hv.dom.evtchn.ops.name == "2-level"
    assert op(hv, E.bind_pirq, "<III", 3, 0, 0)[0] == EPERM
    assert op(hv, E.bind_pirq, "<III", 5000, 0, 0)[0] == EINVAL
    assert hv.call(H.event_channel_op, 99, hv.alloc(16)) == ENOSYS


def test_compat_event_channel_op(hv: Hv) -> None:
    """#16 (x86/compat.c): struct evtchn_op {cmd; union @4}, copied whole; the original ten
    commands only."""
    rc, out = op(hv, 0, "<IIII", E.bind_ipi, 0, 0, 0, hypercall=H.event_channel_op_compat)
    assert rc == 0 and out[2] > 0
    port = out[2]
    rc, _ = op(hv, 0, "<II", E.send, port, hypercall=H.event_channel_op_compat)
    assert rc == 0 and pending(hv, port)
    assert op(hv, 0, "<IH", E.reset, DOMID_SELF, hypercall=H.event_channel_op_compat)[0] == ENOSYS
    assert op(hv, 0, "<I", E.init_control, hypercall=H.event_channel_op_compat)[0] == ENOSYS


# ================================================================ delivery rules
def test_set_pending_order(hv: Hv) -> None:
    """evtchn_2l_set_pending: pending bit first; a masked port stops there; the selector bit of
    the port's word; evtchn_upcall_pending only when the selector bit was clear."""
    ev = hv.dom.evtchn
    lo = bind_ipi(hv)
    for _ in range(36):                                          # reach a port in word 1
        hi = bind_ipi(hv)
    assert hi // 32 == 1
    assert port_op(hv, E.send, hi) == 0
    assert sel(hv) == 0b10 and hv.v.upcall_pending == 1
    hv.v.upcall_pending = 0                                      # the guest cleared only this
    assert port_op(hv, E.send, hi - 1) == 0                     # same word: selector already set
    assert hv.v.upcall_pending == 0
    assert port_op(hv, E.send, lo) == 0                         # word 0: new selector bit
    assert sel(hv) == 0b11 and hv.v.upcall_pending == 1
    assert ev.stats["edges"] == 2


def test_masked_vcpu_gets_no_upcall_until_unmasked(hv: Hv) -> None:
    """compat_test_guest_events: deliver only when upcall_pending && !upcall_mask."""
    assert hv.call(H.set_callbacks, FLAT_KERNEL_CS, 0xC0001000, FLAT_KERNEL_CS, 0xC0001100) == 0
    p = bind_ipi(hv)
    assert hv.v.upcall_mask == 1                                 # the builder masks every vcpu
    assert port_op(hv, E.send, p) == 0
    assert hv.v.upcall_pending == 1
    before = hv.guest_frame()
    assert traps.deliver_event_upcall(hv.v) is False
    assert hv.guest_frame() == before
    hv.v.upcall_mask = 0
    assert traps.deliver_event_upcall(hv.v) is True
    assert hv.guest_frame()[0] == 0xC0001000 and hv.v.upcall_mask == 1
    assert traps.deliver_event_upcall(hv.v) is False            # now masked by the upcall


def test_upcall_frame_from_ring1_byte_for_byte(hv: Hv) -> None:
    """compat_create_bounce_frame from the kernel (RPL 1): EIP, CS | saved_mask << 16, EFLAGS
    (IF = !saved_mask, IOPL 0) pushed on the current stack; then mask = 1, CS:EIP = the
    callback; real EFLAGS loses TF/NT/RF/VM."""
    assert hv.call(H.set_callbacks, FLAT_KERNEL_CS, 0xC0001234, FLAT_KERNEL_CS, 0xC0001100) == 0
    sp = hv.layout.stack.end - 64
    hv.v.cpu.transfer(0xC0000ABC, FLAT_KERNEL_CS, 0x3202 | 0x100 | 0x4000, sp, FLAT_KERNEL_SS)
    hv.v.upcall_mask = 0
    hv.v.upcall_pending = 1
    assert traps.deliver_event_upcall(hv.v)
    eip, cs, eflags, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == (0xC0001234, FLAT_KERNEL_CS, sp - 12, FLAT_KERNEL_SS)
    assert eflags & (0x100 | 0x4000 | 0x3000) == 0 and eflags & 0x200
    assert hv.get(sp - 12, 12) == struct.pack("<III", 0xC0000ABC, FLAT_KERNEL_CS | 0 << 16,
                                              (0x3202 | 0x100 | 0x4000) & ~0x3000)
    assert hv.v.upcall_mask == 1 and hv.v.upcall_pending == 1   # Xen never clears pending


def test_upcall_frame_from_ring3_uses_kernel_stack(hv: Hv) -> None:
    """From user mode (RPL 3) the frame goes on kernel_ss:kernel_sp (stack_switch) and carries
    the interrupted ESP and SS: EIP, CS | mask << 16, EFLAGS, ESP, SS."""
    ksp = hv.layout.stack.end - 256
    assert hv.call(H.stack_switch, FLAT_KERNEL_SS, ksp) == 0
    assert hv.call(H.set_callbacks, FLAT_KERNEL_CS, 0xC0001234, FLAT_KERNEL_CS, 0xC0001100) == 0
    hv.v.cpu.transfer(0x08048000, FLAT_USER_CS, 0x202, 0x0BFFF000, FLAT_USER_SS)
    hv.v.upcall_mask = 0
    hv.v.upcall_pending = 1
    assert traps.deliver_event_upcall(hv.v)
    eip, cs, _, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == (0xC0001234, FLAT_KERNEL_CS, ksp - 20, FLAT_KERNEL_SS)
    assert hv.get(ksp - 20, 20) == struct.pack("<5I", 0x08048000, FLAT_USER_CS, 0x202, 0x0BFFF000,
                                               FLAT_USER_SS)


def test_upcall_without_callback_crashes_the_domain(hv: Hv) -> None:
    """compat_bounce_null_selector: an event to deliver with no event callback registered."""
    hv.v.upcall_mask = 0
    hv.v.upcall_pending = 1
    with pytest.raises(traps.DomainCrash, match="null selector"):
        traps.deliver_event_upcall(hv.v)


def test_upcall_after_a_fault_bounce(hv: Hv) -> None:
    """A bounced fault whose handler does not mask events (no TI_IF) returns to the guest
    through the event check: the upcall frame lands on top of the exception frame."""
    assert hv.call(H.set_callbacks, FLAT_KERNEL_CS, 0xC0001234, FLAT_KERNEL_CS, 0xC0001100) == 0
    assert hv.set_trap_table((13, 0, FLAT_KERNEL_CS, 0xC0002000)) == 0
    sp = hv.layout.stack.end - 64
    hv.v.cpu.transfer(0xC0000ABC, FLAT_KERNEL_CS, 0x202, sp, FLAT_KERNEL_SS)
    hv.v.upcall_mask = 0
    p = bind_ipi(hv)
    assert port_op(hv, E.send, p) == 0                          # pending, not yet delivered
    traps.bounce_exception(hv.v, 13, 0, regs=traps.guest_regs(hv.v)[0])
    hv.v._after_guest_exit()
    eip, _, _, esp, _ = hv.guest_frame()
    assert eip == 0xC0001234 and esp == sp - 16 - 12
    assert hv.get(sp - 16, 16) == struct.pack("<4I", 0, 0xC0000ABC, FLAT_KERNEL_CS, 0x202)
    assert hv.get(sp - 28, 12) == struct.pack("<3I", 0xC0002000, FLAT_KERNEL_CS, 0x202)


def test_register_vcpu_info_marks_everything_pending(hv: Hv) -> None:
    """map_vcpu_info (Xen 4.17 common/domain.c): the old vcpu_info is copied, then pending_sel
    = ~0 and vcpu_mark_events_pending; later events go to the new copy only. -ENXIO when 64
    bytes do not fit in the page (an offset past it too), -EINVAL the second time."""
    mfn = hv.mfn_of(hv.scratch_page())
    arg = hv.put(struct.pack("<QII", mfn, 4096 - 32, 0))
    assert hv.call(H.vcpu_op, 10, 0, arg) == -6                  # ENXIO: crosses the page
    arg = hv.put(struct.pack("<QII", mfn, 4096, 0))
    assert hv.call(H.vcpu_op, 10, 0, arg) == -6
    old = hv.v.vcpu_info_maddr
    arg = hv.put(struct.pack("<QII", mfn, 128, 0))
    assert hv.call(H.vcpu_op, 10, 0, arg) == 0
    new = (mfn << 12) + 128
    assert hv.v.vcpu_info_maddr == new
    assert hv.dom.mem.read(new, 2) == b"\x01\x01" and sel(hv) == 0xFFFFFFFF
    hv.dom.mem.write_u32(new + 4, 0)
    hv.v.upcall_pending = 0
    p = bind_ipi(hv)
    assert port_op(hv, E.send, p) == 0
    assert sel(hv) == 1 and hv.dom.mem.read_u32(old + 4) == 0
    assert hv.call(H.vcpu_op, 10, 0, arg) == EINVAL


# ================================================================ the FIFO ABI (event_fifo.c)
def test_fifo_abi_links_raised_ports_into_their_queue(hv: Hv) -> None:
    """EVTCHNOP_init_control maps vcpu 0's control block (link_bits 17 written back) and
    switches the domain to FIFO; checks in Xen's order: vcpu (-ENOENT), offset past the page
    or misaligned (-EINVAL), a second block for the vcpu (-EINVAL). EXPAND_ARRAY adds 1024
    event words; a port pending on the 2-level ABI before the switch is raised again once its
    page exists. Raising an unmasked port sets PENDING|LINKED, makes it the head of its
    priority's queue (7 by default), sets that priority's ready bit and marks events pending
    on the vcpu; a second port is linked after it (LINK of the tail); a masked port only gets
    PENDING, and unmasking links it (evtchn_fifo_set_pending/unmask)."""
    ipi_before = op(hv, E.bind_ipi, "<II", 0, 0)[1][1]
    assert op(hv, E.send, "<I", ipi_before)[0] == 0 and pending(hv, ipi_before)   # pending on 2-level
    cb_va, arr_va = hv.scratch_page(), hv.scratch_page()
    cb, arr = hv.mfn_of(cb_va), hv.mfn_of(arr_va)
    ctl = "<QIIB7x"
    assert op(hv, E.init_control, ctl, cb, 0, 5, 0)[0] == -C.Errno.ENOENT
    assert op(hv, E.init_control, ctl, cb, 4096 - 64, 0, 0)[0] == EINVAL        # crosses the page
    assert op(hv, E.init_control, ctl, cb, 4, 0, 0)[0] == EINVAL                 # not 8-byte aligned
    rc, out = op(hv, E.init_control, ctl, cb, 0, 0, 0)
    assert rc == 0 and out[3] == 17 and hv.dom.evtchn.ops.name == "FIFO"
    assert op(hv, E.init_control, ctl, cb, 0, 0, 0)[0] == EINVAL                 # already mapped
    hv.v.upcall_pending = 0
    assert op(hv, E.expand_array, "<Q", arr)[0] == 0

    def word(port: int) -> int:
        return hv.u32(arr_va + 4 * port)

    def head(prio: int) -> int:
        return hv.u32(cb_va + 8 + 4 * prio)

    PENDING, MASKED, LINKED = 1 << 31, 1 << 30, 1 << 29
    assert word(ipi_before) & (PENDING | LINKED) == PENDING | LINKED and head(7) == ipi_before
    assert hv.u32(cb_va) == 1 << 7 and hv.v.upcall_pending == 1
    # the guest consumes it: clears LINKED/PENDING and the ready bit, as Linux's consume_one_event
    hv.v.write_virt(arr_va + 4 * ipi_before, struct.pack("<I", 0))
    hv.v.write_virt(cb_va, struct.pack("<I", 0))
    hv.v.upcall_pending = 0
    a = op(hv, E.bind_ipi, "<II", 0, 0)[1][1]
    b = op(hv, E.bind_ipi, "<II", 0, 0)[1][1]
    assert op(hv, E.send, "<I", a)[0] == 0
    assert head(7) == a and word(a) & (PENDING | LINKED) == PENDING | LINKED and hv.v.upcall_pending == 1
    assert op(hv, E.send, "<I", b)[0] == 0
    assert word(a) & 0x1FFFF == b and word(b) & LINKED                              # linked after the tail
    assert op(hv, E.set_priority, "<II", b, 16)[0] == EINVAL
    assert op(hv, E.set_priority, "<II", b, 3)[0] == 0
    c = op(hv, E.bind_ipi, "<II", 0, 0)[1][1]
    hv.v.write_virt(arr_va + 4 * c, struct.pack("<I", MASKED))
    assert op(hv, E.send, "<I", c)[0] == 0
    assert word(c) == MASKED | PENDING                                                # not linked
    assert op(hv, E.unmask, "<I", c)[0] == 0
    assert word(c) & (PENDING | LINKED | MASKED) == PENDING | LINKED and word(b) & 0x1FFFF == c
