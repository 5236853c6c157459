"""The control API: run, stop, step, breakpoints, watchpoints, catchpoints, memory and
registers of a Machine, with stop reasons. The gdb stub, the shell, the CLI and the Python
Session all drive a machine through one Controller.

Exactness, on what unicorn really does (2.1.4, measured; see hypervisor/cpu.py):

* Unicorn compiles code hooks into translation blocks when it translates them, so a hook
  added later is not called from cached blocks. Breakpoints are code hooks on one address
  (they never touch guest memory) whose cached translations are dropped when they are
  inserted; single steps and stops after a watched access use the virtual clock's native
  instruction hook (xenwb/_vclock.c), installed with a flush of the engine's translations
  while it is needed. A step therefore runs exactly one guest instruction, whatever the
  cache holds.
* A step ends before the next guest instruction: after one instruction, or as soon as Xen
  pushed a frame (an exception bounced, an event upcall delivered on the way back to the
  guest), so a step over a faulting instruction or a hypercall lands on the handler's first
  instruction. The hypervisor's own ring-transition stubs are not guest instructions.
* Watchpoints watch guest-virtual ranges through memory hooks on the machine addresses they
  map to (unicorn's memory hooks see machine addresses, and take effect at once); the hook
  records the access and arms the instruction counter, so the stop comes right after the
  accessing instruction, every access reported, back to back ones included.
* Stops are invisible to the guest: a stop leaves the machine's turn open and the clock is
  settled to the instructions that completed (xenwb/vclock.py), so a run with any number of
  stops, steps and detaches gives the same console output and trace as one without.
* Hypercall and exception catchpoints hold the hypervisor's work (the vcpu stops after the
  `int $0x82`, or on the faulting instruction); the held work happens when it resumes.

All-stop model: when anything stops, the whole machine is stopped (one thread of control
runs every vcpu, so the others are stopped too). `resume` runs the machine in a background
thread, `run` in the caller's; `interrupt` stops it from any thread within milliseconds;
every stop is published once as a StopEvent to the listeners and to `wait`/`take_stop`.
A domain crash and a limit are post-mortem stops: everything stays inspectable; resuming
after them ends the session.
"""

from __future__ import annotations

import enum
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, Uc

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.paging import walk
from xenwb.hypervisor.state import VcpuState
from xenwb.machine import RunResult, StopReason

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine

# gdb's signal numbers (include/gdb/signals.def), used in stop replies
SIGINT, SIGILL, SIGTRAP, SIGABRT, SIGFPE, SIGKILL, SIGBUS, SIGSEGV, SIGXCPU = 2, 4, 5, 6, 8, 9, 7, 11, 24

# Hypercalls after which watched ranges are translated again (they change pagetables)
PAGETABLE_HYPERCALLS = frozenset({C.Hypercall.mmu_update, C.Hypercall.update_va_mapping,
                                  C.Hypercall.update_va_mapping_otherdomain, C.Hypercall.mmuext_op,
                                  C.Hypercall.multicall, C.Hypercall.memory_op})
MAX_ACCESS = 16                # widest data access (SSE); watch hooks start this much lower
MAX_BREAKPOINTS = 1024         # each is a code hook per engine: beyond this, refuse (issue 12)
MAX_WATCHPOINTS = 256

# the signal a guest exception shows as in gdb (as Linux maps them to a process's signals)
EXCEPTION_SIGNAL = {0: SIGFPE, 1: SIGTRAP, 3: SIGTRAP, 4: SIGSEGV, 5: SIGSEGV, 6: SIGILL, 7: SIGFPE,
                    10: SIGSEGV, 11: SIGBUS, 12: SIGBUS, 13: SIGSEGV, 14: SIGSEGV, 16: SIGFPE,
                    17: SIGBUS, 19: SIGFPE}


class DebugError(Exception):
    """A debugger request that cannot be honoured now (e.g. the machine is running)."""


