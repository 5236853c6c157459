"""grant_table_op, version 1 basics: xen/common/grant_table.c, xen/common/compat/grant_table.c
(a 32-bit PV guest goes through the compat layer), public/grant_table.h.

* The table exists from domain creation with INITIAL_NR_GRANT_FRAMES = 1 frame, version 1
  (grant_table_init, gnttab_grow_table(d, 0)), at most 64 frames (opt_max_grant_frames).
  The toolstack seeds the reserved entries 0 (console) and 1 (xenstore) with
  GTF_permit_access for the backend domain 0 and the ring's frame
  (tools/libs/guest/xg_dom_boot.c xc_dom_gnttab_seed).
* setup_table (compat_grant_table_op + gnttab_setup_table): count 0 does nothing, count > 1
  is -EINVAL; the frame list must lie in guest space (-EFAULT). Another domain is
  GNTST_bad_domain, domain 0 GNTST_permission_denied (XSM_TARGET); more than the maximum
  GNTST_general_error; else the table grows to nr_frames and their frame numbers are written
  (a fault there: GNTST_bad_virt_addr). The whole compat struct is copied back.
  The frames are Xen heap pages shared writable with the guest, which maps them itself.
* query_size (native, count must be 1): current and maximum frames.
* set_version: 1 is accepted; 2 is -ENOSYS, as Xen with max_version 1 answers ("behave as
  before set_version was introduced"); anything else -EINVAL. The struct is written back
  with the current version. get_version: -ESRCH for an unknown domain, -EPERM for
  domain 0 (XSM_TARGET), else the version field.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, GnttabOp
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import Sharing

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOSYS, ESRCH, EPERM = -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOSYS, -Errno.ESRCH, -Errno.EPERM
GNTST_okay, GNTST_general_error, GNTST_bad_domain = 0, -1, -2
GNTST_bad_virt_addr, GNTST_permission_denied = -5, -8
MAX_GRANT_FRAMES = 64             # opt_max_grant_frames
INITIAL_NR_GRANT_FRAMES = 1
GTF_permit_access = 1
GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE = 0, 1
BACKEND_DOMID = 0


class GrantTable:
    """A domain's grant table (struct grant_table): version 1 frames in Xen's heap, shared
    with the guest, grown on demand (gnttab_grow_table)."""

    def __init__(self, dom: Domain) -> None:
        self.dom = dom
        self.frame_mfns: list[int] = []
        self.version = 1
        self._reserved: list[tuple[int, int]] = []      # (ref, frame) the toolstack grants

    def frames(self, n: int = INITIAL_NR_GRANT_FRAMES) -> list[int]:
        """The table's frames (MFNs), grown to at least n. The first frame gets the
        toolstack's reserved entries."""
        dom = self.dom
        n = max(n, INITIAL_NR_GRANT_FRAMES)
        while len(self.frame_mfns) < n:
            mfn = dom.mem.alloc_xen_frame()
            dom.mem.write(mfn << 12, bytes(4096))
            dom.mm.share(mfn, Sharing.shared_rw)
            self.frame_mfns.append(mfn)
            if len(self.frame_mfns) == 1:
                for ref, frame in self._reserved:
                    self._write_v1(ref, frame)
        return self.frame_mfns

    def seed(self, console_mfn: int, store_mfn: int) -> None:
        """xc_dom_gnttab_seed (tools/libs/guest/xg_dom_boot.c): entry 0 grants the console
        page and entry 1 the xenstore page to domain 0, where the backends run."""
        self._reserved = [(GNTTAB_RESERVED_CONSOLE, console_mfn), (GNTTAB_RESERVED_XENSTORE, store_mfn)]
        if self.frame_mfns:
            for ref, frame in self._reserved:
                self._write_v1(ref, frame)

    def _write_v1(self, ref: int, frame: int) -> None:
        E = self.dom.abi.grant_entry_v1
        mfn = self.frame_mfns[0]
        self.dom.mem.write((mfn << 12) + E.size() * ref, bytes(E(GTF_permit_access, BACKEND_DOMID, frame)))


def _target(dom: Domain, domid: int) -> str:
    """rcu_lock_domain_by_any_id + xsm XSM_TARGET: 'self', 'denied' (domain 0) or 'none'."""
    if domid in (C.DOMID_SELF, dom.domid):
        return "self"
    if domid == BACKEND_DOMID:
        return "denied"
    return "none"


def do_grant_table_op(vcpu: Vcpu, cmd: int, uop: int, count: int, *_: int) -> int:
    dom = vcpu.domain
    L = dom.abi
    try:
        if cmd == GnttabOp.setup_table:
            if count & 0x80000000 or count > 1:
                return EINVAL
            if count == 0:
                return 0
            size = L.gnttab_setup_table.size()
            a = L.gnttab_setup_table.parse(vcpu.read_virt(uop, size))
            if not dom.geo.guest_range_ok(a.frame_list, vcpu.word * a.nr_frames):   # guest_handle_okay
                return EFAULT
            who = _target(dom, a.dom)
            if who == "none":
                a.status = GNTST_bad_domain
            elif who == "denied":
                a.status = GNTST_permission_denied
            elif a.nr_frames > MAX_GRANT_FRAMES:
                a.status = GNTST_general_error
            else:
                frames = dom.gnttab.frames(a.nr_frames)[: a.nr_frames]
                a.status = GNTST_okay
                try:
                    if frames:
                        fmt = "Q" if vcpu.word == 8 else "I"
                        vcpu.write_virt(a.frame_list, struct.pack(f"<{len(frames)}{fmt}", *frames))
                except GuestFault:
                    a.status = GNTST_bad_virt_addr
            vcpu.write_virt(uop, bytes(a))
            return 0
        if cmd == GnttabOp.query_size:
            if count != 1:
                return EINVAL
            size = L.gnttab_query_size.size()
            a = L.gnttab_query_size.parse(vcpu.read_virt(uop, size))
            who = _target(dom, a.dom)
            if who == "none":
                a.status = GNTST_bad_domain
            elif who == "denied":
                a.status = GNTST_permission_denied
            else:
                a.nr_frames = len(dom.gnttab.frames())
                a.max_nr_frames = MAX_GRANT_FRAMES
                a.status = GNTST_okay
            vcpu.write_virt(uop, bytes(a))
            return 0
        if cmd == GnttabOp.set_version:
            a = L.gnttab_set_version.parse(vcpu.read_virt(uop, 4))
            if a.version == 1:
                rc = 0
                dom.gnttab.frames()
                dom.gnttab.version = 1
            else:
                rc = ENOSYS if a.version == 2 else EINVAL
            a.version = dom.gnttab.version
            vcpu.write_virt(uop, bytes(a))
            return rc
        if cmd == GnttabOp.get_version:
            a = L.gnttab_get_version.parse(vcpu.read_virt(uop, 8))
            who = _target(dom, a.dom)
            if who == "none":
                return ESRCH
            if who == "denied":
                return EPERM
            vcpu.write_virt(uop + 4, struct.pack("<I", dom.gnttab.version))
            return 0
    except GuestFault:
        return EFAULT
    return dom.unimplemented(f"grant_table_op command {cmd}")


def decode_grant_table_op(vcpu: Vcpu, cmd: int, uop: int, count: int, *_: int) -> Any:
    return {
        "cmd": GnttabOp(cmd).name if cmd in GnttabOp._value2member_map_ else str(cmd),
        "uop": f"{uop:#x}", "count": count}
