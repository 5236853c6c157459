"""set_gdt and update_descriptor: xen/arch/x86/pv/descriptor-tables.c (check_descriptor,
pv_set_gdt, do_update_descriptor and their compat wrappers)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import MMError, PageType

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.hypervisor.xenarea import HvGeometry

EINVAL, EFAULT = -Errno.EINVAL, -Errno.EFAULT
DESC_P = 1 << 47
DESC_S = 1 << 44


def check_descriptor(vcpu: Vcpu, d: int) -> int | None:
    """check_descriptor: the value to store, or None when Xen refuses the descriptor. DPL is
    raised to the guest kernel's RPL (1 for a 32-bit guest, 3 for a 64-bit one); code and data
    segments are fine (a 32-bit guest may not have 64-bit code, and old PAE Linux's
    0xf6800000 limits are extended); a call gate must target a guest (or the flat kernel, or
    an LDT) selector and gets DPL 0 with the original DPL in the selector's RPL; other system
    descriptors are refused."""
    a, b = d & 0xFFFFFFFF, d >> 32
    if not b & (1 << 15):
        return d                              # not present: always faults, so safe
    long = vcpu.word == 8
    rpl = 3 if long else 1
    dpl = max((b >> 13) & 3, rpl)
    b = (b & ~(3 << 13)) | (dpl << 13)
    if b & (1 << 12):                         # code or data
        if not long:
            if b & (1 << 21):                 # L bit: no 64-bit code segments for a PV32 guest
                return None
            base = (b & 0xFF000000) | ((b & 0xFF) << 16) | (a >> 16)
            limit = ((b & 0xF0000) | (a & 0xFFFF)) + 1
            if b & (1 << 23):
                limit <<= 12
            if base == 0 and limit > vcpu.domain.geo.hv_start:
                a |= 0xFFFF
                b |= 0xF0000
        # the accessed bit is left as it is: the CPU sets it when a selector is loaded
        # (through Xen's writable mapping of the GDT: xenarea.set_accessed)
        return a | (b << 32)
    typ = (b >> 8) & 0xF
    if typ == 0:
        return d                              # the second half of a 64-bit call gate
    if typ != 0xC:
        return None
    cs = a >> 16
    flat = C.FLAT_KERNEL_CS64 if long else C.FLAT_KERNEL_CS
    if not (cs >> 3 < C.FIRST_RESERVED_GDT_ENTRY or cs == flat or cs & 4):
        return None                           # guest_gate_selector_okay
    b &= ~(3 << 13)
    a = (a & 0xFFFF) | (((cs & ~3) | dpl) << 16)
    if b & (0xFF if long else 0xE0):          # reserved bits
        return None
    return a | (b << 32)


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


def validate_descriptor_frame(vcpu: Vcpu, mfn: int) -> bool:
    """alloc_segdesc_page for a frame becoming a seg_desc page outside set_gdt (an LDT page)."""
    return _validate_frame(vcpu, mfn, 512)


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
    """set_gdt(frame_list of xen_ulong_t, entries)."""
    entries &= 0xFFFFFFFF
    if entries > C.FIRST_RESERVED_GDT_ENTRY:
        return EINVAL
    nr = (entries + 511) // 512
    try:
        frames = vcpu.read_ulongs(frame_list, nr) if nr else []
    except GuestFault:
        return EFAULT
    return set_gdt(vcpu, frames, entries)


def decode_set_gdt(vcpu: Vcpu, frame_list: int, entries: int) -> dict[str, Any]:
    nr = min((entries + 511) // 512, 16)
    try:
        frames = vcpu.read_ulongs(frame_list, nr) if nr else []
    except GuestFault:
        frames = []
    return {"frame_list": f"{frame_list:#x}", "entries": entries, "frames": [f"{f:#x}" for f in frames]}


def do_update_descriptor(vcpu: Vcpu, ma_lo: int, ma_hi: int, d_lo: int, d_hi: int, *_: int) -> int:
    """compat_update_descriptor: the address and the descriptor in two 32-bit halves each."""
    return update_descriptor(vcpu, ma_lo | (ma_hi << 32), d_lo | (d_hi << 32))


def do_update_descriptor64(vcpu: Vcpu, ma: int, d: int, *_: int) -> int:
    """update_descriptor(u64 maddr, u64 desc)."""
    return update_descriptor(vcpu, ma, d)


def update_descriptor(vcpu: Vcpu, ma: int, d: int) -> int:
    dom = vcpu.domain
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
    dom.mem.write_u64(ma, nd)
    dom.code_stored_by_machine_address()                  # an ordinary page: it may hold code
    dom.mm.put_page_type(mfn)
    return 0


def decode_update_descriptor(geo: HvGeometry, lo: int, hi: int, dlo: int, dhi: int, *_: int) -> Any:
    if geo.word == 8:
        return {"ma": f"{lo:#x}", "desc": f"{hi:#018x}"}
    return {
        "ma": f"{lo | (hi << 32):#x}", "desc": f"{dlo | (dhi << 32):#018x}"}
