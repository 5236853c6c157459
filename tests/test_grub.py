"""Issue 7: Debian's GRUB for Xen (grub-i386-xen.bin, package grub-xen-host) boots to `grub>`.

GRUB is a real third-party 32-bit PAE PV kernel: direct `int $0x82` hypercalls, no trap
table, its own pagetables (MMU_MACHPHYS_UPDATE, update_va_mapping through a window page,
pin + NEW_BASEPTR + unpin), the console ring for output and input, the xenstore ring
(DIRECTORY device/vbd), grant tables. The package is installed by scripts/bootstrap; the
GRUB tests are skipped only when the file is missing. Also here: the grant-table rules GRUB
relies on (xen/common/grant_table.c, compat/grant_table.c, xg_dom_boot.c).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support.harness import Hv

from xenwb.abi.constants import Hypercall as H
from xenwb.backends import ScriptedInput
from xenwb.machine import Machine, StopReason
from xenwb.session import Session

GRUB = Path("/usr/lib/grub-xen/grub-i386-xen.bin")
needs_grub = pytest.mark.skipif(not GRUB.exists(), reason=f"{GRUB} missing: install grub-xen-host "
                                "(scripts/bootstrap installs it)")
PROMPT = b"grub> "
STEP_NS = 100_000_000          # virtual-time bound for each step: a failure ends, it does not hang


class Console:
    """The console as the user sees it; run_until stops the machine once text shows up."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.buf = bytearray()
        self.mark = 0
        self.want: re.Pattern[bytes] | None = None
        m.domain.console_sink = self.sink

    def sink(self, data: bytes) -> None:
        self.buf += data
        if self.want is not None and self.want.search(self.buf, self.mark):
            self.m.stop()

    def run_until(self, pattern: bytes) -> bytes:
        """Run until pattern (a regex) appears in output produced from now on; that output."""
        self.want = re.compile(pattern)
        start = self.mark
        self.m.set_limits(timeout_ns=self.m.now() + STEP_NS)
        r = self.m.run()
        self.want = None
        self.mark = len(self.buf)
        out = bytes(self.buf[start:])
        assert r.reason is StopReason.requested, (r, out[-500:])
        return out


def boot(image: Path = GRUB) -> tuple[Machine, Console]:
    m = Machine(image, memory_mib=64)
    c = Console(m)
    c.run_until(re.escape(PROMPT))
    return m, c


def text(b: bytes) -> str:
    """Console bytes without terminal escape sequences and carriage returns."""
    return re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]|\r", b"", b).decode("latin-1")


# ================================================================ GRUB
GRUB64 = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")     # issue 10: the x86_64 PV build, same package


@needs_grub
@pytest.mark.parametrize("image", [GRUB, GRUB64], ids=["i386-pae", "x86_64"])
def test_grub_boots_to_prompt_echo_hello_and_halt(image: Path) -> None:
    """32-bit PAE GRUB by int $0x82, x86_64 GRUB by inline syscall: both reach the prompt,
    run a typed command and power off."""
    m, c = boot(image)
    assert m.domain.word == (8 if image == GRUB64 else 4)
    out = text(bytes(c.buf))
    assert "Welcome to GRUB!" in out
    assert re.search(r"GNU GRUB\s+version 2\.", out)
    assert out.rstrip().endswith("grub>")
    assert m.domain.crash_report is None
    m.console_input(b"echo hello\r")
    echoed = text(c.run_until(rb"\n\r?hello\r?\n\r?" + re.escape(PROMPT)))
    assert "echo hello" in echoed                          # GRUB echoed what was typed...
    assert re.search(r"\nhello\n", echoed)               # ...and ran it
    m.console_input(b"halt\r")
    m.set_limits(timeout_ns=m.now() + STEP_NS)
    r = m.run()
    assert r.reason is StopReason.shutdown and r.detail == "poweroff", r
    assert m.domain.shutdown_reason == 0
    assert not m.domain._warned            # no unimplemented hypercall on the way


