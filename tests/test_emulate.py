"""End to end with tiny guests (tests/guests/*.S): what Xen emulates for a PV kernel and what it
reflects, observed from inside the guest (console output and the frames its handlers record).

* forced-emulation CPUID: xen/arch/x86/pv/emul-inv-op.c + xen/arch/x86/cpuid.c (Xen leaves,
  public/arch-x86/cpuid.h);
* hypercall page through the MSR of CPUID leaf 0x40000002: xen/arch/x86/msr.c (guest_wrmsr ->
  hypercall_page_initialise), pv/hypercall.c;
* HLT in ring 1: not emulated (pv/emul-priv-op.c), #GP(0) reflected (traps.c);
* writable pagetables: pv/ro-page-fault.c (ptwr_do_page_fault) under VMASST writable_pagetables,
  only for L1 pages; otherwise an ordinary #PF with error code P|W and CR2 in vcpu_info;
* no handler: pv_inject_event -> domain_crash, and `xenwb run` reports it in one line;
* an iret (hypercall or bounce) to a selector that does not load: that fault on the iret's
  target (x86_64/compat/entry.S .Lft0 -> handle_exception); the failsafe callback only from
  domain.c load_segments;
* `int $0x82` from ring 3: #GP(0x412) (DPL 1 gate; traps.c do_general_protection).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import pytest
from support.harness import PAGE, Hv, expected_hypercall_page

from xenwb.machine import Machine, StopReason

KCS, KDS, UCS, UDS = 0xE019, 0xE021, 0xE02B, 0xE033


def boot(path, **kw) -> tuple[Hv, list[bytes]]:
    hv = Hv(Machine(path, **kw))
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    return hv, out


def finish(hv: Hv, out: list[bytes], reason: StopReason = StopReason.shutdown) -> str:
    hv.m.set_limits(max_instructions=200_000)
    r = hv.m.run()
    text = b"".join(out).decode("latin-1")
    assert r.reason is reason, f"{r}: console {text!r}"
    if reason is StopReason.shutdown:
        assert hv.dom.shutdown_reason == 0
    return text


def words(hv: Hv, va: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}I", hv.get(va, 4 * n)))


# ---------------------------------------------------------------- CPUID and the hypercall page
def test_forced_emulation_cpuid(guests) -> None:
    g = guests["cpuid"]
    hv, out = boot(g.path)
    text = finish(hv, out)
    assert "cpuid: XenVMMXenVMM\n" in text
    eax0, eax2, ebx2 = words(hv, g.symbols["results"], 3)
    assert eax0 == 0x40000005                 # base + 5: the default max Xen leaf
    assert (eax2, ebx2) == (1, 0x40000000)    # one hypercall page; MSR 0x40000000


def test_hypercall_page_via_wrmsr(guests) -> None:
    g = guests["wrmsr"]
    hv, out = boot(g.path)
    assert hv.m.image.hypercall_page is None
    page = g.symbols["hypercall_page"]
    assert hv.get(page, PAGE) == b"\xcc" * PAGE
    text = finish(hv, out)
    assert "hypercall page filled through the MSR\n" in text
    assert hv.u32(g.symbols["msr_index"]) == 0x40000000
    mfn = hv.u32(g.symbols["page_mfn"])
    assert mfn == hv.mfn_of(page) == hv.dom.hypercall_page_mfn
    assert hv.get(page, PAGE) == expected_hypercall_page()


# ---------------------------------------------------------------- HLT, crash
def test_hlt_in_ring1_bounces_gp0(guests) -> None:
    g = guests["hlt"]
    hv, out = boot(g.path)
    text = finish(hv, out)
    assert text.endswith("#GP handler\n")
    assert "did not fault" not in text
    ec, eip, csw, eflags, esp = words(hv, g.symbols["frame"], 5)
    assert ec == 0
    assert eip == g.symbols["hlt_insn"]         # a fault: EIP on the instruction
    assert csw & 0xFFFF == KCS
    assert (csw >> 16) & 0xFF == 1              # events still masked from boot ...
    assert not eflags & 0x200                   # ... so the frame's IF is clear
    assert esp == g.symbols["stack_top"] - 16
    assert hv.dom.stats["faults"] == 1


def test_fault_without_handler_crashes(guests) -> None:
    g = guests["crash"]
    hv, out = boot(g.path)
    finish(hv, out, StopReason.crash)
    rep = hv.dom.crash_report
    assert rep is not None and rep.vcpu == 0 and rep.eip == g.symbols["hlt_insn"]
    assert str(rep).startswith(f"domain crashed: vcpu0 at eip {g.symbols['hlt_insn']:#010x}")
    assert "#GP" in str(rep)


def test_cli_run_crash_one_line(guests) -> None:
    """`xenwb run` on a crashing guest: exit 1, one line on stderr naming vcpu, EIP and #GP
    (after the guest's console_io line, on the hypervisor console)."""
    g = guests["crash"]
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", str(g.path)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0] == "(d1) about to hlt", p.stderr     # its console_io line first
    eip = g.symbols["hlt_insn"]
    assert re.search(rf"domain crashed: vcpu0 at eip 0x0*{eip:x}\b.*: #GP", lines[1]), lines[1]
    assert p.stdout == ""


# ---------------------------------------------------------------- writable pagetables
def ptwr_machine(guests, assist: bool, target: str = "l1") -> tuple[Hv, list[bytes], dict]:
    """The ptwr guest with params: a PTE of a boot L1 (or an L2 slot) and a new value."""
    g = guests["ptwr"]
    hv, out = boot(g.path)
    lay = hv.layout
    window = lay.stack.end + 8 * PAGE            # slack page whose PTE is rewritten
    other = lay.stack.end + 9 * PAGE
    mfn = hv.mfn_of(other)
    tables = hv.table_mfns()
    if target == "l1":
        maddr = hv.pte_maddr(window)
    elif target == "l1-bad":                     # make a page-table frame writable: invalid
        maddr = hv.pte_maddr(window)
        mfn = tables[0]
    else:                                        # an L2 entry: never emulated
        maddr = [s for s in hv.walk(window).steps if s.level == 2][0].entry_maddr
    table = maddr >> 12
    pte_va = lay.pagetables.va + tables.index(table) * PAGE + (maddr & 0xFFF)
    new = (mfn << 12) | 0x23
    hv.v.write_virt(g.symbols["params"], struct.pack("<III", pte_va, new, int(assist)))
    return hv, out, dict(g=g, maddr=maddr, pte_va=pte_va, new=new, old=hv.read_entry(maddr), window=window)


def test_ptwr_emulated_with_assist(guests) -> None:
    hv, out, p = ptwr_machine(guests, assist=True)
    events = []
    hv.dom.trace.subscribe(events.append)
    text = finish(hv, out)
    assert text == "(d1) store done\n"
    assert hv.u32(p["g"].symbols["assist_rc"]) == 0
    assert hv.read_entry(p["maddr"]) == p["new"]          # high half (PAE) untouched: 0
    assert hv.dom.stats["faults"] == 0
    assert [e for e in events if e["kind"] == "ptwr"]
    assert hv.get(p["window"], 8) == hv.get(hv.layout.stack.end + 9 * PAGE, 8)


def expect_pf(hv: Hv, out, p, text: str) -> None:
    assert text == "(d1) #PF handler\n"
    ec, eip, csw = words(hv, p["g"].symbols["frame"], 3)
    assert ec == 0x3                               # present | write, supervisor
    assert eip == p["g"].symbols["ptwr_insn"]
    assert csw & 0xFFFF == KCS
    assert hv.dom.mem.read_u32(hv.shared_info_maddr() + 8) == p["pte_va"]   # vcpu_info.arch.cr2
    assert hv.read_entry(p["maddr"]) == p["old"]


def test_ptwr_without_assist_is_a_page_fault(guests) -> None:
    hv, out, p = ptwr_machine(guests, assist=False)
    expect_pf(hv, out, p, finish(hv, out))


def test_ptwr_invalid_pte_is_a_page_fault(guests) -> None:
    """The emulated store is validated like mmu_update: a writable mapping of a page-table
    frame fails and the #PF goes to the guest."""
    hv, out, p = ptwr_machine(guests, assist=True, target="l1-bad")
    expect_pf(hv, out, p, finish(hv, out))


def test_ptwr_never_for_l2(guests) -> None:
    """Writes to read-only L2 pages are never emulated (ptwr is for L1 pages only)."""
    hv, out, p = ptwr_machine(guests, assist=True, target="l2")
    expect_pf(hv, out, p, finish(hv, out))


# ---------------------------------------------------------------- failsafe, user-mode int 0x82
def test_iret_to_a_bad_selector_is_that_fault_on_its_target(guests) -> None:
    """Xen 4.17 reports the fault of its iretq as that exception on the iret's target
    (x86_64/compat/entry.S .Lft0 -> handle_exception), not through the failsafe callback:
    #NP(0x08) with the target's EIP, CS and EFLAGS in the frame."""
    g = guests["failsafe"]
    hv, out = boot(g.path)
    text = finish(hv, out)
    assert text == "(d1) #NP at the iret target\n"
    assert words(hv, g.symbols["rcs"], 3) == [0, 0, 0]       # update_va_mapping, set_gdt, set_trap_table
    ec, eip, csw, eflags = words(hv, g.symbols["frame"], 4)
    assert ec == 0x08 and eip == g.symbols["after_iret"]
    assert csw & 0xFFFF == 0x09 and (csw >> 16) & 0xFF == 0    # the iret unmasked events (IF=1)
    assert eflags & 0x200
    # the frame sits where the iret frame was popped: 4 words below the pre-push ESP
    assert hv.u32(g.symbols["frame_esp"]) == g.symbols["stack_top"] - 16


def test_trap_handler_with_a_bad_selector_is_np_on_the_handler(guests) -> None:
    """int3 bounces to a handler whose CS does not load: #NP(0x08) on that handler, its
    frame above the int3 frame (the failsafe callback is not taken)."""
    g = guests["failsafe-bad-handler"]
    hv, out = boot(g.path)
    assert finish(hv, out) == "(d1) #NP at the iret target\n"
    ec, eip, csw, _ = words(hv, g.symbols["frame"], 4)
    assert (ec, eip, csw & 0xFFFF) == (0x08, g.symbols["after_iret"], 0x09)
    assert hv.u32(g.symbols["frame_esp"]) == g.symbols["stack_top"] - 12 - 16


def test_bad_selector_without_a_handler_is_a_one_line_crash(guests) -> None:
    """The same fault with no #NP handler: a domain crash reported in one line by `xenwb
    run` (exit 1), never a workbench error."""
    r = subprocess.run([sys.executable, "-m", "xenwb", "run", str(guests["failsafe-no-np-handler"].path),
                        "--max-instructions", "200000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert "#NP error code 0x8 with no handler registered" in lines[0], lines


def test_failsafe_callback_when_segments_cannot_be_reloaded(guests) -> None:
    """domain.c load_segments: when Xen switches back to a vcpu whose %fs names a descriptor
    that is no longer present, it bounces to the failsafe callback, %fs in the frame."""
    g = guests["failsafe-reload"]
    hv, out = boot(g.path)
    text = finish(hv, out)
    assert text == "(d1) failsafe callback\n"
    assert words(hv, g.symbols["rcs"], 2) == [0, 0]       # update_va_mapping, update_descriptor
    ds, es, fs, gs, eip, csw, eflags = words(hv, g.symbols["frame"], 7)
    assert (ds, es, fs, gs) == (KDS, KDS, 0x11, 0)
    assert eip == g.symbols["after_iret"] and csw & 0xFFFF == KCS


def test_int82_from_user_mode_is_gp(guests) -> None:
    g = guests["user82"]
    hv, out = boot(g.path)
    text = finish(hv, out)
    assert text == "(d1) #GP from user mode\n"
    assert hv.u32(g.symbols["uvm_rc"]) == 0
    ec, eip, csw, eflags, esp, ss = words(hv, g.symbols["frame"], 6)
    assert ec == 0x82 << 3 | 2
    assert eip == g.symbols["user_code"]           # EIP back on the int instruction
    assert csw & 0xFFFF == UCS
    assert (esp, ss) == (g.symbols["user_page"] + PAGE, UDS)
    assert hv.u32(g.symbols["frame_esp"]) == g.symbols["kstack_top"] - 24
    assert hv.dom.stats["hypercalls"] <= 7         # the user-mode int was not taken as one


@pytest.mark.parametrize("name", ["cpuid", "hlt", "failsafe", "user82"])
def test_tiny_guests_are_deterministic(guests, name: str) -> None:
    runs = []
    for _ in range(2):
        hv, out = boot(guests[name].path)
        ev: list[dict] = []
        hv.dom.trace.subscribe(ev.append)
        finish(hv, out)
        runs.append((b"".join(out), ev))
    assert runs[0] == runs[1]
