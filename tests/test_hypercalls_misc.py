"""xen_version (#17), console_io (#18), memory_op (#12), multicall (#13), sched_op (#29),
physdev_op (#33), vcpu_op (#24), event_channel_op (#32), grant_table_op (#20), unknown numbers
and garbage pointers.

Argument structures are packed here with the PV32 offsets of the ABI sheet (section 2), not with
xenwb's own layouts. Rules: xen/common/kernel.c (do_xen_version), xen/drivers/char/console.c
(do_console_io), xen/common/memory.c + xen/arch/x86/x86_64/compat/mm.c (memory_op),
xen/common/multicall.c, xen/common/sched/core.c (do_sched_op, do_poll), xen/arch/x86/physdev.c,
xen/common/domain.c (common_vcpu_op), xen/common/event_channel.c + event_2l.c,
xen/common/grant_table.c, xen/arch/x86/pv/hypercall.c (unknown number -> -ENOSYS).
"""

from __future__ import annotations

import re
import struct

import pytest
from support.harness import PAGE, Hv

from xenwb.abi import constants as C
from xenwb.abi.constants import Hypercall as H

EPERM, ENOENT, ESRCH, EFAULT, EACCES, EBUSY, EEXIST, EINVAL, ENOSYS = -1, -2, -3, -14, -13, -16, -17, -22, -38
DOMID_SELF = 0x7FF0
XENVER = {"version": 0, "capabilities": 3, "platform_parameters": 5, "get_features": 6, "pagesize": 7}
XENMEM = {"increase": 0, "decrease": 1, "maximum_ram_page": 2, "current": 3, "maximum": 4,
          "populate": 6, "add_to_physmap": 7, "memory_map": 9, "machphys_mapping": 12}
EVTCHNOP = {"bind_virq": 1, "close": 3, "send": 4, "status": 5, "alloc_unbound": 6, "bind_ipi": 7,
            "unmask": 9, "init_control": 11}
SI_PENDING, SI_MASK = 2048, 2176         # shared_info.evtchn_pending / evtchn_mask (PV32)


# ================================================================ xen_version
def test_xen_version(hv: Hv) -> None:
    ret = hv.call(H.xen_version, XENVER["version"], 0)
    assert ret == (C.XEN_MAJOR << 16) | C.XEN_MINOR
    assert ret >> 16 >= 3


def test_xen_version_get_features(hv: Hv) -> None:
    """get_features: only submap 0 (else -EINVAL); a PV domU sees mmu_pt_update_preserve_ad (5)
    but never writable_page_tables (0) or auto_translated_physmap (2)."""
    arg = hv.put_u32(0, 0xFFFFFFFF)
    assert hv.call(H.xen_version, XENVER["get_features"], arg) == 0
    submap = hv.u32(arg + 4)
    assert submap & (1 << 5)
    assert not submap & ((1 << 0) | (1 << 2))
    assert hv.call(H.xen_version, XENVER["get_features"], hv.put_u32(1, 0)) == EINVAL
    assert hv.call(H.xen_version, XENVER["get_features"], 0x1000) == EFAULT


def test_xen_version_platform_parameters(hv: Hv) -> None:
    arg = hv.put_u32(0)
    assert hv.call(H.xen_version, XENVER["platform_parameters"], arg) == 0
    assert hv.u32(arg) == (0xF5800000 if hv.pae else 0xFC000000)


def test_xen_version_capabilities_and_pagesize(hv: Hv) -> None:
    buf = hv.alloc(1024)
    assert hv.call(H.xen_version, XENVER["capabilities"], buf) == 0
    caps = hv.get(buf, 1024).split(b"\0")[0].decode().split()
    assert ("xen-3.0-x86_32p" if hv.pae else "xen-3.0-x86_32") in caps
    assert hv.call(H.xen_version, XENVER["pagesize"], 0) == 4096
    assert hv.call(H.xen_version, XENVER["pagesize"], buf) == EINVAL      # arg must be NULL


def test_xen_version_unknown_cmd(hv: Hv) -> None:
    assert hv.call(H.xen_version, 77, 0) == ENOSYS


