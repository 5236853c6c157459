"""The `xenwb` command line, run as a subprocess ([sys.executable, "-m", "xenwb", ...]).

README contract: `run` exits 0 on poweroff, 1 on crash/other shutdown/hang/limit, 2 on a
workbench error; a workbench error is one line on stderr starting "xenwb:", never a traceback;
`run` prints one summary line on stderr; `--trace FILE` writes JSON lines with at least seq,
vcpu, time_ns, kind and name; `examples` lists the bundled guests with their paths.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import build_kernel, have_tool

from xenwb.examples import list_examples, resolve_guest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
GRUB = Path("/usr/lib/grub-xen/grub-i386-xen.bin")


def xenwb(*args: str, timeout: int = 120, input: str | None = None, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xenwb", *args], capture_output=True, text=True,
                          timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          cwd=cwd, env=env)


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


def test_examples_lists_every_variant() -> None:
    p = xenwb("examples")
    assert p.returncode == 0, p.stderr
    names = {e.name for e in list_examples()}
    assert len(names) == 6
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
SUMMARY = re.compile(r"^xenwb: (\S+)(?: \((.*)\))?; (\d+) hypercalls \(\+(\d+) multicall entries\), "
                     r"(\d+) faults bounced, ([\d.]+) s virtual time$")


def test_run_example() -> None:
    """pvdemo logs with console_io only: its lines are on the hypervisor console (stderr), each
    with the "(d1) " prefix of xen/drivers/char/console.c guest_printk, before the summary
    line; its PV console (stdout) stays empty."""
    p = xenwb("run", "pvdemo-pae")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert re.search(r"^\(d1\) .*all \d+ checks passed$", p.stderr, re.M), p.stderr[-500:]
    assert all(ln.startswith("(d1) ") for ln in lines[:-1]), lines[:3]
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    assert m.group(1) == "shutdown" and m.group(2) == "poweroff" and int(m.group(3)) > 0


def test_run_consoles_merged_or_to_a_file(tmp_path: Path) -> None:
    """--merge-consoles puts the hypervisor console's lines on stdout; --hv-console FILE writes
    them to FILE; either way stderr keeps only the summary."""
    p = xenwb("run", "pvdemo-pae", "--merge-consoles")
    assert p.returncode == 0, p.stderr
    assert re.search(r"^\(d1\) .*all \d+ checks passed$", p.stdout, re.M)
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
    log = tmp_path / "dmesg.txt"
    p = xenwb("run", "pvdemo-pae", "--hv-console", str(log), "--quiet")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p.stderr
    assert re.search(r"^\(d1\) .*all \d+ checks passed$", log.read_text(), re.M)


def test_run_trace_jsonl(tmp_path: Path) -> None:
    trace = tmp_path / "boot.jsonl"
    p = xenwb("run", "pvdemo-nonpae", "--trace", str(trace), "--quiet", "--merge-consoles")
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
    console = [e for e in events if e["kind"] == "console"]
    assert console and all(e["console"] == "xen" and e["text"].startswith("(d1) ") for e in console)
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


# ---------------------------------------------------------------- one-line errors before the guest starts
def refused_before_boot(p: subprocess.CompletedProcess) -> str:
    """A one-line error, exit 2, and the guest never ran (no console output)."""
    line = one_error_line(p)
    assert "pvdemo:" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-300:]
    return line


@pytest.mark.parametrize("args, says", [
    (["run", "--timeout", "nan"], "--timeout"), (["run", "--timeout", "inf"], "--timeout"),
    (["run", "--timeout", "1e300"], "--timeout"), (["run", "--timeout", "-1"], "--timeout"),
    (["run", "--timeout", "0"], "--timeout"), (["run", "--timeout", "1e-12"], "--timeout"),
    (["trace", "-o", "T", "--timeout", "inf"], "--timeout"),
    (["trace", "-o", "T", "--until", "time:inf"], "--until"), (["trace", "-o", "T", "--until", "time:nan"], "--until"),
    (["trace", "-o", "T", "--until", "time:-1"], "--until"), (["trace", "-o", "T", "--until", "time:1e300"], "--until"),
    (["trace", "-o", "T", "--until", "events:0"], "--until"), (["trace", "-o", "T", "--until", "events:x"], "--until"),
    (["run", "--max-instructions", "abc"], "--max-instructions"),
    (["run", "--max-instructions", "1e3"], "--max-instructions"),
    (["run", "--max-instructions", "-5"], "--max-instructions"),
    (["run", "--max-instructions", "99999999999999999999999"], "--max-instructions"),
    (["trace", "-o", "T", "--max-instructions", "0"], "--max-instructions"),
    (["trace", "-o", "T", "--until", "no_such_symbol"], "no_such_symbol"),
    (["trace", "-o", "T", "--vcpu", "1"], "--vcpu 1"),
    (["run", "--memory", "-1"], "--memory"), (["run", "--vcpus", "2", "--bogus"], "--bogus"),
])
def test_bad_limits_and_options(tmp_path: Path, args: list[str], says: str) -> None:
    out = tmp_path / "t.jsonl"
    args = [str(out) if a == "T" else a for a in args]
    line = refused_before_boot(xenwb(args[0], "pvdemo-pae", *args[1:]))
    assert says in line
    assert not out.exists()                   # nothing was written either


def test_trace_time_stops_at_the_earlier_of_until_and_timeout(tmp_path: Path) -> None:
    def run(*args: str) -> tuple[int, float]:
        p = xenwb("trace", "pvdemo-pae", "-o", str(tmp_path / "t.jsonl"), *args)
        m = SUMMARY.match(p.stderr.strip().splitlines()[-1])
        assert m and m.group(1) == "time-limit", p.stderr
        return p.returncode, float(m.group(6))
    rc, t = run("--until", "time:0.001", "--timeout", "0.0005")
    assert rc == 1 and t < 0.0006               # --timeout came first: a limit, exit 1
    rc, t = run("--until", "time:0.0005", "--timeout", "1")
    assert rc == 0 and t < 0.0006               # the stop asked for: exit 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gdb_address_errors() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = refused_before_boot(xenwb("run", "pvdemo-pae", "--gdb", f"127.0.0.1:{port}"))
        assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--gdb", "192.0.2.1:1234"))     # TEST-NET-1: not ours
    assert "cannot listen on 192.0.2.1:1234" in line
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--gdb", "no-such-host.invalid:1234"))
    assert "cannot resolve 'no-such-host.invalid'" in line
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--gdb", "70000"))
    assert "port 70000 out of range" in line
    line = refused_before_boot(xenwb("run", "--gdb", "pvdemo-pae"))
    assert "write the guest before --gdb" in line


@pytest.mark.parametrize("mib", ["-1", "0", "3", "1537", "99999999999", "lots"])
def test_info_memory_out_of_range(mib: str) -> None:
    line = one_error_line(xenwb("info", "pvdemo-pae", "--memory", mib))
    assert "--memory" in line
    assert xenwb("info", "pvdemo-pae", "--memory", "4").returncode == 0


def test_plugin_typo() -> None:
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--plugin", "hypercals"))
    assert line.startswith("xenwb: no plugin 'hypercals' (available: ")
    assert "hypercalls" in line and "pagetable" in line


def test_exec_typo_is_refused_before_the_guest_starts(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--trace", str(out), "--exec", "hypercals summary"))
    assert "unknown command 'hypercals'" in line and "did you mean 'hypercalls summary'?" in line
    assert not out.exists()
    line = refused_before_boot(xenwb("trace", "pvdemo-pae", "-o", str(out), "--exec", "pt wlak start_kernel"))
    assert "did you mean 'pt walk'?" in line
    assert not out.exists()
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--plugin", "evmask", "--exec", "multicall stats"))
    assert "plugin 'multicall', which is not enabled (add --plugin multicall)" in line


def test_exec_failing_when_it_runs_is_an_error_on_stderr() -> None:
    p = xenwb("run", "pvdemo-pae", "--exec", "hypercalls show 99999999", "--exec", "hypercalls summary")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert re.search(r"all \d+ checks passed", p.stderr) and "total" in p.stdout    # the other command still ran
    assert "99999999" not in p.stdout
    errs = [ln for ln in p.stderr.splitlines() if ln.startswith("xenwb: --exec 'hypercalls show 99999999':")]
    assert len(errs) == 1, p.stderr


# ---------------------------------------------------------------- modules
def test_module_files_are_checked_before_they_are_read(tmp_path: Path) -> None:
    big = tmp_path / "big.img"                 # sparse: checked by size, never read
    with open(big, "wb") as f:
        f.truncate(65 << 20)
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--memory", "64", "--module", str(big)))
    assert str(big) in line and "more than the guest's 64 MiB of memory" in line
    huge = tmp_path / "huge.img"
    with open(huge, "wb") as f:
        f.truncate((1 << 30) + 1)
    line = refused_before_boot(xenwb("run", "pvdemo-pae", "--memory", "1536", "--module", str(huge), timeout=30))
    assert "more than the 1024 MiB limit for a module" in line
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, why in (("/dev/zero", "not a regular file"), (str(tmp_path), "is a directory"),
                      (str(fifo), "not a regular file"), (str(tmp_path / "missing"), "No such file")):
        for cmd in ("run", "info"):
            line = refused_before_boot(xenwb(cmd, "pvdemo-pae", "--module", path, timeout=30))
            assert path in line and why in line, line
    ok = tmp_path / "initrd"
    ok.write_bytes(b"\x5a" * 12345)
    p = xenwb("run", "pvdemo-pae", "--module", str(ok))
    assert p.returncode == 0, p.stderr
    assert "mod_len 12345" in p.stderr                      # pvdemo's console_io line
    p = xenwb("info", "pvdemo-pae", "--module", str(ok))
    assert p.returncode == 0 and re.search(r"^\s+module\s", p.stdout, re.M), p.stdout


# ---------------------------------------------------------------- trace: input and limits
def test_trace_limits() -> None:
    p = xenwb("trace", "pvdemo-pae", "-o", os.devnull, "--format", "jsonl", "--timeout", "0.01")
    assert p.returncode == 1, p.stderr
    m = SUMMARY.match(p.stderr.strip().splitlines()[-1])
    assert m and m.group(1) == "time-limit", p.stderr
    p = xenwb("trace", "pvdemo-pae", "-o", os.devnull, "--format", "jsonl", "--max-instructions", "1000")
    assert p.returncode == 1, p.stderr
    m = SUMMARY.match(p.stderr.strip().splitlines()[-1])
    assert m and m.group(1) == "instruction-limit" and "1000 instructions" in m.group(2), p.stderr


@pytest.mark.skipif(not GRUB.exists(), reason=f"{GRUB} missing: install grub-xen-host")
def test_trace_reads_stdin_like_run(tmp_path: Path) -> None:
    out = tmp_path / "grub.jsonl"
    # the limit is a guard only: GRUB halts on the piped `halt`, long before it
    p = xenwb("trace", str(GRUB), "-o", str(out), "--timeout", "5", input="echo hello\nhalt\n", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "grub>" in p.stdout and re.search(r"\nhello\r?\n", p.stdout)
    assert "shutdown (poweroff)" in p.stderr
    evs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert any(e["kind"] == "shutdown" and e["name"] == "poweroff" for e in evs)


# ---------------------------------------------------------------- trace filters
def _trace(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "f.jsonl"
    p = xenwb("trace", "pvdemo-pae", "-o", str(out), "--quiet", *args)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert lines[0]["kind"] == "session"        # the header: what the run was (xenwb replay)
    return lines[1:]


def test_trace_vcpu_filter_applies_to_every_kind(tmp_path: Path) -> None:
    everything = _trace(tmp_path, "--vcpus", "2")
    evs = _trace(tmp_path, "--vcpus", "2", "--vcpu", "1")
    assert evs and all(e["vcpu"] == 1 for e in evs)
    kinds = {e["kind"] for e in evs}
    assert {"hypercall", "mask", "upcall", "sched"} <= kinds, kinds
    assert evs == [e for e in everything if e["vcpu"] == 1]          # nothing of vcpu 1 left out either


def test_trace_hypercall_filters_leave_other_kinds_out(tmp_path: Path) -> None:
    everything = _trace(tmp_path)
    failed = _trace(tmp_path, "--failed")
    assert failed == [e for e in everything if e["kind"] == "hypercall" and e["ret"] < 0]
    assert any(e["multicall"] is not None for e in failed)             # the failing multicall entry
    named = _trace(tmp_path, "--name", "mmuext_op,multicall")
    assert named and named == [e for e in everything if e["kind"] == "hypercall"
                               and e["name"] in ("mmuext_op", "multicall")]


def test_trace_filter_help_says_what_is_filtered() -> None:
    p = xenwb("trace", "--help")
    text = " ".join(p.stdout.split())
    assert "only events of these vcpus (comma-separated), of every kind" in text
    assert "only hypercalls that failed (result < 0; multicall entries included): no other kind of event" in text


# ---------------------------------------------------------------- the summary line and the table agree
def test_summary_line_and_table_count_alike() -> None:
    p = xenwb("run", "pvdemo-pae", "--vcpus", "2", "--exec", "hypercalls summary", "--json", "--merge-consoles")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout[p.stdout.rindex("\n[") + 1:])
    m = SUMMARY.match(p.stderr.strip().splitlines()[-1])
    assert m, p.stderr
    traps, entries = int(m.group(3)), int(m.group(4))
    assert entries > 0
    assert entries == sum(r["in_multicall"] for r in rows)
    assert traps + entries == sum(r["calls"] for r in rows)


# ---------------------------------------------------------------- README
def readme_command(marker: str) -> str:
    """The README code line (backslash continuations joined) that contains marker."""
    lines = README.replace("\\\n", " ").splitlines()
    hits = [ln.strip() for ln in lines if ln.startswith("    ") and marker in ln]
    assert len(hits) == 1, (marker, hits)
    return re.sub(r"\s+", " ", hits[0])


def as_local(cmd: str) -> str:
    """A README command for this interpreter (the venv's xenwb may live elsewhere)."""
    return cmd.replace(".venv/bin/xenwb", f"{shlex.quote(sys.executable)} -m xenwb")


def test_readme_early_trace_example_writes_a_useful_file(tmp_path: Path) -> None:
    cmd = readme_command("-o early.jsonl")
    args = shlex.split(cmd)
    assert args[:2] == ["xenwb", "trace"]
    p = xenwb(*args[1:], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    evs = [json.loads(ln) for ln in (tmp_path / "early.jsonl").read_text().splitlines()]
    names = {e["name"] for e in evs if e["kind"] == "hypercall"}
    assert {"set_trap_table", "mmuext_op", "mmu_update", "multicall", "set_gdt"} <= names, names
    assert any(e["kind"] == "fault" for e in evs)
    assert re.search(r"^L1\s", p.stdout, re.M)                        # the walk's output


def test_readme_main_command_runs_unattended(tmp_path: Path) -> None:
    cmd = readme_command("--trace boot.jsonl --exec")
    assert cmd.startswith("./scripts/bootstrap && ")
    run = cmd.split("&& ", 1)[1]
    port = free_port()         # the README's port (1234) may be taken on a shared machine
    assert " --gdb --" in run
    run = as_local(run).replace(" --gdb ", f" --gdb 127.0.0.1:{port} ")
    p = subprocess.run(run, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert "total" in p.stdout and (tmp_path / "boot.jsonl").stat().st_size > 0
    assert SUMMARY.match(p.stderr.strip().splitlines()[-1]), p.stderr


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_readme_attach_instructions_work(tmp_path: Path) -> None:
    wait = readme_command("--vcpus 2 --gdb --wait")
    attach = readme_command("awk")
    port = free_port()
    wait = as_local(wait).replace(" --gdb ", f" --gdb 127.0.0.1:{port} ")
    attach = as_local(attach).replace("target remote :1234", f"target remote :{port}")
    assert attach.startswith("gdb ")
    attach = "gdb -batch -nx " + attach[len("gdb "):]
    proc = subprocess.Popen(shlex.split(wait), cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()              # the stub listens: the guest waits
        assert "the guest waits for gdb" in first, first
        g = subprocess.run(attach, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert re.search(r"Breakpoint 1, step_smp", g.stdout), g.stdout + g.stderr
        out, err = proc.communicate(timeout=120)   # gdb detached: the guest runs on to its poweroff
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert re.search(r"all \d+ checks passed", err)        # the hypervisor console


def test_readme_outputs_are_git_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = set(re.findall(r"(?:-o|--trace|record\()\s*\"?([\w.-]+\.jsonl?)", README))
    assert {"boot.jsonl", "early.jsonl", "failures.jsonl", "boot.json"} <= outputs, outputs
    for name in sorted(outputs):
        r = subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO)
        assert r.returncode == 0, f"{name} is not git-ignored"
    tracked = REPO / "examples" / "guests" / "pvdemo" / "variants.json"
    assert subprocess.run(["git", "check-ignore", "-q", str(tracked)], cwd=REPO).returncode == 1


# ---------------------------------------------------------------- example-build cache
def test_example_cache_is_per_checkout(tmp_path: Path) -> None:
    if not (have_tool("gcc") and have_tool("ld")):
        pytest.skip("gcc/ld not available")
    src = REPO / "examples" / "guests" / "pvdemo"
    paths = {}
    for co in ("a", "b"):
        root = tmp_path / co / "examples" / "guests"
        shutil.copytree(src, root / "pvdemo")
        env = dict(os.environ, XENWB_EXAMPLES=str(root), XENWB_CACHE=str(tmp_path / "cache"))
        p = xenwb("info", "pvdemo-pae", env=env)
        assert p.returncode == 0, p.stderr
        paths[co] = Path(re.search(r"^guest:\s+(\S+)", p.stdout, re.M).group(1))
    assert paths["a"] != paths["b"]                  # identical sources, yet one build each
    for co, other in (("a", "b"), ("b", "a")):
        elf = paths[co].read_bytes()
        assert str(tmp_path / co / "examples").encode() in elf                 # its own DWARF file names
        assert str(tmp_path / other / "examples").encode() not in elf
