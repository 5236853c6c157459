"""Issue 16 item 5 and the tracing "Done when" lines: the declared trace schema, typed
emitters, subscription by kind, paying only for what is wanted, and the compact records
formatted later giving the bytes the writers always wrote."""

from __future__ import annotations

import enum
import inspect
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from unicorn import UC_PROT_ALL

from xenwb import _traceenc
from xenwb import trace_events as T
from xenwb.examples import resolve_guest
from xenwb.hypervisor import domain as domain_module
from xenwb.hypervisor import trace_args
from xenwb.hypervisor.hypercall_table import TABLE, decode_args
from xenwb.machine import Machine
from xenwb.session import ALL_PLUGINS, Session
from xenwb.trace import TraceBus
from xenwb.tracefile import JsonlWriter, PerfettoWriter

ROOT = Path(__file__).resolve().parent.parent
GRUB = Path("/usr/lib/grub-xen/grub-i386-xen.bin")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


# ------------------------------------------------------------------------- the schema itself
def test_readme_table_is_the_schema() -> None:
    readme = (ROOT / "README.md").read_text()
    assert T.readme_section(readme) == T.readme_table(), \
        "README's trace-format table differs from xenwb/trace_events.py: paste `python -m xenwb.trace_events`"


def test_every_event_has_one_typed_emitter() -> None:
    assert not hasattr(TraceBus, "emit"), "no generic emit(kind, name, **fields)"
    emitters = sorted(n for n in dir(TraceBus) if n.startswith("emit_"))
    assert emitters == sorted(e.emitter for e in T.EVENTS)
    for e in T.EVENTS:
        assert e.eid == T.EVENTS.index(e)
        assert all(f.sources[-1] in e.columns or f.derive for f in e.fields), e.kind
        for f in e.fields:
            for c in f.sources:
                assert c in e.columns, f"{e.kind}:{e.name_doc}: field {f.key} reads no column {c}"
        sig = inspect.signature(getattr(TraceBus, e.emitter))
        assert list(sig.parameters)[:2] == ["self", "vcpu"], e.emitter
    for k in T.KINDS:
        assert hasattr(TraceBus, f"want_{k}")


class _Clock:
    units = 1234


class _Cpu:
    eip = pc = 0xC0001000

    def regs(self) -> dict[str, int]:
        return {"eip": 0xC0002000, "pc": 0xC0002000}


class _Dom:
    class time:  # noqa: N801 - a stand-in for VirtualTime
        @staticmethod
        def now(v: Any) -> int:
            return v.clock.units


class _Vcpu:
    id = 1
    clock = _Clock()
    cpu = _Cpu()
    domain = _Dom()


SAMPLE_ARGS: dict[str, tuple[Any, ...]] = {
    "emit_hypercall": (17, (0, 0, 0, 0, 0), 0x40011, 0xC0001000, None, None, 100, 50),
    "emit_multicall_begin": (0xC0100000, 3, 0xC0001000),
    "emit_multicall_end": (3, 7),
    "emit_fault": (14, 2, 0x1000, None),
    "emit_upcall": (),
    "emit_failsafe": ({"cs": 0xE019, "eip": 0xC0003000},),
    "emit_mask": (0, 1),
    "emit_ptwr": (0xC0200000, 0x1234000, 0x63, 0x67),
    "emit_emulated": (0xC0001000, "mov eax, cr0"),
    "emit_console": (b"hi \xe9\n", "xen"),
    "emit_shutdown": ("poweroff",),
    "emit_crash": ("no handler", 0xC0001000),
    "emit_vcpu_initialise": (1, 0xC0001000, 0xC0400000, 0x4321),
    "emit_vcpu_up": (1,),
    "emit_vcpu_down": (1,),
    "emit_vcpu_register_vcpu_info": (1, 0x4FC4000),
    "emit_event_set_pending": (3, 0, True, False, False),
    "emit_event_unmask": (3, True),
    "emit_sched_block": (True, [3, 4], None),
    "emit_sched_wake": (),
    "emit_xenstore": ("READ", 1, 0, ["device/vbd"], "ENOENT"),
    "emit_event_init_control": ("FIFO", 0, 0x4f00, 0),
    "emit_mode": ("user",),
    "emit_user_syscall": (0x400076, 39),
    "emit_io": ("in", 0x64, 1, 0xFF, 0xC0001000, False),
    "emit_input_console": (5000, 2, "ls\n"),
    "emit_input_xenstore": (7000, 3, "control/shutdown", "poweroff"),
}