# ================================================================ console_io
def test_console_io_write(hv: Hv) -> None:
    got = []
    hv.dom.console_sink = got.append
    msg = b"hello from the guest\n" + bytes(range(32, 127)) * 3
    assert hv.call(H.console_io, 0, len(msg), hv.put(msg)) == 0
    assert b"".join(got) == msg
    assert hv.call(H.console_io, 0, 0, hv.put(b"x")) == 0
    assert b"".join(got) == msg


def test_console_io_bad_cmd_and_pointer(hv: Hv) -> None:
    assert hv.call(H.console_io, 2, 4, hv.put(b"abcd")) == ENOSYS
    assert hv.call(H.console_io, 0, 4, 0x1000) == EFAULT


# ================================================================ memory_op
def test_memory_op_reservations(hv: Hv) -> None:
    self_ = hv.put(struct.pack("<H", DOMID_SELF))
    n = hv.dom.nr_pages
    assert hv.call(H.memory_op, XENMEM["current"], self_) == n
    assert hv.call(H.memory_op, XENMEM["maximum"], self_) == n
    top = max(hv.dom.physmap.mfn(p) for p in range(n))
    assert hv.call(H.memory_op, XENMEM["maximum_ram_page"], 0) == top + 1
    assert hv.call(H.memory_op, XENMEM["current"], 0x1000) == EFAULT


def test_memory_op_memory_map(hv: Hv) -> None:
    """XENMEM_memory_map {u32 nr_entries; p buffer}: nr_entries in = capacity, out = count;
    packed e820 records {u64 addr; u64 size; u32 type}; RAM covers the domain's pages."""
    buf = hv.alloc(20 * 4)
    arg = hv.put_u32(4, buf)
    assert hv.call(H.memory_op, XENMEM["memory_map"], arg) == 0
    count = hv.u32(arg)
    assert count >= 1
    entries = [struct.unpack("<QQI", hv.get(buf + 20 * i, 20)) for i in range(count)]
    ram = [(a, s) for a, s, t in entries if t == 1]
    assert (0, hv.dom.nr_pages * PAGE) in ram


def test_memory_op_machphys_mapping(hv: Hv) -> None:
    """compat XENMEM_machphys_mapping {v_start, v_end, max_mfn} (x86_64/compat/mm.c)."""
    arg = hv.alloc(12)
    assert hv.call(H.memory_op, XENMEM["machphys_mapping"], arg) == 0
    v_start, v_end, max_mfn = struct.unpack("<3I", hv.get(arg, 12))
    if hv.pae:
        assert (v_start, v_end) == (0xF5800000, 0xFFE00000)
    else:
        assert (v_start, v_end) == (0xFC000000, 0xFC400000)
    assert max_mfn == (v_end - v_start) // 4 - 1


def reservation(hv: Hv, extents: list[int]) -> tuple[int, int]:
    """A xen_memory_reservation (PV32: extent_start@0, nr@4, order@8, flags@12, domid@16)."""
    arr = hv.put_u32(*extents)
    return hv.put(struct.pack("<IIIIH2x", arr, len(extents), 0, 0, DOMID_SELF)), arr


def test_memory_op_decrease_then_populate(hv: Hv) -> None:
    """decrease_reservation takes MFNs back (M2P entry invalidated); populate_physmap gives a
    frame for a PFN, returns its MFN and sets the M2P (memory.c; the guest fixes its P2M)."""
    dom = hv.dom
    mfn = hv.free_frame()
    pfn = dom.physmap.pfn(mfn)
    n = dom.nr_pages
    self_ = hv.put(struct.pack("<H", DOMID_SELF))
    arg, _ = reservation(hv, [mfn])
    assert hv.call(H.memory_op, XENMEM["decrease"], arg) == 1
    assert hv.call(H.memory_op, XENMEM["current"], self_) == n - 1
    assert dom.physmap.pfn(mfn) is None
    assert not dom.mm.is_owned(mfn)
    # the frame is gone: it can no longer be mapped
    ptr = hv.pte_maddr(hv.scratch_page())
    assert hv.mmu_update((ptr, (mfn << 12) | 0x21))[0] == -16  # EBUSY: not the domain's
    arg, arr = reservation(hv, [pfn])
    assert hv.call(H.memory_op, XENMEM["populate"], arg) == 1
    new = hv.u32(arr)
    assert dom.mm.is_owned(new)
    assert dom.physmap.m2p(new) == pfn
    assert hv.call(H.memory_op, XENMEM["current"], self_) == n
    assert hv.mmu_update((ptr, (new << 12) | 0x23))[0] == 0


