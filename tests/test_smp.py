"""SMP: vcpu bring-up from a guest context (VCPUOP_initialise + up), down/is_up/runstate, IPIs,
TLB flushes that target other vcpus, the example guest on several vcpus, and determinism.

Rules: xen/common/compat/domain.c + xen/common/domain.c (common_vcpu_op), xen/arch/x86/domain.c
(arch_set_info_guest), xen/arch/x86/x86_64/domain.c (compat_vcpu_op), xen/arch/x86/mm.c
(MMUEXT_TLB_FLUSH_MULTI / INVLPG_MULTI / _ALL, UVMF_ALL and UVMF_MULTI in do_update_va_mapping).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import pytest
from ev_support import EvGuest, build_ev_guest, have_toolchain
from support.harness import Hv

from xenwb.abi import constants as C
from xenwb.abi.structs import PV32
from xenwb.examples import resolve_guest
from xenwb.hypervisor import traps
from xenwb.hypervisor.state import VcpuState
from xenwb.machine import Machine, StopReason

H = C.Hypercall
ENOENT, EFAULT, EEXIST, EINVAL = -2, -14, -17, -22
INITIALISE, UP, DOWN, IS_UP, RUNSTATE_INFO, RUNSTATE_AREA = 0, 1, 2, 3, 4, 5
FLAT_KERNEL_CS, FLAT_KERNEL_SS = 0xE019, 0xE021
X = C.MmuextCmd


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    if not have_toolchain():
        pytest.skip("gcc/binutils not available")
    return build_ev_guest(tmp_path_factory.mktemp("ev"))


def guest_context(cr3: int, eip: int, esp: int, **over):
    """A vcpu_guest_context like Linux's cpu_initialize_context (ring-0 selectors on purpose:
    Xen raises them to RPL 1)."""
    c = PV32.vcpu_guest_context()
    c.flags = C.VGCF_in_kernel
    r = c.user_regs
    r.cs, r.ss, r.ds, r.es = 0xE018, 0xE020, 0xE021, 0xE021
    r.eip, r.esp, r.eflags = eip, esp, 0x1202          # IOPL 1 -> the virtual IOPL
    r.ebx, r.esi = 0x1234, 0x5678
    c.trap_ctxt[14].vector, c.trap_ctxt[14].flags = 14, 4
    c.trap_ctxt[14].cs, c.trap_ctxt[14].address = 0xE018, 0xC0001400
    c.trap_ctxt[13].vector, c.trap_ctxt[13].cs, c.trap_ctxt[13].address = 13, 0xE019, 0xC0001300
    c.kernel_ss, c.kernel_sp = 0xE021, esp
    c.ctrlreg[3] = cr3
    c.event_callback_cs, c.event_callback_eip = 0xE019, 0xC0002000
    c.failsafe_callback_cs, c.failsafe_callback_eip = 0xE019, 0xC0002100
    for k, v in over.items():
        obj, _, field = k.rpartition("__")
        setattr(getattr(c, obj) if obj else c, field, v)
    return c


def cr3_of(mfn: int) -> int:
    return ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF        # xen_pfn_to_cr3


# ================================================================ bring-up
def test_initialise_loads_the_guest_context() -> None:
    hv = Hv.example("pvdemo-pae", vcpus=2)
    v1 = hv.dom.vcpus[1]
    esp = hv.layout.stack.end + 0x8000
    ctx = hv.put(bytes(guest_context(cr3_of(hv.top_mfn()), 0xC0000100, esp)))
    assert hv.call(H.vcpu_op, IS_UP, 1, 0) == 0
    assert hv.call(H.vcpu_op, UP, 1, 0) == EINVAL                  # not initialised yet
    assert hv.call(H.vcpu_op, INITIALISE, 1, ctx) == 0
    assert v1.initialised and v1.state is VcpuState.down and hv.call(H.vcpu_op, IS_UP, 1, 0) == 0
    assert v1.cr3_mfn == hv.top_mfn()
    assert (v1.kernel_ss, v1.kernel_sp) == (FLAT_KERNEL_SS, esp)
    assert (v1.event_cs, v1.event_eip) == (FLAT_KERNEL_CS, 0xC0002000)
    assert (v1.failsafe_cs, v1.failsafe_eip) == (FLAT_KERNEL_CS, 0xC0002100)
    t14, t13 = v1.trap_ctxt[14], v1.trap_ctxt[13]
    assert (t14.flags, t14.cs, t14.address) == (4, FLAT_KERNEL_CS, 0xC0001400)
    assert (t13.cs, t13.address) == (FLAT_KERNEL_CS, 0xC0001300)
    assert sum(t is not None for t in v1.trap_ctxt) == 2
    assert v1.iopl == 1
    r, pending = traps.guest_regs(v1)
    assert pending
    assert (r["eip"], r["cs"], r["esp"], r["ss"]) == (0xC0000100, FLAT_KERNEL_CS, esp, FLAT_KERNEL_SS)
    assert r["eflags"] & 0x200 and not r["eflags"] & 0x3000        # IF forced on, IOPL virtual
    assert (r["ebx"], r["esi"], r["ds"]) == (0x1234, 0x5678, 0xE021)
    assert hv.call(H.vcpu_op, INITIALISE, 1, ctx) == EEXIST
    hv.v.clock.units += 777_000
    assert hv.call(H.vcpu_op, UP, 1, 0) == 0
    t_up = hv.dom.time.now(v1)
    assert t_up == hv.dom.time.now(hv.v)                           # starts at the caller's time
    assert v1.state is VcpuState.running and hv.call(H.vcpu_op, IS_UP, 1, 0) == 1
    rs = hv.put(bytes(44))
    assert hv.call(H.vcpu_op, RUNSTATE_INFO, 1, rs) == 0
    state, entry, *times = struct.unpack("<iQ4Q", hv.get(rs, 44))
    assert state == 0 and entry == t_up and times[3] == t_up       # offline until up, then running


@pytest.mark.parametrize("field, value", [
    ("user_regs__eflags", 0x20202),          # EFLAGS.VM
    ("ldt_base", 0xC0000010),                # not page aligned
    ("ldt_ents", 8193),
    ("gdt_ents", 16 * 512 + 1),
    ("ctrlreg", None),                       # CR3 not a validated top-level table
])
def test_initialise_errors(field: str, value) -> None:
    hv = Hv.example("pvdemo-pae", vcpus=2)
    c = guest_context(cr3_of(hv.top_mfn()), 0xC0000100, hv.layout.stack.end + 0x8000)
    if field == "ctrlreg":
        c.ctrlreg[3] = cr3_of(hv.mfn_of(hv.scratch_page()))
    else:
        obj, _, f = field.rpartition("__")
        setattr(getattr(c, obj) if obj else c, f, value)
    assert hv.call(H.vcpu_op, INITIALISE, 1, hv.put(bytes(c))) == EINVAL
    assert not hv.dom.vcpus[1].initialised


def test_initialise_debug_registers_go_through_set_debugreg() -> None:
    """domain.c arch_set_info_guest (4.17): a PV vcpu's debug registers are reset to DR6
    0xffff0ff0 / DR7 0x400 and each set with set_debugreg, whose refusals are ignored: DR0 at
    0xf5800000 is fine for a compat guest (__addr_ok: below 2^47), DR7 with GD stays 0x400."""
    hv = Hv.example("pvdemo-pae", vcpus=2)
    c = guest_context(cr3_of(hv.top_mfn()), 0xC0000100, hv.layout.stack.end + 0x8000)
    c.debugreg[0] = 0xF5800000
    c.debugreg[6] = 0
    c.debugreg[7] = 0x2000
    assert hv.call(H.vcpu_op, INITIALISE, 1, hv.put(bytes(c))) == 0
    v1 = hv.dom.vcpus[1]
    assert (v1.debugreg[0], v1.debugreg[6], v1.debugreg[7]) == (0xF5800000, 0xFFFF0FF0, 0x400)


def test_vcpu_op_addressing_and_faults() -> None:
    hv = Hv.example("pvdemo-pae", vcpus=2)
    assert hv.call(H.vcpu_op, IS_UP, 2, 0) == ENOENT
    assert hv.call(H.vcpu_op, INITIALISE, 7, 0) == ENOENT
    assert hv.call(H.vcpu_op, INITIALISE, 1, 0x1000) == EFAULT
    assert hv.call(H.vcpu_op, RUNSTATE_INFO, 0, 0x1000) == EFAULT
    assert hv.call(H.vcpu_op, RUNSTATE_AREA, 0, hv.put(struct.pack("<Q", 0xF57FFFF0))) == EFAULT
    area = hv.alloc(44)
    assert hv.call(H.vcpu_op, RUNSTATE_AREA, 0, hv.put(struct.pack("<Q", area))) == 0
    assert struct.unpack("<i", hv.get(area, 4))[0] == 0            # written at once: running
    assert hv.call(H.vcpu_op, 99, 0, 0) == -38


def test_down_and_the_last_vcpu(elf) -> None:
    """VCPUOP_down takes a vcpu offline; downing the last vcpu that is up powers off."""
    hv = Hv.example("pvdemo-pae", vcpus=2)
    assert hv.call(H.vcpu_op, DOWN, 1, 0) == 0                     # vcpu 0 is still up
    assert hv.dom.shutdown_reason is None
    assert hv.call(H.vcpu_op, DOWN, 0, 0) == 0                     # no other vcpu is up
    assert hv.dom.shutdown_reason == C.ShutdownReason.poweroff
    hv = Hv.example("pvdemo-pae", vcpus=2)
    ctx = hv.put(bytes(guest_context(cr3_of(hv.top_mfn()), 0xC0000100, hv.layout.stack.end + 0x8000)))
    assert hv.call(H.vcpu_op, INITIALISE, 1, ctx) == 0 and hv.call(H.vcpu_op, UP, 1, 0) == 0
    assert hv.call(H.vcpu_op, DOWN, 1, 0) == 0
    assert hv.dom.vcpus[1].state is VcpuState.down and hv.dom.shutdown_reason is None
    assert hv.call(H.vcpu_op, IS_UP, 1, 0) == 0
    assert hv.call(H.vcpu_op, UP, 1, 0) == 0 and hv.call(H.vcpu_op, IS_UP, 1, 0) == 1


def test_secondary_vcpu_runs_its_context(elf) -> None:
    """A second vcpu brought up with a context pointing into the guest really runs there: it
    enters ring 1 at the context's EIP on its stack and page tables, executes, and blocks
    (SCHEDOP_block), while vcpu 0 goes on ticking and shuts down."""
    g = EvGuest(elf, "idle", vcpus=2, count=3)
    m, v0, v1 = g.m, g.v, g.m.vcpus[1]
    esp = m.layout.stack.end + 0x8000
    c = guest_context(cr3_of(v0.cr3_mfn), g.addr("mode_hang"), esp)
    arg = m.layout.stack.end + 0x10000
    v0.write_virt(arg, bytes(c))
    assert m.domain.call(v0, H.vcpu_op, (INITIALISE, 1, arg, 0, 0), eip=0) == 0
    assert m.domain.call(v0, H.vcpu_op, (UP, 1, 0, 0, 0), eip=0) == 0
    r = m.run()
    assert r.reason is StopReason.shutdown and g.u32("ticks") == 3
    assert v1.state is VcpuState.blocked and v1.cpu.cpl == 1
    assert v1.cpu.reg("esp") == esp and g.addr("mode_hang") <= v1.cpu.eip < g.addr("mode_singleshot")
    assert v1.upcall_mask == 0                                     # SCHEDOP_block unmasked it
    assert v1.runstate_time[0] > 0


def test_ipi_pingpong_between_two_vcpus(elf) -> None:
    """vcpu 0 sends an IPI (bind_ipi + EVTCHNOP_send) and blocks; vcpu 1, blocked, is woken by
    the event, takes the upcall and answers from its callback; 50 round trips, each vcpu's
    port handled by that vcpu only. Both clocks end close together (the woken vcpu's clock
    catches up with the sender's)."""
    g = EvGuest(elf, "pingpong", vcpus=2, count=50)
    g.start_ap()
    assert g.run().reason is StopReason.shutdown
    assert (g.u32("ipis", 0), g.u32("ipis", 1)) == (50, 50)
    ports = (g.u32("ipi_port", 0), g.u32("ipi_port", 1))
    assert [p.vcpu for p in (g.dom.evtchn.ports[x] for x in ports)] == [0, 1]
    c0, c1 = (v.clock.units for v in g.m.vcpus)
    assert abs(c0 - c1) < 1000


# ================================================================ TLB flushes
def test_flush_ops_reach_the_targeted_vcpus(monkeypatch) -> None:
    """TLB_FLUSH_MULTI / INVLPG_MULTI flush the vcpus of the bitmap at arg2.vcpumask (an
    unreadable bitmap: -EINVAL); TLB_FLUSH_ALL / INVLPG_ALL and UVMF_ALL every vcpu; UVMF_MULTI
    (a pointer in the flags) the vcpus of that bitmap; LOCAL only the caller."""
    hv = Hv.example("pvdemo-pae", vcpus=3)
    flushed: list[int] = []
    for v in hv.dom.vcpus:
        monkeypatch.setattr(v.cpu, "flush_tlb", lambda vid=v.id: flushed.append(vid))

    def ran(*ops) -> list[int]:
        flushed.clear()
        assert hv.mmuext(*ops) == (0, len(ops))
        return sorted(flushed)

    mask = hv.put_u32(0b110)
    va = hv.layout.virt_base
    assert ran((X.TLB_FLUSH_MULTI, 0, mask)) == [1, 2]
    assert ran((X.INVLPG_MULTI, va, mask)) == [1, 2]
    assert ran((X.TLB_FLUSH_ALL,)) == [0, 1, 2]
    assert ran((X.INVLPG_ALL, va)) == [0, 1, 2]
    assert ran((X.TLB_FLUSH_LOCAL,)) == [0]
    assert hv.mmuext((X.TLB_FLUSH_MULTI, 0, 0x1000)) == (EINVAL, 0)
    page = hv.scratch_page()
    pte = hv.read_pte(page)
    for flags, want in ((C.UVMF_INVLPG | C.UVMF_ALL, [0, 1, 2]), (C.UVMF_TLB_FLUSH | mask, [1, 2]),
                        (C.UVMF_INVLPG, [0])):
        flushed.clear()
        assert hv.uvm(page, pte, flags) == 0
        assert sorted(flushed) == want


def test_remote_flush_matters(monkeypatch) -> None:
    """Each vcpu's engine keeps its own TLB: in pvdemo on 2 vcpus, vcpu 1 reads a page that
    vcpu 0 then remaps with UVMF_INVLPG|UVMF_ALL. With the flush reaching vcpu 1 it sees the new
    frame; with only a local flush it keeps reading the old one, as real hardware would."""
    from xenwb.hypervisor import mm

    def local_only(vcpu, flags, va):
        if flags & C.UVMF_FLUSHTYPE_MASK:
            vcpu.cpu.flush_tlb()
        return 0

    out = run_pvdemo("pvdemo-pae", 2)[0]
    assert re.search(r"pvdemo: vcpu 1 reads 0xaaaa0001 .* then 0xbbbb0002 after update_va_mapping", out)
    monkeypatch.setattr(mm, "flush_by_flags", local_only)
    out = run_pvdemo("pvdemo-pae", 2, ok=False)[0]
    assert re.search(r"FAIL: vcpu 1 reads 0xaaaa0001 .* then 0xaaaa0001 after update_va_mapping", out)


# ================================================================ the example guest on several vcpus
def run_pvdemo(name: str, vcpus: int, trace: bool = False, ok: bool = True) -> tuple[str, list, Machine]:
    m = Machine(resolve_guest(name), vcpus=vcpus)
    out: list[bytes] = []
    m.domain.console_sink = out.append
    events: list = []
    if trace:
        m.domain.trace.subscribe(lambda e: events.append(
            (e["vcpu"], e["time_ns"], e["name"], tuple(e["raw_args"]), e["ret"]) if e["kind"] == "hypercall"
            else (e["vcpu"], e["time_ns"], e["kind"], e["name"])))
    r = m.run()
    assert r.reason is StopReason.shutdown and r.detail == ("poweroff" if ok else "crash"), r
    return b"".join(out).decode(), events, m


@pytest.mark.parametrize("name", ["pvdemo-pae", "pvdemo-nonpae"])
def test_pvdemo_on_two_vcpus(name: str) -> None:
    out, _, m = run_pvdemo(name, 2)
    assert "FAIL" not in out and re.search(r"pvdemo: all \d+ checks passed", out)
    counts = dict((int(v), (int(t), int(i))) for v, t, i in
                  re.findall(r"pvdemo: vcpu(\d): (\d+) timer ticks, (\d+) IPIs received", out))
    assert set(counts) == {0, 1}
    assert all(t >= 5 and i >= 3 for t, i in counts.values())
    assert "VCPUOP_initialise(vcpu 1)" in out and "went offline (VCPUOP_down)" in out
    assert m.vcpus[1].state is VcpuState.down


@pytest.mark.parametrize("vcpus", [1, 4])
def test_pvdemo_on_one_and_four_vcpus(vcpus: int) -> None:
    out, _, _ = run_pvdemo("pvdemo-pae", vcpus)
    assert "FAIL" not in out and re.search(r"pvdemo: all \d+ checks passed", out)
    lines = re.findall(r"pvdemo: vcpu(\d): (\d+) timer ticks, (\d+) IPIs received", out)
    assert [int(v) for v, _, _ in lines] == list(range(vcpus))
    if vcpus == 1:
        assert "runs on one vcpu" in out


def test_two_vcpu_runs_are_identical() -> None:
    """Same guest, same inputs: the same console bytes and the same hypercall sequence (vcpu,
    virtual time, name, arguments, result) and scheduling events, in the same order."""
    out1, ev1, m1 = run_pvdemo("pvdemo-pae", 2, trace=True)
    out2, ev2, m2 = run_pvdemo("pvdemo-pae", 2, trace=True)
    assert out1 == out2
    assert ev1 == ev2 and len([e for e in ev1 if len(e) == 5]) > 200
    assert {e[0] for e in ev1 if len(e) == 5} == {0, 1}            # both vcpus made hypercalls
    assert [v.clock.units for v in m1.vcpus] == [v.clock.units for v in m2.vcpus]


def test_cli_two_runs_byte_identical(tmp_path) -> None:
    """`xenwb run pvdemo-pae --vcpus 2` twice, as separate processes: identical console output
    and identical trace files."""
    outs = []
    for i in range(2):
        trace = tmp_path / f"t{i}.jsonl"
        p = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", "--vcpus", "2",
                            "--trace", str(trace)], capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        outs.append((p.stdout, trace.read_bytes()))
    assert outs[0] == outs[1]
    assert b"vcpu1: " in outs[0][0] and b'"name":"vcpu_op"' in outs[0][1].replace(b" ", b"")
