"""memory_op: xen/common/memory.c, xen/arch/x86/mm.c (arch_memory_op), x86_64/compat/mm.c."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, MemOp
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ESRCH, EACCES, EPERM, ENOSYS = (
    -Errno.EINVAL, -Errno.EFAULT, -Errno.ESRCH, -Errno.EACCES, -Errno.EPERM, -Errno.ENOSYS)


def _self(domid: int) -> bool:
    return domid in (C.DOMID_SELF, 1)


DOMU_MAX_ORDER = 9                  # CONFIG_DOMU_MAX_ORDER: max_order() of a plain domU
MEMOP_MAX_EXTENTS = 0xFFFFFFFF >> 6  # UINT_MAX >> MEMOP_EXTENT_SHIFT: a continuation must encode it


def _reservation(vcpu: Vcpu, op: int, arg: int, start: int) -> int:
    """increase/decrease_reservation and populate_physmap: the number of extents done, never
    an error. do_memory_op (common/memory.c, and compat/memory.c for PV32) returns
    start_extent for an unreadable argument, a domain other than itself (not found, or refused
    by XSM_TARGET) or an order above max_order(); an unreadable or unwritable extent ends the
    batch with the extents done so far."""
    dom = vcpu.domain
    L = dom.abi.xen_memory_reservation
    try:
        r = L.parse(vcpu.read_virt(arg, L.size()))
    except GuestFault:
        return start
    if r.nr_extents > MEMOP_MAX_EXTENTS or start >= r.nr_extents or not _self(r.domid):
        return start
    if r.extent_order > DOMU_MAX_ORDER:
        return start
    if r.extent_order and op != MemOp.decrease_reservation:
        return _order_unsupported(dom, op, r, start)
    done = start
    pm = dom.physmap
    mm = dom.mm
    for i in range(start, r.nr_extents):
        slot = r.extent_start + vcpu.word * i
        if op == MemOp.decrease_reservation:
            try:
                gmfn = vcpu.read_ulong(slot)
            except GuestFault:
                break
            # a PV guest names its frames by MFN; one still in use is given back too and
            # leaves the domain with its last reference (guest_remove_page; MM.drop_allocation)
            if any(mm.remove_page(gmfn + j) for j in range(1 << r.extent_order)):
                break
        else:
            if dom.nr_pages >= dom.max_pages or not mm.free_frames:
                break
            if op == MemOp.populate_physmap:
                try:
                    gpfn = vcpu.read_ulong(slot)
                except GuestFault:
                    break
            mfn = mm.free_frames.pop(0)
            dom.mem.zero_frame(mfn)
            mm.give(mfn)
            dom.nr_pages += 1
            if op == MemOp.populate_physmap:
                pm.set_m2p(mfn, gpfn)
                if gpfn < len(pm.p2m):
                    pm.p2m[gpfn] = mfn
            if r.extent_start or op != MemOp.increase_reservation:    # increase: NULL list allowed
                try:
                    vcpu.write_ulong(slot, mfn)
                except GuestFault:
                    break
        done += 1
    return done


def _order_unsupported(dom, op: int, r, start: int) -> int:
    dom.unimplemented(f"memory_op {MemOp(op).name} with extent_order {r.extent_order}")
    return start


def do_memory_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    dom = vcpu.domain
    op, start = cmd & C.MEMOP_CMD_MASK, cmd >> 6
    L = dom.abi
    try:
        if op in (MemOp.increase_reservation, MemOp.decrease_reservation, MemOp.populate_physmap):
            return _reservation(vcpu, op, arg, start)
        if op == MemOp.maximum_ram_page:
            return dom.mem.max_mfn
        if op in (MemOp.current_reservation, MemOp.maximum_reservation, MemOp.maximum_gpfn):
            domid = struct.unpack("<H", vcpu.read_virt(arg, 2))[0]
            if not _self(domid):
                return ESRCH
            if op == MemOp.current_reservation:
                return dom.nr_pages
            if op == MemOp.maximum_reservation:
                return dom.max_pages
            return len(dom.physmap.p2m) - 1
        if op == MemOp.machphys_mfn_list:
            m = L.xen_machphys_mfn_list.parse(vcpu.read_virt(arg, L.xen_machphys_mfn_list.size()))
            span = 512 if dom.pae else 1024     # M2P frames per 2 MiB (PAE) / 4 MiB chunk
            chunks = [dom.xen.m2p_frames[i] for i in range(0, len(dom.xen.m2p_frames), span)]
            n = min(m.max_extents, len(chunks))
            for j, chunk in enumerate(chunks[:n]):
                vcpu.write_ulong(m.extent_start + vcpu.word * j, chunk)
            m.nr_extents = n
            vcpu.write_virt(arg, bytes(m))
            return 0
        if op == MemOp.machphys_mapping:
            mp = L.xen_machphys_mapping()
            mp.v_start, mp.v_end = dom.geo.m2p_start, dom.geo.m2p_end
            mp.max_mfn = (dom.geo.m2p_end - dom.geo.m2p_start) // dom.geo.m2p_entry_size - 1
            vcpu.write_virt(arg, bytes(mp))
            return 0
        if op == MemOp.memory_map:
            return _memory_map(vcpu, arg)
        if op == MemOp.add_to_physmap:
            return EACCES          # translated guests only
        if op in (MemOp.machine_memory_map, MemOp.set_memory_map, MemOp.exchange,
                  MemOp.claim_pages, MemOp.set_pod_target, MemOp.get_pod_target):
            return EPERM
        if op == MemOp.get_vnumainfo:
            return -Errno.EOPNOTSUPP   # no vNUMA topology for this domain
    except GuestFault:
        return EFAULT
    return dom.unimplemented(f"memory_op command {op}")


def _memory_map(vcpu: Vcpu, arg: int) -> int:
    """XENMEM_memory_map: the toolstack's e820 for the domain (RAM = all its pages)."""
    dom = vcpu.domain
    L = dom.abi.xen_memory_map
    m = L.parse(vcpu.read_virt(arg, L.size()))
    entries = [(0, dom.max_pages * 4096, C.E820_RAM)]
    n = min(m.nr_entries, len(entries))
    E = dom.abi.e820_entry
    data = b"".join(bytes(E(a, s, t)) for a, s, t in entries[:n])
    vcpu.write_virt(m.buffer, data)
    m.nr_entries = n
    vcpu.write_virt(arg, bytes(m))
    return 0


def decode_memory_op(vcpu: Vcpu, cmd: int, arg: int) -> dict[str, Any]:
    op = cmd & C.MEMOP_CMD_MASK
    try:
        name = MemOp(op).name
    except ValueError:
        name = str(op)
    out: dict[str, Any] = {"cmd": name, "arg": f"{arg:#x}"}
    if cmd >> 6:
        out["start_extent"] = cmd >> 6
    L = vcpu.domain.abi
    try:
        if op in (0, 1, 6):
            out.update(L.xen_memory_reservation.parse(vcpu.read_virt(arg, L.xen_memory_reservation.size())).to_dict())
        elif op == MemOp.memory_map:
            out.update(L.xen_memory_map.parse(vcpu.read_virt(arg, L.xen_memory_map.size())).to_dict())
    except GuestFault:
        out["arg"] += " (unreadable)"
    return out
