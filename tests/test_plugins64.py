"""The four plugins on the 64-bit PV machine (issue 10 item 8), on the bundled pvdemo64.

The pagetable plugin's answers are judged by unicorn's own MMU (tests/support/harness64.Probe:
one `mov (%rdi),%rax` at CPL 3 through the live tables): for every page `pt dump` lists, in
the kernel L4 and in the user L4 (pvdemo64 stopped in its syscall handler, while its user
task exists), the engine reads the tag written at the machine address `pt walk` gives. The
check must report planted violations of what Xen's mm.c guarantees. evmask shows 64-bit
pending/mask words and, on the FIFO ABI, the control block and event words. The hypercall
tracer and the multicall decoder show the 64-bit arguments (RDI RSI RDX R10 R8; 64-byte
multicall entries). Bad input to any plugin command is a one-line error.
"""

from __future__ import annotations

import struct

import pytest
from support.harness64 import RW, TABLE, US, A, Hv64, P, Probe
from test_events import bind_ipi, op, port_op

from plugins.api import PluginManager
from xenwb.abi.constants import EvtchnOp as E
from xenwb.abi.constants import Hypercall as H
from xenwb.hypervisor import traps64
from xenwb.hypervisor.paging import LONG, translate
from xenwb.hypervisor.xenarea64 import M2P_SLOT
from xenwb.registry import CommandError
from xenwb.session import ALL_PLUGINS, Session

PSE = 0x80
SI_PENDING, SI_MASK = 0x800, 0xA00          # shared_info evtchn_pending / evtchn_mask (ABI sheet section 8)


class _plugins:
    """Every plugin enabled on a harness machine; commands by line."""

    def __init__(self, hv: Hv64) -> None:
        self.m = hv.m
        PluginManager(hv.m).enable_all()

    def command(self, line: str):
        return self.m.commands.run(self.m, line).data

    def command_text(self, line: str) -> str:
        return self.m.commands.run(self.m, line).text


def stopped_in_syscall(vcpus: int) -> Session:
    """pvdemo64 in do_syscall: kernel mode, its user task's L4 installed."""
    s = Session("pvdemo64", plugins=ALL_PLUGINS, console=lambda b: None, vcpus=vcpus)
    s.run(until="do_syscall")
    assert s.machine.vcpus[0].user_cr3_mfn
    return s


@pytest.fixture(scope="module", params=[1, 2], ids=["1vcpu", "2vcpus"])
def syscall_session(request) -> Session:
    return stopped_in_syscall(request.param)


def tag(va: int) -> int:
    return (va * 0x9E3779B97F4A7C15 + 0x5151) & ((1 << 64) - 1)


def engine_reads(hv: Hv64, probe: Probe, va: int, maddr: int) -> bool:
    """The engine, reading va in the current mode, sees the tag written at maddr."""
    mem = hv.dom.mem
    aligned = maddr & ~7
    old = mem.read(aligned, 8)
    mem.write(aligned, struct.pack("<Q", tag(va)))
    try:
        got = probe.read(va & ~7)
    finally:
        mem.write(aligned, old)
    return got.ok and got.value == tag(va)


def pages(s: Session, *flags: str) -> list[int]:
    return [va for r in s.command(" ".join(("pt dump",) + flags)).data for va in range(r["va"], r["va_end"], 4096)]