def test_each_emitter_makes_its_event_by_the_schema() -> None:
    bus = TraceBus()
    recs: list[tuple] = []
    bus.subscribe_records(recs.append)
    for e in T.EVENTS:
        getattr(bus, e.emitter)(_Vcpu(), *SAMPLE_ARGS[e.emitter])
    assert [r[0] for r in recs] == [e.eid for e in T.EVENTS]
    for r in recs:
        e = T.EVENTS[r[0]]
        assert len(r) == 4 + len(e.columns), e.emitter
        d = bus.as_dict(r)
        assert T.check(d) == [], d
        assert bus.formatter.jsonl([r]).decode() == _dumps(d) + "\n"


# ---------------------------------------------------------------- the encoder is json.dumps
class Color(enum.IntEnum):
    RED = 3


class Name(str):
    pass


class Thing:
    def __str__(self) -> str:
        return "thing\u2603"


EDGE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1 << 63, -(1 << 63) - 1, 10 ** 40, -(10 ** 30), 0.0, -0.0, 1.5, 1e300, 1e-300,
    float("nan"), float("inf"), float("-inf"), "", "plain", 'q"uote\\back', "\x00\x01\x1f\x7f\n\r\t\b\f",
    "caf\u00e9 \u2603 \U0001f600 \udcff", Color.RED, Name("sub"), Thing(), b"bytes", (1, 2), [], {}, [[[]]],
    {"a": 1, 2: "int key", 1.5: "float key", True: "bool key", None: "none key"}, {Color.RED: 1},
    {"nested": {"deep": [1, {"x": (None, "y")}]}}, range(3), {1, 2} and [1, 2],
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(10 if depth < 4 else 6)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.randrange(-(1 << 70), 1 << 70) >> rng.randrange(70)
    if pick == 2:
        return rng.choice([rng.random() * 10 ** rng.randrange(-20, 20), float("nan"), -0.0])
    if pick in (3, 4, 5):
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 32), rng.randrange(128, 0x3000),
                                       rng.randrange(0x10000, 0x10FFFF)])) for _ in range(rng.randrange(8)))
    if pick in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 8:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    keys = ["k", "k2", "\u00e9", 5, 2.5, None]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_c_encoder_is_json_dumps() -> None:
    for v in EDGE_VALUES:
        assert _traceenc.dumps(v) == _dumps(v), repr(v)
    rng = random.Random(16)
    for _ in range(3000):
        v = _random_value(rng)
        assert _traceenc.dumps(v) == _dumps(v), repr(v)
    assert _traceenc.dumps({"p": T.Packed(b'{"a":[1]}')}) == '{"p":{"a":[1]}}'
    with pytest.raises(TypeError):
        _traceenc.dumps({(1, 2): 3})


def _records(guest: str, vcpus: int = 1, stdin: bytes | None = None) -> tuple[list[tuple], T.Formatter]:
    s = Session(guest, vcpus=vcpus, plugins=(), console=lambda b: None)
    if stdin is not None:
        from xenwb.backends import ScriptedInput
        s.machine.input_source = ScriptedInput(stdin)
    recs: list[tuple] = []
    s.machine.domain.trace.subscribe_records(recs.append)
    s.machine.set_limits(timeout_ns=2 * 10 ** 9)
    s.run()
    return recs, s.machine.domain.trace.formatter


RUNS = [("pvdemo-pae", 3, None), ("pvdemo-nonpae", 1, None)]
if GRUB.exists():
    RUNS.append((str(GRUB), 1, b"echo hello\nls\nhalt\n"))


