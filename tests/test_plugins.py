"""Issue 5: decoders, plugins on a booted guest, trace files, the Python API, example scripts."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from unicorn import UC_HOOK_MEM_READ

from xenwb.abi import constants as C
from xenwb.abi.structs import PV32
from xenwb.examples import resolve_guest
from xenwb.hypervisor.hypercall_table import decode_args
from xenwb.machine import Machine
from xenwb.session import ALL_PLUGINS, Events, Session, Time

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("seq", "vcpu", "time_ns", "kind", "name")


@pytest.fixture(scope="module")
def booted() -> Session:
    s = Session("pvdemo-pae", plugins=ALL_PLUGINS, console=lambda b: None)
    r = s.run()
    assert r.reason.value == "shutdown"
    return s


def scratch(m: Machine) -> int:
    """A free RW page of the boot mapping (after the stack, inside the 512 KiB slack)."""
    return m.layout.stack.end + 0x10000


# -------------------------------------------------------------------------------- decoders
def test_decoders_read_guest_structures() -> None:
    m = Machine(resolve_guest("pvdemo-pae"))
    v = m.vcpus[0]
    base = scratch(m)
    reqs = PV32.mmu_update(0x12345000 | C.MMU_PT_UPDATE_PRESERVE_AD, 0x4ff0063).pack() + \
        PV32.mmu_update(0x4ff0000 | C.MMU_MACHPHYS_UPDATE, 7).pack()
    v.write_virt(base, reqs)
    d = decode_args(v, C.Hypercall.mmu_update, (base, 2, 0, C.DOMID_SELF, 0))
    assert [r["cmd"] for r in d["req"]] == ["PT_UPDATE_PRESERVE_AD", "MACHPHYS_UPDATE"]
    assert d["req"][0]["ptr"] == "0x12345000" and d["req"][0]["flags"] == ["P", "RW", "A", "D"]
    ops = bytes(PV32.mmuext_op(C.MmuextCmd.PIN_L3_TABLE, 0x4abc, 0)) + bytes(PV32.mmuext_op(C.MmuextCmd.NEW_BASEPTR,
                                                                                         0x4abc, 0))
    v.write_virt(base + 0x100, ops)
    d = decode_args(v, C.Hypercall.mmuext_op, (base + 0x100, 2, 0, C.DOMID_SELF, 0))
    assert [o["cmd"] for o in d["op"]] == ["PIN_L3_TABLE", "NEW_BASEPTR"] and d["op"][0]["arg1"] == "0x4abc"
    traps = bytes(PV32.trap_info(14, 4, 0xE019, 0xC0001234)) + bytes(PV32.trap_info(0, 0, 0, 0))
    v.write_virt(base + 0x200, traps)
    d = decode_args(v, C.Hypercall.set_trap_table, (base + 0x200, 0, 0, 0, 0))
    assert d["entries"] == [{"vector": 14, "name": "#PF", "dpl": 0, "mask_events": True, "cs": "0xe019",
                             "address": "0xc0001234", "symbol": m.domain.symbolize(0xC0001234)}]
    bind = PV32.evtchn_bind_virq(C.Virq.TIMER, 0, 0)
    v.write_virt(base + 0x300, bytes(bind))
    d = decode_args(v, C.Hypercall.event_channel_op, (C.EvtchnOp.bind_virq, base + 0x300, 0, 0, 0))
    assert d["cmd"] == "bind_virq" and d["virq_name"] == "TIMER"
    e = PV32.multicall_entry(C.Hypercall.mmuext_op, 0)
    e.args[0], e.args[1], e.args[3] = base + 0x100, 1, C.DOMID_SELF
    v.write_virt(base + 0x400, bytes(e))
    d = decode_args(v, C.Hypercall.multicall, (base + 0x400, 1, 0, 0, 0))
    assert d["entries"][0]["op"] == "mmuext_op" and d["entries"][0]["args"]["op"][0]["cmd"] == "PIN_L3_TABLE"
    # a pointer into nowhere is reported, not raised
    d = decode_args(v, C.Hypercall.mmu_update, (0x10, 1, 0, C.DOMID_SELF, 0))
    assert "unreadable" in d["req"][0]


# -------------------------------------------------------------------------------- plugins
def test_hypercall_tracer(booted: Session) -> None:
    summary = booted.command("hypercalls summary").data
    by = {r["hypercall"]: r for r in summary}
    assert by["update_va_mapping"]["failed"] >= 1 and by["sched_op"]["calls"] >= 1
    # every trap is counted once; multicall entries are counted as calls too
    assert sum(r["calls"] for r in summary) == booted.domain.stats["hypercalls"] + \
        sum(r["in_multicall"] for r in summary)
    assert all(r["failed"] <= r["calls"] and r["time_ns"] >= 50 * r["calls"] for r in summary
               if r["hypercall"] != "iret")
    failed = booted.command("hypercalls --failed --last 0").data
    assert failed and all(e["ret"] < 0 and e["errno"] for e in failed)
    assert len(failed) == sum(r["failed"] for r in summary)
    hv_range = [e for e in failed if e["name"] == "update_va_mapping"]
    assert [(e["args"]["va"], e["errno"]) for e in hv_range] == [("0xf5800000", "EINVAL")]
    only = booted.command("hypercalls --name console_io --last 0").data
    assert only and all(e["name"] == "console_io" for e in only)
    lo = booted.image.lookup("console_write").address
    rng = booted.command(f"hypercalls --range {lo:#x}+0x100 --last 0").data
    assert rng and all(lo <= e["eip"] < lo + 0x100 for e in rng)
    assert booted.command("hypercalls --vcpu 3 --last 0").data == []


def test_multicall_decoder(booted: Session) -> None:
    big = booted.command("multicall show largest").data
    assert big["size"] == 9 and big["failed"] == 0 and big["symbol"].startswith("step_multicall")
    assert [e["op"] for e in big["entries"]] == ["update_va_mapping"] * 8 + ["mmuext_op"]
    stats = booted.command("multicall stats").data
    assert stats["batches"]["batches"] == 2 and stats["batches"]["with_failures"] == 1
    failing = [b for b in booted.command("multicall list").data if b["failed"]]
    assert len(failing) == 1 and [e["failed"] for e in failing[0]["entries"]].count(True) == 1


def test_evmask(booted: Session) -> None:
    state = booted.command("evmask").data[0]
    vi = booted.machine.vcpus[0].vcpu_info_maddr
    assert state["upcall_mask"] == booted.domain.mem.read(vi + 1, 1)[0]
    ports = {p["port"]: p for p in state["ports"]}
    assert {1, 2} <= ports.keys() and ports[1]["type"] == ports[2]["type"] == "interdomain"
    hist = booted.command("evmask history --last 100").data
    assert any(h["by"] == "guest" for h in hist) and any(h["by"] == "xen" for h in hist)
    assert all(h["old"] != h["new"] for h in hist)
    wins = booted.command("evmask windows").data
    assert wins == sorted(wins, key=lambda w: -w["duration_ns"])
    assert all(w["end_ns"] - w["start_ns"] == w["duration_ns"] > 0 for w in wins)


def test_walker_agrees_with_the_cpu() -> None:
    """For every mapped page, the plugin's walk gives the machine address unicorn's own
    MMU uses: the CPU loads from the VA and a memory hook reports the physical address."""
    s = Session("pvdemo-pae", plugins=("pagetable",), console=lambda b: None)
    s.run(until="finish")
    m = s.machine
    v = m.vcpus[0]
    uc = v.cpu.uc
    probe = m.domain.xen.trampoline << 12 | 0x800          # mov (%ebx),%eax in Xen's trampoline page
    m.domain.mem.write(probe, b"\x8b\x03")
    ctx = uc.context_save()
    seen: list[int] = []
    h = uc.hook_add(UC_HOOK_MEM_READ, lambda u, a, addr, sz, val, d: seen.append(addr))
    ranges = s.command("pt dump").data
    checked = 0
    try:
        for r in ranges:
            for va in range(r["va"], r["va_end"], 4096):
                seen.clear()
                uc.reg_write(__import__("unicorn").x86_const.UC_X86_REG_EBX, va + 8)
                uc.emu_start(0xFFE00800, 0xFFE00802, count=1)
                walk = s.command(f"pt walk {va + 8:#x}").data
                assert walk["mapped"] and seen == [int(walk["maddr"], 16)], hex(va)
                checked += 1
    finally:
        uc.hook_del(h)
        uc.context_restore(ctx)
    assert checked > 900


def test_pt_check_catches_planted_violations() -> None:
    s = Session("pvdemo-nonpae", plugins=("pagetable",), console=lambda b: None)
    s.run()
    dom = s.domain
    assert s.command("pt check").data["ok"]
    frames = s.command("pt frames").data
    l1 = next(f for f in frames if f["type"] == "l1")
    l1_mfn = int(l1["mfn"], 16)
    root = s.machine.vcpus[0].cr3_mfn
    # plant a writable mapping of the L1 itself, bypassing Xen's validation
    slot_va = s.machine.layout.stack.end + 0x20000
    walk = s.command(f"pt walk {slot_va:#x}").data
    entry = int(walk["levels"][-1]["entry_maddr"], 16)
    dom.mem.write_u32(entry, (l1_mfn << 12) | 0x63)
    # and a guest entry inside the hypervisor range
    dom.mem.write_u32((root << 12) + 1020 * 4, (l1_mfn << 12) | 0x67)
    problems = s.command("pt check").data["problems"]
    kinds = {p["problem"] for p in problems}
    assert "writable mapping of a l1 frame" in kinds and "guest entry in the hypervisor range" in kinds
    assert any(p["va"] == f"{slot_va:#010x}" for p in problems)


# -------------------------------------------------------------------------------- trace files
def _capture(tmp: Path, name: str, *extra: str) -> Path:
    out = tmp / name
    r = subprocess.run([sys.executable, "-m", "xenwb", "trace", "pvdemo-pae", "-o", str(out), "--quiet", *extra],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_jsonl_schema_and_repeatability(tmp_path: Path) -> None:
    a, b = _capture(tmp_path, "a.jsonl"), _capture(tmp_path, "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    evs = [json.loads(line) for line in a.read_text().splitlines()]
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)
    for e in evs:
        assert all(k in e for k in REQUIRED)
        if e["kind"] == "hypercall":
            assert {"nr", "eip", "args", "ret", "errno", "duration_ns", "multicall"} <= e.keys()
    # a hypercall carries its entry time and is emitted on return (after what happened inside it)
    top = [e["time_ns"] for e in evs if e["kind"] == "hypercall" and e["multicall"] is None]
    assert top == sorted(top)


def test_perfetto_schema_and_repeatability(tmp_path: Path) -> None:
    a = _capture(tmp_path, "a.json", "--format", "perfetto")
    b = _capture(tmp_path, "b.json", "--format", "perfetto")
    assert a.read_bytes() == b.read_bytes()
    evs = json.loads(a.read_text())
    assert isinstance(evs, list)
    for e in evs:
        assert e["ph"] in ("M", "X", "i", "C") and "pid" in e
        if e["ph"] in ("X", "i"):
            assert isinstance(e["ts"], float) and "tid" in e
    slices = [e for e in evs if e["ph"] == "X"]
    batch = next(e for e in slices if e["name"] == "multicall" and e["args"]["args"]["nr"] == 9)
    end = batch["ts"] + batch["dur"]
    inner = [e for e in slices if e["cat"] == "multicall-entry" and batch["ts"] <= e["ts"] <= end]
    assert len(inner) >= 9
    assert any(e["ph"] == "C" and e["name"] == "upcall_mask vcpu0" for e in evs)
    assert any(e["ph"] == "M" and e["args"]["name"] == "vcpu0" for e in evs)
    # a capture cut short (no closing bracket) still parses as the viewers do: drop the tail
    cut = a.read_text().rsplit("\n]", 1)[0]
    assert json.loads(cut + "]")


def test_trace_filters_and_stop_conditions(tmp_path: Path) -> None:
    f = _capture(tmp_path, "f.jsonl", "--failed")
    hc = [json.loads(x) for x in f.read_text().splitlines() if '"hypercall"' in x]
    assert hc and all(e["kind"] != "hypercall" or e["ret"] < 0 for e in hc)
    u = _capture(tmp_path, "u.jsonl", "--until", "events:10")
    assert len(u.read_text().splitlines()) == 1 + 10              # the header, then the events
    t = _capture(tmp_path, "t.jsonl", "--until", "time:0.0002")
    assert max(json.loads(x)["time_ns"] for x in t.read_text().splitlines()) <= 210_000


def test_unwritable_trace_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "xenwb", "trace", "pvdemo-pae", "-o", str(tmp_path / "no" / "x.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write trace" in r.stderr


# -------------------------------------------------------------------------------- Python API
def test_session_api() -> None:
    with Session("pvdemo-pae", console=lambda b: None) as s:
        r = s.run(until="step_multicall")
        assert r.reason.value == "requested"
        assert s.machine.vcpus[0].cpu.eip == s.image.lookup("step_multicall").address
        evs = []
        for ev in s.events(kinds={"hypercall"}):
            evs.append(ev)
        assert evs[-1]["name"] == "sched_op" and s.domain.shutdown_reason == 0
    with Session("pvdemo-pae", console=lambda b: None) as s:
        s.run(until=Events(5))
        assert s.domain.trace.seq >= 5 and not s.domain.finished
        s.run(until=Time(300_000))
        assert 300_000 <= s.machine.now() < 310_000


def test_same_results_from_cli_and_python(booted: Session) -> None:
    r = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", "--quiet", "--json",
                        "--exec", "hypercalls summary"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    out = r.stdout[r.stdout.index("[\n"):]
    assert json.loads(out) == booted.command("hypercalls summary").data


@pytest.mark.parametrize("script", sorted((ROOT / "examples" / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_example_scripts(script: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_plugins_enable_disable(booted: Session) -> None:
    m = Session("pvdemo-pae", plugins=(), console=lambda b: None)
    reg = m.machine.commands
    assert "hypercalls summary" not in reg.names()
    m.command("plugin enable hypercalls")
    assert "hypercalls summary" in reg.names()
    m.command("plugin disable hypercalls")
    assert "hypercalls summary" not in reg.names()
    assert {r["plugin"] for r in m.command("plugins").data["plugins"]} >= {"hypercalls", "multicall", "evmask",
                                                                          "pagetable"}


def test_struct_pack_roundtrip() -> None:
    assert struct.calcsize("<Q") == PV32.mmu_update.size() // 2


def test_same_results_from_gdb_monitor() -> None:
    """A plugin command through gdb's `monitor` (qRcmd) gives what Python gives."""
    from support.client import XenwbProcess
    with Session("pvdemo-pae", console=lambda b: None) as s:
        s.run(until="finish")
        expected = s.command("hypercalls summary").text
        finish = s.image.lookup("finish").address
    p = XenwbProcess("pvdemo-pae", wait=True, extra=["--plugin", "all", "--quiet"])
    try:
        with p.client() as c:
            assert c.request(b"Z0,%x,1" % finish) == b"OK"
            assert c.request(b"c", timeout=60).startswith(b"T05")
            assert c.monitor("hypercalls summary").rstrip("\n") == expected
            c.request(b"z0,%x,1" % finish)
            c.send_raw(rsp_frame(b"D"))
        code, out, _err = p.finish(60)
        assert code == 0 and "checks passed" in out
    finally:
        p.kill()