def test_memory_op_decrease_frame_in_use(hv: Hv) -> None:
    """A frame still mapped is given back too (guest_remove_page drops only the allocation
    reference, put_page_alloc_ref): the extent counts as done, the mapping keeps working, and
    the frame leaves the domain with its last reference (free_domheap_pages: tot_pages drops,
    M2P entry invalidated), not before. Asking again meanwhile is a success that changes
    nothing: get_page still finds the frame the domain's."""
    dom = hv.dom
    va = hv.scratch_page()
    mfn = hv.mfn_of(va)
    pfn = dom.physmap.pfn(mfn)
    n = dom.nr_pages
    self_ = hv.put(struct.pack("<H", DOMID_SELF))
    arg, _ = reservation(hv, [mfn, mfn])
    assert hv.call(H.memory_op, XENMEM["decrease"], arg) == 2
    assert dom.mm.is_owned(mfn) and dom.physmap.pfn(mfn) == pfn
    assert hv.call(H.memory_op, XENMEM["current"], self_) == n
    hv.v.write_virt(va, b"still mine")
    assert hv.get(va, 10) == b"still mine"
    assert hv.mmu_update((hv.pte_maddr(va), 0)) == (0, 1)          # the last reference goes
    assert not dom.mm.is_owned(mfn) and dom.physmap.pfn(mfn) is None and mfn in dom.mm.free_frames
    assert hv.call(H.memory_op, XENMEM["current"], self_) == n - 1
    arg, _ = reservation(hv, [mfn])
    assert hv.call(H.memory_op, XENMEM["decrease"], arg) == 0        # no longer the domain's: -ENXIO


def test_memory_op_decrease_pinned_table(hv: Hv) -> None:
    """A pinned page table given back stays a pinned, usable table (GNU Mach frees the L1s it
    pinned for its bootstrap map this way) and is freed at MMUEXT_UNPIN_TABLE."""
    dom = hv.dom
    l1 = hv.free_frame()
    assert hv.mmuext((C.MmuextCmd.PIN_L1_TABLE, l1)) == (0, 1)
    arg, _ = reservation(hv, [l1])
    assert hv.call(H.memory_op, XENMEM["decrease"], arg) == 1
    pi = dom.mm.page(l1)
    assert dom.mm.is_owned(l1) and pi.pinned and pi.type_count == 1
    assert hv.mmuext((C.MmuextCmd.PIN_L1_TABLE, l1))[0] == EINVAL     # already pinned
    n = dom.nr_pages
    assert hv.mmuext((C.MmuextCmd.UNPIN_TABLE, l1)) == (0, 1)
    assert not dom.mm.is_owned(l1) and dom.nr_pages == n - 1
    assert l1 in dom.mm.free_frames


def test_memory_op_reservation_never_fails(hv: Hv) -> None:
    """do_memory_op returns start_extent, never an errno, for an unreadable reservation, a
    domain other than itself (dom0: XSM_TARGET refuses; unknown: not found), an order above
    max_order() (9 for a domU) or a continuation past the end; an unreadable extent ends the
    batch with the extents done so far (common/memory.c, compat/memory.c)."""
    dom = hv.dom
    decrease, populate = XENMEM["decrease"], XENMEM["populate"]
    assert hv.call(H.memory_op, decrease, 0x1000) == 0
    assert hv.call(H.memory_op, populate | (3 << 6), 0x1000) == 3
    m1, m2 = hv.free_frame(), hv.free_frame()
    for domid in (0, 7):
        arr = hv.put_u32(m1)
        arg = hv.put(struct.pack("<IIIIH2x", arr, 1, 0, 0, domid))
        assert hv.call(H.memory_op, decrease, arg) == 0
    arr = hv.put_u32(m1)
    assert hv.call(H.memory_op, decrease, hv.put(struct.pack("<IIIIH2x", arr, 1, 10, 0, DOMID_SELF))) == 0
    arg, _ = reservation(hv, [m1])
    assert hv.call(H.memory_op, decrease | (1 << 6), arg) == 1          # start_extent >= nr_extents
    assert dom.mm.is_owned(m1)
    last = hv.layout.virt_end - 4                     # extent 0 on the last mapped word, 1 beyond
    hv.v.write_virt(last, struct.pack("<I", m2))
    arg = hv.put(struct.pack("<IIIIH2x", last, 2, 0, 0, DOMID_SELF))
    assert hv.call(H.memory_op, decrease, arg) == 1
    assert not dom.mm.is_owned(m2) and dom.mm.is_owned(m1)


