"""A PV vcpu's LDT, mapped a page at a time on first use.

MMUEXT_SET_LDT (mm.py set_ldt) points the LDTR at the vcpu's LDT shadow in Xen's area with
the limit of the guest's entry count; the shadow's pages start unmapped. The CPU's first
access to a descriptor in a page faults there, and Xen maps the guest's page: the frame its
kernel tables map at ldt_base + offset, taken as a segment-descriptor page (PGT_seg_desc_page:
every descriptor of the frame validated as for the GDT, the frame no longer writable by the
guest). A page that is not present, not the guest's own or not a valid descriptor page gives
the guest the #PF, at ldt_base + offset (xen/arch/x86/pv/mm.c pv_map_ldt_shadow_page,
traps.c handle_ldt_mapping_fault).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.hypervisor.descriptors import validate_descriptor_frame
from xenwb.hypervisor.mm import MMError, PageType
from xenwb.hypervisor.paging import walk
from xenwb.hypervisor.traps import bounce_exception
from xenwb.hypervisor.xenarea import LDT_SHADOW_PAGES, set_accessed

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu


def ldt_offset(vcpu: Vcpu, cr2: int) -> int | None:
    """The offset into the vcpu's LDT shadow of a faulting address, or None outside it."""
    offset = cr2 - vcpu.domain.xen.ldt_va(vcpu.id)
    return offset if 0 <= offset < LDT_SHADOW_PAGES * 4096 else None


def map_ldt_shadow_page(vcpu: Vcpu, offset: int) -> bool:
    """pv_map_ldt_shadow_page: map the guest page holding LDT byte `offset`."""
    dom = vcpu.domain
    page = offset >> 12
    if offset >> 3 >= vcpu.ldt_ents or vcpu.ldt_mapped[page] is not None:
        return False
    w = walk(dom.mem, dom.mode, vcpu.cr3_mfn, (vcpu.ldt_base + offset) & dom.geo.va_mask)
    if not w.mapped or w.mfn is None or not dom.mm.is_owned(w.mfn):
        return False
    mfn, mm = w.mfn, dom.mm
    try:
        mm.get_page(mfn)
    except MMError:
        return False
    first = not mm.page(mfn).type_count
    try:
        mm.get_page_type(mfn, PageType.seg_desc)
    except MMError:
        mm.put_page(mfn)
        return False
    if first and not validate_descriptor_frame(vcpu, mfn):
        mm.put_page_type(mfn)
        mm.put_page(mfn)
        return False
    dom.xen.map_ldt_page(vcpu.id, page, mfn)
    vcpu.ldt_mapped[page] = mfn
    vcpu.cpu.flush_tlb()
    return True


def handle_ldt_mapping_fault(vcpu: Vcpu, offset: int, regs: dict[str, int]) -> bool:
    """handle_ldt_mapping_fault: map the page and let the instruction run again; else, from
    the guest, its #PF at ldt_base + offset (a not-present read: the user bit is the guest
    mode's). False: the fault came from the hypervisor's own code (the iret to the guest)."""
    if map_ldt_shadow_page(vcpu, offset):
        return True
    mfn = vcpu.ldt_mapped[offset >> 12]
    if (mfn is not None and offset >> 3 < vcpu.ldt_ents
            and set_accessed(vcpu.domain.mem, (mfn << 12) + (offset & 0xFF8))):
        # the CPU's store of the accessed bit as it loads the selector: Xen maps the shadow
        # writable for it, the workbench read-only (a ring-1 guest could write it), so the
        # store is made here and the instruction runs again
        return True
    if not regs["cs"] & 3:
        return False
    bounce_exception(vcpu, C.TRAP_page_fault, 0, (vcpu.ldt_base + offset) & vcpu.domain.geo.va_mask, regs=regs)
    return True
