"""The LDT of a 32-bit PV guest: MMUEXT_SET_LDT's checks (xen/arch/x86/mm.c), the LDT page
mapped and type-promoted on the first descriptor load (pv/mm.c pv_map_ldt_shadow_page, traps.c
handle_ldt_mapping_fault), the limit honoured (#GP with the selector). The guest is
tests/guests/ldt.S."""

from __future__ import annotations

import struct

from support.harness import Hv
from unicorn.x86_const import UC_X86_REG_LDTR

from xenwb.hypervisor.mm import PageType
from xenwb.machine import Machine, StopReason

EINVAL = -22


def test_ldt_mapped_on_first_use_and_its_limit_honoured(guests) -> None:
    g = guests["ldt"]
    s = g.symbols
    hv = Hv(Machine(g.path))
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    hv.m.set_limits(max_instructions=200_000)
    r = hv.m.run()
    assert r.reason is StopReason.shutdown and b"".join(out) == b"(d1) ldt: done\n", (r, b"".join(out))
    ngp, npf = hv.u32(s["ngp"]), hv.u32(s["npf"])
    gp = struct.unpack(f"<{2 * ngp}I", hv.get(s["gp_log"], 8 * ngp))
    pf = struct.unpack(f"<{2 * npf}I", hv.get(s["pf_log"], 8 * npf))
    assert [(gp[2 * i], gp[2 * i + 1]) for i in range(ngp)] == [
        (0xC, s["load1"]), (0x2C, s["load3"]), (0xC, s["load4"])]
    # the page was mapped writable: not a descriptor page yet; the #PF names the descriptor
    assert [(pf[2 * i], pf[2 * i + 1]) for i in range(npf)] == [(0, s["ldt_page"] + 8)]
    assert hv.u32(s["seen"]) == 0x1D7C0DE5                       # read through the LDT segment
    assert list(struct.unpack("<4i", hv.get(s["rcs"], 16))) == [0, 0, 0, EINVAL]
    # SET_LDT(0, 0) dropped the shadow mapping and its references; the frame stays validated
    v = hv.v
    assert v.ldt_ents == 0 and v.ldt_mapped == [None] * 16
    assert hv.dom.mm.page(hv.mfn_of(s["ldt_page"])).type_count == 0
    desc = struct.unpack("<Q", hv.get(s["ldt_page"] + 8, 8))[0]
    assert desc & (1 << 40)                                        # accessed, set by validation


def test_set_ldt_loads_the_shadow(hv: Hv) -> None:
    """The LDTR points at the vcpu's LDT shadow in Xen's area, limit 8 x entries - 1; nothing
    is mapped there until a descriptor is loaded."""
    base = hv.scratch_page()
    assert hv.mmuext((13, base, 3)) == (0, 1)
    ldtr = hv.v.cpu.uc.reg_read(UC_X86_REG_LDTR)
    assert ldtr[1] == hv.dom.xen.ldt_va(0) and ldtr[2] == 3 * 8 - 1
    assert hv.v.ldt_mapped == [None] * 16
    assert hv.dom.mm.page(hv.mfn_of(base)).type != PageType.seg_desc