def test_memory_op_decrease_order(hv: Hv) -> None:
    """decrease_reservation with extent_order 1 gives back gmfn and gmfn + 1."""
    dom = hv.dom
    m1 = hv.free_frame()
    m0 = m1 - 1                          # the builder hands out frames in reverse machine order
    assert dom.mm.is_owned(m0) and not dom.mm.page(m0).count
    arg = hv.put(struct.pack("<IIIIH2x", hv.put_u32(m0), 1, 1, 0, DOMID_SELF))
    assert hv.call(H.memory_op, XENMEM["decrease"], arg) == 1
    assert not dom.mm.is_owned(m0) and not dom.mm.is_owned(m1)


def test_memory_op_add_to_physmap_and_unknown(hv: Hv) -> None:
    """add_to_physmap is for translated guests: -EACCES for PV; unknown op -> -ENOSYS."""
    arg = hv.put(struct.pack("<HHIII", DOMID_SELF, 0, 0, 0, 0x100))
    assert hv.call(H.memory_op, XENMEM["add_to_physmap"], arg) == EACCES
    assert hv.call(H.memory_op, 63, hv.alloc(16)) == ENOSYS


# ================================================================ multicall
def test_multicall_results(hv: Hv) -> None:
    """Each entry's return value lands in its `result`; a failing entry does not stop the batch
    and the multicall itself returns 0; a nested multicall entry gets -EINVAL (multicall.c)."""
    mfn = hv.mfn_of(hv.scratch_page())
    va = hv.scratch_page()
    rc, calls, results = hv.multicall(
        (H.xen_version, 0, 0),
        (H.update_va_mapping, hv.dom.geo.hv_start, (mfn << 12) | 0x21, 0, 0),
        (H.update_va_mapping, va, (mfn << 12) | 0x21, 0, C.UVMF_INVLPG),
        (H.console_io, 9, 0, 0),
        (H.multicall, 0x1000, 1),
    )
    assert rc == 0
    assert results == [(C.XEN_MAJOR << 16) | C.XEN_MINOR, EINVAL, 0, ENOSYS, EINVAL]
    assert hv.read_pte(va) == (mfn << 12) | 0x21


def test_multicall_bad_list(hv: Hv) -> None:
    assert hv.call(H.multicall, 0x1000, 1) == EFAULT
    assert hv.call(H.multicall, 0x1000, 0) == 0


def test_multicall_inside_multicall(hv: Hv) -> None:
    """A nested multicall entry whose own list is valid still gets -EINVAL (no nesting)."""
    _, inner, _ = hv.multicall((H.xen_version, 0, 0))
    rc, _, results = hv.multicall((H.multicall, inner, 1), (H.xen_version, 0, 0))
    assert rc == 0 and results[0] == EINVAL and results[1] > 0


# ================================================================ sched_op
def test_sched_op_shutdown_poweroff(hv: Hv) -> None:
    assert hv.dom.shutdown_reason is None
    assert hv.call(H.sched_op, 2, hv.put_u32(0)) == 0
    assert hv.dom.shutdown_reason == 0 and hv.dom.crash_report is None
    assert hv.m.run().reason.value == "shutdown"


def test_sched_op_shutdown_reboot(hv: Hv) -> None:
    assert hv.call(H.sched_op, 2, hv.put_u32(1)) == 0
    assert hv.dom.shutdown_reason == 1


