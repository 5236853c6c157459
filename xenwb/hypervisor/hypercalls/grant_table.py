"""grant_table_op, version 1 basics: xen/common/grant_table.c, public/grant_table.h.

setup_table hands out Xen-heap frames shared with the guest (the guest maps them
itself), query_size reports them, set_version/get_version accept version 1.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, GnttabOp
from xenwb.hypervisor.hypercalls import hypercall
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import Sharing

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOSYS = -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOSYS
GNTST_okay, GNTST_general_error, GNTST_bad_domain = 0, -1, -2
MAX_GRANT_FRAMES = 64


def _frames(vcpu: Vcpu, n: int) -> list[int]:
    dom = vcpu.domain
    frames: list[int] = dom.extra.setdefault("grant_frames", [])  # type: ignore[assignment]
    while len(frames) < n:
        mfn = dom.mem.alloc_xen_frame()
        dom.mm.share(mfn, Sharing.shared_rw)
        frames.append(mfn)
    return frames


@hypercall(C.Hypercall.grant_table_op, decoder=lambda v, cmd, uop, count, *_: {
    "cmd": GnttabOp(cmd).name if cmd in GnttabOp._value2member_map_ else str(cmd),
    "uop": f"{uop:#x}", "count": count})
def do_grant_table_op(vcpu: Vcpu, cmd: int, uop: int, count: int, *_: int) -> int:
    dom = vcpu.domain
    L = dom.abi
    try:
        if cmd == GnttabOp.setup_table:
            for i in range(count):
                a = L.gnttab_setup_table.parse(vcpu.read_virt(uop + i * L.gnttab_setup_table.size(),
                                                              L.gnttab_setup_table.size()))
                if a.dom not in (C.DOMID_SELF, dom.domid):
                    a.status = GNTST_bad_domain
                elif a.nr_frames > MAX_GRANT_FRAMES:
                    a.status = GNTST_general_error
                else:
                    frames = _frames(vcpu, a.nr_frames)[: a.nr_frames]
                    vcpu.write_virt(a.frame_list, struct.pack(f"<{len(frames)}I", *frames))
                    a.status = GNTST_okay
                vcpu.write_virt(uop + i * L.gnttab_setup_table.size(), bytes(a))
            return 0
        if cmd == GnttabOp.query_size:
            for i in range(count):
                a = L.gnttab_query_size.parse(vcpu.read_virt(uop + i * 16, 16))
                if a.dom not in (C.DOMID_SELF, dom.domid):
                    a.status = GNTST_bad_domain
                else:
                    a.nr_frames = len(dom.extra.get("grant_frames", [])) or 1
                    a.max_nr_frames = MAX_GRANT_FRAMES
                    a.status = GNTST_okay
                vcpu.write_virt(uop + i * 16, bytes(a))
            return 0
        if cmd == GnttabOp.set_version:
            v = vcpu.read_u32(uop)
            if v != 1:
                return EINVAL if v not in (1, 2) else -Errno.EOPNOTSUPP
            dom.extra["gnttab_version"] = 1
            return 0
        if cmd == GnttabOp.get_version:
            a = L.gnttab_get_version.parse(vcpu.read_virt(uop, 8))
            a.version = dom.extra.get("gnttab_version", 1)  # type: ignore[assignment]
            vcpu.write_virt(uop, bytes(a))
            return 0
    except GuestFault:
        return EFAULT
    return dom.unimplemented(f"grant_table_op command {cmd}")
