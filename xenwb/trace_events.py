"""The trace schema: every event the machine emits, with its kind, its name, and its fields
and their JSON types, in one place (as QEMU's `trace-events` files declare theirs).

An event travels as a *record*, a plain tuple built when it happens:

    (eid, seq, vcpu, time_ns, column, column, ...)

`eid` indexes EVENTS; the columns are what the emitter captured, raw (numbers, the
captured guest structures), in the order EVENTS declares. Nothing is formatted then: no
dict, no symbol lookup, no enum name. What a reader sees, the JSON event

    {"seq": .., "vcpu": .., "time_ns": .., "kind": .., "name": .., field: value, ...}

is *derived* from the record later (a trace writer's flush, a plugin command, a
subscriber that asked for dicts): a field is a column as it is, or a derivation of
columns (`symbol(eip)`, `errno(ret)`, `hypercall_name(nr)`, `args(nr, raw_args, decoded)`,
...). Derivations are pure functions of the columns (and of the guest's symbol table),
so deriving later gives what deriving at once would have given, byte for byte. The one
derivation that needs the hypervisor is `args`: a hypercall's decoded arguments. A decoder
that reads guest memory ran at the call (its result is the `decoded` column); one that
reads nothing but the registers runs when the record is formatted (`decoded` is None).

README's "Trace format (JSONL)" table is generated from EVENTS (`python -m xenwb.trace_events`)
and tests/test_trace_schema.py fails when they disagree.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xenwb.abi.constants import TRAP_NAMES, errno_name, hypercall_name

try:  # the C encoder (setup.py builds it with _vclock); without it, json.dumps: the same bytes
    from xenwb import _traceenc
except ImportError:  # pragma: no cover
    _traceenc = None

Record = tuple[Any, ...]
BASE = ("seq", "vcpu", "time_ns", "kind", "name")      # the keys every event starts with
MEMO_MAX = 1 << 16                                     # entries per derivation memo (symbols, names)
ARGS_MEMO_MAX = 1 << 12                                # decoded arguments kept, per (nr, registers)

# JSON types of fields, as the README shows them
TYPES = ("int", "int|null", "str", "str|null", "bool", "int[]", "json")


@dataclass(frozen=True)
class Field:
    """One JSON field of an event: `key`, its JSON type, what it means, and where it comes
    from: the column of the same name, or `derive` = (derivation, column, ...)."""

    key: str
    type: str
    doc: str = ""
    derive: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        assert self.type in TYPES, f"{self.key}: unknown type {self.type!r}"

    @property
    def sources(self) -> tuple[str, ...]:
        return self.derive[1:] if self.derive else (self.key,)


@dataclass(frozen=True)
class Event:
    """One event: its kind and name (fixed, or derived from columns: `name_from`), the
    emitter of the trace bus that makes it, the columns it captures and its JSON fields."""

    kind: str
    name: str | None
    emitter: str
    columns: tuple[str, ...]
    fields: tuple[Field, ...]
    doc: str = ""
    name_from: tuple[str, ...] | None = None      # (derivation, column...) when name is None
    eid: int = -1

    def col(self, column: str) -> int:
        """Index of a column in this event's records."""
        return 4 + self.columns.index(column)

    @property
    def name_doc(self) -> str:
        if self.name is not None:
            return self.name
        d = self.name_from or ()
        return f"{d[0]}({', '.join(d[1:])})" if d[0] != "column" else d[1]


def _f(key: str, type_: str, doc: str = "", derive: str | None = None) -> Field:
    """A field; `derive` is written as a call: "symbol(eip)"."""
    if derive is None:
        return Field(key, type_, doc)
    fn, _, rest = derive.partition("(")
    return Field(key, type_, doc, (fn, *[a.strip() for a in rest.rstrip(")").split(",") if a.strip()]))


