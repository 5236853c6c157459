"""The `xenwb` command line, run as a subprocess ([sys.executable, "-m", "xenwb", ...]).

README contract: `run` exits 0 on poweroff, 1 on crash/other shutdown/hang/limit, 2 on a
workbench error; a workbench error is one line on stderr starting "xenwb:", never a traceback;
`run` prints one summary line on stderr; `--trace FILE` writes JSON lines with at least seq,
vcpu, time_ns, kind and name; `examples` lists the bundled guests with their paths.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import build_kernel, have_tool

from xenwb.examples import list_examples, resolve_guest


def xenwb(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenwb", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("xenwb:")
    return lines[0]


# ---------------------------------------------------------------- bad guests
@pytest.fixture(scope="module")
def bad_guests(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.txt"
    text.write_text("this is not a kernel\n")
    empty = d / "empty"
    empty.write_bytes(b"")
    elf = resolve_guest("pvdemo-pae").read_bytes()
    trunc = d / "truncated.elf"
    trunc.write_bytes(elf[:300])
    out = {"text": text, "empty": empty, "truncated": trunc}
    if have_tool("gcc") and have_tool("ld"):
        out["no-notes"] = build_kernel(d / "nonotes", bits=32, name="nonotes")
    return out


@pytest.mark.parametrize("kind", ["text", "empty", "truncated", "no-notes"])
@pytest.mark.parametrize("cmd", ["info", "run"])
def test_bad_guest_one_line_exit_2(bad_guests, cmd: str, kind: str) -> None:
    if kind not in bad_guests:
        pytest.skip("gcc/ld not available")
    line = one_error_line(xenwb(cmd, str(bad_guests[kind])))
    assert str(bad_guests[kind]) in line


def test_missing_guest_and_bad_options() -> None:
    one_error_line(xenwb("run", "/nonexistent/kernel"))
    one_error_line(xenwb("info", "no-such-example"))
    one_error_line(xenwb("run", "pvdemo-pae", "--memory", "2"))
    one_error_line(xenwb("run", "pvdemo-pae", "--max-instructions", "0"))


# ---------------------------------------------------------------- info, examples
def test_info_example() -> None:
    p = xenwb("info", "pvdemo-pae")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "notes:" in out
    for note in ("XEN_VERSION", "LOADER", "VIRT_BASE", "HYPERCALL_PAGE", "PAE_MODE", "FEATURES"):
        assert re.search(rf"^\s+{note}\s", out, re.M), note
    assert "start-of-day layout" in out
    for region in ("kernel", "p2m", "start_info", "xenstore", "console", "pagetables", "stack"):
        assert re.search(rf"^\s+{region}\s+0x[0-9a-f]{{8}} - 0x[0-9a-f]{{8}}", out, re.M), region
    assert "xen-3.0-x86_32p" in out


def test_info_nonpae_has_no_hypercall_page_note() -> None:
    p = xenwb("info", "pvdemo-nonpae")
    assert p.returncode == 0
    assert "xen-3.0-x86_32\n" in p.stdout or re.search(r"xen-3\.0-x86_32\b(?!p)", p.stdout)
    assert not re.search(r"^\s+HYPERCALL_PAGE\s", p.stdout, re.M)


def test_examples_lists_four_variants() -> None:
    p = xenwb("examples")
    assert p.returncode == 0, p.stderr
    names = {e.name for e in list_examples()}
    assert len(names) == 4
    listed = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(\S+)\s+(/\S+)$", line)
        if m:
            listed[m.group(1)] = Path(m.group(2))
    assert set(listed) == names
    for path in listed.values():
        assert path.is_file(), path
        assert path.read_bytes()[:4] == b"\x7fELF"


# ---------------------------------------------------------------- run
SUMMARY = re.compile(r"^xenwb: (\S+)(?: \((.*)\))?; (\d+) hypercalls, (\d+) faults bounced, ([\d.]+) s virtual time$")


def test_run_example() -> None:
    p = xenwb("run", "pvdemo-pae")
    assert p.returncode == 0, p.stderr
    assert re.search(r"all \d+ checks passed", p.stdout)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    m = SUMMARY.match(lines[0])
    assert m, lines[0]
    assert m.group(1) == "shutdown" and m.group(2) == "poweroff" and int(m.group(3)) > 0


def test_run_trace_jsonl(tmp_path: Path) -> None:
    trace = tmp_path / "boot.jsonl"
    p = xenwb("run", "pvdemo-nonpae", "--trace", str(trace), "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == ""
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(events) > 10
    for e in events:
        assert {"seq", "vcpu", "time_ns", "kind", "name"} <= e.keys(), e
        assert isinstance(e["time_ns"], int)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    hcalls = [e for e in events if e["kind"] == "hypercall"]
    assert hcalls
    for e in hcalls:
        assert {"nr", "eip", "args", "raw_args", "ret", "errno", "multicall"} <= e.keys()
    assert any(e["name"] == "console_io" for e in hcalls)
    assert any(e["kind"] == "shutdown" and e["name"] == "poweroff" for e in events)
    assert all(e["time_ns"] >= 0 for e in events)


def test_run_instruction_limit() -> None:
    p = xenwb("run", "pvdemo-pae", "--max-instructions", "1000")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    m = SUMMARY.match(lines[0])
    assert m and m.group(1) == "instruction-limit", lines[0]
    assert "1000 instructions" in (m.group(2) or "")


def test_run_cmdline_and_memory_reach_the_guest(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    p = xenwb("run", "pvdemo-pae", "--memory", "32", "--cmdline", "hello=world", "--trace", str(trace))
    assert p.returncode == 0, p.stderr
    reservations = [json.loads(ln) for ln in trace.read_text().splitlines()]
    rets = [e["ret"] for e in reservations if e["kind"] == "hypercall" and e["name"] == "memory_op"
            and (e.get("args") or {}).get("cmd") in ("current_reservation", "maximum_reservation")]
    assert all(r == 32 * 256 for r in rets)