class StopKind(enum.Enum):
    initial = "initial"            # halted before the first instruction, or attached
    step = "step"
    swbreak = "swbreak"
    hwbreak = "hwbreak"
    watch = "watch"                # write watchpoint
    rwatch = "rwatch"
    awatch = "awatch"
    syscall_entry = "syscall_entry"
    syscall_return = "syscall_return"
    exception = "exception"        # a guest exception caught before its delivery
    interrupt = "interrupt"        # interrupt() (gdb's Ctrl-C) or Machine.stop()
    crashed = "crashed"            # domain_crash: post-mortem, everything inspectable
    limit = "limit"                # --timeout / --max-instructions reached: post-mortem too
    hang = "hang"                  # every vcpu blocked with nothing to wake one (idle_on_hang off)
    exited = "exited"              # SCHEDOP_shutdown: code = shutdown reason
    killed = "killed"
    error = "error"                # a workbench error while running (details in detail)


FINAL_KINDS = frozenset({StopKind.exited, StopKind.killed})
POSTMORTEM_KINDS = frozenset({StopKind.crashed, StopKind.limit, StopKind.hang})
WATCH_KINDS = {"write": StopKind.watch, "read": StopKind.rwatch, "access": StopKind.awatch}


@dataclass
class StopEvent:
    kind: StopKind
    vcpu: int | None = None
    addr: int | None = None        # breakpoint address, or the watched address accessed
    nr: int | None = None          # hypercall number (syscall stops), vector (exception stops)
    code: int = 0                  # exit code (exited) or signal (crashed, limit, killed)
    detail: str = ""

    @property
    def final(self) -> bool:
        """Nothing can run any more (the guest shut down, or the debugger killed it)."""
        return self.kind in FINAL_KINDS

    @property
    def signal(self) -> int:
        if self.kind is StopKind.interrupt:
            return SIGINT
        if self.kind is StopKind.exception:
            return EXCEPTION_SIGNAL.get(self.nr or 0, SIGSEGV)
        if self.kind in (StopKind.error, StopKind.crashed):
            return SIGSEGV
        if self.kind is StopKind.limit:
            return SIGXCPU
        return SIGTRAP

    def describe(self, machine: Machine) -> str:
        """One line for people: what stopped, where."""
        v = machine.vcpus[self.vcpu] if self.vcpu is not None and self.vcpu < len(machine.vcpus) else None
        where = ""
        if v is not None:
            pc = v.guest_regs()[0]["pc"]
            sym = machine.domain.symbolize(pc)
            where = f" at {pc:#010x}" + (f" <{sym}>" if sym else "")
        what = {StopKind.swbreak: "breakpoint", StopKind.hwbreak: "hardware breakpoint",
                StopKind.watch: "watchpoint (write)", StopKind.rwatch: "watchpoint (read)",
                StopKind.awatch: "watchpoint (access)", StopKind.syscall_entry: "on entry to hypercall",
                StopKind.syscall_return: "on return from hypercall"}.get(self.kind, self.kind.value)
        if self.kind in WATCH_KINDS.values() and self.addr is not None:
            what += f" {self.addr:#x}"
        elif self.nr is not None and self.kind in (StopKind.syscall_entry, StopKind.syscall_return):
            what += f" {self.nr} ({C.hypercall_name(self.nr)})"
        elif self.kind is StopKind.exception and self.nr is not None:
            what += f" {C.TRAP_NAMES.get(self.nr, f'vector {self.nr}')}"
        vc = f"vcpu{self.vcpu} " if self.vcpu is not None else ""
        return f"{vc}{what}{where}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Watchpoint:
    kind: str                      # write, read, access
    va: int
    length: int
    pieces: list[tuple[int, int, int, int]] = field(default_factory=list)   # (vcpu, va, maddr, n)
    hooks: list[tuple[Uc, int]] = field(default_factory=list)


@dataclass
class Catchpoint:
    """A stop on the hypervisor's work: hypercalls (by number; on entry and return, or only
    failed returns) or guest exceptions about to be bounced (by vector)."""

    ident: int
    kind: str                              # "hypercall" or "exception"
    numbers: frozenset[int] | None = None  # None: every hypercall / vector
    failed_only: bool = False
    owner: str = "user"                    # "gdb" for QCatchSyscalls, "user" for monitor/shell/Python

    def matches(self, n: int) -> bool:
        return self.numbers is None or n in self.numbers

    def describe(self) -> str:
        if self.kind == "hypercall":
            what = "every hypercall" if self.numbers is None else ", ".join(
                C.hypercall_name(n) for n in sorted(self.numbers))
            return f"catch hypercall {what}" + (" (failed returns)" if self.failed_only else "")
        what = "every exception" if self.numbers is None else ", ".join(
            C.TRAP_NAMES.get(n, str(n)) for n in sorted(self.numbers))
        return f"catch exception {what}"