def _ev(kind: str, name: str, emitter: str, columns: str, fields: Sequence[Field], doc: str = "") -> Event:
    """An event; a name written as a call ("hypercall_name(nr)") or as "=column" is derived."""
    name_from = None
    fixed: str | None = name
    if name.startswith("="):
        name_from, fixed = ("column", name[1:]), None
    elif "(" in name:
        fn, _, rest = name.partition("(")
        name_from, fixed = (fn, *[a.strip() for a in rest.rstrip(")").split(",")]), None
    return Event(kind, fixed, emitter, tuple(columns.split()), tuple(fields), doc, name_from)


SYMBOL = "the symbol of `eip`, or null"

# -- the schema -------------------------------------------------------------------------------------
#   kind        name                  emitter (xenwb/trace.py)        columns captured (record order)
EVENTS: tuple[Event, ...] = tuple(Event(**{**e.__dict__, "eid": i}) for i, e in enumerate((
    _ev("hypercall", "hypercall_name(nr)", "emit_hypercall", "nr eip raw_args ret decoded multicall duration_ns", [
        _f("nr", "int", "hypercall number"),
        _f("eip", "int", "caller: the `int $0x82`, or the return address of a hypercall-page stub"),
        _f("symbol", "str|null", SYMBOL, "symbol(eip)"),
        _f("args", "json", "decoded arguments, with the guest structures they point to, read at the call",
           "args(nr, raw_args, decoded)"),
        _f("raw_args", "int[]", "the argument registers", "list(raw_args)"),
        _f("ret", "int", "result"),
        _f("errno", "str|null", "the result's errno name when negative", "errno(ret)"),
        _f("multicall", "int|null", "the `seq` of the enclosing multicall batch, or null"),
        _f("duration_ns", "int", "virtual time the call took")],
        "a hypercall (each multicall entry too), emitted when it returns; `time_ns` is its start"),
    _ev("multicall", "multicall_begin", "emit_multicall_begin", "calls nr eip", [
        _f("calls", "str", "the entries' guest address, in hex", "hex(calls)"),
        _f("nr", "int", "entries"),
        _f("eip", "int", "caller"),
        _f("symbol", "str|null", SYMBOL, "symbol(eip)")], "a batch starts; its entries follow as hypercalls"),
    _ev("multicall", "multicall_end", "emit_multicall_end", "nr batch", [
        _f("nr", "int", "entries"),
        _f("batch", "int|null", "the `seq` of its multicall_begin")], "the batch is done"),
    _ev("fault", "trap_name(vector)", "emit_fault", "vector error_code cr2 eip", [
        _f("vector", "int"),
        _f("error_code", "int|null"),
        _f("cr2", "int|null"),
        _f("eip", "int", "the faulting instruction"),
        _f("symbol", "str|null", SYMBOL, "symbol(eip)")], "an exception bounced to the guest"),
    _ev("upcall", "event_callback", "emit_upcall", "eip", [
        _f("eip", "int", "where the guest was interrupted")], "an event upcall delivered"),
    _ev("failsafe", "failsafe_callback", "emit_failsafe", "cs eip", [
        _f("cs", "int|null", "the selectors' target"),
        _f("eip", "int|null")], "the failsafe callback entered"),
    _ev("mask", "upcall_mask", "emit_mask", "old new eip by", [
        _f("old", "int"),
        _f("new", "int"),
        _f("eip", "int", "the store's instruction, or where Xen changed it"),
        _f("symbol", "str|null", SYMBOL, "symbol(eip)"),
        _f("by", "str", "`guest`: a store to vcpu_info; `xen`")], "evtchn_upcall_mask changed"),
    _ev("ptwr", "writable_pagetable", "emit_ptwr", "va maddr old new", [
        _f("va", "int", "faulting address"),
        _f("maddr", "int", "the L1 entry's machine address"),
        _f("old", "int"),
        _f("new", "int")], "a write to a read-only L1 emulated (writable pagetables)"),
    _ev("emulate", "mnemonic(insn)", "emit_emulated", "eip insn", [
        _f("eip", "int"),
        _f("insn", "str", "the instruction, disassembled")], "a privileged instruction emulated"),
    _ev("console", "console", "emit_console", "data console", [
        _f("text", "str", "the bytes written, as latin-1", "latin1(data)"),
        _f("console", "str", "`pv`: the guest's PV console ring (`xl console`); `xen`: a console_io line on "
           "the hypervisor console (`xl dmesg`), with its `(d1) ` prefix")], "console output"),
    _ev("shutdown", "=reason", "emit_shutdown", "reason", [], "the domain shut down"),
    _ev("crash", "domain_crash", "emit_crash", "reason eip", [
        _f("reason", "str"),
        _f("eip", "int")], "the domain crashed"),
    _ev("vcpu", "initialise", "emit_vcpu_initialise", "target eip esp cr3_mfn", [
        _f("target", "int", "the vcpu"), _f("eip", "int"), _f("esp", "int"), _f("cr3_mfn", "int")],
        "VCPUOP_initialise"),
    _ev("vcpu", "up", "emit_vcpu_up", "target", [_f("target", "int", "the vcpu")], "VCPUOP_up"),
    _ev("vcpu", "down", "emit_vcpu_down", "target", [_f("target", "int", "the vcpu")], "VCPUOP_down"),
    _ev("vcpu", "register_vcpu_info", "emit_vcpu_register_vcpu_info", "target maddr", [
        _f("target", "int", "the vcpu"), _f("maddr", "int", "the new vcpu_info")], "VCPUOP_register_vcpu_info"),
    _ev("event", "set_pending", "emit_event_set_pending", "port notify_vcpu edge masked already_pending", [
        _f("port", "int"), _f("notify_vcpu", "int"),
        _f("edge", "bool", "the vcpu's upcall became pending"), _f("masked", "bool"), _f("already_pending", "bool")],
        "an event channel raised"),
    _ev("event", "unmask", "emit_event_unmask", "port raised", [
        _f("port", "int"), _f("raised", "bool", "the unmask raised an upcall")], "EVTCHNOP_unmask"),
    _ev("sched", "block", "emit_sched_block", "polling poll_ports poll_timeout", [
        _f("polling", "bool", "SCHEDOP_poll"), _f("poll_ports", "int[]"), _f("poll_timeout", "int|null")],
        "the vcpu blocked"),
    _ev("sched", "wake", "emit_sched_wake", "", [], "the vcpu woke"),
    _ev("event", "init_control", "emit_event_init_control", "abi target control_gfn offset", [
        _f("abi", "str", "the ABI after the call (`FIFO`)"), _f("target", "int", "the vcpu"),
        _f("control_gfn", "int"), _f("offset", "int")], "EVTCHNOP_init_control mapped a FIFO control block"),
    _ev("mode", "=mode", "emit_mode", "mode", [],
        "a 64-bit vcpu switched between guest kernel and user mode (toggle_guest_mode); the name is the new mode"),
    _ev("syscall", "user_syscall", "emit_user_syscall", "eip rax", [
        _f("eip", "int", "the `syscall` instruction"), _f("symbol", "str|null", SYMBOL, "symbol(eip)"),
        _f("rax", "int", "the system call number")], "a `syscall` in guest user mode, bounced to the guest kernel"),
    _ev("io", "=op", "emit_io", "op port size value eip gp", [
        _f("port", "int"), _f("size", "int", "bytes"), _f("value", "int", "read (all ones for a domU) or written"),
        _f("eip", "int", "the instruction"), _f("symbol", "str|null", SYMBOL, "symbol(eip)"),
        _f("gp", "bool", "refused with #GP(0): neither the virtual IOPL nor the I/O bitmap allows the access")],
        "port I/O by the guest (`in` or `out`)"),
    _ev("xenstore", "=type", "emit_xenstore", "type domid tx_id args reply", [
        _f("domid", "int"), _f("tx_id", "int"), _f("args", "json", "the request's strings"),
        _f("reply", "str", "`OK`, an error name such as `ENOENT`, or the value")],
        "one request on the store ring (READ, WRITE, DIRECTORY...)"),
    _ev("input", "console", "emit_input_console", "pump text", [
        _f("pump", "int", "the console pump that took it (xenwb/inputlog.py)"),
        _f("text", "str", "the bytes typed, as latin-1")],
        "console input from outside the guest, recorded for `xenwb replay`; `time_ns` is when it entered"),
    _ev("input", "xenstore", "emit_input_xenstore", "pump path value", [
        _f("pump", "int", "the console pump that took it"), _f("path", "str"), _f("value", "str")],
        "a xenstore write by the toolstack (domain 0), recorded for `xenwb replay`"),
)))

