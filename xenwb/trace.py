"""The trace bus: typed events from the machine to subscribers (writers, plugins, UIs).

Every event is declared in xenwb/trace_events.py; this module has one emitter per event
(`emit_<event>`) and nothing generic. Subscribers subscribe by kind:

    bus.subscribe_records(fn, kinds={"hypercall"})   # fn(record): the compact tuple, raw
    bus.subscribe(fn, kinds={"hypercall"})           # fn(event dict), formatted for you

An emitter builds the record, a tuple of what it captured (no dict, no symbol lookup, no
name lookup: those are derived when somebody reads it, see trace_events.Formatter), and
hands it to the subscribers of its kind. With nobody subscribed to its kind an emitter
returns at once; the hot call sites test `want_<kind>` themselves, so that what they
would compute only for the trace (a hypercall's decoded arguments, its caller) is not
computed either. `on_want(kind, fn)` tells fn when a kind starts or stops being wanted
(the core observes guest stores to the upcall mask only while "mask" is wanted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from xenwb.trace_events import EVENTS, IMPLIES, KINDS, Formatter, Packed, Record, event

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

Event = dict[str, Any]
Subscriber = Callable[[Any], None]

# event ids, for the emitters below
_HYPERCALL = event("hypercall").eid
_MC_BEGIN = event("multicall", "multicall_begin").eid
_MC_END = event("multicall", "multicall_end").eid
_FAULT = event("fault").eid
_UPCALL = event("upcall").eid
_FAILSAFE = event("failsafe").eid
_MASK = event("mask").eid
_PTWR = event("ptwr").eid
_EMULATE = event("emulate").eid
_CONSOLE = event("console").eid
_SHUTDOWN = event("shutdown").eid
_CRASH = event("crash").eid
_VCPU_INIT = event("vcpu", "initialise").eid
_VCPU_UP = event("vcpu", "up").eid
_VCPU_DOWN = event("vcpu", "down").eid
_VCPU_INFO = event("vcpu", "register_vcpu_info").eid
_EV_PENDING = event("event", "set_pending").eid
_EV_UNMASK = event("event", "unmask").eid
_SCHED_BLOCK = event("sched", "block").eid
_SCHED_WAKE = event("sched", "wake").eid
_XENSTORE = event("xenstore").eid
_EV_INIT_CONTROL = event("event", "init_control").eid
_MODE = event("mode").eid
_USER_SYSCALL = event("syscall").eid
_IO = event("io").eid
_INPUT_CONSOLE = event("input", "console").eid
_INPUT_XENSTORE = event("input", "xenstore").eid


class TraceBus:
    # does anyone listen to this kind? (the hot paths test these)
    want_hypercall = False
    want_multicall = False
    want_fault = False
    want_upcall = False
    want_failsafe = False
    want_mask = False
    want_ptwr = False
    want_emulate = False
    want_console = False
    want_shutdown = False
    want_crash = False
    want_vcpu = False
    want_event = False
    want_sched = False
    want_xenstore = False
    want_mode = False
    want_syscall = False
    want_io = False
    want_input = False
    # its subscribers, for each kind's emitters (_rewire)
    _to_hypercall: tuple[Subscriber, ...] = ()
    _to_multicall: tuple[Subscriber, ...] = ()
    _to_fault: tuple[Subscriber, ...] = ()
    _to_upcall: tuple[Subscriber, ...] = ()
    _to_failsafe: tuple[Subscriber, ...] = ()
    _to_mask: tuple[Subscriber, ...] = ()
    _to_ptwr: tuple[Subscriber, ...] = ()
    _to_emulate: tuple[Subscriber, ...] = ()
    _to_console: tuple[Subscriber, ...] = ()
    _to_shutdown: tuple[Subscriber, ...] = ()
    _to_crash: tuple[Subscriber, ...] = ()
    _to_vcpu: tuple[Subscriber, ...] = ()
    _to_event: tuple[Subscriber, ...] = ()
    _to_sched: tuple[Subscriber, ...] = ()
    _to_xenstore: tuple[Subscriber, ...] = ()
    _to_mode: tuple[Subscriber, ...] = ()
    _to_syscall: tuple[Subscriber, ...] = ()
    _to_io: tuple[Subscriber, ...] = ()
    _to_input: tuple[Subscriber, ...] = ()

    def __init__(self) -> None:
        self.seq = 0
        self.active = False              # anybody listening to anything
        self.formatter = Formatter()     # records -> dicts and JSON lines (bound by the domain)
        self._to: dict[str, tuple[Subscriber, ...]] = {k: () for k in KINDS}   # record subscribers
        self._subs: list[tuple[Subscriber, frozenset[str], bool]] = []        # (fn, kinds, wants dicts)
        self._watchers: dict[str, list[Callable[[bool], None]]] = {}

    # -- subscribing ---------------------------------------------------------------------------
    def subscribe_records(self, fn: Subscriber, kinds: Iterable[str] | None = None) -> None:
        """fn(record) for every event of these kinds (None: all)."""
        self._add(fn, kinds, False)

    def subscribe(self, fn: Subscriber, kinds: Iterable[str] | None = None) -> None:
        """fn(event dict) for every event of these kinds (None: all). The dict is made when the
        event happens: a convenience; records (subscribe_records) cost far less."""
        self._add(fn, kinds, True)

    def unsubscribe(self, fn: Subscriber) -> None:
        self._subs = [s for s in self._subs if s[0] != fn]
        self._rewire()

    def on_want(self, kind: str, fn: Callable[[bool], None]) -> None:
        """fn(True/False) whenever `kind` starts or stops being wanted."""
        assert kind in KINDS, kind
        self._watchers.setdefault(kind, []).append(fn)
        if getattr(self, f"want_{kind}"):
            fn(True)

    def wants(self, kind: str) -> bool:
        return bool(getattr(self, f"want_{kind}"))

    def as_dict(self, rec: Record) -> Event:
        return self.formatter.as_dict(rec)

    def _add(self, fn: Subscriber, kinds: Iterable[str] | None, dicts: bool) -> None:
        ks = frozenset(KINDS if kinds is None else kinds)
        unknown = ks - set(KINDS)
        if unknown:
            raise ValueError(f"no event kind {', '.join(sorted(unknown))} (kinds: {', '.join(KINDS)})")
        self._subs.append((fn, ks, dicts))
        self._rewire()

    def _rewire(self) -> None:
        before = {k: self.wants(k) for k in KINDS}
        to: dict[str, list[Subscriber]] = {k: [] for k in KINDS}
        for fn, ks, dicts in self._subs:
            for k in ks:
                to[k].append(self._dict_adapter(fn) if dicts else fn)
        self._to = {k: tuple(v) for k, v in to.items()}
        for k in KINDS:
            setattr(self, f"_to_{k}", self._to[k])
        wanted = {k for k in KINDS if to[k]}
        for k in list(wanted):
            wanted.update(IMPLIES.get(k, ()))
        for k in KINDS:
            setattr(self, f"want_{k}", k in wanted)
        self.active = bool(wanted)
        for k in KINDS:
            if self.wants(k) != before[k]:
                for w in self._watchers.get(k, ()):
                    w(self.wants(k))

    def _dict_adapter(self, fn: Subscriber) -> Subscriber:
        as_dict = self.formatter.as_dict

        def deliver(rec: Record) -> None:
            fn(as_dict(rec))
        deliver.__qualname__ = f"dicts for {getattr(fn, '__qualname__', fn)}"
        return deliver

    # -- emitting ---------------------------------------------------------------------------------
    def _put(self, kind: str, rec: Record) -> None:
        for fn in self._to[kind]:
            fn(rec)

    def _rec(self, eid: int, vcpu: Vcpu | None, *cols: Any) -> Record:
        seq = self.seq
        self.seq = seq + 1
        if vcpu is None:
            return (eid, seq, None, 0, *cols)
        return (eid, seq, vcpu.id, vcpu.clock.units, *cols)     # the vcpu's system time (time.py now)

    def emit_hypercall(self, vcpu: Vcpu, nr: int, args: tuple[int, ...], ret: int, eip: int,
                       decoded: Packed | None, multicall: int | None = None, time_ns: int | None = None,
                       duration_ns: int = 0) -> None:
        """A hypercall returned. `decoded`: the decoded arguments if the decoder had to read the
        guest at the call, as Packed JSON (what the trace file, the plugins' histories and the
        dicts read), else None (decoded when read: trace_events `args`)."""
        if not self.want_hypercall:
            return
        seq = self.seq
        self.seq = seq + 1
        rec = (_HYPERCALL, seq, vcpu.id, vcpu.clock.units if time_ns is None else time_ns,
               nr, eip, args, ret, decoded, multicall, duration_ns)
        for fn in self._to_hypercall:
            fn(rec)

    def emit_multicall_begin(self, vcpu: Vcpu, calls: int, nr: int, eip: int) -> int | None:
        """A batch starts; returns its seq (what its entries' `multicall` field holds), or None
        when neither multicall nor hypercall events are wanted."""
        if not self.want_multicall:
            return None
        seq = self.seq
        self.seq = seq + 1
        rec = (_MC_BEGIN, seq, vcpu.id, vcpu.clock.units, calls, nr, eip)
        for fn in self._to_multicall:
            fn(rec)
        return seq

    def emit_multicall_end(self, vcpu: Vcpu, nr: int, batch: int | None) -> None:
        if self.want_multicall:
            seq = self.seq
            self.seq = seq + 1
            rec = (_MC_END, seq, vcpu.id, vcpu.clock.units, nr, batch)
            for fn in self._to_multicall:
                fn(rec)

    def emit_fault(self, vcpu: Vcpu, vector: int, error_code: int | None, cr2: int | None,
                   regs: dict[str, int] | None) -> None:
        if self.want_fault:
            eip = (regs or vcpu.cpu.regs())["pc"]
            self._put("fault", self._rec(_FAULT, vcpu, vector, error_code, cr2, eip))

    def emit_upcall(self, vcpu: Vcpu) -> None:
        if self.want_upcall:
            seq = self.seq
            self.seq = seq + 1
            rec = (_UPCALL, seq, vcpu.id, vcpu.clock.units, vcpu.cpu.pc)
            for fn in self._to_upcall:
                fn(rec)

    def emit_failsafe(self, vcpu: Vcpu, target: dict[str, int]) -> None:
        if self.want_failsafe:
            self._put("failsafe", self._rec(_FAILSAFE, vcpu, target.get("cs"), target.get("pc")))

    def emit_mask(self, vcpu: Vcpu, old: int, new: int, eip: int | None = None, by: str = "xen") -> None:
        """evtchn_upcall_mask changed: by Xen (eip: where the vcpu is), or by a guest store
        (eip: the storing instruction)."""
        if self.want_mask:
            seq = self.seq
            self.seq = seq + 1
            rec = (_MASK, seq, vcpu.id, vcpu.clock.units, old, new, vcpu.cpu.pc if eip is None else eip, by)
            for fn in self._to_mask:
                fn(rec)

    def emit_ptwr(self, vcpu: Vcpu, va: int, maddr: int, old: int, new: int) -> None:
        if self.want_ptwr:
            self._put("ptwr", self._rec(_PTWR, vcpu, va, maddr, old, new))

    def emit_emulated(self, vcpu: Vcpu, eip: int, insn: str) -> None:
        if self.want_emulate:
            self._put("emulate", self._rec(_EMULATE, vcpu, eip, insn))

    def emit_console(self, vcpu: Vcpu | None, data: bytes, console: str) -> None:
        if self.want_console:
            seq = self.seq
            self.seq = seq + 1
            rec = ((_CONSOLE, seq, None, 0, bytes(data), console) if vcpu is None
                   else (_CONSOLE, seq, vcpu.id, vcpu.clock.units, bytes(data), console))
            for fn in self._to_console:
                fn(rec)

    def emit_shutdown(self, vcpu: Vcpu | None, reason: str) -> None:
        if self.want_shutdown:
            self._put("shutdown", self._rec(_SHUTDOWN, vcpu, reason))

    def emit_crash(self, vcpu: Vcpu | None, reason: str, eip: int) -> None:
        if self.want_crash:
            self._put("crash", self._rec(_CRASH, vcpu, reason, eip))

    def emit_vcpu_initialise(self, vcpu: Vcpu | None, target: int, eip: int, esp: int, cr3_mfn: int) -> None:
        if self.want_vcpu:
            self._put("vcpu", self._rec(_VCPU_INIT, vcpu, target, eip, esp, cr3_mfn))

    def emit_vcpu_up(self, vcpu: Vcpu | None, target: int) -> None:
        if self.want_vcpu:
            self._put("vcpu", self._rec(_VCPU_UP, vcpu, target))

    def emit_vcpu_down(self, vcpu: Vcpu | None, target: int) -> None:
        if self.want_vcpu:
            self._put("vcpu", self._rec(_VCPU_DOWN, vcpu, target))

    def emit_vcpu_register_vcpu_info(self, vcpu: Vcpu | None, target: int, maddr: int) -> None:
        if self.want_vcpu:
            self._put("vcpu", self._rec(_VCPU_INFO, vcpu, target, maddr))

    def emit_event_set_pending(self, vcpu: Vcpu | None, port: int, notify_vcpu: int, edge: bool, masked: bool,
                               already_pending: bool) -> None:
        if self.want_event:
            seq = self.seq
            self.seq = seq + 1
            rec = ((_EV_PENDING, seq, None, 0) if vcpu is None else (_EV_PENDING, seq, vcpu.id, vcpu.clock.units)) \
                + (port, notify_vcpu, edge, masked, already_pending)
            for fn in self._to_event:
                fn(rec)

    def emit_event_unmask(self, vcpu: Vcpu | None, port: int, raised: bool) -> None:
        if self.want_event:
            self._put("event", self._rec(_EV_UNMASK, vcpu, port, raised))

    def emit_sched_block(self, vcpu: Vcpu, polling: bool, poll_ports: list[int], poll_timeout: int | None) -> None:
        if self.want_sched:
            self._put("sched", self._rec(_SCHED_BLOCK, vcpu, polling, list(poll_ports), poll_timeout))

    def emit_sched_wake(self, vcpu: Vcpu) -> None:
        if self.want_sched:
            seq = self.seq
            self.seq = seq + 1
            rec = (_SCHED_WAKE, seq, vcpu.id, vcpu.clock.units)
            for fn in self._to_sched:
                fn(rec)

    def emit_event_init_control(self, vcpu: Vcpu | None, abi: str, target: int, control_gfn: int,
                                offset: int) -> None:
        if self.want_event:
            self._put("event", self._rec(_EV_INIT_CONTROL, vcpu, abi, target, control_gfn, offset))

    def emit_mode(self, vcpu: Vcpu, mode: str) -> None:
        if self.want_mode:
            self._put("mode", self._rec(_MODE, vcpu, mode))

    def emit_user_syscall(self, vcpu: Vcpu, eip: int, rax: int) -> None:
        if self.want_syscall:
            self._put("syscall", self._rec(_USER_SYSCALL, vcpu, eip, rax))

    def emit_io(self, vcpu: Vcpu, op: str, port: int, size: int, value: int, eip: int, gp: bool) -> None:
        if self.want_io:
            self._put("io", self._rec(_IO, vcpu, op, port, size, value, eip, gp))

    def emit_xenstore(self, vcpu: Vcpu | None, type_: str, domid: int, tx_id: int, args: Any, reply: str) -> None:
        if self.want_xenstore:
            self._put("xenstore", self._rec(_XENSTORE, vcpu, type_, domid, tx_id, args, reply))

    def emit_input_console(self, vcpu: Vcpu | None, time_ns: int, pump: int, text: str) -> None:
        """Input of no vcpu (vcpu is None) that entered at virtual time time_ns."""
        if self.want_input:
            self._put("input", self._rec_at(_INPUT_CONSOLE, time_ns, pump, text))

    def emit_input_xenstore(self, vcpu: Vcpu | None, time_ns: int, pump: int, path: str, value: str) -> None:
        if self.want_input:
            self._put("input", self._rec_at(_INPUT_XENSTORE, time_ns, pump, path, value))

    def _rec_at(self, eid: int, time_ns: int, *cols: Any) -> Record:
        """A record of no vcpu at a given virtual time."""
        seq = self.seq
        self.seq = seq + 1
        return (eid, seq, None, time_ns, *cols)


assert len(EVENTS) == 27 and all(hasattr(TraceBus, e.emitter) for e in EVENTS)
assert all(hasattr(TraceBus, f"want_{k}") and hasattr(TraceBus, f"_to_{k}") for k in KINDS)
