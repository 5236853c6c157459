"""Issue 12, hardening, through the real things: a raw TCP socket to `xenwb run --gdb`
(Ctrl-C in the same segment as a resume, packets while the guest runs, breakpoint caps, a
plugin command with a bug under `monitor`), `xenwb` subprocesses (bounded console, ELFs
libelf refuses, --exec checked before the guest starts, input that runs out, trace order,
evmask windows) and the shell."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from support import build_kernel, have_tool, num_note
from support.client import REPO, RspClient, XenwbProcess
from support.harness import build_guest
from test_loader import NOTE_ENTRY, notes32, phdrs32, shdrs32

from gdbstub import rsp
from xenwb.consoletail import CONSOLE_KEEP
from xenwb.control import MAX_BREAKPOINTS, MAX_WATCHPOINTS
from xenwb.machine import INPUT_ENDED_QUIET_NS
from xenwb.registry import Result
from xenwb.session import Session
from xenwb.tui import Shell

GRUB64 = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")


def xenwb(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenwb", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def one_line(p: subprocess.CompletedProcess, rc: int = 2) -> str:
    """The workbench's one line on stderr (the guest's hypervisor console, "(d1) " lines, is
    on stderr too)."""
    assert p.returncode == rc, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith("(d1) ")]
    assert "Traceback" not in p.stderr and len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture
def stub():
    procs: list[XenwbProcess] = []

    def start(**kw) -> XenwbProcess:
        p = XenwbProcess(**kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


# ----------------------------------------------------------------------- item 2: no lost interrupt
def _resume_and_interrupt_in_one_segment(c: RspClient, resume: bytes) -> bytes:
    """`resume` and a 0x03 in a single send(): the stop reply that must come."""
    c.sock.sendall(rsp.frame(resume) + b"\x03")
    return c.read_packet(timeout=10)


def _long_running_guests(tmp: Path) -> list[str]:
    spin = build_guest("spin", tmp)                          # ends in `jmp spin`, forever
    return [str(spin.path)] + ([str(GRUB64)] if GRUB64.exists() else [])


@pytest.mark.parametrize("resume", [b"c", b"vCont;c"])
def test_ctrl_c_in_the_same_segment_as_continue_stops_pvdemo(stub, resume: bytes) -> None:
    """pvdemo powers off in well under a second: the 0x03 right behind the `c` must stop it
    first (a T02 stop reply, not W00), each time."""
    p = stub()
    with p.client() as c:
        c.no_ack()
        for _ in range(10):
            stop = _resume_and_interrupt_in_one_segment(c, resume)
            assert stop.startswith(b"T02thread:"), stop
        assert c.request(b"vCont;c", timeout=30) == b"W00"
    rc, out, _ = p.finish()
    assert rc == 0 and "checks passed" in out


def test_ctrl_c_in_the_same_segment_as_continue_stops_a_long_running_guest(stub, tmp_path: Path) -> None:
    for guest in _long_running_guests(tmp_path):
        p = stub(guest=guest)
        with p.client() as c:                                  # ack mode: the '+' comes first
            for resume in (b"c", b"vCont;c") * 3:
                c.sock.sendall(rsp.frame(resume) + b"\x03")
                assert c.read_ack() == b"+"
                stop = c.read_packet(timeout=10)
                assert stop.startswith(b"T02thread:"), (guest, stop)
                c.send_raw(b"+")
            c.send_raw(rsp.frame(b"c"))                        # and while it runs, later
            assert c.read_ack() == b"+"
            time.sleep(0.3)
            c.send_raw(b"\x03")
            assert c.read_packet(timeout=10).startswith(b"T02thread:")
            c.send_raw(b"+")
            c.send_raw(rsp.frame(b"k"))
        p.finish()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def test_packets_sent_while_the_guest_runs_are_not_queued_without_limit(stub, tmp_path: Path) -> None:
    """8 MiB of `?` packets while a guest spins: they are dropped, as gdbserver drops all but
    0x03 then (RSS grows by less than 30 MB), and the 0x03 after them still stops the guest."""
    p = stub(guest=str(build_guest("spin", tmp_path).path))
    with p.client() as c:
        c.no_ack()
        c.send_raw(rsp.frame(b"vCont;c"))
        time.sleep(0.2)
        before = _rss_kib(p.proc.pid)
        burst = rsp.frame(b"?") * (1 << 16)
        for _ in range(8 * (1 << 20) // len(burst)):
            c.sock.sendall(burst)
        c.send_raw(b"\x03")
        stop = c.read_packet(timeout=60)
        assert stop.startswith(b"T02thread:"), stop
        grown = _rss_kib(p.proc.pid) - before
        assert grown < 30 * 1024, f"RSS grew by {grown} KiB"
        assert re.fullmatch(rb"[0-9a-f]{8}", c.request(b"p8"))   # no answer to the burst is left over
        c.send_raw(rsp.frame(b"k"))
    p.finish()


def test_fuzz_resume_and_interrupt_in_random_segments(stub, tmp_path: Path) -> None:
    """Seeded and time-bounded: a resume (c, vCont;c, vCont;c:1, C00) followed by packets gdb
    should not send while the guest runs and a 0x03, cut into 1-4 sends at random places:
    every round gets exactly one stop reply, T02, and the stub answers normally afterwards."""
    rng = random.Random(12)
    p = stub(guest=str(build_guest("spin", tmp_path).path))
    rounds = 0
    with p.client() as c:
        c.no_ack()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or rounds < 20:
            data = rsp.frame(rng.choice([b"c", b"vCont;c", b"vCont;c:1", b"C00", b"vCont;c:-1"]))
            data += b"".join(rsp.frame(rng.choice([b"?", b"g", b"m0,4", b"qC", b"p8"]))
                             for _ in range(rng.randrange(4)))
            data += b"\x03"
            cuts = sorted(rng.sample(range(1, len(data)), min(rng.randrange(4), len(data) - 1)))
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                c.sock.sendall(data[a:b])
                if rng.random() < 0.3:
                    time.sleep(0.01)
            stop = c.read_packet(timeout=10)
            assert stop.startswith(b"T02thread:"), (rounds, data, stop)
            assert re.fullmatch(rb"[0-9a-f]{8}", c.request(b"p8")), rounds       # nothing else was pending
            rounds += 1
        c.send_raw(rsp.frame(b"k"))
    p.finish()


# ----------------------------------------------------------------------- item 5: no traceback
def _buggy_plugin_site(tmp: Path) -> Path:
    """A third-party plugin whose command has a bug (ZeroDivisionError), as an entry point."""
    site = tmp / "site"
    dist = site / "xenwb_buggy-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xenwb-buggy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xenwb.plugins]\nbuggy = xenwb_buggy_plugin:Buggy\n")
    (site / "xenwb_buggy_plugin.py").write_text(
        "from plugins.api import Plugin, command\n\n"
        "class Buggy(Plugin):\n"
        "    name = 'buggy'\n\n"
        "    def commands(self):\n"
        "        return [command('buggy boom', lambda m, a: 1 // 0, 'divides by zero')]\n")
    return site


def test_a_command_with_a_bug_is_one_line_from_exec_and_monitor(stub, tmp_path: Path, monkeypatch) -> None:
    site = _buggy_plugin_site(tmp_path)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    env.pop("XENWB_DEBUG", None)
    p = xenwb("run", "pvdemo-pae", "--plugin", "all", "--quiet", "--exec", "buggy boom", "--exec", "plugins",
              env=env)
    line = one_line(p)
    assert line == ("xenwb: internal error in command 'buggy boom': ZeroDivisionError: integer division or "
                    "modulo by zero; XENWB_DEBUG=1 shows the traceback"), line
    assert "buggy" in p.stdout                          # the next --exec still ran
    p = xenwb("run", "pvdemo-pae", "--plugin", "all", "--quiet", "--exec", "buggy boom",
              env=dict(env, XENWB_DEBUG="1"))
    assert p.returncode == 2 and "Traceback" in p.stderr and "ZeroDivisionError" in p.stderr
    monkeypatch.setenv("PYTHONPATH", str(site))
    s = stub()
    with s.client() as c:
        c.no_ack()
        out = c.monitor("buggy boom")
        assert out.strip() == ("error: internal error in command 'buggy boom': ZeroDivisionError: integer "
                               "division or modulo by zero; XENWB_DEBUG=1 shows the traceback"), out
        assert c.request(b"?").startswith(b"T05")      # the stub goes on serving
        c.send_raw(rsp.frame(b"k"))
    rc, _, err = s.finish()
    assert "Traceback" not in err, err


def test_exec_arguments_are_checked_before_the_guest_starts(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    for line_, says in (("hypercalls sumary", "unexpected argument 'sumary'"),
                        ("hypercalls --last x", "--last: 'x' is not a number"),
                        ("multicall show largest extra", "unexpected argument 'extra'"),
                        ("hypercalls --bogus", "unknown option --bogus")):
        p = xenwb("run", "pvdemo-pae", "--trace", str(trace), "--exec", line_)
        line = one_line(p)
        assert line.startswith(f"xenwb: --exec {line_!r}: ") and says in line, line
        assert p.stdout == "" and not trace.exists()    # the guest never ran


# ----------------------------------------------------------------------- item 6: ELFs Xen refuses
needs_binutils = pytest.mark.skipif(not all(have_tool(t) for t in ("gcc", "ld", "readelf", "nm")),
                                    reason="gcc/binutils not available")


@needs_binutils
def test_elfs_libelf_refuses_are_refused_by_the_cli(tmp_path: Path) -> None:
    k = build_kernel(tmp_path, name="k", phdr_notes=notes32())
    data = bytearray(k.read_bytes())
    at, f = next((at, f) for at, f in phdrs32(bytes(data)) if f[0] == 1)
    struct.pack_into("<I", data, at + 20, f[4] - 1)                 # p_memsz below p_filesz
    big = tmp_path / "filesz"
    big.write_bytes(bytes(data))
    entry0 = build_kernel(tmp_path, name="entry0", phdr_notes=[*notes32(), num_note(NOTE_ENTRY, 0)])
    symtab = tmp_path / "symtab"                                      # a '.symtab' that is PROGBITS
    data = bytearray(k.read_bytes())
    struct.pack_into("<I", data, shdrs32(bytes(data))[".symtab"] + 4, 1)
    symtab.write_bytes(bytes(data))
    p = xenwb("info", str(symtab))
    assert p.returncode == 0 and "Traceback" not in p.stderr and "xenwb-test" in p.stdout, p.stderr
    for cmd in ("info", "run"):
        line = one_line(xenwb(cmd, str(big)))
        assert f"p_filesz {f[4]:#x} is larger than p_memsz {f[4] - 1:#x}" in line, line
        line = one_line(xenwb(cmd, str(entry0)))
        assert "entry point 0x0 (ENTRY note) is outside the kernel" in line, line


def test_dev_zero_and_fifos_are_refused_unread(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (("run", "/dev/zero"), ("run", str(fifo)), ("run", "pvdemo-pae", "--module", str(fifo)),
                 ("run", "pvdemo-pae", "--module", "/dev/zero")):
        assert "not a regular file" in one_line(xenwb(*args, timeout=30))



# ----------------------------------------------------------------------- item 1: bounded console
def test_console_output_streams_and_only_its_tail_is_kept(tmp_path: Path) -> None:
    """4 MiB of guest output: all of it reaches stdout (a real `xenwb run`), the session
    keeps its count and only the last CONSOLE_KEEP..2*CONSOLE_KEEP bytes."""
    flood = build_guest("flood", tmp_path)
    # the guest writes with console_io: on stdout with the PV console when merged
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", str(flood.path), "--quiet", "--merge-consoles"],
                       capture_output=True, cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)
    block = (b"(d1) " + b"flood " * 10 + b"flo\n") * 64        # console.c's prefix on every line
    assert p.returncode == 0 and p.stdout == block * 1024, (p.returncode, len(p.stdout), p.stderr[-300:])
    with Session(str(flood.path), plugins=()) as s:
        s.run()
        kept = bytes(s.console)
        assert len(s.console) == len(block) * 1024 and CONSOLE_KEEP <= len(kept) <= 2 * CONSOLE_KEEP
        assert kept == (block * 1024)[-len(kept):] and s.console.start == len(s.console) - len(kept)
        assert s.console[len(s.console) - 100:] == kept[-100:] and s.console[:10] == b""     # dropped
        assert s.console[s.console.start: s.console.start + 10] == kept[:10]


def test_console_flood_does_not_grow_the_workbench(tmp_path: Path) -> None:
    """64 MiB of output through the real CLI: peak RSS stays within 40 MB of a run that
    prints 4 KiB."""
    def peak_kib(loops: int) -> int:
        g = build_guest("flood", tmp_path, defines=(f"LOOPS={loops}",))
        code = ("import sys; from xenwb.cli import main; rc = main(sys.argv[1:]); "
                "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr); "
                "sys.exit(rc)")
        p = subprocess.run([sys.executable, "-c", code, "run", str(g.path), "--quiet"], cwd=REPO, timeout=300,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert p.returncode == 0, p.stderr
        return int(p.stderr.split()[-1])
    small, big = peak_kib(1), peak_kib(16384)
    assert big - small < 40 * 1024, (small, big)
    print(f"peak RSS: 4 KiB of output {small // 1024} MB, 64 MiB of output {big // 1024} MB")


# ----------------------------------------------------------------------- item 7: defaults
@pytest.mark.skipif(not GRUB64.exists(), reason="grub-xen-host not installed")
def test_input_that_runs_out_ends_a_waiting_guest_as_a_hang() -> None:
    """GRUB reads `echo hello`, answers, then polls its console for ever: once the piped
    input has ended and the guest has been silent for INPUT_ENDED_QUIET_NS, the run ends as a
    hang (exit 1) with a message, not never."""
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", str(GRUB64)], input=b"echo hello\n",
                       capture_output=True, cwd=REPO, timeout=600)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert b"hello" in p.stdout and "Traceback" not in err
    assert re.search(r"xenwb: hang \(console input ended and the guest has written nothing for 10 virtual "
                     r"seconds since: it waits for input that will not come", err), err
    assert float(re.search(r"([\d.]+) s virtual time", err).group(1)) < INPUT_ENDED_QUIET_NS / 1e9 + 2


def test_time_ns_is_in_order_per_vcpu_hypercalls_by_their_return(tmp_path: Path) -> None:
    """In a trace, per vcpu, time_ns never decreases in file order, except that a hypercall
    (emitted when it returns) carries its start: time_ns + duration_ns is in order (README)."""
    out = tmp_path / "t.jsonl"
    p = xenwb("trace", "pvdemo-pae", "--vcpus", "2", "-o", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    last: dict[int, int] = {}
    starts_out_of_order = 0
    for line in out.read_text().splitlines()[1:]:
        ev = json.loads(line)
        v, t = ev["vcpu"], ev["time_ns"]
        at = t + ev["duration_ns"] if ev["kind"] == "hypercall" else t
        assert at >= last.get(v, 0), ev
        starts_out_of_order += t < last.get(v, 0)
        last[v] = at
    assert starts_out_of_order > 0              # the exception the README documents does occur


def test_evmask_windows_start_when_a_vcpu_comes_up(tmp_path: Path) -> None:
    """vcpu 1 of pvdemo is down until vcpu 0 brings it up (masked, as Xen starts it): its
    first masked window starts at VCPUOP_up, not at time 0."""
    trace = tmp_path / "t.jsonl"
    p = xenwb("run", "pvdemo-pae", "--vcpus", "2", "--quiet", "--json", "--trace", str(trace),
              "--exec", "evmask windows --top 1000")
    assert p.returncode == 0, p.stderr
    up = next(json.loads(ln) for ln in trace.read_text().splitlines()
              if '"kind":"vcpu"' in ln and json.loads(ln)["name"] == "up" and json.loads(ln)["target"] == 1)
    wins = [w for w in json.loads(p.stdout[p.stdout.index("[\n"):]) if w["vcpu"] == 1]   # after any console
    assert wins and min(w["start_ns"] for w in wins) == up["time_ns"], (up, wins[:3])


# ----------------------------------------------------------------------- item 1: caps
def test_breakpoint_and_watchpoint_caps_refuse_with_a_reason(stub) -> None:
    """Beyond MAX_BREAKPOINTS (MAX_WATCHPOINTS), Z packets are refused: E01 to gdb (which only
    says "Cannot insert breakpoint"), the reason once on stderr and in `monitor why`; the
    guest still boots to its end once they are removed."""
    p = stub()
    base = 0xC0001000
    with p.client() as c:
        c.no_ack()
        for i in range(MAX_BREAKPOINTS):
            assert c.request(b"Z0,%x,1" % (base + i)) == b"OK", i
        assert c.request(b"Z0,%x,1" % (base + MAX_BREAKPOINTS)) == b"E01"
        assert c.request(b"Z0,%x,1" % base) == b"OK"                 # one already there: fine
        assert "too many breakpoints (at most 1024)" in c.monitor("why")
        assert "too many breakpoints" in c.monitor(f"break {base + MAX_BREAKPOINTS:#x}")
        for i in range(MAX_BREAKPOINTS):
            assert c.request(b"z0,%x,1" % (base + i)) == b"OK"
        for i in range(MAX_WATCHPOINTS):
            assert c.request(b"Z2,%x,4" % (0xC0100000 + 4 * i)) == b"OK", i
        assert c.request(b"Z2,%x,4" % 0xC0200000) == b"E01"
        assert "too many watchpoints (at most 256)" in c.monitor("why")
        for i in range(MAX_WATCHPOINTS):
            assert c.request(b"z2,%x,4" % (0xC0100000 + 4 * i)) == b"OK"
        assert c.request(b"vCont;c", timeout=60) == b"W00"
    rc, _, err = p.finish()
    assert rc == 0 and err.count("too many breakpoints (at most 1024): refused (monitor why)") == 1, err


def test_a_command_with_a_bug_is_one_line_in_the_shell() -> None:
    """The shell's command line: the same one-line report, and the shell goes on."""
    def boom(m: object, args: list[str]) -> Result:
        raise KeyError("cs")

    async def main() -> list[str]:
        with create_pipe_input() as inp:
            session = Session("pvdemo-pae", plugins=())
            session.machine.commands.register("boom", boom, "a command with a bug")
            shell = Shell(session, input=inp, output=DummyOutput())
            task = asyncio.ensure_future(shell.app.run_async())
            await asyncio.sleep(0.2)
            inp.send_text("boom\r")
            inp.send_text("regs\r")
            end = time.monotonic() + 30
            while not any(ln.startswith("xenwb> regs") for ln in shell.output_lines):
                assert time.monotonic() < end, list(shell.output_lines)
                await asyncio.sleep(0.05)
            inp.send_text("quit\r")
            await asyncio.wait_for(task, 30)
            shell.shutdown()
            return list(shell.output_lines)
    lines = asyncio.run(main())
    i = lines.index("xenwb> boom")
    assert lines[i + 1] == ("error: internal error in command 'boom': KeyError: 'cs'; XENWB_DEBUG=1 shows the "
                            "traceback"), lines[i:i + 3]