KINDS: tuple[str, ...] = tuple(dict.fromkeys(e.kind for e in EVENTS))
BY_EMITTER: dict[str, Event] = {e.emitter: e for e in EVENTS}
BY_NAME: dict[tuple[str, str], Event] = {(e.kind, e.name): e for e in EVENTS if e.name is not None}
# Kinds emitted whenever another is wanted: a hypercall's `multicall` field is the seq of
# its batch's multicall_begin, so that event takes its seq even when nobody receives it.
IMPLIES: dict[str, tuple[str, ...]] = {"hypercall": ("multicall",)}


def event(kind: str, name: str | None = None) -> Event:
    """The schema entry of a kind (the only event of that kind) or of (kind, name)."""
    if name is not None:
        return BY_NAME[(kind, name)]
    (e,) = [e for e in EVENTS if e.kind == kind]
    return e


def kind_of(rec: Record) -> str:
    return EVENTS[rec[0]].kind


# -- derivations ------------------------------------------------------------------------------------
class Packed(bytes):
    """A JSON value kept encoded (plugin history keeps captured structures this way: a few
    hundred bytes instead of a tree of dicts); formatting splices it in, as_dict loads it."""

    __slots__ = ()


if _traceenc is not None:
    _traceenc.configure(Packed)


class Volatile(dict):  # type: ignore[type-arg]
    """A derivation's result that holds for this record only (not to be memoized)."""

    __slots__ = ()


