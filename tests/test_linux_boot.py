"""Issue 14: Debian's Linux 6.1 (linux-image-cloud-amd64, unchanged) boots as a 64-bit PV domU
to the busybox shell of the project's initramfs, runs commands typed at hvc0 and powers off
with exit 0, on 1 and on 2 vcpus, with no workaround on its command line; two boots of the
same configuration give the same console bytes and the same trace.

One boot per (configuration, run) for the whole module (each takes some 10 s of CPU), shared
by the tests that look at it. The kernel and busybox come from Debian's packages through
scripts/fetch-linux (xenwb.linuxguest), cached after the first download.

The first 2-vcpu boot runs with every plugin enabled (the second without: the same trace
shows the plugins leave the machine alone), and its plugins' commands are run once the
guest has powered off: what Linux's hypercalls, FIFO event channels and pagetables look like.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass

import pytest

from plugins.api import PluginManager
from xenwb.abi.constants import Errno
from xenwb.backends import ScriptedInput
from xenwb.hypervisor.paging import translate
from xenwb.linuxguest import PROMPT, fetch_linux
from xenwb.machine import Machine, StopReason
from xenwb.registry import Result

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("apt-get", "dpkg-deb", "cpio")),
                                reason="needs Debian's apt-get, dpkg-deb and cpio")

COMMANDS = (b"echo xenwb-ok-$((6 * 7))\n"
            b"nproc\n"
            b"grep -c ^processor /proc/cpuinfo\n"
            b"ls /sys/bus/xen/devices; echo devices-listed\n"
            b"poweroff -f\n")
# What real Xen 4.17 answers a domU with -ENOSYS: VCPUOP_is_up past the last vcpu is
# -ENOENT, not -ENOSYS; nothing Linux calls at boot is missing from Xen.
VIRTUAL_LIMIT_NS = 120 * 10**9


PLUGIN_COMMANDS = ("hypercalls summary", "multicall stats", "evmask", "pt check", "pt frames", "pt dump")
PLUGINS_ON = (2, 0)        # the (vcpus, run) boot that has the plugins


@dataclass
class Boot:
    console: bytes
    trace_digest: str
    result: object
    enosys: list[tuple[str, str]]
    hypercalls: int
    events: int
    plugins: dict[str, Result] | None = None       # command -> its result, after the poweroff
    seconds: dict[str, float] | None = None        # command -> host seconds it took
    walks: dict[str, Result] | None = None         # what was walked -> `pt walk` result
    machine: Machine | None = None


def _text(m: Machine) -> int:
    """_text: the first byte of the kernel image, startup_64 (the entry, startup_xen, is
    init text, freed and reused by the time of the poweroff)."""
    return min(s.vaddr for s in m.image.segments if s.vaddr >> 63)      # not the per-cpu segment at 0


def _plugin_results(m: Machine) -> tuple[dict[str, Result], dict[str, float], dict[str, Result]]:
    out, secs = {}, {}
    for c in PLUGIN_COMMANDS:
        t = time.perf_counter()
        out[c] = m.commands.run(m, c)
        secs[c] = time.perf_counter() - t
    walks = {"text": m.commands.run(m, f"pt walk {_text(m):#x}")}
    if m.image.lookup("xen_hypercall_page") is not None:          # a System.map with symbols
        walks["symbol"] = m.commands.run(m, "pt walk xen_hypercall_page")
    users = [v for v in m.vcpus if v.user_cr3_mfn]
    if users:
        walks["user"] = m.commands.run(m, f"pt walk --user --vcpu {users[0].id} 0x400000")
    return out, secs, walks


def _boot(vcpus: int, with_plugins: bool = False) -> Boot:
    g = fetch_linux("cloud-amd64")
    m = Machine(g.vmlinuz, memory_mib=256, cmdline="console=hvc0", module=g.initrd.read_bytes(), vcpus=vcpus)
    out: list[bytes] = []
    m.domain.console_sink = out.append
    h = hashlib.sha256()
    enosys: list[tuple[str, str]] = []
    count = [0]

    def on_event(e: dict) -> None:
        count[0] += 1
        h.update(json.dumps(e, sort_keys=True, default=str).encode())
        if e.get("kind") == "hypercall" and e.get("ret") == -Errno.ENOSYS:
            args = e.get("args")
            sub = args.get("cmd") if isinstance(args, dict) else None
            enosys.append((e["name"], str(sub)))

    m.domain.trace.subscribe(on_event)
    if with_plugins:
        PluginManager(m).enable_all()
    m.input_source = ScriptedInput(COMMANDS)
    m.set_limits(timeout_ns=VIRTUAL_LIMIT_NS)
    r = m.run()
    b = Boot(b"".join(out), h.hexdigest(), r, enosys, m.domain.stats["hypercalls"], count[0])
    if with_plugins:
        b.plugins, b.seconds, b.walks = _plugin_results(m)
        b.machine = m
    return b


_BOOTS: dict[tuple[int, int], Boot] = {}


def boot(vcpus: int, run: int = 0) -> Boot:
    key = (vcpus, run)
    if key not in _BOOTS:
        _BOOTS[key] = _boot(vcpus, with_plugins=key == PLUGINS_ON)
    return _BOOTS[key]


@pytest.mark.parametrize("vcpus", [1, 2])
def test_boots_to_the_shell_runs_commands_and_powers_off(vcpus: int) -> None:
    b = boot(vcpus)
    text = b.console.decode("latin-1")
    assert b.result.reason is StopReason.shutdown and b.result.detail == "poweroff", (b.result, text[-2000:])
    assert PROMPT in text
    assert "xenwb-ok-42" in text                       # the shell evaluated what was typed
    assert re.search(rf"# nproc\r?\n{vcpus}\r?\n", text), text[-1500:]
    assert re.search(rf"processor /proc/cpuinfo\r?\n{vcpus}\r?\n", text)
    assert "devices-listed" in text
    assert "xen:events: Using FIFO-based ABI" in text  # Xen 4.17 offers FIFO event channels
    if vcpus == 2:
        assert "smp: Brought up 1 node, 2 CPUs" in text
    for bad in ("Oops", "BUG:", "Kernel panic", "unchecked MSR access", "WARNING:"):
        assert bad not in text, (bad, text[text.find(bad) - 500: text.find(bad) + 1500])


@pytest.mark.parametrize("vcpus", [1, 2])
def test_no_enosys_a_real_xen_would_not_return(vcpus: int) -> None:
    assert boot(vcpus).enosys == []


@pytest.mark.parametrize("vcpus", [1, 2])
def test_two_boots_give_the_same_console_and_trace(vcpus: int) -> None:
    a, b = boot(vcpus, 0), boot(vcpus, 1)
    assert a.console == b.console
    assert (a.events, a.trace_digest) == (b.events, b.trace_digest)
    assert a.hypercalls == b.hypercalls > 10_000


# ------------------------------------------------------------------ the plugins on Linux's boot
def plugged() -> Boot:
    b = boot(*PLUGINS_ON)
    assert b.plugins is not None and b.result.reason is StopReason.shutdown
    return b


def test_hypercalls_and_multicalls_of_linux() -> None:
    b = plugged()
    rows = {r["hypercall"]: r for r in b.plugins["hypercalls summary"].data}
    # what Linux 6.1 calls at boot (section 11 of the ABI sheet), by the names of hypercall-defs.c
    for name in ("mmu_update", "mmuext_op", "update_va_mapping", "multicall", "event_channel_op", "vcpu_op",
                 "sched_op", "set_segment_base", "stack_switch", "memory_op", "xen_version", "grant_table_op"):
        assert rows.get(name, {}).get("calls", 0) > 0, name
    # each trap counted once, each multicall entry once more
    assert sum(r["calls"] for r in rows.values()) == b.hypercalls + sum(r["in_multicall"] for r in rows.values())
    stats = b.plugins["multicall stats"].data
    mc = rows["multicall"]
    assert stats["batches"]["batches"] == mc["calls"] - mc["in_multicall"] > 10 and stats["batches"]["largest"] >= 2
    assert {"update_va_mapping", "mmuext_op"} <= {r["op"] for r in stats["ops"]}    # lazy MMU batches


def test_evmask_shows_linux_fifo_queues() -> None:
    """Linux 6.1 takes the FIFO ABI: every vcpu has a control block, its timer VIRQ and IPIs
    are bound to it with an event word each and the default priority (evtchn_fifo_init)."""
    b = plugged()
    m = b.machine
    state = b.plugins["evmask"].data
    fifo = m.domain.evtchn.ops
    assert [d["vcpu"] for d in state] == [0, 1] and all(d["abi"] == "FIFO" for d in state)
    for d in state:
        cb = d["control_block"]
        assert cb is not None and int(cb["maddr"], 16) == fifo.control[d["vcpu"]]
        block = fifo.control_block(d["vcpu"])
        assert int(cb["ready"], 16) == block.ready
        assert cb["heads"] == {q: h for q, h in enumerate(block.head) if h}
        types = {p["type"] for p in d["ports"]}
        assert {"virq", "ipi"} <= types, d["ports"]
        for p in d["ports"]:
            w = fifo.word(p["port"])
            assert p["word"] == f"{w:#010x}" and p["pending"] == bool(w >> 31 & 1)
            assert p["masked"] == bool(w >> 30 & 1) and p["linked"] == bool(w >> 29 & 1)
            assert p["priority"] == fifo.priority.get(p["port"], 7) and p["link"] == w & 0x1FFFF
    assert "FIFO control block at" in b.plugins["evmask"].text


def test_pt_check_finds_nothing_wrong_in_linux_tables() -> None:
    b = plugged()
    check = b.plugins["pt check"].data
    assert check["ok"], check["problems"][:20]
    roots = check["roots"]
    assert "cr3:vcpu0" in roots.values() and "cr3:vcpu1" in roots.values() and len(roots) >= 3
    frames = b.plugins["pt frames"].data
    assert {f["type"] for f in frames} >= {"l1", "l2", "l3", "l4"}
    # the whole kernel address space: the direct map of 256 MiB, the kernel image, read-only
    # pagetables; each page as the walker translates it
    m = b.machine
    ranges = b.plugins["pt dump"].data
    pages = sum(r["pages"] for r in ranges)
    assert pages >= 256 * 256, pages
    # the p2m list (xen_rebuild_p2m_list) maps its missing-entries page over every hole:
    # one range of repeats, which keeps the dump short
    assert any(r["repeat"] and r["pages"] > 10_000 and not r["prot"].startswith("rw") for r in ranges)
    assert len(ranges) < 5000, len(ranges)
    for r in ranges[::max(1, len(ranges) // 200)]:
        assert translate(m.domain.mem, m.domain.mode, m.vcpus[0].cr3_mfn, r["va"]) >> 12 == r["mfn_first"]
    assert max(b.seconds.values()) < 10, b.seconds


def w_va(w: dict) -> int:
    return int(w["va"], 16)


def test_pt_walk_of_linux_kernel_addresses() -> None:
    b = plugged()
    m = b.machine
    w = b.walks["text"].data
    assert w["mapped"] and [lv["level"] for lv in w["levels"]] == ["L4", "L3", "L2", "L1"]
    assert w["access"].startswith("RO") and "NX" not in w["access"]        # kernel text
    seg = next(s for s in m.image.segments if s.vaddr == w_va(w))
    assert m.domain.mem.read(int(w["maddr"], 16), 16) == seg.data[:16]     # startup_64's bytes
    if "symbol" in b.walks:                      # System.map's address, through every level
        s = b.walks["symbol"].data
        va = m.image.lookup("xen_hypercall_page").address
        assert s["mapped"] and int(s["maddr"], 16) == translate(m.domain.mem, m.domain.mode, m.vcpus[0].cr3_mfn, va)
    if "user" in b.walks:
        u = b.walks["user"].data
        assert u["root"].endswith("user") and u["levels"][0]["level"] == "L4"
