"""Time travel: checkpoints, restores and reverse execution of a machine (issue 11).

The machine is deterministic: the same state and the same inputs give the same run, the
inputs from outside being recorded where they entered (xenwb/inputlog.py). So any earlier
moment can be reached again by restoring a checkpoint (xenwb/snapshot.py) and re-executing
from it; reverse execution is exactly that.

Places in a run (Position) are named by what the machine counts anyway, so they can be
found again whatever ran at full speed and whatever was stopped at:
* between two vcpu turns: the number of turns begun and of console pumps;
* inside a turn, the running vcpu at an instruction boundary: its virtual clock (units:
  bytes of guest code executed, hypervisor costs included) and the number of frames Xen
  pushed to it (bounces). The clock only grows, by at least one per instruction, so it
  names an instruction boundary of that vcpu once and for all; the bounces tell apart the
  boundary before and after Xen delivered an exception or event there;
* inside a stop that holds hypervisor work (a hypercall caught on entry or return, an
  exception caught before delivery): the same, and which hold.
Re-executing to a place: the native instruction hook stops before the first instruction
that starts at that clock unit (xenwb/_vclock.c), or the machine's stop check sees the turn
and pump counts.

Reverse-stepi on vcpu V inverts stepi exactly: a stepi ends at the first point the machine
checks at which V has started one more instruction or Xen pushed one more frame to it. With
the instruction hook installed while history is re-executed, pi = instructions + bounces of
V is counted exactly from a checkpoint; reverse-stepi from S goes to the first check point
at which pi reached the largest value below pi(S) seen at a check point, which is where the
stepi that led to S started. Reverse-continue re-executes from the checkpoints before the
present, latest first, through the breakpoints, watchpoints and catchpoints in place, and
stops at the last one hit before the present (or at the start of the history).

Re-executing costs the host time of the run between the checkpoint and the target, with the
instruction hook (about half speed); reverse-stepping takes a checkpoint near where it
works, so the steps after the first cost little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from xenwb.control import Controller, DebugError, StopEvent, StopKind
from xenwb.snapshot import Snapshot, Snapshotter
from xenwb.vclock import NEVER

DEFAULT_MEMORY = 512 << 20          # --checkpoint-memory default: 512 MiB
REVERSE_WINDOW = 4_000              # reverse-stepping keeps a checkpoint at most about this many
#                                     instructions before where it works
UNITS_PER_INSN = 8                  # for placing such a checkpoint by the clock: generous (x86 averages 3-4)
MAX_PASS_RETRIES = 8


Key = tuple[int, int, int, int, int, int]


class Participant(Protocol):
    """Front-end state that follows the machine back in time (a trace file's position, a
    plugin's history, the console text shown): saved with each checkpoint, put back on restore."""

    def save_state(self) -> Any: ...

    def load_state(self, state: Any) -> None: ...


@dataclass(frozen=True)
class Position:
    """A place in the run (see the module docstring). `key` orders places in the run."""

    kind: str                   # "between" (turns), "engine" (an instruction boundary), "hold"
    turns: int
    pumps: int
    vcpu: int | None = None
    units: int = 0
    bounces: int = 0
    exits: int = 0              # exceptions that reached Xen (an emulated instruction moves no clock)
    hold: int = 0               # hold phase: -1 before the next instruction, +1 after a faulting one
    stop: str = ""              # the stop kind at this place, when it was a stop

    @property
    def key(self) -> Key:
        if self.kind == "between":
            return (self.turns, 1, self.pumps, 0, 0, 0)
        return (self.turns, 0, self.units, self.bounces, self.exits, self.hold)

    def describe(self) -> str:
        if self.kind == "between":
            return f"between turns {self.turns} and {self.turns + 1}"
        return f"vcpu{self.vcpu} at clock {self.units}" + (" (held)" if self.kind == "hold" else "")


def position_now(ctl: Controller) -> Position:
    """Where the machine is (stopped)."""
    m = ctl.machine
    turn = m.turn
    stop = ctl.last_stop.kind.value
    if turn is None:
        return Position("between", m.turns, m.pumps, stop=stop)
    v = turn.vcpu
    units, bounces, exits = v.clock.units, v.bounces, v.clock.exits
    held = v.on_resume
    if held is None:
        return Position("engine", m.turns, m.pumps, v.id, units, bounces, exits, stop=stop)
    if v.held_exception is not None:         # after the faulting instruction, before the delivery
        return Position("hold", m.turns, m.pumps, v.id, units, bounces, exits, 1, stop=stop)
    if getattr(held, "hold_kind", None) == "entry":
        # the trapping instruction was given back to the clock: the place is inside it
        return Position("hold", m.turns, m.pumps, v.id, units + 1, bounces, exits, 0, stop=stop)
    return Position("hold", m.turns, m.pumps, v.id, units, bounces, exits, -1, stop=stop)


@dataclass
class Checkpoint:
    name: str
    snap: Snapshot
    position: Position
    stop: StopEvent             # the stop the machine was at (restoring shows it again)
    auto: bool = False          # taken by --checkpoint-every or reverse execution (dropped first)
    lineage: int = 0            # checkpoints whose instruction counts agree (see TimeTravel._pi)
    pi: tuple[int, ...] = ()    # per vcpu: instructions + bounces, as counted in its lineage
    host_s: float = 0.0         # host time the snapshot took
    pinned: bool = False        # never dropped to make room (the start of the history)

    @property
    def time_ns(self) -> int:
        return self.snap.time_ns


@dataclass
class Stats:
    passes: int = 0
    restores: int = 0
    reexecuted_ns: int = 0       # virtual time re-executed
    dropped: int = 0


@dataclass
class _Target:
    """Where a silent re-execution stops (and how the machine is told)."""

    check: Callable[[], bool]
    arm: Callable[[], None] = lambda: None
    on_bounce: Callable[[Any], None] | None = None
    key: Key | None = None     # for overshoot detection
    limit_turns: int | None = None


class TimeTravel:
    """Checkpoints and reverse execution over one Controller.

    every_ns: take a checkpoint whenever this much virtual time passed since the last one
    (at the end of a vcpu turn); memory: the bytes the checkpoints may take (the oldest
    automatic ones are dropped first; named ones and the start of the history are kept)."""

    def __init__(self, ctl: Controller, *, every_ns: int | None = None, memory: int = DEFAULT_MEMORY,
                 from_boot: bool = True) -> None:
        self.ctl = ctl
        self.machine = ctl.machine
        self.every_ns = every_ns
        self.memory = memory
        self.snapshots = Snapshotter(self.machine)
        self.checkpoints: list[Checkpoint] = []     # in the order taken
        self.participants: dict[str, Participant] = {}
        self.stats = Stats()
        self._auto_serial = 0
        self._last_auto_ns = 0
        self._in_history = False
        self._lineages = 0
        self._pi_cache: dict[Key, tuple[int, int, int]] = {}   # key -> (lineage, vid, pi)
        ctl.timetravel = self
        self.machine.inputs.on_new_input = self._on_new_input
        self.machine.on_turn_end = self._on_turn_end
        self.from_boot = from_boot
        if from_boot:
            # the history starts at the first instruction: taken when the machine first runs,
            # so that what front ends set up before (trace files, plugins) is in it
            self.machine.resume_hooks.insert(0, self._first_run)

    def _first_run(self) -> None:
        self.machine.resume_hooks.remove(self._first_run)
        if not self.checkpoints and self.machine.turns == 0:
            self.enable()

    def close(self) -> None:
        """Release what the history holds (the RAM tracking stays until the machine goes)."""
        self.checkpoints.clear()
        self._pi_cache.clear()
        self.snapshots.close()

    # -- participants --------------------------------------------------------------------------
    def add_participant(self, name: str, p: Participant) -> None:
        self.participants[name] = p

    def remove_participant(self, name: str) -> None:
        self.participants.pop(name, None)

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.checkpoints)

    def enable(self) -> Checkpoint:
        """Start the history here (the machine's start when it has not run yet)."""
        if self.checkpoints:
            return self.checkpoints[0]
        if self._first_run in self.machine.resume_hooks:
            self.machine.resume_hooks.remove(self._first_run)
        name = "boot" if self.machine.turns == 0 else "start"
        self._last_auto_ns = self.machine.now()
        return self._take(name, auto=False, pinned=True)

    def _take(self, name: str, *, auto: bool, pinned: bool = False, lineage: int | None = None) -> Checkpoint:
        ctl = self.ctl
        t0 = time.perf_counter()
        snap = self.snapshots.take()
        snap.extra = {n: p.save_state() for n, p in self.participants.items()}
        pos = position_now(ctl)
        if lineage is None:
            self._lineages += 1
            lineage = self._lineages
        m = self.machine
        cp = Checkpoint(name, snap, pos, ctl.last_stop, auto=auto, lineage=lineage,
                        pi=tuple(v.clock.insns + v.bounces for v in m.vcpus),
                        host_s=time.perf_counter() - t0, pinned=pinned)
        self.checkpoints.append(cp)
        self._bound()
        return cp

    def checkpoint(self, name: str | None = None) -> Checkpoint:
        """A named checkpoint of the machine as it is now (stopped)."""
        self.ctl._require_stopped()
        if name is not None:
            if not name or not all(c.isalnum() or c in "-_." for c in name) or name.isdigit():
                raise DebugError(f"bad checkpoint name {name!r} (letters, digits, - _ . and not only digits)")
            if any(c.name == name for c in self.checkpoints):
                raise DebugError(f"a checkpoint named {name!r} exists (restore it, or choose another name)")
        self.enable()
        if name is None:
            n = sum(not c.auto for c in self.checkpoints)
            name = f"cp{n}"
            while any(c.name == name for c in self.checkpoints):
                n += 1
                name = f"cp{n}"
        return self._take(name, auto=False)

    def find(self, name: str) -> Checkpoint:
        for c in self.checkpoints:
            if c.name == name:
                return c
        if name.isdigit() and 0 <= int(name) < len(self.checkpoints):
            return self.checkpoints[int(name)]
        known = ", ".join(c.name for c in self.checkpoints if not c.auto) or "none"
        raise DebugError(f"no checkpoint {name!r} (named ones: {known}; `checkpoints` lists all)")

    def memory_used(self) -> int:
        return sum(c.snap.size for c in self.checkpoints)

    def _bound(self) -> None:
        """Drop the oldest automatic checkpoints while the checkpoints take too much memory."""
        while self.memory_used() > self.memory:
            victims = [i for i, c in enumerate(self.checkpoints) if c.auto and not c.pinned]
            if not victims:
                return
            self._drop(victims[0])

    def _drop(self, i: int) -> None:
        cp = self.checkpoints.pop(i)
        succ = self.checkpoints[i] if i < len(self.checkpoints) else None
        if succ is not None:
            # what cp held and succ holds too now costs succ
            succ.snap.size += max(0, cp.snap.size - self.snapshots.freed_by_dropping(cp.snap, succ.snap))
        self.stats.dropped += 1

    def delete(self, name: str) -> None:
        cp = self.find(name)
        if cp.pinned:
            raise DebugError(f"{cp.name!r} is the start of the history: it stays")
        self._drop(self.checkpoints.index(cp))

    def _on_turn_end(self) -> None:
        if self.every_ns is None or self._in_history or not self.checkpoints:
            return
        now = self.machine.now()
        if now - self._last_auto_ns >= self.every_ns:
            self._last_auto_ns = now
            self._auto_serial += 1
            self._take(f"auto{self._auto_serial}", auto=True)

    def _on_new_input(self, pump: int) -> None:
        """New input at this pump: the checkpoints after it belong to another timeline."""
        for i in range(len(self.checkpoints) - 1, -1, -1):
            c = self.checkpoints[i]
            if c.snap.pumps >= pump and not c.pinned:
                del self.checkpoints[i]
        self._pi_cache.clear()

    # -- restoring -------------------------------------------------------------------------------------
    def _goto(self, cp: Checkpoint) -> None:
        """Put the machine back at cp (inside a history operation)."""
        self.snapshots.restore(cp.snap)
        for n, p in self.participants.items():
            if n in cp.snap.extra:
                p.load_state(cp.snap.extra[n])
        self.machine.inputs.seek(cp.snap.pumps)
        self.ctl.restored(cp.stop)
        self.stats.restores += 1
        self._at = cp

    def restore(self, name: str) -> StopEvent:
        """Put the machine back at a checkpoint (a StopEvent of kind restored)."""
        cp = self.find(name)

        def work() -> StopEvent:
            self._goto(cp)
            return _again(cp.stop, f"checkpoint {cp.name!r} restored")
        return self.ctl.run_history(work)

    def restart(self) -> StopEvent:
        """Back to the start of the history (the boot, when history started there)."""
        if not self.checkpoints:
            raise DebugError("no history: time travel was not on when the guest started")
        cp = self.checkpoints[0]
        if cp.name != "boot":
            raise DebugError("the history starts after the guest's start (time travel was enabled later): "
                             f"`restore {cp.name}` goes back to where it starts")

        def work() -> StopEvent:
            self._goto(cp)
            return _again(cp.stop, "restarted")
        return self.ctl.run_history(work)

    # -- silent re-execution ------------------------------------------------------------------------
    def _before(self, key: Key) -> list[Checkpoint]:
        """Checkpoints strictly before this place, latest first."""
        return sorted((c for c in self.checkpoints if c.position.key < key), key=lambda c: c.position.key,
                      reverse=True)

    def _run_to(self, target: _Target, *, collect: list[tuple[StopEvent, Position]] | None = None,
                stop_at_count: int | None = None) -> StopEvent:
        """Re-execute silently from a restored checkpoint until the target (or the
        stop_at_count-th debugger stop). Debugger stops on the way are passed through (and
        listed in collect); a stop at the target itself ends the run."""
        ctl, m = self.ctl, self.machine
        self.stats.passes += 1
        t0 = m.now()
        if target.key is not None and position_now(ctl).key == target.key:
            return StopEvent(StopKind.step, self._current())
        m.stop_check = target.check
        ctl.bounce_hook = target.on_bounce
        count = 0
        first = True
        try:
            while True:
                if ctl.interrupted:
                    raise DebugError("interrupted while re-executing history")
                # a checkpoint is a place the run went through, not a stop: nothing to leave there
                ev = ctl.silent_continue(leave_breakpoints=not first, arm=target.arm)
                first = False
                reached = target.check()
                if ev.kind in (StopKind.step, StopKind.interrupt):
                    if ctl.interrupted:
                        raise DebugError("interrupted while re-executing history")
                    if reached:
                        return StopEvent(StopKind.step, self._current())
                    continue
                if ev.final or ev.kind in (StopKind.crashed, StopKind.limit, StopKind.hang, StopKind.error):
                    if reached:
                        return ev
                    if ev.kind is StopKind.error:
                        raise DebugError(f"re-executing history failed: {ev.detail}")
                    raise DebugError(f"re-executing history ended ({ev.describe(m)}) before the place it was "
                                     "going to: the run is not deterministic here (please report)")
                pos = position_now(ctl)
                if target.key is not None and pos.key >= target.key:
                    return ev               # a debugger stop at the place itself
                count += 1
                if collect is not None:
                    collect.append((ev, pos))
                if (stop_at_count is not None and count >= stop_at_count) or reached:
                    return ev
                if target.limit_turns is not None and m.turns > target.limit_turns:
                    raise DebugError("re-executing history went past the place it was going to: the run is "
                                     "not deterministic here (please report)")
        finally:
            m.stop_check = None
            ctl.bounce_hook = None
            for v in m.vcpus:
                v.clock.unit_target = NEVER
                v.clock.insn_deadline = NEVER
                v.clock.exit_target = 0
            self.stats.reexecuted_ns += max(0, m.now() - t0)

    def _current(self) -> int:
        t = self.machine.turn
        return t.vcpu.id if t is not None else (self.ctl.last_stop.vcpu or 0)

    def _target_position(self, pos: Position) -> _Target:
        """Stop exactly at a place."""
        m = self.machine
        if pos.kind == "between":
            def between() -> bool:
                return m.turn is None and (m.turns, m.pumps) >= (pos.turns, pos.pumps)
            return _Target(between, key=pos.key, limit_turns=pos.turns)
        assert pos.vcpu is not None
        v = m.vcpus[pos.vcpu]
        if pos.kind == "hold":
            # reproduced by the catchpoint that made it (the stop at the place ends the run)
            def held() -> bool:
                return m.turns > pos.turns
            return _Target(held, key=pos.key, limit_turns=pos.turns)
        base = v.clock.unit_stops

        def arm() -> None:
            v.clock.exit_target = pos.exits
            if v.bounces >= pos.bounces:
                v.clock.unit_target = pos.units

        def on_bounce(u: Any) -> None:
            if u is v and v.bounces >= pos.bounces:
                v.clock.unit_target = pos.units

        def engine() -> bool:
            return v.clock.unit_stops != base
        return _Target(engine, arm, on_bounce, key=pos.key, limit_turns=pos.turns)

    def _target_pi(self, vid: int, pi: int) -> _Target:
        """Stop at the first point the machine checks at which vcpu vid's instructions +
        bounces reach pi."""
        v = self.machine.vcpus[vid]

        def arm() -> None:
            v.clock.insn_deadline = max(0, pi - v.bounces)

        def on_bounce(u: Any) -> None:
            if u is v:
                v.clock.insn_deadline = max(0, pi - v.bounces)

        def check() -> bool:
            return v.clock.insns + v.bounces >= pi
        return _Target(check, arm, on_bounce)

    def _history(self, work: Callable[[], StopEvent]) -> StopEvent:
        """A history operation: the instruction hook on (exact counts), no new input and no
        automatic checkpoints meanwhile."""
        if not self.checkpoints:
            raise DebugError("no history: time travel is off (take a checkpoint first, or start with it on)")
        m = self.machine
        self._in_history = True
        m.inputs.replay_only = True
        for v in m.vcpus:
            v.cpu.need_exact("history", True)
        try:
            return work()
        finally:
            for v in m.vcpus:
                v.cpu.need_exact("history", False)
            m.inputs.replay_only = False
            self._in_history = False

    # -- reverse execution ------------------------------------------------------------------------------
    def reverse_step(self, vid: int) -> StopEvent:
        """Back to where the stepi that led here started, on vcpu vid (a step stop), or to
        the start of the history (history_start)."""
        return self.ctl.run_history(lambda: self._history(lambda: self._reverse_step(vid)))

    def reverse_continue(self) -> StopEvent:
        """Back to the last breakpoint, watchpoint or catchpoint hit before now, or to the
        start of the history (history_start)."""
        return self.ctl.run_history(lambda: self._history(self._reverse_continue))

    def resume_reverse(self, what: str, vid: int = 0) -> None:
        """reverse_step ("step") or reverse_continue in the background (the gdb stub's way)."""
        if what == "step":
            self.ctl.resume_history(lambda: self._history(lambda: self._reverse_step(vid)))
        else:
            self.ctl.resume_history(lambda: self._history(self._reverse_continue))

    def _no_history(self) -> StopEvent:
        first = min(self.checkpoints, key=lambda c: c.position.key)
        if position_now(self.ctl).key != first.position.key:
            self._goto(first)
        return StopEvent(StopKind.history_start, self._current(),
                         detail=f"no more reverse-execution history (checkpoint {first.name!r})")

    def _count_from(self, cp: Checkpoint, vid: int, here: Position) -> int:
        """Re-execute from cp to here counting exactly: vcpu vid's pi at here. On the way, a
        checkpoint is left a little before here when here is far (for the steps back)."""
        early = here.units - UNITS_PER_INSN * REVERSE_WINDOW
        self._goto(cp)
        v = self.machine.vcpus[vid]
        if here.vcpu == vid and here.kind != "between" and early > v.clock.units:
            # the first instruction of vid starting past `early` comes before here
            self._run_to(self._target_position(Position("engine", here.turns, here.pumps, vid, early)))
            if position_now(self.ctl).key < here.key:
                self._auto_serial += 1
                self._take(f"auto{self._auto_serial}", auto=True, lineage=cp.lineage)
        self._run_to(self._target_position(here))
        got = position_now(self.ctl)
        if got.key != here.key:
            raise DebugError(f"re-executing history did not come back to the present ({got.describe()} instead "
                             f"of {here.describe()}): the run is not deterministic here (please report)")
        v = self.machine.vcpus[vid]
        pi = v.clock.insns + v.bounces
        self._pi_cache[here.key] = (cp.lineage, vid, pi)
        return pi

    def _reverse_step(self, vid: int) -> StopEvent:
        m = self.machine
        if not 0 <= vid < len(m.vcpus):
            raise DebugError(f"no vcpu {vid}")
        v = m.vcpus[vid]
        here = position_now(self.ctl)
        before = self._before(here.key)
        if not before:
            return self._no_history()
        hit = self._pi_cache.get(here.key)
        if hit is not None and hit[1] == vid and any(c.lineage == hit[0] for c in before):
            lineage, pi_here = hit[0], hit[2]
        else:
            lineage, pi_here = before[0].lineage, self._count_from(before[0], vid, here)
        back = 1
        while back <= MAX_PASS_RETRIES:
            want = pi_here - back
            before = self._before(here.key)            # counting may have left one near here
            mine = [c for c in before if c.lineage == lineage]
            cps = [c for c in mine if c.pi[vid] < want]
            if not cps:
                # the place is before this lineage's checkpoints: count from an earlier one
                first = min(mine, key=lambda c: c.position.key)
                older = [c for c in before if c.position.key < first.position.key]
                if not older:
                    return self._no_history()
                lineage, pi_here = older[0].lineage, self._count_from(older[0], vid, here)
                continue
            cp = cps[0]
            self._goto(cp)
            if want - cp.pi[vid] > REVERSE_WINDOW:
                # far from a checkpoint: leave one near, for the next steps back
                self._run_to(self._target_pi(vid, want - REVERSE_WINDOW // 2))
                if v.clock.insns + v.bounces < want:
                    self._auto_serial += 1
                    cp = self._take(f"auto{self._auto_serial}", auto=True, lineage=lineage)
            self._run_to(self._target_pi(vid, want))
            pos = position_now(self.ctl)
            if pos.key >= here.key:
                back += 1                   # no place with this count before here: one more back
                continue
            self._pi_cache[pos.key] = (lineage, vid, v.clock.insns + v.bounces)
            return StopEvent(StopKind.step, vid)
        raise DebugError("reverse-stepi found no earlier instruction (please report)")

    def _reverse_continue(self) -> StopEvent:
        here = position_now(self.ctl)
        upto = here
        for cp in self._before(here.key):
            self._goto(cp)
            found: list[tuple[StopEvent, Position]] = []
            self._run_to(self._target_position(upto), collect=found)
            if found:
                self._goto(cp)
                return self._run_to(_Target(lambda: False), stop_at_count=len(found))
            upto = cp.position
        return self._no_history()


def _again(ev: StopEvent, detail: str) -> StopEvent:
    """The stop a checkpoint was taken at, shown again."""
    return StopEvent(ev.kind, ev.vcpu, ev.addr, ev.nr, ev.code, detail)


def describe_checkpoint(cp: Checkpoint) -> dict[str, Any]:
    """One row of `checkpoints`."""
    return {"name": cp.name, "time_ns": cp.time_ns, "auto": cp.auto, "where": cp.position.describe(),
            "stop": cp.stop.kind.value, "size": cp.snap.size, "pages": cp.snap.ram_pages,
            "host_ms": round(cp.host_s * 1e3, 2)}
