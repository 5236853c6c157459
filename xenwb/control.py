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
from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, Uc

from xenwb.abi import constants as C
from xenwb.hypervisor.descriptors import update_descriptor
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import PT_TYPES, MMError, PageType, Sharing
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


class LimitReached(DebugError):
    """A cap on what a debugger may set (breakpoints, watchpoints) was reached."""


class RefusedWrite(DebugError):
    """A debugger write Xen would not let happen (into Xen's own frames, or a pagetable or
    descriptor entry its validation rejects): the errno Xen gives, the reason as message."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


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
    xen = "xen"                    # a Xen-state catchpoint (event channel, mask, PTE, multicall)
    restored = "restored"          # a checkpoint was restored (time travel)
    history_start = "history_start"   # reverse execution reached the start of the recorded history


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
                StopKind.syscall_return: "on return from hypercall", StopKind.xen: "catchpoint",
                StopKind.history_start: "start of the recorded history (no more reverse execution)",
                StopKind.restored: "checkpoint restored"}.get(self.kind, self.kind.value)
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


CATCH_KINDS = ("hypercall", "exception", "evtchn", "mask", "pte", "multicall")
XEN_CATCH_KINDS = frozenset({"evtchn", "mask", "pte", "multicall"})


@dataclass
class Catchpoint:
    """A stop on the hypervisor's work: hypercalls (by number; on entry and return, or only
    failed returns), guest exceptions about to be bounced (by vector), or a change of Xen
    state: an event channel port becoming pending or delivered (evtchn), a vcpu's upcall mask
    (mask), an entry of the pagetables that map an address (pte), a multicall (its failed
    entries)."""

    ident: int
    kind: str                              # one of CATCH_KINDS
    numbers: frozenset[int] | None = None  # None: every hypercall / vector
    failed_only: bool = False
    owner: str = "user"                    # "gdb" for QCatchSyscalls, "user" for monitor/shell/Python
    port: int | None = None                # evtchn
    vcpu: int | None = None                # evtchn (notified vcpu), mask (whose mask)
    value: int | None = None               # mask: 1 set, 0 cleared, None either
    va: int | None = None                  # pte
    any_level: bool = False                # pte: every level's entry, not only the L1 (the mapping)

    def matches(self, n: int) -> bool:
        return self.numbers is None or n in self.numbers

    def describe(self) -> str:
        if self.kind == "hypercall":
            what = "every hypercall" if self.numbers is None else ", ".join(
                C.hypercall_name(n) for n in sorted(self.numbers))
            return f"catch hypercall {what}" + (" (failed returns)" if self.failed_only else "")
        if self.kind == "evtchn":
            return f"catch evtchn {self.port}" + (f" (vcpu {self.vcpu})" if self.vcpu is not None else "") + \
                ": pending or delivered"
        if self.kind == "mask":
            how = {1: "set", 0: "cleared"}.get(self.value if self.value is not None else -1, "changed")
            return f"catch mask: vcpu {self.vcpu}'s upcall mask {how}"
        if self.kind == "pte":
            return f"catch pte {self.va:#x}: " + ("an entry at any level" if self.any_level else "its L1 entry") + \
                " changes"
        if self.kind == "multicall":
            return "catch multicall" + (": a failed entry" if self.failed_only else ": every batch")
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
        self.refusal: str | None = None      # why the last debugger request was refused (`why`)
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
        self.bounce_hook: Callable[[Vcpu], None] | None = None   # time travel: told of every frame Xen pushes
        # Xen-state catchpoints watch the trace (only while there are any)
        self._xen_watching = False
        self._upcalling: Vcpu | None = None          # an event upcall being delivered (its mask change follows)
        self._call_nr: dict[int, int] = {}           # vcpu -> the hypercall it is in
        self._pte_seen: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}   # (catch, vcpu) -> walk
        self.timetravel: Any = None          # the TimeTravel over this controller, once there is one
        self.domain.observer = self

    # -- the observer protocol (hypervisor/domain.py DebugObserver) -------------------------------
    def hypercall_entry(self, vcpu: Vcpu, nr: int, args: tuple[int, ...]) -> bool:
        vid = vcpu.id
        self._call_nr[vid] = nr
        if vid in self._skip_entry:
            self._skip_entry.discard(vid)
            return False
        if not any(c.kind == "hypercall" and not c.failed_only and c.matches(nr) for c in self._catches.values()):
            return False
        # hold the call: the vcpu stops after the instruction; resuming re-issues it
        pc = vcpu.cpu.pc                          # after the int $0x82 / syscall (2 bytes)
        vcpu.clock.units -= 2                     # the trapping instruction runs again then
        if vcpu.clock.insn_hook_installed:
            vcpu.clock.insns -= 1                 # and is counted again (time travel counts exactly)
        self._syscall_nr[vid] = nr

        def reissue() -> None:
            vcpu.cpu.pc = pc - 2
            self._skip_entry.add(vid)
        reissue.hold_kind = "entry"               # type: ignore[attr-defined]  # time travel's places
        vcpu.hold_exit = reissue
        self._record(StopEvent(StopKind.syscall_entry, vid, nr=nr))
        return True

    def hypercall_return(self, vcpu: Vcpu, nr: int, ret: int) -> None:
        self._call_nr.pop(vcpu.id, None)
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
        if self._upcalling is vcpu:
            self._upcalling = None
        if self._stepping is vcpu:
            # Xen pushed a frame: the step ends before the handler's first instruction
            vcpu.clock.insn_deadline = min(vcpu.clock.insn_deadline, vcpu.clock.insns)
        if self.bounce_hook is not None:
            self.bounce_hook(vcpu)

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
            self.refusal = f"breakpoint at {addr:#x} refused: too many breakpoints (at most {MAX_BREAKPOINTS})"
            raise LimitReached(f"too many breakpoints (at most {MAX_BREAKPOINTS})")
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
            self.refusal = f"watchpoint at {addr:#x} refused: too many watchpoints (at most {MAX_WATCHPOINTS})"
            raise LimitReached(f"too many watchpoints (at most {MAX_WATCHPOINTS})")
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
                       owner: str = "user", port: int | None = None, vcpu: int | None = None,
                       value: int | None = None, va: int | None = None, any_level: bool = False) -> Catchpoint:
        """A catchpoint (see Catchpoint); ValueError for a kind or argument that makes no sense."""
        self._require_stopped()
        if kind not in CATCH_KINDS:
            raise ValueError(f"catchpoint kind {kind!r} (one of {', '.join(CATCH_KINDS)})")
        if kind == "evtchn" and (port is None or not 0 <= port < self.domain.evtchn.nr_ports):
            raise ValueError(f"event channel port {port} (0 to {self.domain.evtchn.nr_ports - 1})")
        if kind in ("evtchn", "mask") and vcpu is not None and not 0 <= vcpu < len(self.vcpus):
            raise ValueError(f"no vcpu {vcpu}")
        if kind == "mask" and vcpu is None:
            raise ValueError("catch mask needs a vcpu")
        if kind == "pte" and (va is None or not 0 <= va <= self.domain.geo.va_mask):
            raise ValueError(f"address {va} for catch pte")
        c = Catchpoint(self._next_catch, kind, None if numbers is None else frozenset(numbers), failed_only, owner,
                       port=port, vcpu=vcpu, value=value, va=va, any_level=any_level)
        self._next_catch += 1
        self._catches[c.ident] = c
        self._xen_watch()
        return c

    def remove_catchpoint(self, ident: int) -> bool:
        self._require_stopped()
        gone = self._catches.pop(ident, None) is not None
        self._xen_watch()
        return gone

    # -- Xen-state catchpoints --------------------------------------------------------------------
    # They watch the trace: the hypervisor emits an event where it changes the state (set_pending,
    # an upcall, a mask change by Xen or by a guest store, a hypercall's return, a ptwr write).
    # The stop comes where the change was made: on return from the hypercall (or the exception
    # Xen emulated) that made it, right after a guest store, before the first instruction of an
    # upcall handler, or before the next instruction when a timer or backend made it.
    def _xen_catches(self) -> list[Catchpoint]:
        return [c for c in self._catches.values() if c.kind in XEN_CATCH_KINDS]

    def _xen_watch(self) -> None:
        on = bool(self._xen_catches())
        if on != self._xen_watching:
            self._xen_watching = on
            if on:
                self.domain.trace.subscribe(self._on_trace)
            else:
                self.domain.trace.unsubscribe(self._on_trace)
            for v in self.vcpus:                # stops before an instruction need exact counting
                v.cpu.need_exact("catch", on)
        self._pte_baseline()

    def _pte_walk(self, c: Catchpoint, v: Vcpu) -> tuple[tuple[int, int], ...]:
        """(entry machine address, entry) at each level of the walk of c.va in v's tables."""
        if not v.cr3_mfn or c.va is None:
            return ()
        dom = self.domain
        w = walk(dom.mem, dom.mode, v.cr3_mfn, c.va)
        steps = tuple((st.entry_maddr, st.pte) for st in w.steps)
        return steps if c.any_level else steps[-1:]

    def _pte_baseline(self) -> None:
        self._pte_seen = {(c.ident, v.id): self._pte_walk(c, v) for c in self._xen_catches() if c.kind == "pte"
                          for v in self.vcpus}

    def _on_trace(self, ev: dict[str, Any]) -> None:
        kind = ev["kind"]
        if kind == "upcall":
            vid = ev["vcpu"]
            self._upcalling = self.vcpu(vid) if vid is not None else None
        for c in self._xen_catches():
            why = self._xen_change(c, ev)
            if why is not None:
                self._xen_stop(c, ev, why)
                return

    def _xen_change(self, c: Catchpoint, ev: dict[str, Any]) -> str | None:
        """What the event changed that c watches, or None."""
        kind, name = ev["kind"], ev["name"]
        if c.kind == "evtchn":
            if kind == "event" and name == "set_pending" and ev.get("port") == c.port \
                    and not ev.get("already_pending") and (c.vcpu is None or ev.get("notify_vcpu") == c.vcpu):
                return f"port {c.port} became pending (notify vcpu {ev.get('notify_vcpu')})"
            if kind == "upcall" and (c.vcpu is None or ev["vcpu"] == c.vcpu):
                ec = self.domain.evtchn
                port = c.port
                assert port is not None
                if ec.valid(port) and ec.is_pending(port) and not ec.is_masked(port) \
                        and ec.ports[port].vcpu == ev["vcpu"]:
                    return f"port {port} delivered by an event upcall to vcpu {ev['vcpu']}"
            return None
        if c.kind == "mask":
            if kind == "mask" and ev["vcpu"] == c.vcpu and (c.value is None or ev.get("new") == c.value):
                by = "a guest store" if ev.get("by") == "guest" else "Xen"
                return f"vcpu {c.vcpu}'s upcall mask {ev.get('old')} -> {ev.get('new')} by {by}"
            return None
        if c.kind == "multicall":
            if kind == "hypercall" and ev.get("multicall") is not None and (not c.failed_only or ev["ret"] < 0):
                return f"multicall entry {ev['name']} returned {ev['ret']}" + (f" ({ev['errno']})" if ev.get("errno")
                                                                             else "")
            if kind == "multicall" and name == "multicall_end" and not c.failed_only:
                return "multicall batch done"
            return None
        if c.kind == "pte" and (kind in ("ptwr", "vcpu") or (kind == "hypercall" and (
                ev.get("nr") in PAGETABLE_HYPERCALLS or ev.get("name") in ("grant_table_op", "vcpu_op")))):
            for v in self.vcpus:
                now = self._pte_walk(c, v)
                key = (c.ident, v.id)
                before = self._pte_seen.get(key)
                self._pte_seen[key] = now
                if before is not None and now != before:
                    what = "a ptwr-emulated write" if kind == "ptwr" else f"{ev['name']}" + (
                        " (in a multicall)" if ev.get("multicall") is not None else "")
                    level = "walk" if c.any_level else "L1 entry"
                    if not before or not now:
                        state = f"now {'mapped: ' + hex(now[-1][1]) if now else 'not mapped'}"
                    elif before[-1][1] == now[-1][1]:
                        state = f"now the entry at machine address {now[-1][0]:#x} (other tables), same value " \
                                f"{now[-1][1]:#x}"
                    else:
                        state = f"{before[-1][1]:#x} -> {now[-1][1]:#x}"
                    return f"the {level} of {c.va:#x} in vcpu {v.id}'s tables changed by {what}: {state}"
        return None

    def _xen_stop(self, c: Catchpoint, ev: dict[str, Any], why: str) -> None:
        """Stop where the change was made (see above)."""
        m = self.machine
        u = m.in_engine
        if ev["kind"] == "upcall" or (ev["kind"] == "mask" and self._upcalling is not None
                                      and self._upcalling.id == ev["vcpu"]):
            v = self.vcpu(ev["vcpu"])
            v.clock.insn_deadline = min(v.clock.insn_deadline, v.clock.insns)   # before the handler's first
            self._record(StopEvent(StopKind.xen, v.id, nr=c.ident, detail=why))
            return
        if u is not None and ev["kind"] == "mask" and ev.get("by") == "guest":
            u.clock.insn_deadline = min(u.clock.insn_deadline, u.clock.insns)   # right after the store
            self._record(StopEvent(StopKind.xen, u.id, nr=c.ident, detail=f"{why} at {ev.get('eip', 0):#x}"))
            return
        if u is not None:
            nr = self._call_nr.get(u.id)
            where = f" in hypercall {C.hypercall_name(nr)}" if nr is not None and ev["kind"] != "ptwr" else ""
            if u.hold_exit is None and u.on_resume is None:
                u.hold_exit = u.return_to_guest          # stop on its way back to the guest
            self._record(StopEvent(StopKind.xen, u.id, nr=c.ident, detail=f"{why}{where} (vcpu {u.id})"))
            return
        # a timer, a backend, an input: before the next instruction of the vcpu about to run
        cur = self.domain.current or (m.turn.vcpu if m.turn is not None else None)
        if cur is not None and m.turn is not None:
            cur.clock.insn_deadline = min(cur.clock.insn_deadline, cur.clock.insns)
        vid = ev["vcpu"] if ev["vcpu"] is not None else (cur.id if cur is not None else self._current_vcpu())
        self._record(StopEvent(StopKind.xen, vid, nr=c.ident, detail=f"{why} (between vcpu turns)"
                               if m.turn is None else why))

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
        self.write_machine(vid, chunks)

    def write_machine(self, vid: int, chunks: list[tuple[int, bytes]]) -> None:
        """A debugger's stores at machine addresses (each chunk inside one frame), as Xen lets
        the domain change its memory: never into Xen's own frames (its shared ones aside);
        into a pagetable or descriptor-table frame only entry by entry, each validated as
        mmu_update (mm.c mod_lN_entry) or update_descriptor would, the first one refused
        ending the write (as a batch of mmu_update stops). Raises RefusedWrite, with the
        reason kept for `why`."""
        self._require_stopped()
        dom = self.domain
        mm = dom.mm
        self.refusal = None
        for maddr, _ in chunks:                    # nothing is written if a frame is not the domain's
            mfn = maddr >> 12
            pi = mm.pages.get(mfn)
            if dom.mem.is_xen_frame(mfn) and not (pi is not None and pi.sharing == Sharing.shared_rw):
                self._refuse(C.Errno.EPERM, f"machine frame {mfn:#x} is Xen's own (not the domain's memory)")
            if not dom.mem.is_xen_frame(mfn) and not mm.is_owned(mfn):
                self._refuse(C.Errno.EPERM, f"machine frame {mfn:#x} does not belong to the domain")
        try:
            for maddr, chunk in chunks:
                pi = mm.pages.get(maddr >> 12)
                if pi is not None and pi.type_count and (pi.type in PT_TYPES or pi.type == PageType.seg_desc):
                    self._write_entries(vid, maddr, chunk, pi.type)
                else:
                    for u in self.vcpus:       # through every engine: drops code each one translated
                        u.cpu.uc.mem_write(maddr, chunk)
        finally:
            if chunks:
                for u in self.vcpus:           # the write may have changed a pagetable entry
                    u.cpu.flush_tlb()

    def _write_entries(self, vid: int, maddr: int, chunk: bytes, kind: PageType) -> None:
        """Whole entries of a typed frame, each one that changes through Xen's validation."""
        dom = self.domain
        size = 8 if kind == PageType.seg_desc else dom.mode.pte_size
        start = maddr & ~(size - 1)
        end = -(-(maddr + len(chunk)) // size) * size
        old = dom.mem.read(start, end - start)
        new = old[: maddr - start] + chunk + old[maddr - start + len(chunk):]
        mfn = maddr >> 12
        for off in range(0, len(new), size):
            if new[off: off + size] == old[off: off + size]:
                continue
            at, val = start + off, int.from_bytes(new[off: off + size], "little")
            if kind == PageType.seg_desc:
                if update_descriptor(self.vcpu(vid), at, val):      # descriptors.c check_descriptor
                    self._refuse(C.Errno.EINVAL, f"descriptor {val:#018x} at machine address {at:#x} "
                                           "refused, as update_descriptor would refuse it")
                continue
            try:
                dom.mm.mod_entry(mfn, (at & 0xFFF) // size, val)
            except MMError as e:
                self._refuse(abs(e.errno), f"entry {val:#x} at machine address {at:#x} of an {kind.name.upper()} "
                                      f"pagetable frame refused, as mmu_update would refuse it: {e.why}")

    def _refuse(self, errno: int, why: str) -> None:
        self.refusal = f"debugger write refused: {why}"
        raise RefusedWrite(errno, why)

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
        self.refusal = None
        self._skip.clear()
        self._upcalling = None
        for v in self.vcpus:
            v.clock.insn_deadline = (1 << 64) - 1      # no stop left over from the last run
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

    # -- time travel (xenwb/timetravel.py drives the machine through these) ----------------------------
    def run_history(self, work: Callable[[], StopEvent]) -> StopEvent:
        """Run `work` (restores and silent re-executions of history) in the caller's thread as
        one operation of the machine, from any stop, a post-mortem one included; the stop it
        returns is published like any other."""
        self._begin_history()
        return self._history(work)

    def resume_history(self, work: Callable[[], StopEvent]) -> None:
        """Like run_history, in a background thread (the stop arrives as a StopEvent)."""
        self._begin_history()
        self._thread = threading.Thread(target=self._history, args=(work,), name="xenwb-history", daemon=True)
        self._thread.start()

    def _begin_history(self) -> None:
        with self._lock:
            if self._running:
                raise DebugError("the machine is already running")
            if self.killed:
                raise DebugError("the guest was killed")
            self._running = True
            self._interrupt = False
            self._unreported = None
        self._idle_wake.clear()

    def _history(self, work: Callable[[], StopEvent]) -> StopEvent:
        idle = self.idle_on_hang
        self.idle_on_hang = False               # re-executed history never waits
        try:
            ev = work()
        except DebugError as e:
            ev = StopEvent(StopKind.error, self._current_vcpu(), detail=str(e))
        except Exception as e:
            ev = StopEvent(StopKind.error, self._current_vcpu(),
                           detail=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
        finally:
            self.idle_on_hang = idle
            self._skip.clear()
            self.machine.stop_check = None
            self.bounce_hook = None
            self._stepping = None
        self._postmortem_seen = False
        self._publish(ev)
        return ev

    @property
    def interrupted(self) -> bool:
        """interrupt() was called during the current operation."""
        return self._interrupt

    def silent_continue(self, *, leave_breakpoints: bool = True, arm: Callable[[], None] | None = None) -> StopEvent:
        """Inside a history operation: run to the next stop and return it without telling
        anyone. leave_breakpoints: vcpus sitting on a breakpoint leave it once (as after a
        stop); off after restoring a checkpoint that was not taken at a stop. arm: sets the
        stop it runs to (after the resume cleared the old ones)."""
        self._prepare_resume(None)
        if not leave_breakpoints:
            self._skip.clear()
        if arm is not None:
            arm()
        ev = self._continue()
        if self.domain.finished and not ev.final and ev.kind is not StopKind.crashed:
            ev = self._final_event()
        return ev

    def restored(self, last: StopEvent) -> None:
        """The machine was put back (a checkpoint restored): forget the present's pending
        stops and held calls; `last` is the stop the machine is at now."""
        self._pending = None
        self._skip.clear()
        self._skip_entry.clear()
        self._syscall_nr.clear()
        self._held_states = {}
        self._last = last
        self._postmortem_seen = False
        if last.kind in (StopKind.syscall_entry, StopKind.syscall_return) and last.vcpu is not None \
                and last.nr is not None:
            self._syscall_nr[last.vcpu] = last.nr
        self._retranslate_watchpoints()
        self._pte_baseline()
        self._call_nr.clear()

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
        self._xen_watch()

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