@needs_grub
def test_grub_xenstore_rings_pagetables_grants() -> None:
    s = Session(GRUB, memory_mib=64)           # with the plugins: the pagetable walker
    m = s.machine
    Console(m).run_until(re.escape(PROMPT))
    dom = m.domain
    log = [(e.type, e.args[0], e.reply) for e in m.xenstore.log]
    assert ("DIRECTORY", "device/vbd", "ENOENT") in log                 # xendisk: no disks
    assert m.store.error == 0 and m.store.bytes_in > 0
    assert m.xenstore.dump("/local/domain/1")["children"]["name"]["value"] == "grub-i386-xen"
    # map_all_pages() put the console ring at page nr_pages of GRUB's new tables
    walk = s.command(f"pt walk {dom.nr_pages << 12:#x}").text
    assert f"mfn {m.console.ring_mfn:#x}" in walk
    assert s.command("pt check").text == "no invariant violations"
    # the grant table GRUB set up keeps the toolstack's reserved entries
    frame = dom.gnttab.frames()[0]
    assert struct.unpack("<HHI", dom.mem.read(frame << 12, 8)) == (1, 0, m.console.ring_mfn)
    assert struct.unpack("<HHI", dom.mem.read((frame << 12) + 8, 8)) == (1, 0, m.store.ring_mfn)


@needs_grub
def test_grub_hypercall_trace_is_decoded() -> None:
    m = Machine(GRUB, memory_mib=64)
    events: list[dict] = []
    m.domain.trace.subscribe(events.append)
    c = Console(m)
    c.run_until(re.escape(PROMPT))
    calls = [e for e in events if e["kind"] == "hypercall"]
    assert calls
    for e in calls:
        a = e["args"]
        assert isinstance(a, dict) and "undecodable" not in a and list(a) != ["args"], e
        assert e["ret"] == 0, e                         # GRUB's boot makes no failing call
    cmds = {(e["name"], e["args"].get("cmd")) for e in calls}
    assert {("vm_assist", "enable"), ("grant_table_op", "set_version"), ("grant_table_op", "setup_table"),
            ("event_channel_op", "send"), ("sched_op", "yield")} <= cmds
    mmu = next(e for e in calls if e["name"] == "mmu_update")
    assert {r["cmd"] for r in mmu["args"]["req"]} == {"MACHPHYS_UPDATE"}
    ext = next(e for e in calls if e["name"] == "mmuext_op")
    assert [o["cmd"] for o in ext["args"]["op"]] == ["PIN_L3_TABLE", "NEW_BASEPTR", "UNPIN_TABLE"]
    assert sum(e["name"] == "update_va_mapping" for e in calls) > 10
    xs = [e for e in events if e["kind"] == "xenstore"]
    assert [(e["name"], e["args"][0], e["reply"]) for e in xs] == [("DIRECTORY", "device/vbd", "ENOENT")]


@needs_grub
def test_grub_runs_are_deterministic_with_scripted_input() -> None:
    """The same input bytes give the same run: input enters the ring between vcpu turns only."""
    def once() -> tuple[bytes, int, int]:
        m = Machine(GRUB, memory_mib=64)
        c = Console(m)
        m.input_source = ScriptedInput(b"echo one\necho two\nhalt\n")
        m.set_limits(timeout_ns=STEP_NS * 3)
        r = m.run()
        assert r.reason is StopReason.shutdown, (r, text(bytes(c.buf))[-300:])
        return bytes(c.buf), m.now(), m.domain.stats["hypercalls"]
    a, b = once(), once()
    assert a == b
    out = text(a[0])
    assert re.search(r"\none\n", out) and re.search(r"\ntwo\n", out)


@needs_grub
def test_grub_cli_with_piped_input() -> None:
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", str(GRUB), "--memory", "64", "--timeout", "1"],
                       input=b"echo hello\nhalt\n", capture_output=True, timeout=120)
    out = text(p.stdout)
    assert p.returncode == 0, p.stderr
    assert "grub>" in out and re.search(r"\nhello\n", out)
    assert "shutdown (poweroff)" in p.stderr.decode()


