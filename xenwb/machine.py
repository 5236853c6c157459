"""The machine: a built domain plus the run loop and the control API.

Scheduling is deterministic: runnable vcpus take turns in id order, each for a
fixed quantum of virtual time (code bytes executed) or until it blocks, yields or
stops. When every vcpu is blocked, virtual time jumps to the next timer; with no
timer pending the run ends as a hang. Front ends (CLI, gdb stub, TUI, Python API)
drive the machine only through this class.
"""

from __future__ import annotations

import enum
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from unicorn import UcError

from xenwb.abi import constants as C
from xenwb.builder import BuildConfig, build_domain
from xenwb.errors import XenwbError
from xenwb.hypervisor.domain import Domain
from xenwb.hypervisor.traps import DomainCrash, deliver_event_upcall
from xenwb.hypervisor.vcpu import Vcpu, VcpuState
from xenwb.hypervisor.vcpus import update_vcpu_time
from xenwb.layout import BootLayout
from xenwb.loader import GuestImage, load_guest
from xenwb.vclock import NEVER

QUANTUM_NS = 1_000_000          # 1 ms of virtual time per turn when several vcpus run


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


class Machine:
    def __init__(self, guest: str | Path | GuestImage, *, memory_mib: int = 64, cmdline: str = "",
                 module: bytes | None = None, vcpus: int = 1) -> None:
        self.image = guest if isinstance(guest, GuestImage) else load_guest(guest)
        self.domain: Domain
        self.layout: BootLayout
        self.domain, self.layout = build_domain(
            self.image, BuildConfig(memory_mib=memory_mib, cmdline=cmdline, module=module, vcpus=vcpus))
        self._next = 0
        self.stop_requested = False
        from xenwb.commands import core_registry
        self.commands = core_registry()   # shared by gdb's monitor, the TUI, the CLI and plugins
        self.max_instructions: int | None = None
        self.timeout_ns: int | None = None

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
        if max_instructions is not None:
            for v in self.vcpus:
                v.clock.count_instructions()

    def stop(self) -> None:
        """Ask a running machine to stop at the next opportunity (any thread)."""
        self.stop_requested = True
        for v in self.vcpus:
            v.cpu.uc.emu_stop()

    # -- timers ------------------------------------------------------------------------------
    def _timer_bound(self, v: Vcpu) -> bool:
        return (C.Virq.TIMER, v.id) in self.domain.evtchn.virq_ports  # type: ignore[attr-defined]

    def _next_deadline(self, v: Vcpu) -> int | None:
        ds = []
        if self._timer_bound(v):
            if v.periodic_period:
                ds.append(v.periodic_next)
            if v.singleshot_deadline is not None:
                ds.append(v.singleshot_deadline)
        if v.state is VcpuState.blocked and v.poll_deadline:
            ds.append(v.poll_deadline)
        return min(ds) if ds else None

    def _fire_timers(self, v: Vcpu) -> None:
        dom = self.domain
        now = dom.time.now(v)
        ev = dom.evtchn  # type: ignore[attr-defined]
        if v.periodic_period and v.periodic_next <= now:
            while v.periodic_next <= now:
                v.periodic_next += v.periodic_period
            ev.send_virq(v, C.Virq.TIMER)
        if v.singleshot_deadline is not None and v.singleshot_deadline <= now:
            v.singleshot_deadline = None
            ev.send_virq(v, C.Virq.TIMER)
        if v.state is VcpuState.blocked and v.poll_deadline and v.poll_deadline <= now:
            dom.wake(v)

    # -- running -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run until shutdown, crash, hang, a limit, or stop()."""
        dom = self.domain
        self.stop_requested = False
        while True:
            if dom.crash_report is not None:
                return RunResult(StopReason.crash, str(dom.crash_report))
            if dom.shutdown_reason is not None:
                return RunResult(StopReason.shutdown, _reason_name(dom.shutdown_reason))
            if self.stop_requested:
                return RunResult(StopReason.requested)
            if self.max_instructions is not None and self.instructions() >= self.max_instructions:
                return RunResult(StopReason.instruction_limit, f"{self.instructions()} instructions")
            if self.timeout_ns is not None and self.now() >= self.timeout_ns:
                return RunResult(StopReason.time_limit, f"{self.now() / 1e9:.3f} virtual seconds")
            runnable = [v for v in self.vcpus if v.state is VcpuState.running]
            if not runnable:
                if not self._idle_jump():
                    return RunResult(StopReason.hang, self._hang_detail())
                continue
            v = self._pick(runnable)
            self._run_vcpu(v, several=len(runnable) > 1)

    def _pick(self, runnable: list[Vcpu]) -> Vcpu:
        n = len(self.vcpus)
        for i in range(n):
            v = self.vcpus[(self._next + i) % n]
            if v in runnable:
                self._next = (v.id + 1) % n
                return v
        return runnable[0]

    def _run_vcpu(self, v: Vcpu, several: bool) -> None:
        dom = self.domain
        now = dom.time.now(v)
        deadline = NEVER
        if several:
            deadline = now + QUANTUM_NS
        t = self._next_deadline(v)
        if t is not None:
            deadline = min(deadline, max(t, now))
        if self.timeout_ns is not None:
            deadline = min(deadline, self.timeout_ns)
        v.clock.deadline = deadline
        if self.max_instructions is not None:
            v.clock.insn_deadline = self.max_instructions - self.instructions() + v.clock.insns
        dom.current = v
        dom.stopping = False
        if v.clock.deadline <= now:
            self._fire_timers(v)
            return
        update_vcpu_time(dom, v)
        if v.runstate_area:
            dom.update_runstate_area(v)
        if v.cpu.cpl:          # not in the middle of a ring transition
            try:
                deliver_event_upcall(v)
            except DomainCrash as e:
                dom.crash(v, str(e))
                return
        try:
            v.cpu.run()
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
        self._fire_timers(v)

    def _idle_jump(self) -> bool:
        """All vcpus blocked: move virtual time to the earliest timer and fire it."""
        cands = [(t, v.id) for v in self.vcpus if v.state is VcpuState.blocked
                 if (t := self._next_deadline(v)) is not None]
        if not cands:
            return False
        t, _ = min(cands)
        for v in self.vcpus:
            if v.state is VcpuState.blocked:
                self.domain.time.advance_to(v, t)
                self._fire_timers(v)
        return True

    def _hang_detail(self) -> str:
        states = ", ".join(f"vcpu{v.id} {v.state.value}" for v in self.vcpus)
        return f"every vcpu is blocked with no timer or event that could wake it ({states})"

    # -- debugger control (added for the gdb stub, issue 4: xenwb/debug.py drives it) ----------
    def step_vcpu(self, v: Vcpu) -> None:
        """Run exactly one guest instruction on vcpu v, with the hypervisor work it triggers
        (a hypercall, a bounced fault), as one short scheduler turn: the turn's entry work
        (time info, pending event upcall) first, as on every return to the guest, then the
        timers that fell due. The caller checks domain.finished afterwards."""
        from xenwb.hypervisor.cpu import EXIT_ADDRESS
        dom = self.domain
        dom.current = v
        dom.stopping = False
        v.clock.deadline = NEVER
        try:
            update_vcpu_time(dom, v)
            if v.runstate_area:
                dom.update_runstate_area(v)
            if v.cpu.cpl:
                try:
                    deliver_event_upcall(v)
                except DomainCrash as e:
                    dom.crash(v, str(e))
                    return
            v.cpu.uc.emu_start(v.cpu.eip, EXIT_ADDRESS, count=1)
        finally:
            dom.current = None
        self._fire_timers(v)


def _reason_name(reason: int) -> str:
    try:
        return C.ShutdownReason(reason).name
    except ValueError:
        return f"reason {reason}"