@pytest.mark.parametrize("guest,vcpus,stdin", RUNS, ids=lambda x: Path(str(x)).name if isinstance(x, str) else "")
def test_records_formatted_later_give_the_old_bytes(guest: str, vcpus: int, stdin: bytes | None) -> None:
    """The old way (each event a dict, json.dumps'd: what the writers always wrote) against the
    new way (compact records, encoded in C at the flush), for every record of real runs; and
    Perfetto against the same writer with json.dumps."""
    recs, fmt = _records(guest, vcpus, stdin)
    assert len(recs) > 150
    old = "".join(_dumps(fmt.as_dict(r)) + "\n" for r in recs).encode()
    assert fmt.jsonl(recs) == old
    assert T.Formatter.jsonl_python(fmt, recs).encode() == old
    enc = fmt.encoder()                                     # streaming: one record at a time
    for r in recs:
        enc.add(r)
    assert enc.take() == old
    # records kept compactly (plugin history) give the same bytes
    assert fmt.jsonl([T.compact(r) for r in recs]) == old
    assert [fmt.as_dict(T.compact(r)) for r in recs] == [json.loads(line) for line in old.decode().splitlines()]


def test_perfetto_bytes_are_the_old_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xenwb.tracefile as tf
    recs, fmt = _records("pvdemo-pae", 2)
    out = {}
    for name, dumps in (("c", tf.dumps), ("json", _dumps)):
        monkeypatch.setattr(tf, "dumps", dumps)
        w = PerfettoWriter.open(str(tmp_path / f"{name}.json"), fmt)
        for i, r in enumerate(recs):
            w.add(r)
            if i % 97 == 0:
                w.flush_pending()
        w.close()
        out[name] = (tmp_path / f"{name}.json").read_bytes()
    assert out["c"] == out["json"]
    assert json.loads(out["c"])[0]["name"] == "process_name"


def test_dict_events_still_write_the_same(tmp_path: Path) -> None:
    """TraceWriter.write(dict) (the dict subscribers' form) and the records give the same file."""
    recs, fmt = _records("pvdemo-pae")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    w = JsonlWriter.open(str(a), fmt)
    for r in recs:
        w.add(r)
    w.close()
    w = JsonlWriter.open(str(b), fmt)
    for r in recs:
        w.write(fmt.as_dict(r))
    w.close()
    assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------------ pay for what is wanted