def test_sched_op_poll_and_bad_cmd(hv: Hv) -> None:
    """do_poll: nr_ports > 128 -> -EINVAL; an unknown sched_op -> -ENOSYS; bad pointer -> -EFAULT."""
    ports = hv.put_u32(*range(1, 130))
    arg = hv.put(struct.pack("<IIQ", ports, 129, 0))
    assert hv.call(H.sched_op, 3, arg) == EINVAL
    assert hv.call(H.sched_op, 99, 0) == ENOSYS
    assert hv.call(H.sched_op, 2, 0x1000) == EFAULT
    assert hv.dom.shutdown_reason is None


def test_sched_op_compat(hv: Hv) -> None:
    """sched_op_compat (#6): arg is the reason itself; unknown cmd -> -ENOSYS."""
    assert hv.call(H.sched_op_compat, 7, 0) == ENOSYS
    assert hv.call(H.sched_op_compat, 2, 0) == 0
    assert hv.dom.shutdown_reason == 0


def test_sched_op_compat_shutdown_takes_the_low_byte(hv: Hv) -> None:
    """do_sched_op_compat calls domain_shutdown(d, (u8)arg): a pointer passed as the reason
    (GNU Mach passes &struct sched_shutdown) shuts down with its low byte (arch/x86/compat.c)."""
    assert hv.call(H.sched_op_compat, 2, 0x400A18FC) == 0
    assert hv.dom.shutdown_reason == 0xFC


def test_sched_op_shutdown_reason_is_u8(hv: Hv) -> None:
    """SCHEDOP_shutdown: domain_shutdown(d, (u8)sched_shutdown.reason) (sched/core.c)."""
    assert hv.call(H.sched_op, 2, hv.put_u32(0x101)) == 0
    assert hv.dom.shutdown_reason == 1


def test_sched_op_shutdown_code_wins(hv: Hv) -> None:
    """SCHEDOP_shutdown_code records the first code only, as a u8; domain_shutdown then reports
    it whatever reason the shutdown gives (common/domain.c, sched/core.c)."""
    assert hv.call(H.sched_op, 5, hv.put_u32(0x203)) == 0
    assert hv.call(H.sched_op, 5, hv.put_u32(1)) == 0
    assert hv.dom.shutdown_reason is None
    assert hv.call(H.sched_op, 2, hv.put_u32(0)) == 0
    assert hv.dom.shutdown_reason == 3


def test_sched_op_suspend_cancelled_then_poweroff(hv: Hv) -> None:
    """xenwb cancels a suspend (the guest resumes with 1, as after xc_domain_resume); the
    resume forgets the shutdown code (domain_resume), so a later poweroff is a poweroff."""
    assert hv.call(H.sched_op, 2, hv.put_u32(2)) == 1
    assert hv.dom.shutdown_reason is None
    assert hv.call(H.sched_op, 2, hv.put_u32(0)) == 0
    assert hv.dom.shutdown_reason == 0


# ================================================================ physdev_op
def test_physdev_set_iopl(hv: Hv) -> None:
    """PHYSDEVOP_set_iopl {u32 iopl}: > 3 -> -EINVAL (physdev.c)."""
    assert hv.call(H.physdev_op, 6, hv.put_u32(4)) == EINVAL
    assert hv.call(H.physdev_op, 6, hv.put_u32(1)) == 0
    assert hv.v.iopl == 1
    assert hv.call(H.physdev_op_compat, hv.put_u32(6, 3)) == 0
    assert hv.v.iopl == 3


# ================================================================ vcpu_op
def test_vcpu_op_is_up(hv: Hv) -> None:
    assert hv.call(H.vcpu_op, 3, 0, 0) == 1
    assert hv.call(H.vcpu_op, 3, 5, 0) == ENOENT


def test_vcpu_op_is_up_secondary_vcpu() -> None:
    hv = Hv.example("pvdemo-pae", vcpus=2)
    assert hv.call(H.vcpu_op, 3, 0, 0) == 1
    assert hv.call(H.vcpu_op, 3, 1, 0) == 0          # down until initialise + up