def _no_symbols(addr: int) -> str | None:
    return None


def _raw_decode(nr: int, args: tuple[int, ...]) -> Any:
    return {"args": [f"{a:#x}" for a in args]}


def _trap_name(vector: int) -> str:
    return TRAP_NAMES.get(vector, f"vector{vector}")


def _mnemonic(insn: str) -> str:
    return insn.split()[0]


def _hex(v: int) -> str:
    return f"{v:#x}"


def _latin1(data: bytes) -> str:
    return data.decode("latin-1")


def _loaded(v: Any) -> Any:
    """A Packed value (kept encoded) as the value it encodes."""
    return json.loads(v) if type(v) is Packed else v


def _column(i: int) -> Callable[[Record], Any]:
    def get(rec: Record) -> Any:
        v = rec[i]
        return json.loads(v) if type(v) is Packed else v
    return get


def _json_line(obj: Any) -> str:
    """The reference encoding: what the trace writers always wrote for an event dict."""
    return json.dumps(obj, separators=(",", ":"), default=str)


_dumps_py = _json_line


def dumps(obj: Any) -> str:
    """json.dumps(obj, separators=(",", ":"), default=str), in C when built."""
    return _traceenc.dumps(obj) if _traceenc is not None else _dumps_py(obj)


class Formatter:
    """Derives what readers see from records: the event dict (as_dict) and JSONL lines (a C
    encoder when built, else json.dumps of as_dict: the same bytes). The hypervisor binds the
    two derivations that need it: the guest's symbols, and the argument decoders that run
    late (`decode_later(nr, raw_args)`)."""

    def __init__(self) -> None:
        self.symbolize: Callable[[int], str | None] = _no_symbols
        self.decode_later: Callable[[int, tuple[int, ...]], Any] = _raw_decode
        self.later_width: dict[int, int] = {}      # nr -> the registers decode_later depends on (else 5)
        self._memo: dict[str, dict[Any, Any]] = {}
        self._encoder: Any = None
        self._fns = self._derivations()

    def bind(self, symbolize: Callable[[int], str | None] | None = None,
             decode_later: Callable[[int, tuple[int, ...]], Any] | None = None,
             later_width: dict[int, int] | None = None) -> None:
        if symbolize is not None:
            self.symbolize = symbolize
        if decode_later is not None:
            self.decode_later = decode_later
        if later_width is not None:
            self.later_width = dict(later_width)
        self._memo.clear()
        self._encoder = None
        self._fns = self._derivations()

    def _derivations(self) -> dict[str, tuple[Callable[..., Any], bool]]:
        """Derivation name -> (function of the columns it names, memoizable by its one column)."""
        return {
            "symbol": (self.symbolize, True),
            "errno": (errno_name, True),
            "hypercall_name": (hypercall_name, True),
            "trap_name": (_trap_name, True),
            "mnemonic": (_mnemonic, True),
            "hex": (_hex, False),
            "latin1": (_latin1, False),
            "list": (list, False),
            "args": (self._args, False),
        }

    def _args(self, nr: int, raw: tuple[int, ...], decoded: Any) -> Any:
        """A hypercall's decoded arguments: captured at the call, or decoded now (afresh for
        every dict: whoever gets one may keep or change it)."""
        return decoded if decoded is not None else self.decode_later(nr, raw)

    def _compile(self) -> list[tuple[Any, tuple[tuple[str, Callable[[Record], Any]], ...]]]:
        """For each event: its name (a string, or a getter) and a getter per field."""
        progs = []
        for ev in EVENTS:
            name = ev.name if ev.name is not None else self._getter(ev.name_from or (), ev)
            fields = tuple((f.key, self._getter(f.derive, ev) if f.derive else _column(ev.col(f.key)))
                           for f in ev.fields)
            progs.append((name, fields))
        return progs

    def _getter(self, d: tuple[str, ...], ev: Event) -> Callable[[Record], Any]:
        if d[0] == "column":
            return _column(ev.col(d[1]))
        fn, memo_ok = self._fns[d[0]]
        cols = tuple(ev.col(c) for c in d[1:])
        if not memo_ok:
            if len(cols) == 1:
                (i,) = cols
                return lambda rec: _loaded(fn(rec[i]))
            return lambda rec: _loaded(fn(*[rec[i] for i in cols]))
        memo = self._memo.setdefault(d[0], {})
        (i,) = cols

        def memoized(rec: Record) -> Any:
            k = rec[i]
            try:
                return memo[k]
            except KeyError:
                out = fn(k)
                if len(memo) < MEMO_MAX:
                    memo[k] = out
                return out
        return memoized

    def _prog(self, eid: int) -> tuple[Any, tuple[tuple[str, Callable[[Record], Any]], ...]]:
        progs = self.__dict__.get("_progs")
        if progs is None or self.__dict__.get("_progs_fns") is not self._fns:
            progs = self.__dict__["_progs"] = self._compile()
            self.__dict__["_progs_fns"] = self._fns
        return progs[eid]

    def name(self, rec: Record) -> str:
        name = self._prog(rec[0])[0]
        return name if type(name) is str else name(rec)

    def value(self, rec: Record, key: str) -> Any:
        """One field of a record, derived as as_dict would."""
        for k, get in self._prog(rec[0])[1]:
            if k == key:
                return get(rec)
        raise KeyError(key)

    def as_dict(self, rec: Record) -> dict[str, Any]:
        """The event as a dict: what subscribers always received and writers always wrote."""
        name, fields = self._prog(rec[0])
        d: dict[str, Any] = {"seq": rec[1], "vcpu": rec[2], "time_ns": rec[3], "kind": EVENTS[rec[0]].kind,
                             "name": name if type(name) is str else name(rec)}
        for key, get in fields:
            d[key] = get(rec)
        return d

    # -- JSONL ---------------------------------------------------------------------------------
    def jsonl_python(self, records: Iterable[Record]) -> str:
        """The reference encoding (json.dumps of each event dict, as writers always did)."""
        return "".join(_json_line(self.as_dict(r)) + "\n" for r in records)

    def jsonl(self, records: list[Record]) -> bytes:
        """JSON lines for records: C when built (the same bytes as jsonl_python)."""
        if _traceenc is None:
            return self.jsonl_python(records).encode("ascii")
        enc = self._encoder
        if enc is None:
            enc = self._encoder = self.encoder()
        return enc.encode(records)

    def encoder(self) -> Any:
        """A C encoder of JSON lines (add(record), take() -> bytes), or None when not built."""
        if _traceenc is None:
            return None
        return _traceenc.Encoder(self.plans(), Packed, Volatile, MEMO_MAX)

    def plans(self) -> list[tuple[Any, ...]]:
        """The C encoder's program for each event: literal fragments, columns encoded as JSON,
        memoized derivations (their encoded result kept per value), calls. Made from the
        events' templates (_plan_templates) with this formatter's derivations and fresh memos:
        only the placeholders are visited (one encoder per trace file, made while it runs)."""
        derivations = self._fns
        memos: dict[str, dict[Any, Any]] = {}
        templates, holes = _plan_templates(), _plan_holes()
        plans = [list(t) for t in templates]
        for ev, i in holes:
            op = templates[ev][i]
            if op[0] == _DERIVE:
                name, col = op[1], op[2]
                fn, memo_ok = derivations[name]
                plans[ev][i] = (2, col, memos.setdefault(name, {}), fn) if memo_ok else (4, col, fn)
            else:                                     # (3, ...): a hypercall's arguments
                plans[ev][i] = (*op, memos.setdefault("args", {}), self.decode_later, self.later_width,
                                ARGS_MEMO_MAX)
        return [tuple(ops) for ops in plans]