def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The hypercall numbers decoded, at the call (the domain's capturers) or later."""
    calls: list[int] = []
    real = trace_args.decode_args
    real_capturers = trace_args.capturers

    def counting(vcpu: Any, nr: int, args: tuple[int, ...], geo: Any = None) -> Any:
        calls.append(nr)
        return real(vcpu, nr, args, geo)

    def counted(nr: int, capture: Any) -> Any:
        def run(vcpu: Any, args: tuple[int, ...]) -> Any:
            calls.append(nr)
            return capture(vcpu, args)
        return run

    def counting_capturers(word: int) -> dict[int, Any]:
        return {nr: counted(nr, c) for nr, c in real_capturers(word).items()}
    monkeypatch.setattr(trace_args, "decode_args", counting)
    monkeypatch.setattr(domain_module, "capturers", counting_capturers)
    return calls


def test_nothing_is_decoded_or_observed_for_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_decodes(monkeypatch)
    m = Machine(resolve_guest("pvdemo-pae"))
    seen: list[tuple] = []
    m.domain.trace.subscribe_records(seen.append, kinds={"console"})
    assert not m.domain.trace.want_hypercall and not m.domain.trace.want_mask
    r = m.run()
    assert r.reason.value == "shutdown" and calls == [] and not m.domain.mask_observer.enabled
    assert {T.kind_of(x) for x in seen} == {"console"}
    assert m.domain.trace.seq == len(seen)        # nothing else was even numbered


def test_hypercalls_decoded_at_the_call_only_when_they_read_the_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_decodes(monkeypatch)
    m = Machine(resolve_guest("pvdemo-pae"))
    recs: list[tuple] = []
    m.domain.trace.subscribe_records(recs.append, kinds={"hypercall"})
    m.run()
    at_call = trace_args.decoded_at_call(4)
    hc = T.event("hypercall")
    top = [r for r in recs if r[hc.col("multicall")] is None]
    assert calls and set(calls) <= at_call
    for r in top:
        nr = r[hc.col("nr")]
        if nr != 23:                                            # iret: {} (it has no arguments)
            assert (r[hc.col("decoded")] is None) == (nr not in at_call), nr
    assert any(r[hc.col("decoded")] is None for r in top)      # xen_version, set_timer_op... decoded later


@pytest.mark.parametrize("guest", ["pvdemo-pae", "pvdemo64"])
def test_pure_decoders_do_not_need_the_vcpu(guest: str) -> None:
    """A decoder classified as reading nothing gives the same with and without its vcpu, for
    the registers it depends on (later_width) whatever the others hold: given only the
    domain's geometry, as the trace's formatter runs it."""
    m = Machine(resolve_guest(guest))
    v, geo = m.vcpus[0], m.domain.geo
    rng = random.Random(5)
    at_call, widths = trace_args.decoded_at_call(geo.word), trace_args.later_width(geo.word)
    pure = [nr for nr, e in TABLE.items() if e.decoder_for(geo.word)[0] is not None and nr not in at_call]
    assert pure and set(pure) == set(widths) and {17, 29} & at_call == {29}
    # set_timer_op and update_va_mapping read their guest's width and paging mode, not its vcpu
    assert {14, 15} <= set(pure) and trace_args.takes_geometry(TABLE[15].decoder)
    for nr in pure:
        w = widths[nr]
        for _ in range(20):
            args = tuple(rng.choice([0, 1, 2, 7, 0xFFFFFFFF, rng.randrange(1 << 32)]) for _ in range(5))
            other = args[:w] + tuple(rng.randrange(1 << 32) for _ in range(5 - w))
            with_vcpu = decode_args(v, nr, args)
            assert trace_args.decode_later(geo, nr, args) == with_vcpu
            if "undecodable" not in with_vcpu:
                assert trace_args.decode_later(geo, nr, other) == with_vcpu
    assert trace_args.reads_guest(TABLE[1].decoder)        # mmu_update reads its requests
    deadline = decode_args(v, 15, (0x1234, 0x5, 0, 0, 0))["deadline_ns"]
    assert deadline == (0x1234 if geo.word == 8 else 0x5_0000_1234)       # one register, or a pair


def test_mask_observed_only_while_wanted() -> None:
    m = Machine(resolve_guest("pvdemo-pae"), vcpus=2)
    obs = m.domain.mask_observer
    bus = m.domain.trace
    perms = lambda: {r[2] for v in m.vcpus for r in v.cpu.uc.mem_regions()}  # noqa: E731
    recs: list[tuple] = []
    bus.subscribe_records(recs.append, kinds={"hypercall"})
    assert not obs.enabled
    bus.subscribe_records(recs.append, kinds={"mask"})
    assert obs.enabled and perms() != {UC_PROT_ALL}
    m.run()
    by = T.event("mask").col("by")
    assert any(r[0] == T.event("mask").eid and r[by] == "guest" for r in recs)
    bus.unsubscribe(recs.append)
    assert not obs.enabled and perms() == {UC_PROT_ALL}


def test_an_emit_nobody_wants_touches_nothing() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"emitter read vcpu.{name}")
    bus = TraceBus()
    bus.subscribe_records(lambda r: None, kinds={"console"})
    v = Untouchable()
    for e in T.EVENTS:
        if e.kind != "console":
            getattr(bus, e.emitter)(v, *SAMPLE_ARGS[e.emitter])
    assert bus.seq == 0


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="no event kind"):
        TraceBus().subscribe(lambda e: None, kinds={"hypercalls"})