# ================================================================ grant tables (what GRUB relies on)
GNTTABOP_setup_table, GNTTABOP_query_size, GNTTABOP_set_version, GNTTABOP_get_version = 2, 6, 8, 10
DOMID_SELF = 0x7FF0


def _setup(hv: Hv, dom: int, nr: int, count: int = 1) -> tuple[int, int, list[int]]:
    frames = hv.alloc(4 * max(nr, 1))
    arg = hv.put(struct.pack("<H2xIh2xI", dom, nr, 0x55, frames))
    rc = hv.call(H.grant_table_op, GNTTABOP_setup_table, arg, count)
    status = struct.unpack("<h", hv.get(arg + 8, 2))[0]
    return rc, status, [hv.u32(frames + 4 * i) for i in range(nr)]


def test_grant_setup_table_rules(hv_pae: Hv) -> None:
    hv = hv_pae
    assert _setup(hv, DOMID_SELF, 1, count=2)[0] == -22          # count > 1: -EINVAL
    rc, status, _ = _setup(hv, DOMID_SELF, 1, count=0)
    assert (rc, status) == (0, 0x55)                              # count 0: nothing done
    assert _setup(hv, 5, 1)[:2] == (0, -2)                        # GNTST_bad_domain
    assert _setup(hv, 0, 1)[:2] == (0, -8)                        # dom0: GNTST_permission_denied
    assert _setup(hv, DOMID_SELF, 65)[:2] == (0, -1)              # over the 64-frame maximum
    rc, status, frames = _setup(hv, DOMID_SELF, 2)
    assert (rc, status) == (0, 0) and len(set(frames)) == 2
    assert _setup(hv, 1, 1)[2] == frames[:1]                      # own domid = DOMID_SELF, same frames
    q = hv.put(struct.pack("<H2xIIh2x", DOMID_SELF, 0, 0, 0x55))
    assert hv.call(H.grant_table_op, GNTTABOP_query_size, q, 1) == 0
    assert struct.unpack("<IIh", hv.get(q + 4, 10)) == (2, 64, 0)
    assert hv.call(H.grant_table_op, GNTTABOP_query_size, q, 2) == -22


def test_grant_reserved_entries_seeded(hv_pae: Hv) -> None:
    """xc_dom_gnttab_seed: entry 0 grants the console page, entry 1 the xenstore page, to dom0."""
    hv = hv_pae
    _, _, (frame,) = _setup(hv, DOMID_SELF, 1)
    entries = [struct.unpack_from("<HHI", hv.dom.mem.read(frame << 12, 24), 8 * i) for i in range(3)]
    assert entries == [(1, 0, hv.m.console.ring_mfn), (1, 0, hv.m.store.ring_mfn), (0, 0, 0)]


def test_grant_versions(hv_pae: Hv) -> None:
    hv = hv_pae
    v = hv.put_u32(1)
    assert hv.call(H.grant_table_op, GNTTABOP_set_version, v, 1) == 0
    v = hv.put_u32(2)
    assert hv.call(H.grant_table_op, GNTTABOP_set_version, v, 1) == -38   # -ENOSYS: max version 1
    assert hv.u32(v) == 1                                                # the current version, written back
    v = hv.put_u32(3)
    assert hv.call(H.grant_table_op, GNTTABOP_set_version, v, 1) == -22
    g = hv.put(struct.pack("<HHI", DOMID_SELF, 0, 0))
    assert hv.call(H.grant_table_op, GNTTABOP_get_version, g, 1) == 0
    assert hv.u32(g + 4) == 1
    assert hv.call(H.grant_table_op, GNTTABOP_get_version, hv.put(struct.pack("<HHI", 0, 0, 0)), 1) == -1
    assert hv.call(H.grant_table_op, GNTTABOP_get_version, hv.put(struct.pack("<HHI", 9, 0, 0)), 1) == -3
