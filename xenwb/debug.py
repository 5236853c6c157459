"""Debug control over a Machine: breakpoints, watchpoints, stepping, hypercall catchpoints,
stop reasons, and running the machine in a background thread so that a front end (the
gdb stub, the TUI) can stop it from its own thread.

How each piece maps onto unicorn (measured on unicorn 2.1.4, see DESIGN.md):

* **Breakpoints** (software and "hardware" alike) are UC_HOOK_CODE hooks limited to one
  address, one per vcpu engine: they cost nothing elsewhere and never touch guest memory,
  so the guest never sees them in its own reads. The hook stops the engine before the
  instruction runs. Resuming a vcpu that sits on a breakpoint it has not executed yet
  lets that one hit pass once (gdb itself steps over breakpoints; other clients need not).
* **Single step** runs one instruction with ``emu_start(count=1)`` (Machine.step_vcpu),
  hooks included: a step over ``int $0x82`` runs the whole hypercall. A step never ends
  inside the hypervisor's ring-transition trampoline: such steps go on until the vcpu is
  back in guest code, so a step into a bounced fault lands on the guest's handler. Virtual
  time counts whole translation blocks as they are entered, so a step advances it by the
  block it starts (and a stop mid-block re-counts the rest on resume): debugging moves guest
  time a little, deterministically for the same debugging session.
* **Watchpoints** are on guest-virtual ranges, but unicorn's memory hooks see machine
  addresses, so each range is translated through every vcpu's current pagetables and the
  machine pieces are hooked (ranged UC_HOOK_MEM_READ/WRITE). Translations are redone at
  every resume and after every pagetable hypercall (not after a writable-pagetable store:
  the next resume or pagetable hypercall catches that up). Stopping inside a memory hook
  would abandon the access half-done (unicorn restarts the instruction: a read-modify-write
  would run twice), so the hook only records the hit and arms a native per-instruction
  counter (the virtual clock's C hook, xenwb/_vclock.c) that stops the engine before the
  next instruction: the stop is exact and the access complete, as on hardware. Cost, only
  while a watchpoint exists: memory hooks put every access on unicorn's slow path (-30 %
  on a memory-bound loop) and the counter costs about half the speed; pvdemo boots in
  57 ms instead of 32 ms.
* **Hypercall catchpoints** (gdb's ``catch syscall``) wrap the domain's hypercall entry,
  as an attribute of this Domain instance (domain.py is untouched), while catching is on or
  a watchpoint exists (pagetable hypercalls re-translate watched ranges): on entry the call is held (the vcpu stops
  with EIP after ``int $0x82``, registers as the guest set them) and re-issued on resume;
  on return the vcpu stops with EAX = result before any event upcall is delivered (the
  next turn delivers it).

All-stop model: when anything stops, the whole machine is stopped. ``resume`` starts the
machine (or steps one vcpu), ``interrupt`` stops it from any thread, and every stop is
published once as a StopEvent to the listeners and to ``wait``/``take_stop``.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import UC_X86_REG_EIP

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.paging import walk
from xenwb.hypervisor.vcpu import VcpuState
from xenwb.vclock import _INSN_HOOK, _STOP, NEVER, _VClockStruct

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine, RunResult

# gdb's signal numbers (include/gdb/signals.def), used in stop replies
SIGINT, SIGTRAP, SIGABRT, SIGKILL, SIGSEGV, SIGXCPU = 2, 5, 6, 9, 11, 24

# Hypercalls after which watched ranges are translated again (they change pagetables)
PAGETABLE_HYPERCALLS = frozenset({C.Hypercall.mmu_update, C.Hypercall.update_va_mapping,
                                  C.Hypercall.update_va_mapping_otherdomain, C.Hypercall.mmuext_op,
                                  C.Hypercall.multicall, C.Hypercall.memory_op})
MAX_TRANSITION_STEPS = 64      # a ring transition through the trampoline is 2-3 instructions
MAX_ACCESS = 16                # widest data access (SSE); watch hooks start this much lower


def _eip(v: Vcpu) -> int:
    """EIP through one raw uc_reg_read (the binding's reg_read costs about 8 us)."""
    buf = ctypes.c_uint64(0)
    if uclib.uc_reg_read(v.cpu.uc._uch, UC_X86_REG_EIP, ctypes.addressof(buf)):
        return v.cpu.eip
    return buf.value & 0xFFFFFFFF


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
    interrupt = "interrupt"        # interrupt() (gdb's Ctrl-C) or Machine.stop()
    exited = "exited"              # SCHEDOP_shutdown: code = shutdown reason
    crashed = "crashed"            # domain_crash
    limit = "limit"                # --timeout / --max-instructions reached
    killed = "killed"
    error = "error"                # a workbench error while running (details in detail)


FINAL_KINDS = frozenset({StopKind.exited, StopKind.crashed, StopKind.limit, StopKind.killed})
WATCH_KINDS = {"write": StopKind.watch, "read": StopKind.rwatch, "access": StopKind.awatch}


@dataclass
class StopEvent:
    kind: StopKind
    vcpu: int | None = None
    addr: int | None = None        # breakpoint address, or the watched address accessed
    nr: int | None = None          # hypercall number for syscall stops
    code: int = 0                  # exit code (exited) or signal (crashed, limit)
    detail: str = ""

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS

    @property
    def signal(self) -> int:
        if self.kind is StopKind.interrupt:
            return SIGINT
        if self.kind is StopKind.error:
            return SIGSEGV
        return SIGTRAP


class _InsnStopper:
    """The virtual clock's native instruction hook on its own counter: arm() makes the
    engine stop before the next instruction starts (used after a watched access)."""

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._c = _VClockStruct(0, NEVER, _STOP, 0, 0, NEVER)
        handle = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_CODE, ctypes.c_void_p(_INSN_HOOK),
                                ctypes.cast(ctypes.byref(self._c), ctypes.c_void_p),
                                ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise RuntimeError(f"uc_hook_add failed ({err})")
        self._handle = handle.value

    def arm(self) -> None:
        self._c.insn_deadline = self._c.insns + 1

    def disarm(self) -> None:
        self._c.insn_deadline = NEVER

    def remove(self) -> None:
        uclib.uc_hook_del(self._uc._uch, ctypes.c_size_t(self._handle))


@dataclass
class Watchpoint:
    kind: str                      # write, read, access
    va: int
    length: int
    pieces: list[tuple[int, int, int, int]] = field(default_factory=list)   # (vcpu, va, maddr, n)
    hooks: list[tuple[Uc, int]] = field(default_factory=list)


class Debugger:
    """The debug/control layer over one Machine (one per machine)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
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
        # breakpoints: address -> kinds ("sw", "hw"); hooks per address, one per engine
        self._bp_kinds: dict[int, set[str]] = {}
        self._bp_hooks: dict[int, list[tuple[Uc, int]]] = {}
        self._skip: dict[int, int] = {}
        # watchpoints
        self._watch: dict[tuple[str, int, int], Watchpoint] = {}
        self._stoppers: dict[int, _InsnStopper] = {}
        self._retranslate = False
        # hypercall catchpoints
        self._catch: frozenset[int] | None = None    # None: off; empty: every hypercall
        self._hc_orig: Callable[..., None] | None = None
        self._hc_wrapper: Callable[..., None] | None = None
        self._held: dict[int, int] = {}               # vcpu -> EIP after the held int $0x82
        self._skip_entry: set[int] = set()
        self._syscall_nr: dict[int, int] = {}         # vcpu -> hypercall of its syscall stop
        self._held_states: dict[int, VcpuState] = {}
        self._register_commands()

    # -- monitor commands ---------------------------------------------------------------------
    def _register_commands(self) -> None:
        reg = getattr(self.machine, "commands", None)
        if reg is None:
            return
        reg.register("debug stop", self._cmd_stop,
                     "why the machine stopped (at a hypercall catchpoint: the call named and decoded)", plugin="debug")
        reg.register("debug points", self._cmd_points,
                     "the breakpoints, watchpoints and hypercall catchpoints in place", plugin="debug")

    def _cmd_stop(self, machine: Machine, args: list[str]):
        import json

        from xenwb.abi.constants import errno_name, hypercall_name
        from xenwb.commands import Result
        from xenwb.hypervisor.hypercalls import decode_args
        ev = self._last
        data: dict[str, object] = {"kind": ev.kind.value, "vcpu": ev.vcpu, "running": self._running}
        where = ""
        if ev.vcpu is not None and ev.vcpu < len(self.vcpus) and not self._running:
            v = self.vcpu(ev.vcpu)
            r = v.cpu.regs()
            sym = self.domain.symbolize(r["eip"])
            data["eip"] = f"{r['eip']:#010x}"
            data["symbol"] = sym
            where = f" at {r['eip']:#010x}{f' <{sym}>' if sym else ''}"
            if ev.nr is not None:
                data["hypercall"] = {"nr": ev.nr, "name": hypercall_name(ev.nr)}
                if ev.kind is StopKind.syscall_entry:
                    data["args"] = decode_args(v, ev.nr, (r["ebx"], r["ecx"], r["edx"], r["esi"], r["edi"]))
                else:
                    ret = r["eax"] - (1 << 32) if r["eax"] & 0x80000000 else r["eax"]
                    data["ret"], data["errno"] = ret, errno_name(ret)
        if ev.addr is not None:
            data["address"] = f"{ev.addr:#x}"
        if ev.detail:
            data["detail"] = ev.detail
        if self._running:
            text = "running"
        elif ev.nr is not None:
            name = f"hypercall {ev.nr} ({hypercall_name(ev.nr)})"
            if ev.kind is StopKind.syscall_entry:
                text = f"vcpu{ev.vcpu} on entry to {name}{where}: {json.dumps(data.get('args'), default=str)}"
            else:
                err = f" {data['errno']}" if data.get("errno") else ""
                text = f"vcpu{ev.vcpu} on return from {name}{where}: {data['ret']}{err}"
        else:
            what = ev.kind.value + (f" {ev.addr:#x}" if ev.addr is not None else "")
            text = f"vcpu{ev.vcpu} stopped: {what}{where}" + (f" ({ev.detail})" if ev.detail else "")
        return Result(data, text)

    def _cmd_points(self, machine: Machine, args: list[str]):
        from xenwb.abi.constants import hypercall_name
        from xenwb.commands import Result, table
        rows = []
        for addr, kinds in sorted(self._bp_kinds.items()):
            for k in sorted(kinds):
                rows.append({"type": "breakpoint" if k == "sw" else "hw-breakpoint", "where": f"{addr:#010x}",
                             "symbol": self.domain.symbolize(addr)})
        for w in self._watch.values():
            rows.append({"type": f"watch ({w.kind})", "where": f"{w.va:#010x}+{w.length}",
                         "symbol": self.domain.symbolize(w.va)})
        if self._catch is not None:
            what = ", ".join(f"{n} ({hypercall_name(n)})" for n in sorted(self._catch)) or "every hypercall"
            rows.append({"type": "catch hypercall", "where": what, "symbol": None})
        return Result(rows, table(rows, ["type", "where", "symbol"]))

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
        return self.killed or self.domain.finished or self._last.final

    def add_listener(self, fn: Callable[[StopEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[StopEvent], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def orig_eax(self, vid: int) -> int:
        """The hypercall number at a hypercall stop of this vcpu, else -1."""
        return self._syscall_nr.get(vid, -1)

    def _require_stopped(self) -> None:
        if self._running:
            raise DebugError("the machine is running")

    # -- start of day ------------------------------------------------------------------------
    def enter_guest(self) -> None:
        """Finish the start-of-day ring transition, so every running vcpu sits on the guest's
        first instruction (the entry point) without having executed any guest code."""
        self._require_stopped()
        self._settle()

    def _settle(self) -> None:
        """Step running vcpus out of the hypervisor's transition trampoline."""
        for v in self.vcpus:
            n = 0
            while (v.state is VcpuState.running and _eip(v) >= self.hv_start and not self.domain.finished
                   and n < MAX_TRANSITION_STEPS):
                self.machine.step_vcpu(v)
                n += 1

    # -- breakpoints ---------------------------------------------------------------------------
    def insert_breakpoint(self, addr: int, hardware: bool = False) -> None:
        self._require_stopped()
        addr &= 0xFFFFFFFF
        self._bp_kinds.setdefault(addr, set()).add("hw" if hardware else "sw")
        if addr not in self._bp_hooks:
            self._bp_hooks[addr] = [(v.cpu.uc, v.cpu.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, v.id, addr, addr))
                                    for v in self.vcpus]

    def remove_breakpoint(self, addr: int, hardware: bool = False) -> bool:
        self._require_stopped()
        addr &= 0xFFFFFFFF
        kinds = self._bp_kinds.get(addr)
        kind = "hw" if hardware else "sw"
        if not kinds or kind not in kinds:
            return False
        kinds.discard(kind)
        if not kinds:
            del self._bp_kinds[addr]
            for uc, h in self._bp_hooks.pop(addr, []):
                uc.hook_del(h)
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
        if self._pending is None:
            self._pending = StopEvent(StopKind.swbreak if "sw" in kinds else StopKind.hwbreak, vid, addr=address)
        self.machine.stop_requested = True
        uc.emu_stop()

    # -- watchpoints -----------------------------------------------------------------------------
    def insert_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        self._require_stopped()
        if kind not in WATCH_KINDS:
            raise ValueError(f"watchpoint kind {kind!r}")
        if not 0 < length <= 0x10000 or addr < 0 or addr + length > 1 << 32:
            raise ValueError(f"watchpoint range {addr:#x}+{length:#x}")
        key = (kind, addr, length)
        if key in self._watch:
            return
        if not self._stoppers:
            self._stoppers = {v.id: _InsnStopper(v.cpu.uc) for v in self.vcpus}
        w = Watchpoint(kind, addr, length)
        self._watch[key] = w
        self._translate(w)
        self._sync_hypercall_hook()

    def remove_watchpoint(self, addr: int, length: int, kind: str = "write") -> bool:
        self._require_stopped()
        w = self._watch.pop((kind, addr, length), None)
        if w is None:
            return False
        self._unhook(w)
        if not self._watch:
            for s in self._stoppers.values():
                s.remove()
            self._stoppers = {}
        self._sync_hypercall_hook()
        return True

    def watchpoints(self) -> list[Watchpoint]:
        return list(self._watch.values())

    def _pieces(self, w: Watchpoint) -> list[tuple[int, int, int, int]]:
        dom = self.domain
        out = []
        for v in self.vcpus:
            if not v.cr3_mfn:
                continue
            pos = 0
            while pos < w.length:
                va = w.va + pos
                n = min(w.length - pos, 4096 - (va & 0xFFF))
                if va < self.hv_start:
                    ww = walk(dom.mem, dom.mode, v.cr3_mfn, va)
                    if ww.mapped and dom.mem.valid(ww.maddr, n):
                        out.append((v.id, va, ww.maddr, n))
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
        self._retranslate = False
        for w in self._watch.values():
            self._translate(w)

    def _on_watch(self, uc: Uc, access: int, address: int, size: int, value: int, data) -> None:
        w, vid, va, ma, n = data
        if address + size <= ma or address >= ma + n:
            return
        if w.kind == "write" and access != UC_MEM_WRITE:
            return
        if self._pending is None:
            self._pending = StopEvent(WATCH_KINDS[w.kind], vid, addr=va + max(0, address - ma))
        stopper = self._stoppers.get(vid)
        if stopper is not None:
            stopper.arm()
        self.machine.stop_requested = True

    # -- hypercall catchpoints ----------------------------------------------------------------------
    def catch_hypercalls(self, numbers: Iterable[int] | None) -> None:
        """Stop on entry to and return from these hypercalls (empty: every one);
        None turns catching off."""
        self._require_stopped()
        self._catch = None if numbers is None else frozenset(numbers)
        self._sync_hypercall_hook()

    @property
    def catching(self) -> frozenset[int] | None:
        return self._catch

    def _catches(self, nr: int) -> bool:
        c = self._catch
        return c is not None and (not c or nr in c)

    def _sync_hypercall_hook(self) -> None:
        need = self._catch is not None or bool(self._watch)
        dom = self.domain
        if need and self._hc_wrapper is None:
            orig = dom.hypercall

            def hypercall(vcpu: Vcpu, vals: tuple[int, ...]) -> None:
                self._on_hypercall(orig, vcpu, vals)

            self._hc_orig, self._hc_wrapper = orig, hypercall
            dom.hypercall = hypercall            # type: ignore[method-assign]
        elif not need and self._hc_wrapper is not None:
            if dom.__dict__.get("hypercall") is self._hc_wrapper:
                del dom.__dict__["hypercall"]
            self._hc_orig = self._hc_wrapper = None
            self._skip_entry.clear()

    def _on_hypercall(self, orig: Callable[..., None], vcpu: Vcpu, vals: tuple[int, ...]) -> None:
        nr = vals[0]
        vid = vcpu.id
        catching = self._catches(nr)
        if vid in self._skip_entry:
            self._skip_entry.discard(vid)
        elif catching:
            # hold the call: the vcpu stops after `int $0x82`; resume re-issues it
            self._held[vid] = vcpu.cpu.eip
            self._syscall_nr[vid] = nr
            self._record(StopEvent(StopKind.syscall_entry, vid, nr=nr))
            self.domain.stopping = True          # stop the engine, deliver no event now
            return
        orig(vcpu, vals)
        if catching and not self.domain.finished:
            self._syscall_nr[vid] = nr
            self._record(StopEvent(StopKind.syscall_return, vid, nr=nr))
            self.domain.stopping = True
        if self._watch and nr in PAGETABLE_HYPERCALLS:
            self._retranslate = True
            self.machine.stop_requested = True
            vcpu.cpu.uc.emu_stop()

    def _record(self, ev: StopEvent) -> None:
        if self._pending is None:
            self._pending = ev
        self.machine.stop_requested = True

    # -- memory ------------------------------------------------------------------------------------
    def read_memory(self, vid: int, va: int, n: int) -> bytes:
        """Guest-virtual read through vcpu vid's pagetables; stops at the first hole."""
        if va < 0 or va > 0xFFFFFFFF:
            return b""
        n = min(n, (1 << 32) - va)
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
            if cur < 0 or cur + n > self.hv_start:
                raise GuestFault(cur, True)
            w = walk(dom.mem, dom.mode, v.cr3_mfn, cur)
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
               run: Iterable[int] | None = None) -> None:
        """Resume the machine.

        mode "continue": every vcpu runs (or only those in `run`; the others are held);
        "step": vcpu executes one instruction; "range": vcpu steps while its EIP stays in
        [start, end). Returns at once; the stop arrives as a StopEvent (wait, take_stop, or
        a listener). A fast single step completes before resume returns."""
        with self._lock:
            if self._running:
                raise DebugError("the machine is already running")
            self._running = True
            self._interrupt = False
            self._unreported = None
        self._idle_wake.clear()
        vid = 0
        try:
            if self.finished:
                self._publish(self._final_event())
                return
            vid = self._last.vcpu if vcpu is None else vcpu
            vid = vid if vid is not None and 0 <= vid < len(self.vcpus) else 0
            self._prepare_resume()
            if run is not None and mode == "continue":
                self._hold(set(run))
            if mode == "step" and self.vcpu(vid).state is VcpuState.running:
                self._publish(self._guarded(self._step, self.vcpu(vid)))
                return
        except BaseException:
            self._publish(StopEvent(StopKind.error, vid, detail=traceback.format_exc(limit=3)))
            raise
        self._thread = threading.Thread(target=self._background, args=(mode, vid, start, end),
                                        name="xenwb-debug-run", daemon=True)
        self._thread.start()

    def _prepare_resume(self) -> None:
        self._pending = None
        for s in self._stoppers.values():
            s.disarm()
        self._skip.clear()
        last = self._last
        if last.vcpu is not None and last.vcpu < len(self.vcpus):
            pc = _eip(self.vcpu(last.vcpu))
            if pc in self._bp_kinds:
                self._skip[last.vcpu] = pc
        for vid, eip in self._held.items():          # re-issue held hypercalls
            v = self.vcpu(vid)
            if _eip(v) == eip:
                v.cpu.eip = eip - 2
                if self._hc_wrapper is not None:
                    self._skip_entry.add(vid)
        self._held.clear()
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
        if mode == "step":
            ev = self._guarded(self._slow_step, v)
        elif mode == "range":
            ev = self._guarded(self._range_step, v, start, end)
        else:
            ev = self._guarded(self._continue)
        self._publish(ev)

    def _guarded(self, fn: Callable[..., StopEvent], *args) -> StopEvent:
        try:
            ev = fn(*args)
            if not ev.final and not self.domain.finished:
                self._settle()
            if self.domain.finished and not ev.final:
                ev = self._final_event()
            return ev
        except Exception as e:
            return StopEvent(StopKind.error, self._current_vcpu(),
                             detail=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
        finally:
            self._unhold()
            self._skip.clear()

    def _continue(self) -> StopEvent:
        while True:
            if self._interrupt:
                return StopEvent(StopKind.interrupt, self._current_vcpu())
            ev = self._after_run(self.machine.run())
            if ev is not None:
                return ev

    def _after_run(self, res: RunResult) -> StopEvent | None:
        from xenwb.machine import StopReason
        if self.domain.finished:
            return self._final_event()
        if self._pending is not None:
            ev, self._pending = self._pending, None
            if self._retranslate:
                self._retranslate_watchpoints()
            return ev
        r = res.reason
        if r is StopReason.requested:
            if self._interrupt:
                return StopEvent(StopKind.interrupt, self._current_vcpu())
            if self._retranslate:
                self._retranslate_watchpoints()
                return None                  # internal stop: go on
            return StopEvent(StopKind.interrupt, self._current_vcpu())   # someone called Machine.stop()
        if r is StopReason.hang:
            # every vcpu blocked for good: idle, as a real machine would, until interrupted
            while not self._interrupt:
                self._idle_wake.wait()
                self._idle_wake.clear()
            return StopEvent(StopKind.interrupt, self._current_vcpu(), detail=res.detail)
        if r in (StopReason.time_limit, StopReason.instruction_limit):
            return StopEvent(StopKind.limit, self._current_vcpu(), code=SIGXCPU, detail=res.detail)
        return self._final_event()

    def _step(self, v: Vcpu) -> StopEvent:
        """One instruction of a running vcpu, synchronously."""
        if v.state is not VcpuState.running:
            return self._slow_step(v)
        dom = self.domain
        pc = _eip(v)
        if pc in self._bp_kinds:
            self._skip[v.id] = pc             # the stepped instruction always runs
        self.machine.stop_requested = False
        self.machine.step_vcpu(v)
        n = 0
        while (_eip(v) >= self.hv_start and self._pending is None and not dom.finished
               and v.state is VcpuState.running and n < MAX_TRANSITION_STEPS):
            self.machine.step_vcpu(v)
            n += 1
        self._skip.pop(v.id, None)
        for s in self._stoppers.values():
            s.disarm()
        if dom.finished:
            return self._final_event()
        if self._retranslate:
            self._retranslate_watchpoints()
        if self._pending is not None:
            ev, self._pending = self._pending, None
            return ev
        return StopEvent(StopKind.step, v.id)

    def _slow_step(self, v: Vcpu) -> StopEvent:
        """Step a vcpu that is not running (blocked, down): run the machine until that
        vcpu has executed one guest instruction."""
        seen = [0]

        def hook(uc: Uc, address: int, size: int, _ud: object) -> None:
            if address >= self.hv_start:
                return
            seen[0] += 1
            if seen[0] >= 2:
                self._record(StopEvent(StopKind.step, v.id))
                uc.emu_stop()

        uc = v.cpu.uc
        h = uc.hook_add(UC_HOOK_CODE, hook)
        try:
            return self._continue()
        finally:
            uc.hook_del(h)

    def _range_step(self, v: Vcpu, start: int, end: int) -> StopEvent:
        while True:
            if self._interrupt:
                return StopEvent(StopKind.interrupt, v.id)
            ev = self._step(v)
            if ev.kind is not StopKind.step or not start <= _eip(v) < end:
                return ev

    def _current_vcpu(self) -> int:
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
    def clear_all(self) -> None:
        """Remove every breakpoint, watchpoint and catchpoint."""
        self._require_stopped()
        for addr, kinds in list(self._bp_kinds.items()):
            for k in list(kinds):
                self.remove_breakpoint(addr, hardware=k == "hw")
        for kind, addr, length in list(self._watch):
            self.remove_watchpoint(addr, length, kind)
        self.catch_hypercalls(None)

    def detach(self) -> None:
        """Forget every debugging request and let the guest run on."""
        if self._running:
            self.interrupt()
            self.wait()
        self.take_stop()
        self.clear_all()
        if not self.finished:
            self.resume("continue")

    def kill(self) -> None:
        if self._running:
            self.interrupt()
            self.wait()
        self.take_stop()
        self.clear_all()
        self.killed = True
        self._last = StopEvent(StopKind.killed, self._current_vcpu(), code=SIGKILL, detail="killed by the debugger")
