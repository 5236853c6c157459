"""set_gdt and update_descriptor: xen/arch/x86/pv/descriptor-tables.c, x86_64/compat/mm.c."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import MMError, PageType

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT = -Errno.EINVAL, -Errno.EFAULT
DESC_P = 1 << 47
DESC_S = 1 << 44
DESC_A = 1 << 40


def check_descriptor(vcpu: Vcpu, d: int) -> int | None:
    """Validate one descriptor (check_descriptor, compat flavour); the value to store,
    or None when Xen refuses it."""
    hi = d >> 32
    if not d & DESC_P:
        return d
    dpl = (hi >> 13) & 3
    if d & DESC_S:
        if hi & (1 << 21):          # L bit: no 64-bit code segments for a PV32 guest
            return None
        if dpl == 0:
            d |= 1 << 45            # DPL 0 -> 1
        if vcpu.domain.pae:
            # x86_64/mm.c check_descriptor: "Older PAE Linux guests use segments which are
            # limited to 0xf6800000. Extend these" (base 0, limit past the compat hv start)
            base = ((d >> 16) & 0xFFFFFF) | ((d >> 32) & 0xFF000000)
            limit = ((d & 0xFFFF) | (((d >> 48) & 0xF) << 16)) + 1
            if hi & (1 << 23):
                limit <<= 12
            if base == 0 and limit > vcpu.domain.geo.hv_start:
                d |= 0xFFFF | (0xF << 48)
        # Xen's GDT frames are mapped writable in its own area, so the CPU sets the
        # accessed bit on first use; the workbench maps them read-only and sets it here.
        return d | DESC_A
    typ = (hi >> 8) & 0xF
    if typ == 0:
        return d
    if typ == 0xC:                  # call gate: target must be a guest or flat kernel selector
        sel = (d >> 16) & 0xFFFF
        if sel >> 3 >= C.FIRST_RESERVED_GDT_ENTRY and sel & ~3 != C.FLAT_KERNEL_CS & ~3:
            return None
        gate_dpl = dpl
        d &= ~(3 << 45)             # DPL forced to 0, original DPL kept in the selector RPL
        d = (d & ~(0xFFFF << 16)) | (((sel & ~3) | gate_dpl) << 16)
        return d
    return None


def _validate_frame(vcpu: Vcpu, mfn: int, entries: int) -> bool:
    """alloc_segdesc_page: every descriptor of the frame is checked, not just the first
    `entries` (the frame becomes a seg_desc page as a whole)."""
    frame = vcpu.domain.mem.frame(mfn)
    out = bytearray(frame[: 4096])
    for i in range(512):
        (d,) = struct.unpack_from("<Q", out, i * 8)
        nd = check_descriptor(vcpu, d)
        if nd is None:
            return False
        struct.pack_into("<Q", out, i * 8, nd)
    vcpu.domain.mem.write(mfn << 12, bytes(out))
    return True


def set_gdt(vcpu: Vcpu, frames: list[int], entries: int) -> int:
    dom = vcpu.domain
    if entries > C.FIRST_RESERVED_GDT_ENTRY:
        return EINVAL
    nr = (entries + 511) // 512
    frames = frames[:nr]
    taken = []
    for i, mfn in enumerate(frames):
        if not dom.mm.is_owned(mfn):
            break
        try:
            dom.mm.get_page_type(mfn, PageType.seg_desc)
        except MMError:
            break
        taken.append(mfn)
        if not _validate_frame(vcpu, mfn, entries - 512 * i):
            for m in taken:
                dom.mm.put_page_type(m)
            return EINVAL
    if len(taken) != nr:
        for mfn in taken:
            dom.mm.put_page_type(mfn)
        return EINVAL
    for mfn in vcpu.gdt_frames:
        dom.mm.put_page_type(mfn)
    vcpu.gdt_frames, vcpu.gdt_ents = taken, entries
    dom.xen.map_guest_gdt(vcpu.id, taken)
    vcpu.cpu.flush_tlb()
    return 0


def do_set_gdt(vcpu: Vcpu, frame_list: int, entries: int, *_: int) -> int:
    if entries > C.FIRST_RESERVED_GDT_ENTRY:
        return EINVAL
    nr = (entries + 511) // 512
    try:
        frames = list(struct.unpack(f"<{nr}I", vcpu.read_virt(frame_list, 4 * nr))) if nr else []
    except GuestFault:
        return EFAULT
    return set_gdt(vcpu, frames, entries)


def decode_set_gdt(vcpu: Vcpu, frame_list: int, entries: int) -> dict[str, Any]:
    nr = min((entries + 511) // 512, 16)
    try:
        frames = list(struct.unpack(f"<{nr}I", vcpu.read_virt(frame_list, 4 * nr))) if nr else []
    except GuestFault:
        frames = []
    return {"frame_list": f"{frame_list:#x}", "entries": entries, "frames": [f"{f:#x}" for f in frames]}


def do_update_descriptor(vcpu: Vcpu, ma_lo: int, ma_hi: int, d_lo: int, d_hi: int, *_: int) -> int:
    dom = vcpu.domain
    ma = ma_lo | (ma_hi << 32)
    d = d_lo | (d_hi << 32)
    mfn = ma >> 12
    if ma & 7 or not dom.mm.is_owned(mfn):
        return EINVAL
    nd = check_descriptor(vcpu, d)
    if nd is None:
        return EINVAL
    pi = dom.mm.page(mfn)
    if pi.type == PageType.seg_desc and pi.type_count:
        dom.mem.write_u64(ma, nd)
        return 0
    try:
        dom.mm.get_page_type(mfn, PageType.writable)
    except MMError:
        return EINVAL
    dom.mem.write_u64(ma, (nd & ~DESC_A) | (d & DESC_A))   # an ordinary page keeps the A bit as given
    dom.mm.put_page_type(mfn)
    return 0


def decode_update_descriptor(vcpu: Vcpu, lo: int, hi: int, dlo: int, dhi: int, *_: int) -> Any:
    return {
        "ma": f"{lo | (hi << 32):#x}", "desc": f"{dlo | (dhi << 32):#018x}"}