# ------------------------------------------------------------------------------- pagetable
def test_walk_agrees_with_the_engine_in_both_l4s() -> None:
    """Every page of `pt dump` (kernel L4) and `pt dump --user` (user L4): `pt walk` gives
    the machine address the engine reads; the walk has four levels with the tables' MFNs."""
    s = stopped_in_syscall(1)
    hv = Hv64(s.machine)
    kernel, user = hv.v.cr3_mfn, hv.v.user_cr3_mfn
    kernel_pages, user_pages = pages(s), pages(s, "--user")
    assert len(kernel_pages) > 1000 and 4 <= len(user_pages) < 100
    walks = {va: s.command(f"pt walk {va + 8:#x}").data for va in kernel_pages}
    user_walks = {va: s.command(f"pt walk --user {va + 8:#x}").data for va in user_pages}
    probe = Probe(hv)
    for va, w in walks.items():
        assert w["mapped"] and w["root"] == "vcpu0 kernel" and w["cr3_mfn"] == f"{kernel:#x}"
        assert [lv["level"] for lv in w["levels"]] == ["L4", "L3", "L2", "L1"]
        assert w["levels"][0]["table_mfn"] == f"{kernel:#x}"
        assert int(w["maddr"], 16) == translate(hv.dom.mem, LONG, kernel, va + 8)
        assert engine_reads(hv, probe, va + 8, int(w["maddr"], 16)), hex(va)
    # user mode, CR3 = the user L4; the probe's code is kernel text, which the user L4 does
    # not map: its slot 511 borrows the kernel's for the time of the probes (the walks of
    # slot 0, the user task's pages, were taken before)
    slot511 = (user << 12) + 8 * 511
    assert hv.dom.mem.read_u64(slot511) == 0
    hv.dom.mem.write_u64(slot511, hv.dom.mem.read_u64((kernel << 12) + 8 * 511))
    try:
        hv.v.cpu.flush_tlb()
        traps64.toggle_guest_mode(hv.v)
        assert hv.v.active_top_mfn == user
        for va, w in user_walks.items():
            assert w["mapped"] and w["root"] == "vcpu0 user" and w["levels"][0]["table_mfn"] == f"{user:#x}"
            assert engine_reads(hv, probe, va + 8, int(w["maddr"], 16)), hex(va)
        # what the user L4 does not map (the M2P slot stays blank in a user L4 without
        # m2p_strict, slot 1 is empty), the engine cannot read either
        for va in (0xFFFF800000000000, 0x0000008000000000):
            hv.dom.mem.write_u64(slot511, 0)
            assert not s.command(f"pt walk --user {va:#x}").data["mapped"]
            hv.dom.mem.write_u64(slot511, hv.dom.mem.read_u64((kernel << 12) + 8 * 511))
            assert not probe.read(va).ok                   # the #PF bounced to kernel mode
            assert hv.v.kernel_mode
            traps64.toggle_guest_mode(hv.v)
    finally:
        hv.dom.mem.write_u64(slot511, 0)


def test_walk_reports_a_superpage_as_the_cpu_reads_it() -> None:
    """A PSE L2 entry (which Xen never validates for a PV guest: planted in memory) maps
    2 MiB; the walk stops at L2 and gives the frame the engine reads; `pt check` flags it."""
    s = stopped_in_syscall(1)
    hv = Hv64(s.machine)
    va = 0x0000_0080_0000_0000 + 5 * (1 << 21)          # L4 slot 1, L2 entry 5
    base = hv.free_frame() & ~511                         # a 2 MiB-aligned frame run of the guest's RAM
    base = max(base, 512)
    l2 = hv.new_table({5: (base << 12) | P | RW | US | A | PSE | 1 << 12})     # bit 12: the large page's PAT
    l3 = hv.new_table({0: (l2 << 12) | TABLE})
    hv.dom.mem.write_u64((hv.v.cr3_mfn << 12) + 8, (l3 << 12) | TABLE)
    hv.v.cpu.flush_tlb()
    target = va + 0x12345 * 8
    w = s.command(f"pt walk {target:#x}").data
    assert [lv["level"] for lv in w["levels"]] == ["L4", "L3", "L2"] and w["levels"][-1]["maps"] == "2 MiB page"
    assert {"PSE", "PAT"} <= set(w["levels"][-1]["flags"])
    assert w["levels"][-1]["mfn"] == f"{base + (0x12345 * 8 >> 12):#x}"
    assert w["page_size"] == 1 << 21 and int(w["maddr"], 16) == (base << 12) + 0x12345 * 8
    if hv.dom.mem.valid(int(w["maddr"], 16), 8):
        assert engine_reads(hv, Probe(hv), target, int(w["maddr"], 16))
    problems = s.command("pt check").data["problems"]
    assert any("superpage" in p["problem"] and p["va"] == f"{va:#018x}" for p in problems), problems
    assert any("untyped frame" in p["problem"] for p in problems)      # the planted L3 was never validated


def test_pt_check_on_pvdemo64(syscall_session: Session) -> None:
    s = syscall_session
    r = s.command("pt check")
    assert r.data["ok"], r.data["problems"]
    roots = r.data["roots"]
    v = s.machine.vcpus
    assert roots[f"{v[0].cr3_mfn:#x}"] == "cr3:vcpu0" and roots[f"{v[0].user_cr3_mfn:#x}"] == "user-cr3:vcpu0"
    frames = {f["mfn"]: f for f in s.command("pt frames").data}
    assert "user-cr3:vcpu0" in frames[f"{v[0].user_cr3_mfn:#x}"]["referenced_by"]
    if len(v) == 2:
        assert "cr3:vcpu1" in frames[f"{v[1].cr3_mfn:#x}"]["referenced_by"]
        assert s.command("pt walk --vcpu 1 start_kernel").data["mapped"]


