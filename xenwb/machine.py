"""The machine: a built domain plus the run loop and the control API.

Scheduling is deterministic: each vcpu has its own virtual clock (code bytes
executed); the runnable vcpu furthest behind runs next (ties round-robin by id) for
a fixed quantum of virtual time or until it blocks, yields, stops or a timer falls
due. When every vcpu is blocked, virtual time jumps to the next timer that can wake
one; when there is none the run ends as a hang. Front ends (CLI, gdb stub, TUI, Python API)
drive the machine only through this class.
"""

from __future__ import annotations

import enum
import gc
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unicorn import UcError

from xenwb.abi import constants as C
from xenwb.backends import ConsoleBackend, StoreBackend
from xenwb.builder import BuildConfig, build_domain
from xenwb.errors import XenwbError
from xenwb.hypervisor.domain import Domain
from xenwb.hypervisor.sched import fire_timers, timer_deadlines
from xenwb.hypervisor.state import DomainCrash, VcpuState
from xenwb.hypervisor.time import update_runstate_area, update_vcpu_time
from xenwb.hypervisor.traps import deliver_event_upcall
from xenwb.hypervisor.vcpu import Vcpu
from xenwb.inputlog import Input, InputLog
from xenwb.layout import BootLayout
from xenwb.loader import GuestImage, load_guest
from xenwb.registry import CommandRegistry
from xenwb.xenstore import XsError

QUANTUM_NS = 1_000_000          # at most 1 ms of virtual time per turn
# console input that ran out, then this much virtual time without console output: the guest
# waits for input that will not come (GRUB polls its ring for ever), the run ends as a hang
INPUT_ENDED_QUIET_NS = 10_000_000_000


class StopReason(enum.Enum):
    shutdown = "shutdown"
    crash = "crash"
    hang = "hang"
    instruction_limit = "instruction-limit"
    time_limit = "time-limit"
    requested = "requested"        # stop() from a front end, a breakpoint, a watchpoint


@dataclass
class RunResult:
    reason: StopReason
    detail: str = ""


@dataclass
class Turn:
    """The vcpu running now and when its turn ends (a quantum, or the next timer)."""

    vcpu: Vcpu
    deadline: int