_DERIVE = -1            # a template's placeholder: (_DERIVE, derivation name, column)


@functools.cache
def _plan_templates() -> tuple[tuple[tuple[Any, ...], ...], ...]:
    """Each event's encoder program with its derivations left as placeholders: what does not
    depend on the guest, worked out once (Formatter.plans fills in the rest)."""
    templates = []
    for ev in EVENTS:
        ops: list[tuple[Any, ...]] = []

        def lit(text: str, ops: list[tuple[Any, ...]] = ops) -> None:
            if ops and ops[-1][0] == 0:
                ops[-1] = (0, ops[-1][1] + text.encode())
            else:
                ops.append((0, text.encode()))

        def derived(d: tuple[str, ...], ev: Event = ev, ops: list[tuple[Any, ...]] = ops) -> None:
            cols = [ev.col(c) for c in d[1:]]
            if d[0] == "column":
                ops.append((1, ev.col(d[1])))
            elif d[0] == "list":
                ops.append((1, cols[0]))                  # a tuple encodes as a list
            elif d[0] == "args":
                ops.append((3, cols[2], cols[0], cols[1]))
            else:
                ops.append((_DERIVE, d[0], cols[0]))

        lit('{"seq":')
        ops.append((1, 1))
        lit(',"vcpu":')
        ops.append((1, 2))
        lit(',"time_ns":')
        ops.append((1, 3))
        lit(f',"kind":{_json_line(ev.kind)},"name":')
        if ev.name is not None:
            lit(_json_line(ev.name))
        else:
            derived(ev.name_from or ())
        for f in ev.fields:
            lit(f",{_json_line(f.key)}:")
            if f.derive:
                derived(f.derive)
            else:
                ops.append((1, ev.col(f.key)))
        lit("}\n")
        templates.append(tuple(ops))
    return tuple(templates)