def test_pt_check_catches_planted_violations_on_64bit() -> None:
    s = stopped_in_syscall(2)
    dom = s.domain
    kernel = s.machine.vcpus[0].cr3_mfn
    l1 = next(int(f["mfn"], 16) for f in s.command("pt frames").data if f["type"] == "l1")
    # a writable mapping of an L1, bypassing Xen's validation
    scratch = s.machine.layout.stack.end + 0x20000
    walk = s.command(f"pt walk {scratch:#x}").data
    dom.mem.write_u64(int(walk["levels"][-1]["entry_maddr"], 16), (l1 << 12) | 0x67)
    # a guest entry in Xen's slot 257, and Xen's slot 260 (the per-domain area) wiped
    dom.mem.write_u64((kernel << 12) + 8 * 257, (l1 << 12) | 0x67)
    dom.mem.write_u64((kernel << 12) + 8 * 260, 0)
    problems = s.command("pt check").data["problems"]
    by = {p["problem"]: p for p in problems}
    assert by["writable mapping of a l1 frame"]["va"] == f"{scratch:#018x}"
    slots = sorted(p["va"] for p in problems if p["problem"].startswith("L4 slot"))
    assert slots == ["0xffff808000000000", "0xffff820000000000"], problems
    # slot 256 may hold the M2P or nothing (fill_ro_mpt / zap_ro_mpt), nothing else
    want = dom.xen.xen_l4_entries(True)
    assert dom.mem.read_u64((kernel << 12) + 8 * M2P_SLOT) in (0, want[M2P_SLOT])
    dom.mem.write_u64((kernel << 12) + 8 * M2P_SLOT, 0)
    assert not any("slot 256" in p["problem"] for p in s.command("pt check").data["problems"])


def test_pt_dump_leaves_xen_out_unless_asked(syscall_session: Session) -> None:
    s = syscall_session
    ranges = s.command("pt dump").data
    assert ranges and all(not 0xFFFF800000000000 <= r["va"] < 0xFFFF880000000000 for r in ranges)
    assert all(r["va"] < 1 << 47 or r["va"] >> 47 == 0x1FFFF for r in ranges)       # canonical
    xen = [r for r in s.command("pt dump --all").data if 0xFFFF800000000000 <= r["va"] < 0xFFFF880000000000]
    assert xen and xen[0]["va"] == 0xFFFF800000000000 and xen[0]["prot"] == "r-ux"    # the RO M2P
    text = s.command("pt dump").text
    assert "ffffffff80000000-" in text


# ------------------------------------------------------------------------------- evmask
def test_evmask_two_level_words_are_64_bits() -> None:
    """Port 70 lives in word 1, bit 6 of the 64-bit evtchn_pending/evtchn_mask arrays: masked
    and sent it is pending in word 1 without a selector bit; unmasked, pending_sel gets bit 1
    (event_2l.c); evmask shows the words as the guest's unsigned longs."""
    hv = Hv64.example("pvdemo64")
    from_manager = _plugins(hv)
    ports = [bind_ipi(hv) for _ in range(70)]
    port = next(p for p in ports if p == 70)
    hv.dom.evtchn.set_mask(port, True)
    assert port_op(hv, E.send, port) == 0
    d = from_manager.command("evmask 0")[0]
    row = next(p for p in d["ports"] if p["port"] == port)
    assert (row["word"], row["bit"], row["pending"], row["masked"]) == (1, 6, True, True)
    words = {w["word"]: w for w in d["words"]}
    si = hv.dom.shared_info_mfn << 12
    assert words[1]["pending"] == f"{hv.dom.mem.read_u64(si + SI_PENDING + 8):#018x}"
    assert int(words[1]["pending"], 16) >> 6 & 1 and int(words[1]["mask"], 16) >> 6 & 1
    assert int(words[1]["mask"], 16) == hv.dom.mem.read_u64(si + SI_MASK + 8)
    assert not words[1]["in_pending_sel"]
    assert port_op(hv, E.unmask, port) == 0
    d = from_manager.command("evmask 0")[0]
    assert int(d["pending_sel"], 16) >> 1 & 1 and len(d["pending_sel"]) == 18
    assert {w["word"]: w for w in d["words"]}[1]["in_pending_sel"]