def rsp_frame(payload: bytes) -> bytes:
    from gdbstub.rsp import frame
    return frame(payload)


@pytest.mark.skipif(not Path("/usr/lib/grub-xen/grub-i386-xen.bin").exists(), reason="grub-xen-host not installed")
def test_killed_capture_is_valid(tmp_path: Path) -> None:
    """kill -9 during a capture: every line written is a whole event (flushed each vcpu turn)."""
    import signal
    import time
    out = tmp_path / "k.jsonl"
    grub = "/usr/lib/grub-xen/grub-i386-xen.bin"
    p = subprocess.Popen([sys.executable, "-m", "xenwb", "trace", grub, "-o", str(out)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and (not out.exists() or out.read_text().count("\n") < 60):
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    lines = out.read_text().splitlines()
    assert len(lines) >= 60
    evs = [json.loads(line) for line in lines]
    assert evs[0]["kind"] == "session" and evs[0]["seq"] == -1       # the header
    evs = evs[1:]
    assert [e["seq"] for e in evs] == list(range(len(evs)))


def test_watching_the_upcall_mask_leaves_the_cpu_state_alone() -> None:
    """The mask watch write-protects the vcpu_info page (uc.mem_protect), which on unicorn 2.1.4
    sets CR2 and a pending #PF: the registers at a stop must be those of a run without it."""
    def regs_at_step_smp(plugins: tuple[str, ...]) -> list[dict[str, int]]:
        with Session("pvdemo-pae", vcpus=2, console=lambda b: None, plugins=plugins, time_travel=False) as s:
            s.run(until="step_smp")
            return [v.cpu.regs() for v in s.machine.vcpus]
    watched = regs_at_step_smp(("evmask",))
    assert watched == regs_at_step_smp(())
    assert watched[0]["cr2"] not in (0x100000, 0x1000000)      # what the region split left