@functools.cache
def _plan_holes() -> tuple[tuple[int, int], ...]:
    """(event, op) of every template op that Formatter.plans fills in."""
    return tuple((ev, i) for ev, t in enumerate(_plan_templates()) for i, op in enumerate(t)
                 if op[0] in (_DERIVE, 3))


def _packed_py(value: Any) -> Packed:
    return value if type(value) is Packed else Packed(dumps(value).encode("ascii"))


# A captured structure kept encoded (Packed JSON), as records keep it (in C when built)
packed: Callable[[Any], Packed] = _traceenc.pack if _traceenc is not None else _packed_py


_last_compacted: list[Record] = [(), ()]      # (record, its compact form): plugins keep the same records


def compact(rec: Record) -> Record:
    """A record for keeping: its captured structures (json columns) encoded as Packed JSON."""
    js = _JSON_COLUMNS[rec[0]]
    if not js:
        return rec
    last = _last_compacted
    if last[0] is rec:
        return last[1]
    for i in js:                             # already compact (hypercall records are): as it is
        v = rec[i]
        if v is not None and type(v) is not Packed:
            break
    else:
        return rec
    out = list(rec)
    for i in js:
        v = out[i]
        if v is not None and type(v) is not Packed and not isinstance(v, (int, str)):
            out[i] = packed(v)
    kept = tuple(out)
    last[0], last[1] = rec, kept
    return kept