def test_evmask_fifo_control_block_and_event_words() -> None:
    """On the FIFO ABI (event_fifo.c): raising an unmasked port links it at the head of its
    priority's queue and sets the READY bit; a second one is linked after it; a port of
    priority 3 goes to queue 3; a masked one is PENDING|MASKED and not linked."""
    hv = Hv64.example("pvdemo64")
    mgr = _plugins(hv)
    cb_va, arr_va = hv.scratch_page(), hv.scratch_page()
    assert op(hv, E.init_control, "<QIIB7x", hv.mfn_of(cb_va), 0, 0, 0)[0] == 0
    assert op(hv, E.expand_array, "<Q", hv.mfn_of(arr_va))[0] == 0
    a, b, c, d = (bind_ipi(hv) for _ in range(4))
    assert op(hv, E.set_priority, "<II", c, 3)[0] == 0
    hv.v.write_virt(arr_va + 4 * d, struct.pack("<I", 1 << 30))            # MASKED, as the guest does
    for p in (a, b, c, d):
        assert port_op(hv, E.send, p) == 0
    state = mgr.command("evmask")[0]
    assert state["abi"] == "FIFO"
    cb = state["control_block"]
    assert cb["maddr"] == f"{hv.dom.evtchn.ops.control[0]:#x}"
    assert cb["ready_queues"] == [3, 7] and int(cb["ready"], 16) == hv.u32(cb_va) == 0x88
    assert cb["heads"] == {3: c, 7: a} and cb["queues"] == {3: [c], 7: [a, b]}
    rows = {p["port"]: p for p in state["ports"]}
    assert rows[a]["linked"] and rows[a]["link"] == b and rows[a]["priority"] == 7
    assert rows[c]["priority"] == 3 and rows[c]["linked"] and rows[c]["link"] == 0
    assert (rows[d]["pending"], rows[d]["masked"], rows[d]["linked"]) == (True, True, False)
    for p in (a, b, c, d):
        assert rows[p]["word"] == f"{hv.u32(arr_va + 4 * p):#010x}"
    text = mgr.command_text("evmask")
    assert "FIFO control block at" in text and "READY 0x0088" in text


# ------------------------------------------------------------------------------- hypercalls
@pytest.fixture(scope="module")
def booted64() -> Session:
    s = Session("pvdemo64", plugins=ALL_PLUGINS, console=lambda b: None)
    assert s.run().reason.value == "shutdown"
    return s


def test_hypercall_arguments_are_the_64bit_registers(booted64: Session) -> None:
    """RDI RSI RDX R10 R8 as 64-bit words: stack_switch's RSP is a kernel address above 4 GiB,
    update_va_mapping's PTE has NX (bit 63) in its one register, set_timer_op's deadline is
    one u64, set_callbacks has three addresses and no selectors."""
    s = booted64
    evs = s.command("hypercalls --last 0").data
    by: dict[str, list] = {}
    for e in evs:
        by.setdefault(e["name"], []).append(e)
    ss = by["stack_switch"][0]["args"]
    assert ss["ss"] == "0xe02b" and int(ss["rsp"], 16) >> 32 == 0xFFFFFFFF
    uvm = [e["args"] for e in by["update_va_mapping"]]
    assert any(int(u["pte"], 16) >> 63 and "NX" in u["pte_flags"] for u in uvm)
    assert all(u["flags"].split("|")[0] in ("NONE", "TLB_FLUSH", "INVLPG") for u in uvm)
    cb = by["set_callbacks"][0]["args"]
    assert set(cb) >= {"event", "failsafe", "syscall"} and int(cb["event"], 16) >> 32 == 0xFFFFFFFF
    assert by["set_timer_op"] and all("deadline_ns" in e["args"] for e in by["set_timer_op"])
    sb = [e["args"] for e in by["set_segment_base"]]
    assert {"which": "GS_USER", "base": "0x440000"} in sb
    assert all(e["eip"] >> 32 == 0xFFFFFFFF for e in evs if e.get("multicall") is None)   # the callers