# ------------------------------------------------------------------------ the Session's plumbing
def test_events_stops_and_direct_writers_give_the_straight_file(tmp_path: Path) -> None:
    """A trace file written while Events stops come and go (the session switching between
    its own dispatcher and the writers subscribed directly) is the uninterrupted one."""
    from xenwb.session import Events
    straight, stopped = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with Session("pvdemo-pae", console=lambda b: None) as s:
        s.record(str(straight))
        s.run()
    with Session("pvdemo-pae", console=lambda b: None) as s:
        s.record(str(stopped))
        s.run(until=Events(7))
        got = [e["seq"] for e in s.events(chunk=50) if e["kind"] == "hypercall"][:3]
        s.run(until=Events(100))
        s.run()
    assert straight.read_bytes() == stopped.read_bytes()
    assert got and got == sorted(got)


def test_history_is_bounded_and_compact() -> None:
    s = Session("pvdemo-pae", plugins=ALL_PLUGINS, console=lambda b: None, history=40)
    s.run()
    hc = s.plugins.get("hypercalls")
    assert len(hc.records) == 40
    assert sum(r["calls"] for r in s.command("hypercalls summary").data) > 40      # the summary counts all
    assert len(s.command("hypercalls --last 0").data) == 40
    assert len(s.plugins.get("evmask").history_records) == 40
    assert len(s.plugins.get("evmask").windows) <= 40
    assert len(s.plugins.get("multicall").batches) <= 4
    # compact: decoded guest structures kept as encoded JSON, a few hundred bytes a record
    assert any(type(r[T.event("hypercall").col("decoded")]) is T.Packed for r in hc.records)
    size = sum(_deep_size(r) for r in hc.records) / len(hc.records)
    assert size < 1200, size


def _deep_size(obj: Any, seen: set[int] | None = None) -> int:
    import sys
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, bool) or (isinstance(obj, int) and -5 <= obj <= 256):
        return 0
    seen.add(id(obj))
    n = sys.getsizeof(obj)
    if isinstance(obj, (tuple, list)):
        n += sum(_deep_size(x, seen) for x in obj)
    elif isinstance(obj, dict):
        n += sum(_deep_size(k, seen) + _deep_size(x, seen) for k, x in obj.items())
    return n


def test_bench_guest_trace_is_whole(tmp_path: Path) -> None:
    """The benchmark's loop of 3,000 hypercalls, traced: every call in the file, in order."""
    import subprocess
    elf = tmp_path / "bench"
    subprocess.run(["gcc", "-m32", "-c", str(ROOT / "benchmarks" / "guests" / "bench.S"), "-o", str(tmp_path / "b.o")],
                   check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext-segment=0xC0000000", "--build-id=none", "-o", str(elf),
                    str(tmp_path / "b.o")], check=True)
    with Session(elf, plugins=(), console=lambda b: None) as s:
        s.machine.vcpus[0].write_virt(s.image.lookup("bench_hypercalls").address, struct.pack("<I", 3000))
        s.record(str(tmp_path / "t.jsonl"))
        s.run()
    evs = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    calls = [e for e in evs if e["name"] == "xen_version"]
    assert len(calls) == 3000 and [e["raw_args"][3] for e in calls] == list(range(3000, 0, -1))
    assert all(e["args"] == {"cmd": "version", "arg": "0x0"} and e["symbol"].startswith("hcall_loop") for e in calls)


def test_events_of_real_runs_follow_the_schema() -> None:
    seen: set[tuple[str, str]] = set()
    for guest, vcpus, stdin in RUNS:
        recs, fmt = _records(guest, vcpus, stdin)
        for r in recs:
            ev = fmt.as_dict(r)
            assert T.check(ev) == [], ev
            seen.add((ev["kind"], ev["name"]))
    kinds = {k for k, _ in seen}
    want = {"hypercall", "multicall", "fault", "upcall", "mask", "console", "shutdown", "vcpu", "event", "sched",
            "emulate"} | ({"xenstore"} if GRUB.exists() else set())
    assert kinds >= want, want - kinds