def _json_columns(ev: Event) -> tuple[int, ...]:
    cols = []
    for f in ev.fields:
        if f.type == "json":
            src = f.derive[-1] if f.derive and f.derive[0] == "args" else (f.key if not f.derive else None)
            if src is not None:
                cols.append(ev.col(src))
    return tuple(cols)


_JSON_COLUMNS: tuple[tuple[int, ...], ...] = tuple(_json_columns(e) for e in EVENTS)


# -- checking and documenting -----------------------------------------------------------------------
def _type_ok(t: str, v: Any) -> bool:
    if t == "json":
        return True
    if t.endswith("|null") and v is None:
        return True
    base = t.removesuffix("|null")
    if base == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if base == "str":
        return isinstance(v, str)
    if base == "bool":
        return isinstance(v, bool)
    if base == "int[]":
        return isinstance(v, list) and all(isinstance(x, int) for x in v)
    return False


def check(ev: dict[str, Any]) -> list[str]:
    """What is wrong with an event dict against the schema (nothing: [])."""
    kind, name = ev.get("kind"), ev.get("name")
    cands = [e for e in EVENTS if e.kind == kind and (e.name is None or e.name == name)]
    if not cands:
        return [f"no event {kind}:{name} in the schema"]
    e = cands[0]
    keys = list(ev)
    want = [*BASE, *(f.key for f in e.fields)]
    problems = [] if keys == want else [f"{kind}:{name}: keys {keys}, schema {want}"]
    for f in e.fields:
        if f.key in ev and not _type_ok(f.type, ev[f.key]):
            problems.append(f"{kind}:{name}: {f.key}={ev[f.key]!r} is not {f.type}")
    return problems


README_BEGIN = "<!-- trace-events table: generated from xenwb/trace_events.py (python -m xenwb.trace_events) -->"
README_END = "<!-- end of the trace-events table -->"


def readme_table() -> str:
    """README's trace-format table, from the schema (one row per event)."""
    out = [README_BEGIN, "| kind | name | what | fields (JSON type) |", "|---|---|---|---|"]
    for e in EVENTS:
        if e.name is not None:
            name = f"`{e.name}`"
        elif e.name_from and e.name_from[0] == "column":
            name = f"its `{e.name_from[1]}`"
        else:
            d = e.name_from or ()
            name = f"`{d[0]}({', '.join(d[1:])})`"
        fields = ", ".join(f"`{f.key}` {f.type.replace('|', chr(92) + '|')}" + (f" ({f.doc})" if f.doc else "")
                           for f in e.fields)
        out.append(f"| `{e.kind}` | {name} | {e.doc} | {fields or '-'} |")
    out.append(README_END)
    return "\n".join(out)


def readme_section(text: str) -> str | None:
    """The generated table as README holds it (None: no markers)."""
    if README_BEGIN not in text or README_END not in text:
        return None
    start = text.index(README_BEGIN)
    return text[start: text.index(README_END, start) + len(README_END)]


if __name__ == "__main__":
    print(readme_table())