def test_multicall_entries_are_64_byte_records(booted64: Session) -> None:
    s = booted64
    big = s.command("multicall show largest").data
    ops = [e["op"] for e in big["entries"]]
    assert big["size"] == 12 and ops[:3] == ["update_va_mapping"] * 3 and "stack_switch" in ops
    first = big["entries"][0]["args"]
    assert int(first["va"], 16) >> 32 == 0xFFFFFFFF and int(first["pte"], 16) >> 63    # 64-bit args[0], args[1]
    sw = next(e for e in big["entries"] if e["op"] == "stack_switch")["args"]
    assert int(sw["rsp"], 16) >> 32 == 0xFFFFFFFF
    failed = [e for e in big["entries"] if e["failed"]]
    assert len(failed) == big["failed"] == 1 and failed[0]["op"] == "mmu_update" and failed[0]["errno"] == "EINVAL"
    stats = s.command("multicall stats").data
    summary = {r["hypercall"]: r for r in s.command("hypercalls summary").data}
    mc = summary["multicall"]            # one of them is an entry of a batch (nested: -EINVAL)
    assert mc["in_multicall"] == 1 and mc["calls"] - mc["in_multicall"] == stats["batches"]["batches"] == 3
    assert sum(r["entries"] for r in stats["ops"]) == sum(r["in_multicall"] for r in summary.values())


def test_update_va_mapping_otherdomain_is_decoded() -> None:
    hv = Hv64.example("pvdemo64")
    mgr = _plugins(hv)
    va = hv.scratch_page()
    pte = (hv.mfn_of(va) << 12) | P | RW | A | (1 << 63)
    assert hv.call(H.update_va_mapping_otherdomain, va, pte, 2, 0x7FF0) == 0
    e = mgr.command("hypercalls --name update_va_mapping_otherdomain")[-1]
    assert e["args"]["va"] == f"{va:#x}" and e["args"]["pte"] == f"{pte:#x}" and e["args"]["domid"] == "DOMID_SELF"
    assert e["args"]["flags"] == "INVLPG|LOCAL"


# ------------------------------------------------------------------------------- bad input
BAD = ["pt walk", "pt walk 0x800000000000", "pt walk 0x1ffffffffffffffff", "pt walk 0 --cr3 -1",
       "pt walk 12x", "pt walk nosuch_symbol", "pt walk 0 --vcpu 7",
       "pt walk 0 --cr3 0xfffffffff", "pt walk 0 --user --cr3 0x10", "pt dump --bogus", "pt dump --cr3",
       "pt check extra", "evmask 9", "evmask x", "evmask history --last", "hypercalls show 999999",
       "hypercalls --range 5", "multicall show nosuch", "multicall show 12345678", "hypercalls --vcpu x"]


@pytest.mark.parametrize("line", BAD)
def test_bad_input_is_a_one_line_error(booted64: Session, line: str) -> None:
    m = booted64.machine
    with pytest.raises(CommandError):
        m.commands.run(m, line)
    ok, text = m.commands.execute(m, line, "text")
    assert not ok and "\n" not in text.strip() and "Traceback" not in text


def test_user_walk_on_32bit_is_an_error() -> None:
    s = Session("pvdemo-pae", plugins=("pagetable",), console=lambda b: None)
    with pytest.raises(CommandError, match="32-bit"):
        s.command("pt walk --user 0")


def test_32bit_arguments_are_the_low_halves_of_their_registers() -> None:
    """call_handlers_pv64 casts each register to the parameter's type (hypercall-defs.c): an
    int or unsigned int argument is the low 32 bits, a domid_t the low 16. The handler and
    the tracer both see that."""
    hv = Hv64.example("pvdemo64")
    mgr = _plugins(hv)
    junk = 0xDEAD_BEEF_0000_0000
    assert hv.call(H.xen_version, junk | 0, 0) == hv.call(H.xen_version, 0, 0) > 0
    buf = hv.put(b"hi\n")
    assert hv.call(H.console_io, junk | 0, junk | 3, buf) == 0
    e = mgr.command("hypercalls --name console_io")[-1]
    assert e["args"]["cmd"] == "write" and e["args"]["count"] == 3 and e["args"]["text"] == "hi\n"
    assert mgr.command("hypercalls --name xen_version")[-2]["args"]["cmd"] == "version"
    va = hv.scratch_page()
    pte = (hv.mfn_of(va) << 12) | P | RW | A
    assert hv.call(H.update_va_mapping_otherdomain, va, pte, 0, junk | 0x7FF0) == 0
    assert mgr.command("hypercalls --name update_va_mapping_otherdomain")[-1]["args"]["domid"] == "DOMID_SELF"
