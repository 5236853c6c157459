"""The LDT of a 32-bit PV guest: MMUEXT_SET_LDT's checks (xen/arch/x86/mm.c), the LDT page
mapped and type-promoted on the first descriptor load (pv/mm.c pv_map_ldt_shadow_page, traps.c
handle_ldt_mapping_fault), the limit honoured (#GP with the selector). The guest is
tests/guests/ldt.S."""

from __future__ import annotations

import struct

from support.harness import Hv, run_to_guest
from support.harness64 import KERNEL_CS, Hv64
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
    assert desc & (1 << 40)        # accessed: the load set it (the image has it clear; check_descriptor leaves it)


def test_set_ldt_loads_the_shadow(hv: Hv) -> None:
    """The LDTR points at the vcpu's LDT shadow in Xen's area, limit 8 x entries - 1; nothing
    is mapped there until a descriptor is loaded."""
    base = hv.scratch_page()
    assert hv.mmuext((13, base, 3)) == (0, 1)
    ldtr = hv.v.cpu.uc.reg_read(UC_X86_REG_LDTR)
    assert ldtr[1] == hv.dom.xen.ldt_va(0) and ldtr[2] == 3 * 8 - 1
    assert hv.v.ldt_mapped == [None] * 16
    assert hv.dom.mm.page(hv.mfn_of(base)).type != PageType.seg_desc


def test_ldt_64bit_mapped_on_first_use() -> None:
    """A 64-bit guest's LDT goes through the same shadow: the first `mov %ax, %ds` of an LDT
    selector whose page the guest maps writable gives the #PF at ldt_base + 8 (kernel mode:
    error code 0, as pv_inject_event sets the user bit only for user mode); mapped read-only,
    the load succeeds and the page is a descriptor page; past the limit, #GP(selector)."""
    hv = Hv64.example("pvdemo64")
    run_to_guest(hv.m)
    v = hv.v
    code = hv.scratch_page()
    handler = code + 0x800
    stack = hv.scratch_page() + 4096
    ldt_va = hv.scratch_page()
    v.write_virt(ldt_va + 8, struct.pack("<Q", 0x00CFF3000000FFFF))      # flat data, DPL 3
    v.write_virt(code, bytes([0x8E, 0xD8, 0x90]))                         # mov %eax, %ds; nop
    assert hv.set_trap_table((13, 0, KERNEL_CS, handler), (14, 0, KERNEL_CS, handler)) == 0
    assert hv.mmuext((13, ldt_va, 2)) == (0, 1)

    def load(sel: int) -> tuple[bool, int]:
        cpu = v.cpu
        cpu.set_reg("rsp", stack)
        cpu.set_reg("rax", sel)
        bounces = v.bounces
        cpu.pc = code
        for _ in range(3):                      # a fault Xen fixes (the shadow mapped) runs it again
            cpu.uc.emu_start(cpu.pc, handler, count=1)
            if cpu.pc != code or v.bounces != bounces:
                break
        if v.bounces == bounces:
            return True, cpu.reg("ds")
        return False, hv.u64s(cpu.reg("rsp"), 3)[2]                        # RCX, R11, error code

    assert load(0x0F) == (False, 0) and v.cr2 == ldt_va + 8
    mfn = hv.mfn_of(ldt_va)
    assert hv.uvm(ldt_va, (mfn << 12) | 0x25) == 0                          # P|US|A: read-only
    assert load(0x0F) == (True, 0x0F)
    assert hv.dom.mm.page(mfn).type == PageType.seg_desc and v.ldt_mapped[0] == mfn
    assert load(0x17) == (False, 0x14)                                     # index 2 of 2