def test_vcpu_op_register_vcpu_info(hv: Hv) -> None:
    """VCPUOP_register_vcpu_info {u64 mfn; u32 offset; u32 rsvd}: the old contents are copied,
    pending_sel becomes all-ones and upcall_pending 1; a second call -> -EINVAL, as a frame that
    cannot be writable (a pagetable) is (Xen 4.17 common/domain.c map_vcpu_info)."""
    dom = hv.dom
    old = hv.v.vcpu_info_maddr
    dom.mem.write_u32(old + 8, 0xCAFEB000)          # arch.cr2
    table = hv.v.cr3_mfn                           # the pinned top-level table: no writable type
    assert hv.call(H.vcpu_op, 10, 0, hv.put(struct.pack("<QII", table, 0, 0))) == EINVAL
    assert hv.call(H.vcpu_op, 10, 0, hv.put(struct.pack("<QII", hv.free_frame(), 4096, 0))) == -6  # -ENXIO
    assert not hv.v.vcpu_info_registered
    mfn = hv.free_frame()
    arg = hv.put(struct.pack("<QII", mfn, 128, 0))
    assert hv.call(H.vcpu_op, 10, 0, arg) == 0
    new = (mfn << 12) + 128
    assert hv.v.vcpu_info_maddr == new
    data = dom.mem.read(new, 64)
    assert data[1] == 1                        # evtchn_upcall_mask copied
    assert data[0] == 1                        # evtchn_upcall_pending
    assert data[4:8] == b"\xff" * 4            # evtchn_pending_sel
    assert data[8:12] == struct.pack("<I", 0xCAFEB000)
    assert hv.v.upcall_mask == 1
    arg2 = hv.put(struct.pack("<QII", hv.free_frame(), 0, 0))
    assert hv.call(H.vcpu_op, 10, 0, arg2) == EINVAL
    assert hv.v.vcpu_info_maddr == new


# ================================================================ event channels
def evtchn(hv: Hv, cmd: str, fmt: str, *vals: int) -> tuple[int, tuple]:
    size = struct.calcsize(fmt)
    arg = hv.put(struct.pack(fmt, *vals))
    rc = hv.call(H.event_channel_op, EVTCHNOP[cmd], arg)
    return rc, struct.unpack(fmt, hv.get(arg, size))


def status(hv: Hv, port: int) -> tuple[int, ...]:
    """EVTCHNOP_status: {u16 dom@0; u32 port@4; OUT status@8, vcpu@12, union@16}."""
    rc, out = evtchn(hv, "status", "<H2xIIIII", DOMID_SELF, port, 0, 0, 0, 0)
    assert rc == 0
    return out[2:]