class Machine:
    def __init__(self, guest: str | Path | GuestImage, *, memory_mib: int = 64, cmdline: str = "",
                 module: bytes | None = None, vcpus: int = 1, symbols: str | Path | None = None) -> None:
        self.image = guest if isinstance(guest, GuestImage) else load_guest(guest, symbols=symbols)
        built = build_domain(self.image, BuildConfig(memory_mib=memory_mib, cmdline=cmdline, module=module,
                                                     vcpus=vcpus))
        self.domain: Domain = built.domain
        self.layout: BootLayout = built.layout
        self.console: ConsoleBackend = built.console      # the PV console ring's backend (xenconsoled)
        self.store: StoreBackend = built.store            # the xenstore ring's backend (xenstored)
        self.xenstore = built.store.store                 # the store's database, as domain 0 sees it
        self._next = 0
        self._last_run: Vcpu | None = None   # the vcpu the (single) physical cpu ran last
        self.turn_hooks: list = []     # called after every vcpu turn (trace writers flush there)
        self.stop_hooks: list = []     # called whenever run() returns (trace writers flush there too)
        self.resume_hooks: list = []   # called whenever the machine starts running again
        self.stop_requested = False
        self._run_thread: int | None = None   # the thread inside run(), while one is
        self.stop_check: Callable[[], bool] | None = None   # a front end's extra stop condition
        self.turn: Turn | None = None
        self.commands = CommandRegistry()   # shared by gdb's monitor, the TUI, the CLI and plugins
        self.max_instructions: int | None = None
        self.timeout_ns: int | None = None
        self._futile: set[int] = set()   # vcpus whose periodic timer fired in vain while all idle
        self._quiet_since: tuple[int, int] | None = None    # input ended: (virtual ns, console bytes) then
        self.input_source = None          # console input from the user (issue 7: xenwb/backends.py)
        # where the run is (time travel, xenwb/timetravel.py): both only ever count up
        self.turns = 0                    # vcpu turns begun
        self.pumps = 0                    # console pumps: where input from outside enters
        self.inputs = InputLog()          # every such input, with the pump that took it
        self.in_engine: Vcpu | None = None   # the vcpu whose engine runs (hooks run inside it)
        self.on_turn_end: Callable[[], None] | None = None   # after a turn's schedule-out work
        # The domain's long-lived state (page info, tables, engines) is built: keep it out of
        # the cyclic garbage collector's scans, which otherwise cost ~5% of a Linux boot
        # (measured with py-spy: gc_collect_main) in the allocation-heavy hypercall paths.
        gc.freeze()

    # -- state -----------------------------------------------------------------------------
    @property
    def vcpus(self) -> list[Vcpu]:
        return self.domain.vcpus

    def now(self) -> int:
        """Machine time: the latest vcpu clock (ns)."""
        return max(self.domain.time.now(v) for v in self.vcpus)

    def instructions(self) -> int:
        return sum(v.clock.insns for v in self.vcpus)

    def set_limits(self, max_instructions: int | None = None, timeout_ns: int | None = None) -> None:
        self.max_instructions = max_instructions
        self.timeout_ns = timeout_ns
        for v in self.vcpus:
            v.cpu.need_exact("limit", max_instructions is not None)

    def stop(self) -> None:
        """Ask a running machine to stop at the next opportunity (any thread). The stop is
        invisible to the guest: the turn it interrupts goes on at the next run().

        From the thread that runs the machine (a hook, a trace subscriber, a signal handler)
        the engine is stopped at once. From any other thread uc_emu_stop is not safe
        (unicorn 2.1.4 writes its stop flags unsynchronised with the running engine: measured,
        a stop may leave the engine at the start of a block whose stores were already done,
        so the block runs again, and the clock loses or keeps bytes it should not). There
        the stop goes through each vcpu's virtual clock: its block hook stops the engine
        before the next block, on the engine's own thread, as a timer deadline does."""
        self.stop_requested = True
        if threading.get_ident() == self._run_thread:
            for v in self.vcpus:
                v.cpu.uc.emu_stop()
        else:
            for v in self.vcpus:
                v.clock.request_stop()

    def running_elsewhere(self) -> bool:
        """Is another thread inside run() (a front end's command while the guest runs)?"""
        return self._run_thread is not None and self._run_thread != threading.get_ident()

    # -- timers (xen/common/sched/core.c; the rules are in hypervisor/sched.py) ----------------
    def _timer_bound(self, v: Vcpu) -> bool:
        return self.domain.evtchn.virq_bound(C.Virq.TIMER, v.id)

    def _next_deadline(self, v: Vcpu, effective: bool = False) -> int | None:
        """v's earliest armed timer (effective=True: only one whose firing can change something)."""
        ds = timer_deadlines(v, effective=effective)
        return min(t for t, _ in ds) if ds else None

    def _fire_timers(self, v: Vcpu) -> bool:
        """Fire v's timers that are due at v's clock (a vcpu that is down has none running)."""
        if v.state is VcpuState.down:
            return False
        return fire_timers(v)

    def _fire_blocked(self, ref: int) -> bool:
        """Timers of blocked vcpus due by `ref`, the clock of the vcpu about to run: a blocked
        vcpu is idle, so its clock moves to each deadline and the timer fires there. True when
        a vcpu woke (it may now be the one furthest behind)."""
        dom = self.domain
        running = sum(v.state is VcpuState.running for v in self.vcpus)
        for b in self.vcpus:
            for _ in range(64):                 # a few periods at most: the running vcpu stops at each
                if b.state is not VcpuState.blocked:
                    break
                t = self._next_deadline(b)
                if t is None or t > ref:
                    break
                dom.time.advance_to(b, t)
                dom.current = b                 # a vcpu woken by this timer wakes at b's time
                fire_timers(b)
                dom.current = None
        return sum(v.state is VcpuState.running for v in self.vcpus) > running

    # -- running -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run until shutdown, crash, hang, a limit, or a requested stop.

        Each vcpu has its own virtual clock. The runnable vcpu whose clock is furthest behind
        runs next (ties: round-robin by id) for one turn: one quantum (QUANTUM_NS of virtual
        time) or until it blocks, yields, or a timer falls due; blocked vcpus' timers fire
        when the running vcpu's clock reaches them. The interleaving depends only on the
        guest, so the same run gives the same interleaving. When every vcpu is blocked, idle
        time passes at once: the clocks jump to the next timer that can wake someone; if
        there is none, the run ends as a hang.

        A requested stop (stop(), a breakpoint, a step, `stop_check`) leaves the current
        turn open: the next run() continues it where it stopped, with the same deadline and
        without redoing the turn's schedule-in work, so stopping is invisible to the guest."""
        for fn in self.resume_hooks:
            fn()
        self._run_thread = threading.get_ident()
        try:
            return self._run()
        finally:
            self._run_thread = None
            for fn in self.stop_hooks:
                fn()

    def _run(self) -> RunResult:
        dom = self.domain
        self.stop_requested = False
        while True:
            if dom.crash_report is not None:
                return RunResult(StopReason.crash, str(dom.crash_report))
            if dom.shutdown_reason is not None:
                return RunResult(StopReason.shutdown, _reason_name(dom.shutdown_reason))
            if self.stop_requested or (self.stop_check is not None and self.stop_check()):
                return RunResult(StopReason.requested)
            if self.max_instructions is not None and self.instructions() >= self.max_instructions:
                return RunResult(StopReason.instruction_limit, f"{self.instructions()} instructions")
            if self.timeout_ns is not None and self.now() >= self.timeout_ns:
                return RunResult(StopReason.time_limit, f"{self.now() / 1e9:.3f} virtual seconds")
            if self._quiet_since is not None and self._waits_for_input_for_ever():
                return RunResult(StopReason.hang, f"console input ended and the guest has written nothing for "
                                                  f"{INPUT_ENDED_QUIET_NS / 1e9:.0f} virtual seconds since: it "
                                                  "waits for input that will not come (end the input with a "
                                                  "command that stops the guest, or use --timeout)")
            if self.turn is None:
                self._pump_console()            # console input enters between turns only (issue 7)
                runnable = [v for v in self.vcpus if v.state is VcpuState.running]
                if not runnable:
                    if self._pace_idle():
                        continue                # typed input arrived while the guest idled
                    stop = self._idle_jump()
                    if stop is not None:
                        if stop.reason is StopReason.hang and self._wait_console_input():
                            continue
                        return stop
                    continue
                v = self._pick(runnable)
                if self._fire_blocked(dom.time.now(v)):
                    continue
                if not self._begin_turn(v):
                    continue
                if self.stop_check is not None and self.stop_check():
                    continue                    # e.g. a step that ends on the upcall just delivered
            self._continue_turn()

    @property
    def current_vcpu(self) -> Vcpu | None:
        """The vcpu whose turn is open (stopped mid-turn), if any."""
        return self.turn.vcpu if self.turn is not None else None

    def _pick(self, runnable: list[Vcpu]) -> Vcpu:
        n = len(self.vcpus)
        now = self.domain.time.now
        v = min(runnable, key=lambda u: (now(u), (u.id - self._next) % n))
        self._next = (v.id + 1) % n
        return v

    def _begin_turn(self, v: Vcpu) -> bool:
        """Xen's schedule-in work for v (timers, vcpu_time_info, runstate area, segment
        reload, a pending event upcall) and the turn's deadline. False when the turn ended
        before any guest code (the vcpu stopped running, or the domain crashed)."""
        dom = self.domain
        dom.current = v
        self.turns += 1
        self._futile.clear()
        self._fire_timers(v)                    # vcpu_periodic_timer_work on context switch
        if v.state is not VcpuState.running:
            dom.current = None
            return False
        now = dom.time.now(v)
        deadline = now + QUANTUM_NS
        for u in self.vcpus:                    # own timers, and blocked vcpus' timers
            if u is v or u.state is VcpuState.blocked:
                t = self._next_deadline(u)
                if t is not None:
                    deadline = min(deadline, max(t, now + 1))
        if self.timeout_ns is not None:
            deadline = min(deadline, max(self.timeout_ns, now + 1))
        update_vcpu_time(dom, v)
        if v.runstate_area:
            update_runstate_area(dom, v)
        self.turn = Turn(v, deadline)
        try:
            if (self._last_run is not v or v.rescheduled) and v.cpu.cpl:
                v.reload_segments()             # Xen's load_segments when it switches to v
            deliver_event_upcall(v)
        except DomainCrash as e:
            dom.crash(v, str(e))
            self._end_turn()
            return False
        v.rescheduled = False
        self._last_run = v
        return True

    def _continue_turn(self) -> None:
        """Run the open turn's vcpu until its engine stops; end the turn unless the stop was
        only requested (then it stays open, to be continued by the next run())."""
        turn = self.turn
        assert turn is not None
        v = turn.vcpu
        dom = self.domain
        dom.current = v
        # a time limit stops the engine without ending the turn (the next run() goes on);
        # this overwrites a stop() another thread asked the clock for, so stop_requested is
        # tested again below, after it (stop() sets the flag before it asks the clocks)
        v.clock.deadline = min(turn.deadline, self.timeout_ns if self.timeout_ns is not None else turn.deadline)
        if self.max_instructions is not None:
            v.clock.insn_deadline = min(v.clock.insn_deadline,
                                        self.max_instructions - self.instructions() + v.clock.insns)
        try:
            if v.on_resume is not None:
                work, v.on_resume = v.on_resume, None
                work()                          # work a debugger stop deferred (e.g. a held hypercall)
            if (v.state is VcpuState.running and not dom.finished and not v.rescheduled
                    and not self.stop_requested):
                self.in_engine = v
                try:
                    v.cpu.run()
                finally:
                    self.in_engine = None
        except DomainCrash as e:
            dom.crash(v, str(e))
        except UcError as e:
            # the emulated CPU itself gave up (e.g. a fetch from a machine address with no RAM)
            dom.crash(v, f"emulated CPU error: {e}")
        except XenwbError:
            raise                       # e.g. a trace file that cannot be written: the user's problem
        except Exception as e:          # a hook of a plugin or front end failed: report, keep the workbench
            if os.environ.get("XENWB_DEBUG"):
                traceback.print_exc()
            dom.crash(v, f"xenwb internal error in a hook: {type(e).__name__}: {e} "
                         "(please report; XENWB_DEBUG=1 shows the traceback)")
        dom.current = None
        if v.on_resume is not None and not dom.finished:
            return      # work a stop holds (the rest of a hypercall's exit) runs before the turn can end
        if (dom.finished or v.state is not VcpuState.running or v.rescheduled
                or v.clock.units >= turn.deadline):
            self._end_turn()

    def _end_turn(self) -> None:
        """Schedule-out work: the runstate area, the vcpu's timers due now, the turn hooks."""
        turn = self.turn
        self.turn = None
        if turn is None:
            return
        v = turn.vcpu
        dom = self.domain
        dom.current = v
        if v.runstate_area:
            update_runstate_area(dom, v)
        self._fire_timers(v)
        dom.current = None
        for fn in self.turn_hooks:
            fn()
        if self.on_turn_end is not None:
            self.on_turn_end()

    def _next_wake(self) -> int | None:
        """The earliest timer that can wake a blocked vcpu (what _idle_jump jumps to)."""
        blocked = [v for v in self.vcpus if v.state is VcpuState.blocked]
        cands = [t for v in blocked for t, kind in timer_deadlines(v, effective=True)
                 if not (kind == "periodic" and v.id in self._futile)]
        return min(cands) if cands else None

    def _pace_idle(self) -> bool:
        """With a person typing at the console (an interactive input source), idle virtual time
        passes no faster than host time, as QEMU's icount does with sleep=on: before jumping to
        the next timer, wait that long in host time for a key. True when input arrived (the
        jump is not taken: the console event wakes the guest now). Without interactive input
        idle time passes at once, so runs stay fast and repeatable."""
        src = self.input_source
        cb = self.console
        if (src is None or not src.interactive or cb.pending_input or not cb.input_idle()
                or self.inputs.has_future or self.inputs.replay_only):   # re-executed history: no waiting
            return False
        t = self._next_wake()
        if t is None:
            return False                        # nothing will wake the guest: _wait_console_input
        host_end = time.monotonic() + (t - self.now()) / 1e9
        while not self.stop_requested:
            left = host_end - time.monotonic()
            if left <= 0:
                return False
            ready = src.wait(min(left, 0.2))
            if ready is None:
                return False
            if ready:
                self._pump_console()
                return True
        return False

    def _idle_jump(self) -> RunResult | None:
        """Every vcpu is blocked: idle time passes at once. The blocked vcpus' clocks jump to
        the earliest timer that can wake someone and the timers due then fire. A periodic
        timer that fired without waking anyone (its port masked) cannot do more until a
        vcpu runs: it no longer counts. None to go on, else why the run ends."""
        blocked = [v for v in self.vcpus if v.state is VcpuState.blocked]
        cands = [t for v in blocked for t, kind in timer_deadlines(v, effective=True)
                 if not (kind == "periodic" and v.id in self._futile)]
        if not cands:
            return RunResult(StopReason.hang, self._hang_detail())
        t = min(cands)
        if self.timeout_ns is not None and t > self.timeout_ns:
            for v in blocked:
                self.domain.time.advance_to(v, self.timeout_ns)
            return RunResult(StopReason.time_limit, f"{self.timeout_ns / 1e9:.3f} virtual seconds")
        periodic_fired = []
        for v in blocked:
            self.domain.time.advance_to(v, t)
        for v in blocked:
            last = v.periodic_last
            self.domain.current = v
            self._fire_timers(v)
            self.domain.current = None
            if v.periodic_last != last:
                periodic_fired.append(v.id)
        if not any(v.state is VcpuState.running for v in self.vcpus):
            self._futile.update(periodic_fired)
        return None

    def _hang_detail(self) -> str:
        parts = []
        ev = self.domain.evtchn
        for v in self.vcpus:
            if v.state is not VcpuState.blocked:
                parts.append(f"vcpu{v.id} {v.state.value}")
                continue
            eip = v.cpu.pc
            sym = self.domain.symbolize(eip)
            what = (f"in SCHEDOP_poll on ports {v.poll_ports}" if v.poll_ports is not None
                    else "in SCHEDOP_block")
            why = []
            port = ev.virq_ports.get((C.Virq.TIMER, v.id))
            if port is None:
                why.append("no VIRQ_TIMER port bound")
            elif ev.is_masked(port):
                why.append(f"its VIRQ_TIMER port {port} is masked")
            elif not (v.periodic_period or v.singleshot_deadline is not None):
                why.append("no timer armed")
            if v.upcall_mask:
                why.append("events masked (evtchn_upcall_mask = 1)")
            parts.append(f"vcpu{v.id} blocked {what} at {eip:#x}{f' <{sym}>' if sym else ''}"
                         f"{': ' + ', '.join(why) if why else ''}")
        return ("every vcpu is blocked and no timer or event can wake one (a guest hang): "
                + "; ".join(parts))

    # -- console input (added for issue 7; the rules are in xenwb/backends.py) ---------------
    def console_input(self, data: bytes) -> None:
        """Queue bytes typed for the guest's console (from any thread). They enter at the next
        console pump, then the ring as space allows, never while a vcpu runs: where the guest
        sees them depends only on the guest and on the bytes (recorded: xenwb/inputlog.py)."""
        self.inputs.submit("console", data)

    def xenstore_input(self, path: str, value: str) -> None:
        """A write to xenstore by the toolstack (domain 0), entered like console input."""
        self.inputs.submit("xenstore", f"{path}\0{value}".encode("latin-1"))

    def _apply_input(self, e: Input) -> None:
        f = e.event_fields()
        if e.kind == "xenstore":
            self.domain.trace.emit_input_xenstore(None, e.time_ns, e.pump, str(f["path"]), str(f["value"]))
        else:
            self.domain.trace.emit_input_console(None, e.time_ns, e.pump, str(f["text"]))
        if e.kind == "console":
            self.console.queue_input(e.data)
        elif e.kind == "xenstore":
            path, _, value = e.data.partition(b"\0")
            try:
                self.xenstore.write(path.decode("latin-1"), value)
            except XsError:
                pass                        # a bad path does nothing (commands check it before)

    def _pump_console(self) -> None:
        """A console pump: the inputs recorded for it (a re-execution), then new ones (typed
        meanwhile, the next chunk of the input source), then as much as fits into the ring."""
        self.pumps += 1
        k = self.pumps
        log = self.inputs
        for e in log.due(k):
            self._apply_input(e)
        for kind, data in log.take_inbox():
            self._apply_input(log.record(k, kind, data, self.now()))
        cb = self.console
        src = self.input_source
        if (src is not None and not log.has_future and not log.replay_only
                and not cb.pending_input and cb.input_idle()):
            chunk = src.next_chunk()      # the next line (scripted), or what was typed
            if chunk is None:
                self.input_source = None
                if cb.input_total:        # it ran out after the guest read some: watch for a wait
                    self._quiet_since = (self.now(), self.domain.console_bytes)
            elif chunk:
                self._apply_input(log.record(k, "console", chunk, self.now()))
        if cb.pending_input:
            cb.pump()

    def _waits_for_input_for_ever(self) -> bool:
        """Since the input ran out, INPUT_ENDED_QUIET_NS of virtual time without console output."""
        assert self._quiet_since is not None
        since, written = self._quiet_since
        now, out = self.now(), self.domain.console_bytes
        if out != written:
            self._quiet_since = (now, out)
            return False
        return now - since >= INPUT_ENDED_QUIET_NS

    def _wait_console_input(self) -> bool:
        """Every vcpu is blocked for good and the guest has read all its console input: wait
        for more (host time passes, virtual time does not). A pipe is waited for only once
        the guest has read some input (otherwise it is a hang, as without input). False when
        no input will come."""
        if self.inputs.has_future:          # re-executing: the input that came here is recorded
            self._pump_console()
            return True
        src = self.input_source
        cb = self.console
        if src is None or cb.pending_input or not cb.input_idle() or self.inputs.replay_only:
            return False
        if not src.interactive and not cb.input_total:
            return False
        while not self.stop_requested:
            ready = src.wait(0.2)
            if ready is None:
                return False
            if ready:
                self._pump_console()
                return True
        return True


def _reason_name(reason: int) -> str:
    try:
        return C.ShutdownReason(reason).name
    except ValueError:
        return f"reason {reason}"