class Controller:
    """The control layer over one Machine (one per machine).

    idle_on_hang: when every vcpu is blocked for good, wait (as a real machine idles) until
    interrupted, as a debugger front end wants; off, such a hang is a (post-mortem) stop, as
    scripts want."""

    def __init__(self, machine: Machine, *, idle_on_hang: bool = False) -> None:
        self.machine = machine
        self.idle_on_hang = idle_on_hang
        self.domain = machine.domain
        self.hv_start = machine.domain.geo.hv_start
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._running = False
        self._thread: threading.Thread | None = None
        self._last = StopEvent(StopKind.initial, vcpu=0)
        self._unreported: StopEvent | None = None
        self._pending: StopEvent | None = None
        self._interrupt = False
        self._idle_wake = threading.Event()
        self._listeners: list[Callable[[StopEvent], None]] = []
        self.killed = False
        self._postmortem_seen = False
        # breakpoints: address -> kinds ("sw", "hw"); hooks per address, one per engine
        self._bp_kinds: dict[int, set[str]] = {}
        self._bp_hooks: dict[int, list[tuple[Vcpu, int]]] = {}
        self._skip: dict[int, int] = {}
        # watchpoints
        self._watch: dict[tuple[str, int, int], Watchpoint] = {}
        # catchpoints
        self._catches: dict[int, Catchpoint] = {}
        self._next_catch = 1
        self._skip_entry: set[int] = set()            # vcpus re-issuing a held hypercall
        self._syscall_nr: dict[int, int] = {}         # vcpu -> hypercall of its syscall stop
        self._held_states: dict[int, VcpuState] = {}
        self._stepping: Vcpu | None = None
        self.domain.observer = self

    # -- the observer protocol (hypervisor/domain.py DebugObserver) -------------------------------
    def hypercall_entry(self, vcpu: Vcpu, nr: int, args: tuple[int, ...]) -> bool:
        vid = vcpu.id
        if vid in self._skip_entry:
            self._skip_entry.discard(vid)
            return False
        if not any(c.kind == "hypercall" and not c.failed_only and c.matches(nr) for c in self._catches.values()):
            return False
        # hold the call: the vcpu stops after the instruction; resuming re-issues it
        pc = vcpu.cpu.pc                          # after the int $0x82 / syscall (2 bytes)
        vcpu.clock.units -= 2                     # the trapping instruction runs again then
        self._syscall_nr[vid] = nr

        def reissue() -> None:
            vcpu.cpu.pc = pc - 2
            self._skip_entry.add(vid)
        vcpu.hold_exit = reissue
        self._record(StopEvent(StopKind.syscall_entry, vid, nr=nr))
        return True

    def hypercall_return(self, vcpu: Vcpu, nr: int, ret: int) -> None:
        if self._watch and nr in PAGETABLE_HYPERCALLS:
            self._retranslate_watchpoints()
        failed = ret < 0
        if any(c.kind == "hypercall" and c.matches(nr) and (failed or not c.failed_only)
               for c in self._catches.values()) and not self.domain.finished:
            self._syscall_nr[vcpu.id] = nr
            vcpu.hold_exit = vcpu.return_to_guest    # events are delivered when it resumes
            self._record(StopEvent(StopKind.syscall_return, vcpu.id, nr=nr))

    def exception(self, vcpu: Vcpu, vector: int, error_code: int | None, cr2: int | None) -> bool:
        if not any(c.kind == "exception" and c.matches(vector) for c in self._catches.values()):
            return False
        detail = C.TRAP_NAMES.get(vector, f"vector {vector}")
        if error_code is not None:
            detail += f" error code {error_code:#x}"
        if cr2 is not None:
            detail += f" cr2 {cr2:#x}"
        self._record(StopEvent(StopKind.exception, vcpu.id, nr=vector, detail=detail))
        return True

    def bounced(self, vcpu: Vcpu) -> None:
        if self._stepping is vcpu:
            # Xen pushed a frame: the step ends before the handler's first instruction
            vcpu.clock.insn_deadline = min(vcpu.clock.insn_deadline, vcpu.clock.insns)

    # -- state ----------------------------------------------------------------------------
    @property
    def vcpus(self) -> list[Vcpu]:
        return self.machine.vcpus

    def vcpu(self, vid: int) -> Vcpu:
        return self.machine.vcpus[vid]

    @property
    def running(self) -> bool:
        return self._running

    @property
    def last_stop(self) -> StopEvent:
        return self._last

    @property
    def finished(self) -> bool:
        """Nothing can run any more: killed, shut down, or resumed after a post-mortem stop."""
        return self.killed or self.domain.shutdown_reason is not None or self._last.final or (
            self._postmortem_seen and self._last.kind in POSTMORTEM_KINDS)

    @property
    def postmortem(self) -> bool:
        """The machine cannot go on (crash, limit) but stays inspectable."""
        return self.domain.crash_report is not None or self._last.kind in POSTMORTEM_KINDS

    def add_listener(self, fn: Callable[[StopEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[StopEvent], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def orig_eax(self, vid: int) -> int:
        """The hypercall number at a hypercall stop of this vcpu, else -1."""
        return self._syscall_nr.get(vid, -1)

    def guest_regs(self, vid: int) -> dict[str, int]:
        """The registers the vcpu resumes with (in a ring transition: the guest's, not the
        hypervisor stub's)."""
        return self.vcpu(vid).guest_regs()[0]

    def _require_stopped(self) -> None:
        if self._running:
            raise DebugError("the machine is running")

    def enter_guest(self) -> None:
        """Nothing to do: a vcpu still inside the start-of-day ring transition already shows
        the guest's entry state (guest_regs), and its first step runs the entry instruction."""
        self._require_stopped()

    # -- breakpoints ---------------------------------------------------------------------------
    def insert_breakpoint(self, addr: int, hardware: bool = False) -> None:
        self._require_stopped()
        addr &= self.machine.domain.geo.va_mask
        if addr not in self._bp_kinds and len(self._bp_kinds) >= MAX_BREAKPOINTS:
            raise DebugError(f"too many breakpoints (at most {MAX_BREAKPOINTS})")
        self._bp_kinds.setdefault(addr, set()).add("hw" if hardware else "sw")
        if addr not in self._bp_hooks:
            # dropping one address's translations works in the address space the engine is in
            # now: a user address, or any address while a 64-bit vcpu runs on its user L4 (the
            # kernel's code, translated on the kernel L4, may be cached), flushes them all
            user_space = addr < self.machine.image.kernel_start
            self._bp_hooks[addr] = [(v, v.cpu.add_breakpoint_hook(
                self._on_breakpoint, v.id, addr, everywhere=user_space or v.active_top_mfn != v.cr3_mfn))
                for v in self.vcpus]

    def remove_breakpoint(self, addr: int, hardware: bool = False) -> bool:
        self._require_stopped()
        addr &= self.machine.domain.geo.va_mask
        kinds = self._bp_kinds.get(addr)
        kind = "hw" if hardware else "sw"
        if not kinds or kind not in kinds:
            return False
        kinds.discard(kind)
        if not kinds:
            del self._bp_kinds[addr]
            for v, h in self._bp_hooks.pop(addr, []):
                v.cpu.remove_hook(h)
        return True

    def breakpoints(self) -> dict[int, set[str]]:
        return {a: set(k) for a, k in self._bp_kinds.items()}

    def _on_breakpoint(self, uc: Uc, address: int, size: int, vid: int) -> None:
        if self._skip.get(vid) == address:
            del self._skip[vid]
            return
        kinds = self._bp_kinds.get(address)
        if not kinds:
            return
        self._record(StopEvent(StopKind.swbreak if "sw" in kinds else StopKind.hwbreak, vid, addr=address))
        uc.emu_stop()

    # -- watchpoints -----------------------------------------------------------------------------
    def insert_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        self._require_stopped()
        if kind not in WATCH_KINDS:
            raise ValueError(f"watchpoint kind {kind!r}")
        if not 0 < length <= 0x10000 or addr < 0 or addr + length > self.machine.domain.geo.va_mask + 1:
            raise ValueError(f"watchpoint range {addr:#x}+{length:#x}")
        key = (kind, addr, length)
        if key in self._watch:
            return
        if len(self._watch) >= MAX_WATCHPOINTS:
            raise DebugError(f"too many watchpoints (at most {MAX_WATCHPOINTS})")
        if not self._watch:
            for v in self.vcpus:
                v.cpu.need_exact("watch", True)
        w = Watchpoint(kind, addr, length)
        self._watch[key] = w
        self._translate(w)

    def remove_watchpoint(self, addr: int, length: int, kind: str = "write") -> bool:
        self._require_stopped()
        w = self._watch.pop((kind, addr, length), None)
        if w is None:
            return False
        self._unhook(w)
        if not self._watch:
            for v in self.vcpus:
                v.cpu.need_exact("watch", False)
        return True

    def watchpoints(self) -> list[Watchpoint]:
        return list(self._watch.values())

    def _pieces(self, w: Watchpoint) -> list[tuple[int, int, int, int]]:
        dom = self.domain
        out = []
        for v in self.vcpus:
            if not v.cr3_mfn:
                continue
            # the hooks watch machine addresses: a 64-bit vcpu's user L4 may map the address
            # to other frames than its kernel L4 does
            tops = dict.fromkeys(t for t in (v.cr3_mfn, getattr(v, "user_cr3_mfn", 0)) if t)
            pos = 0
            while pos < w.length:
                va = w.va + pos
                n = min(w.length - pos, 4096 - (va & 0xFFF))
                if dom.geo.guest_range_ok(va, n):
                    for maddr in dict.fromkeys(ww.maddr for top in tops
                                               if (ww := walk(dom.mem, dom.mode, top, va)).mapped):
                        if maddr is not None and dom.mem.valid(maddr, n):
                            out.append((v.id, va, maddr, n))
                pos += n
        return out

    def _translate(self, w: Watchpoint) -> None:
        pieces = self._pieces(w)
        if pieces == w.pieces and w.hooks:
            return
        self._unhook(w)
        w.pieces = pieces
        htype = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                 "access": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}[w.kind]
        for vid, va, ma, n in pieces:
            uc = self.vcpu(vid).cpu.uc
            w.hooks.append((uc, uc.hook_add(htype, self._on_watch, (w, vid, va, ma, n),
                                            max(0, ma - MAX_ACCESS + 1), ma + n - 1)))

    def _unhook(self, w: Watchpoint) -> None:
        for uc, h in w.hooks:
            uc.hook_del(h)
        w.hooks = []

    def _retranslate_watchpoints(self) -> None:
        for w in self._watch.values():
            self._translate(w)

    def _on_watch(self, uc: Uc, access: int, address: int, size: int, value: int, data) -> None:
        w, vid, va, ma, n = data
        if address + size <= ma or address >= ma + n:
            return
        if w.kind == "write" and access != UC_MEM_WRITE:
            return
        v = self.vcpu(vid)
        if self._pending is None:
            self._pending = StopEvent(WATCH_KINDS[w.kind], vid, addr=va + max(0, address - ma))
        # stop right after the accessing instruction (stopping inside the access would
        # abandon it half done: unicorn would run it again)
        v.clock.insn_deadline = min(v.clock.insn_deadline, v.clock.insns)
        self.machine.stop_requested = True

    # -- catchpoints ------------------------------------------------------------------------------
    def add_catchpoint(self, kind: str, numbers: Iterable[int] | None = None, *, failed_only: bool = False,
                       owner: str = "user") -> Catchpoint:
        self._require_stopped()
        if kind not in ("hypercall", "exception"):
            raise ValueError(f"catchpoint kind {kind!r}")
        c = Catchpoint(self._next_catch, kind, None if numbers is None else frozenset(numbers), failed_only, owner)
        self._next_catch += 1
        self._catches[c.ident] = c
        return c

    def remove_catchpoint(self, ident: int) -> bool:
        self._require_stopped()
        return self._catches.pop(ident, None) is not None

    def catchpoints(self) -> list[Catchpoint]:
        return list(self._catches.values())

    def catch_hypercalls(self, numbers: Iterable[int] | None, *, owner: str = "gdb") -> None:
        """gdb's QCatchSyscalls: stop on entry to and return from these hypercalls (empty:
        every one); None turns that owner's catching off."""
        self._require_stopped()
        for ident in [i for i, c in self._catches.items() if c.owner == owner and c.kind == "hypercall"]:
            del self._catches[ident]
        if numbers is not None:
            nums = frozenset(numbers)
            self.add_catchpoint("hypercall", nums or None, owner=owner)

    @property
    def catching(self) -> frozenset[int] | None:
        """The hypercalls gdb catches (empty: all), or None."""
        for c in self._catches.values():
            if c.owner == "gdb" and c.kind == "hypercall":
                return c.numbers or frozenset()
        return None

    def _record(self, ev: StopEvent) -> None:
        if self._pending is None:
            self._pending = ev
        self.machine.stop_requested = True

    # -- memory ------------------------------------------------------------------------------------
    def read_memory(self, vid: int, va: int, n: int) -> bytes:
        """Guest-virtual read through vcpu vid's pagetables; stops at the first hole."""
        mask = self.machine.domain.geo.va_mask
        if va < 0 or va > mask:
            return b""
        n = min(n, mask + 1 - va)
        return self.vcpu(vid).debug_read(va, n)

    def write_memory(self, vid: int, va: int, data: bytes) -> None:
        """Guest-virtual write through vcpu vid's pagetables, read-only mappings included
        (a debugger writes where the guest could not); never into the hypervisor's range.
        All or nothing: raises GuestFault before writing if any byte is unmapped."""
        self._require_stopped()
        dom = self.domain
        v = self.vcpu(vid)
        chunks = []
        pos = 0
        while pos < len(data):
            cur = va + pos
            n = min(len(data) - pos, 4096 - (cur & 0xFFF))
            if not dom.geo.guest_range_ok(cur, n):
                raise GuestFault(cur, True)
            w = walk(dom.mem, dom.mode, v.active_top_mfn, cur)
            if not w.mapped or not dom.mem.valid(w.maddr, n):
                raise GuestFault(cur, True)
            chunks.append((w.maddr, data[pos: pos + n]))
            pos += n
        for maddr, chunk in chunks:
            for u in self.vcpus:       # through every engine: drops code each one translated
                u.cpu.uc.mem_write(maddr, chunk)
        if chunks:
            for u in self.vcpus:       # the write may have changed a pagetable entry
                u.cpu.flush_tlb()

    # -- running -------------------------------------------------------------------------------------
    def resume(self, mode: str = "continue", vcpu: int | None = None, *, start: int = 0, end: int = 0,
               run: Iterable[int] | None = None, signal: int | None = None) -> None:
        """Resume the machine in a background thread; returns at once, the stop arrives as a
        StopEvent (wait, take_stop, or a listener).

        mode "continue": every vcpu runs (or only those in `run`: the others are held, which
        the guest can notice; gdb's scheduler-locking); "step": `vcpu` executes one guest
        instruction while the machine runs as usual; "range": `vcpu` steps while its pc stays
        in [start, end). `signal`: after a stop on a caught exception, resuming without it
        (0) drops the exception instead of delivering it (gdb's `signal 0`)."""
        vid = self._begin(mode, vcpu, run, signal)
        if vid is None:
            return
        self._thread = threading.Thread(target=self._background, args=(mode, vid, start, end),
                                        name="xenwb-control", daemon=True)
        self._thread.start()

    def run(self, mode: str = "continue", vcpu: int | None = None, *, start: int = 0, end: int = 0,
            signal: int | None = None) -> StopEvent:
        """Like resume, but run in the caller's thread until the stop, and return it."""
        vid = self._begin(mode, vcpu, None, signal)
        if vid is not None:
            self._background(mode, vid, start, end)
        ev = self.take_stop()
        return ev if ev is not None else self._last

    def _begin(self, mode: str, vcpu: int | None, run: Iterable[int] | None, signal: int | None) -> int | None:
        """Common start of resume/run: None when the stop is already known (finished)."""
        with self._lock:
            if self._running:
                raise DebugError("the machine is already running")
            self._running = True
            self._interrupt = False
            self._unreported = None
        self._idle_wake.clear()
        if self.finished or self.postmortem:
            if self.postmortem:
                self._postmortem_seen = True
            self._publish(self._final_event())
            return None
        vid = self._last.vcpu if vcpu is None else vcpu
        vid = vid if vid is not None and 0 <= vid < len(self.vcpus) else 0
        self._prepare_resume(signal)
        if run is not None:
            self._hold(set(run))
        return vid

    def _prepare_resume(self, signal: int | None) -> None:
        self._pending = None
        self._skip.clear()
        for v in self.vcpus:
            pc = v.guest_regs()[0]["pc"]
            if pc in self._bp_kinds:
                self._skip[v.id] = pc          # a vcpu sitting on a breakpoint leaves it once
            if v.held_exception is not None and signal == 0:
                v.held_exception = None        # gdb's `signal 0`: the exception is not delivered
                v.on_resume = None
        self._syscall_nr.clear()
        self._retranslate_watchpoints()

    def _hold(self, run: set[int]) -> None:
        for v in self.vcpus:
            if v.id not in run and v.state in (VcpuState.running, VcpuState.blocked):
                self._held_states[v.id] = v.state
                v.state = VcpuState.stopped

    def _unhold(self) -> None:
        for vid, st in self._held_states.items():
            v = self.vcpu(vid)
            if v.state is VcpuState.stopped:
                v.state = st
        self._held_states = {}

    def _background(self, mode: str, vid: int, start: int, end: int) -> None:
        v = self.vcpu(vid)
        # Exact stepping needs the instruction hook, whose installation drops the engine's
        # translations: it stays between consecutive steps and goes when the machine continues.
        for u in self.vcpus:
            u.cpu.need_exact("step", mode != "continue" and u is v)
        try:
            if mode == "step":
                ev = self._step(v)
            elif mode == "range":
                ev = self._range_step(v, start, end)
            else:
                ev = self._continue()
            if self.domain.finished and not ev.final and ev.kind is not StopKind.crashed:
                ev = self._final_event()
        except Exception as e:
            ev = StopEvent(StopKind.error, self._current_vcpu(),
                           detail=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
        finally:
            self._unhold()
            self._skip.clear()
            self.machine.stop_check = None
            self._stepping = None
        self._publish(ev)

    def _continue(self) -> StopEvent:
        while True:
            if self._interrupt:
                return StopEvent(StopKind.interrupt, self._current_vcpu())
            ev = self._after_run(self.machine.run())
            if ev is not None:
                return ev

    def _after_run(self, res: RunResult) -> StopEvent | None:
        if self.domain.finished:
            return self._final_event()
        step = self._stepping
        if (step is not None and self.machine.stop_check is not None and self.machine.stop_check()
                and self._pending is not None and self._pending.kind in (StopKind.swbreak, StopKind.hwbreak)
                and self._pending.vcpu == step.id):
            # the step landed on a breakpoint that has not run yet: the step is what completed
            self._pending = None
            return StopEvent(StopKind.step, step.id)
        if self._pending is not None:
            ev, self._pending = self._pending, None
            return ev
        r = res.reason
        if r is StopReason.requested:
            if self.machine.stop_check is not None and self.machine.stop_check():
                return StopEvent(StopKind.step, self._stepping.id if self._stepping else self._current_vcpu())
            return StopEvent(StopKind.interrupt, self._current_vcpu())
        if r is StopReason.hang:
            if not self.idle_on_hang:
                return StopEvent(StopKind.hang, self._current_vcpu(), detail=res.detail)
            # every vcpu blocked for good: idle, as a real machine would, until interrupted
            while not self._interrupt:
                self._idle_wake.wait()
                self._idle_wake.clear()
            return StopEvent(StopKind.interrupt, self._current_vcpu(), detail=res.detail)
        if r in (StopReason.time_limit, StopReason.instruction_limit):
            return StopEvent(StopKind.limit, self._current_vcpu(), code=SIGXCPU, detail=res.detail)
        return self._final_event()

    def _step(self, v: Vcpu) -> StopEvent:
        """One guest instruction of v (or up to the frame Xen pushes before it), the machine
        running as usual meanwhile (other vcpus may run first, as their turns come)."""
        self._stepping = v
        stops, start = v.clock.insn_stops, v.clock.insns
        v.cpu.stop_after_instructions(1)
        # done once the instruction ran (the counter stopped the engine before the next one,
        # or a breakpoint there did) or Xen pushed a frame in its place
        self.machine.stop_check = lambda: v.clock.insn_stops != stops or v.clock.insns > start
        ev = self._continue()
        self.machine.stop_check = None
        v.clock.insn_deadline = (1 << 64) - 1
        return ev

    def _range_step(self, v: Vcpu, start: int, end: int) -> StopEvent:
        while True:
            if self._interrupt:
                return StopEvent(StopKind.interrupt, v.id)
            ev = self._step(v)
            self._skip.clear()
            pc = v.guest_regs()[0]["pc"]
            if ev.kind is not StopKind.step or not start <= pc < end:
                return ev
            if pc in self._bp_kinds:
                return StopEvent(StopKind.swbreak if "sw" in self._bp_kinds[pc] else StopKind.hwbreak,
                                 v.id, addr=pc)

    def _current_vcpu(self) -> int:
        cur = self.machine.current_vcpu
        if cur is not None:
            return cur.id
        last = self._last.vcpu
        if last is not None and last < len(self.vcpus) and self.vcpu(last).state is VcpuState.running:
            return last
        for v in self.vcpus:
            if v.state is VcpuState.running:
                return v.id
        return last if last is not None and last < len(self.vcpus) else 0

    def _final_event(self) -> StopEvent:
        dom = self.domain
        if self.killed:
            return StopEvent(StopKind.killed, self._current_vcpu(), code=SIGKILL, detail="killed by the debugger")
        if dom.crash_report is not None:
            return StopEvent(StopKind.crashed, dom.crash_report.vcpu, code=SIGSEGV, detail=str(dom.crash_report))
        if dom.shutdown_reason is not None:
            try:
                name = C.ShutdownReason(dom.shutdown_reason).name
            except ValueError:
                name = f"reason {dom.shutdown_reason}"
            return StopEvent(StopKind.exited, self._current_vcpu(), code=dom.shutdown_reason & 0xFF,
                             detail=f"shutdown ({name})")
        return self._last

    def _publish(self, ev: StopEvent) -> None:
        with self._lock:
            self._last = ev
            self._unreported = ev
            self._running = False
            self._interrupt = False
            self._cond.notify_all()
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:
                traceback.print_exc()

    # -- stopping and waiting ---------------------------------------------------------------------------
    def interrupt(self, timeout: float = 2.0) -> bool:
        """Stop a running machine (any thread). True when it stopped within timeout."""
        with self._lock:
            if not self._running:
                return True
            self._interrupt = True
        self._idle_wake.set()
        deadline = time.monotonic() + timeout
        while True:
            # Machine.run() clears its stop flag when it starts: repeat until it took effect
            self.machine.stop()
            with self._lock:
                if not self._running:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.005))

    def wait(self, timeout: float | None = None) -> StopEvent | None:
        """Wait until the machine is stopped; the stop (reported or not), or None on timeout."""
        with self._lock:
            if not self._cond.wait_for(lambda: not self._running, timeout):
                return None
            return self._last

    def take_stop(self) -> StopEvent | None:
        """The stop not handed out yet, once."""
        with self._lock:
            if self._running:
                return None
            ev, self._unreported = self._unreported, None
            return ev

    # -- detach, kill -----------------------------------------------------------------------------------
    def clear_all(self, owner: str | None = None) -> None:
        """Remove every breakpoint, watchpoint and catchpoint."""
        self._require_stopped()
        for addr, kinds in list(self._bp_kinds.items()):
            for k in list(kinds):
                self.remove_breakpoint(addr, hardware=k == "hw")
        for kind, addr, length in list(self._watch):
            self.remove_watchpoint(addr, length, kind)
        self._catches.clear()

    def detach(self) -> None:
        """Forget every debugging request and let the guest run on."""
        if self._running:
            self.interrupt()
            self.wait()
        self.take_stop()
        self.clear_all()
        if not self.finished and not self.postmortem:
            self.resume("continue")

    def kill(self) -> None:
        if self._running:
            self.interrupt()
            self.wait()
        self.take_stop()
        self.clear_all()
        self.killed = True
        self._last = StopEvent(StopKind.killed, self._current_vcpu(), code=SIGKILL, detail="killed by the debugger")