def pending(hv: Hv, port: int) -> bool:
    si = hv.shared_info_maddr()
    return bool(hv.dom.mem.read(si + SI_PENDING + port // 8, 1)[0] >> (port % 8) & 1)


def test_evtchn_alloc_unbound_and_status(hv: Hv) -> None:
    """alloc_unbound {u16 dom; u16 remote_dom; OUT u32 port}: the lowest free port (0 reserved,
    the toolstack's xenstore/console ports taken); status reports unbound + remote dom."""
    si_ports = {hv.u32(hv.layout.start_info.va + 48), hv.u32(hv.layout.start_info.va + 56)}
    rc, out = evtchn(hv, "alloc_unbound", "<HHI", DOMID_SELF, 0, 0)
    assert rc == 0
    port = out[2]
    assert port > 0 and port not in si_ports
    assert port == min(set(range(1, 1024)) - si_ports)
    st, vcpu, u0, _ = status(hv, port)
    assert st == 1 and u0 & 0xFFFF == 0
    for p in si_ports:
        assert status(hv, p)[0] == 2                 # interdomain, bound by the backends
    rc, _ = evtchn(hv, "alloc_unbound", "<HHI", 5, 0, 0)   # not DOMID_SELF: not privileged
    assert rc in (EPERM, ESRCH)


def test_evtchn_bind_virq(hv: Hv) -> None:
    """bind_virq {virq; vcpu; OUT port}: already bound -> -EEXIST; global VIRQ on vcpu != 0 ->
    -EINVAL; a vcpu that does not exist -> -ENOENT; status reports virq."""
    rc, out = evtchn(hv, "bind_virq", "<III", 0, 0, 0)          # VIRQ_TIMER
    assert rc == 0
    port = out[2]
    st, vcpu, u0, _ = status(hv, port)
    assert (st, vcpu, u0) == (4, 0, 0)
    assert evtchn(hv, "bind_virq", "<III", 0, 0, 0)[0] == EEXIST
    assert evtchn(hv, "bind_virq", "<III", 2, 1, 0)[0] == EINVAL     # VIRQ_CONSOLE is global
    assert evtchn(hv, "bind_virq", "<III", 1, 3, 0)[0] == ENOENT     # VIRQ_DEBUG on vcpu 3
    assert evtchn(hv, "bind_virq", "<III", 24, 0, 0)[0] == EINVAL    # >= NR_VIRQS


def test_evtchn_ipi_send_close(hv: Hv) -> None:
    """bind_ipi + send: the port becomes pending, its selector bit and upcall_pending are set
    (event_2l.c evtchn_2l_set_pending); close frees it; closing again -> -EINVAL."""
    rc, out = evtchn(hv, "bind_ipi", "<II", 0, 0)
    assert rc == 0
    port = out[1]
    assert status(hv, port)[0] == 5
    assert not pending(hv, port)
    assert evtchn(hv, "send", "<I", port)[0] == 0
    assert pending(hv, port)
    vi = hv.v.vcpu_info_maddr
    assert hv.dom.mem.read_u32(vi + 4) & (1 << (port // 32))
    assert hv.v.upcall_pending == 1
    assert evtchn(hv, "close", "<I", port)[0] == 0
    assert status(hv, port)[0] == 0
    assert evtchn(hv, "close", "<I", port)[0] == EINVAL
    assert evtchn(hv, "send", "<I", port)[0] == EINVAL


def test_evtchn_send_unbound_is_dropped(hv: Hv) -> None:
    _, out = evtchn(hv, "alloc_unbound", "<HHI", DOMID_SELF, 0, 0)
    assert evtchn(hv, "send", "<I", out[2])[0] == 0
    assert not pending(hv, out[2])


def test_evtchn_masked_port_and_unmask(hv: Hv) -> None:
    """A masked port that becomes pending raises no upcall; EVTCHNOP_unmask clears the mask and
    re-raises it (ABI sheet 3.3)."""
    _, out = evtchn(hv, "bind_ipi", "<II", 0, 0)
    port = out[1]
    si = hv.shared_info_maddr()
    byte = hv.dom.mem.read(si + SI_MASK + port // 8, 1)[0]
    hv.dom.mem.write(si + SI_MASK + port // 8, bytes([byte | 1 << (port % 8)]))
    assert evtchn(hv, "send", "<I", port)[0] == 0
    assert pending(hv, port)
    assert hv.v.upcall_pending == 0
    assert hv.dom.mem.read_u32(hv.v.vcpu_info_maddr + 4) == 0
    assert evtchn(hv, "unmask", "<I", port)[0] == 0
    assert not hv.dom.mem.read(si + SI_MASK + port // 8, 1)[0] >> (port % 8) & 1
    assert hv.v.upcall_pending == 1
    assert hv.dom.mem.read_u32(hv.v.vcpu_info_maddr + 4) & (1 << (port // 32))


def test_evtchn_fifo_offered_but_validated(hv: Hv) -> None:
    """Xen 4.17 offers the FIFO ABI (event_fifo.c): EVTCHNOP_init_control is not -ENOSYS, but a
    zeroed control block (gfn 0, not a frame of the guest's) is refused with -EINVAL and the
    domain stays on the 2-level ABI."""
    assert hv.call(H.event_channel_op, EVTCHNOP["init_control"], hv.alloc(16)) == EINVAL
    assert hv.dom.evtchn.ops.name != "FIFO"


def test_evtchn_bad_pointer(hv: Hv) -> None:
    assert hv.call(H.event_channel_op, EVTCHNOP["alloc_unbound"], 0x1000) == EFAULT


# ================================================================ grant tables
def test_grant_table_setup_and_query(hv: Hv) -> None:
    """setup_table {u16 dom; u32 nr_frames@4; OUT i16 status@8; p frame_list@12} returns MFNs the
    PV guest maps itself; query_size {dom; OUT nr_frames@4, max_nr_frames@8, status@12}."""
    frames = hv.put_u32(0)
    arg = hv.put(struct.pack("<H2xIh2xI", DOMID_SELF, 1, 0x55, frames))
    assert hv.call(H.grant_table_op, 2, arg, 1) == 0
    assert struct.unpack("<h", hv.get(arg + 8, 2))[0] == 0
    mfn = hv.u32(frames)
    assert mfn
    va = hv.scratch_page()
    assert hv.uvm(va, (mfn << 12) | 0x63, C.UVMF_INVLPG) == 0
    hv.v.write_virt(va, b"\x01\x00\x00\x00\x34\x12\x00\x00")     # grant entry 0
    q = hv.put(struct.pack("<H2xIIh2x", DOMID_SELF, 0, 0, 0x55))
    assert hv.call(H.grant_table_op, 6, q, 1) == 0
    nr, mx, st = struct.unpack("<IIh", hv.get(q + 4, 10))
    assert (nr, st) == (1, 0) and mx >= nr
    assert hv.call(H.grant_table_op, 8, hv.put_u32(1), 1) == 0     # set_version 1


# ================================================================ unknown numbers, garbage
def test_unknown_hypercall_enosys_said_once(hv: Hv, capsys) -> None:
    """An unknown hypercall number returns -ENOSYS; the workbench says so once on stderr."""
    capsys.readouterr()
    assert hv.call(45, 1, 2, 3) == ENOSYS
    assert hv.call(45, 4, 5, 6) == ENOSYS
    assert hv.call(H.xen_version, 0, 0) > 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "45" in lines[0] and re.search(r"ENOSYS", lines[0])


GARBAGE = [0x1000, 0x0, 0xF5800000, 0xFFFFF000]


@pytest.mark.parametrize("ptr", GARBAGE, ids=[hex(p) for p in GARBAGE])
def test_garbage_pointers_efault(hv: Hv, ptr: int) -> None:
    """copy_from/to_guest on an unmapped or hypervisor address -> -EFAULT, nothing else."""
    calls = [
        (H.set_trap_table, ptr),
        (H.mmu_update, ptr, 1, 0, DOMID_SELF),
        (H.mmuext_op, ptr, 1, 0, DOMID_SELF),
        (H.set_gdt, ptr, 1),
        (H.multicall, ptr, 1),
        (H.console_io, 0, 8, ptr),
        (H.xen_version, XENVER["platform_parameters"], ptr),
        (H.memory_op, XENMEM["current"], ptr),
        (H.memory_op, XENMEM["memory_map"], ptr),
        (H.callback_op, 0, ptr),
        (H.vcpu_op, 10, 0, ptr),
        (H.event_channel_op, EVTCHNOP["bind_ipi"], ptr),
        (H.physdev_op, 6, ptr),
        (H.grant_table_op, 6, ptr, 1),
    ]
    if ptr:                        # NULL means "clear" for set_trap_table
        calls.append((H.sched_op, 2, ptr))
    for nr, *args in calls:
        if nr == H.set_trap_table and ptr == 0:
            continue
        assert hv.call(nr, *args) == EFAULT, f"{H(nr).name}{tuple(hex(a) for a in args)}"
    assert hv.dom.crash_report is None and hv.dom.shutdown_reason is None


def test_workbench_keeps_running_after_garbage(hv: Hv) -> None:
    """After a volley of bad calls the example guest still boots to a clean poweroff."""
    for ptr in GARBAGE[:1] + GARBAGE[2:]:
        for nr in (H.set_trap_table, H.mmu_update, H.multicall, H.console_io, H.memory_op):
            hv.call(nr, ptr, 1, ptr, DOMID_SELF)
    hv.call(77, 0)
    out = []
    hv.dom.console_sink = out.append
    r = hv.m.run()
    assert r.reason.value == "shutdown" and hv.dom.shutdown_reason == 0
    assert re.search(rb"all \d+ checks passed", b"".join(out))
