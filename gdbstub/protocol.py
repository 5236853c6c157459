"""The remote protocol's packet semantics over the Controller, for one gdb connection.

Packets are dispatched through tables (BASIC, QUERIES, SETS, V_PACKETS below, as QEMU's
gdb_gen_query_table and gdb_gen_set_table), each entry with its declared parameter schema
(gdbstub/packets.py). Every packet gets an answer: malformed ones ``E22``, refused ones
(the machine is running, a read-only register) ``E01``, unmapped memory ``E14`` (errno
values in decimal, as gdbserver writes them), unknown ones the empty reply. Semantics follow
gdb's manual (Remote Protocol: "Packets", "General Query Packets", "Stop Reply Packets").

Resuming packets (c, s, C, S, vCont) hand the machine to the session's runner and send no
reply: the stop reply follows when the machine stops (`report`).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import TYPE_CHECKING
from typing import Protocol as Interface

from gdbstub.memmap import guest_spans_of, memory_map_xml
from gdbstub.packets import ALL_THREADS, ANY_THREAD, Command, CommandTable, parse_tid
from gdbstub.rsp import escape, parse_hex
from gdbstub.target import RegisterError, RegisterFile, arch_for
from gdbstub.threads import ThreadList, describe, tid_of, vcpu_of
from gdbstub.transport import log
from xenwb.control import POSTMORTEM_KINDS, DebugError, LimitReached, RefusedWrite, StopEvent, StopKind
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.paging import translate

if TYPE_CHECKING:
    from xenwb.control import Controller
    from xenwb.hypervisor.vcpu import Vcpu

PACKET_SIZE = 0x20000            # what qSupported announces (bytes of payload we accept)
MAX_MEMORY_READ = PACKET_SIZE // 2 - 16
PAGE = 4096
E_FAULT = b"E14"                 # EFAULT: unmapped memory
E_INVAL = b"E22"                 # EINVAL: malformed or impossible request
E_PERM = b"E01"                  # EPERM: refused (read-only register, machine running...)

SUPPORTED = (b"PacketSize=%x;qXfer:features:read+;qXfer:threads:read+;qXfer:memory-map:read+;"
             b"qXfer:exec-file:read+;QStartNoAckMode+;swbreak+;hwbreak+;vContSupported+;QCatchSyscalls+;"
             b"ReverseStep+;ReverseContinue+" % PACKET_SIZE)
STOP_REASON = {StopKind.swbreak: b"swbreak:;", StopKind.hwbreak: b"hwbreak:;"}
WATCH_REASON = {StopKind.watch: b"watch", StopKind.rwatch: b"rwatch", StopKind.awatch: b"awatch"}
SYSCALL_REASON = {StopKind.syscall_entry: b"syscall_entry", StopKind.syscall_return: b"syscall_return"}
WATCH_TYPES = {2: "write", 3: "read", 4: "access"}
CONSOLE_KINDS = (StopKind.crashed, StopKind.error, StopKind.limit, StopKind.hang)


class Link(Interface):
    """What the protocol needs of the transport."""

    def send(self, payload: bytes) -> None: ...

    def stop_acks(self) -> None: ...


class Runner(Interface):
    """What the protocol needs to resume the machine (the session's machine thread)."""

    def start(self, mode: str, vcpu: int | None, *, start: int, end: int, run: set[int] | None,
              signal: int) -> None: ...

    def interrupt(self) -> None: ...


class Protocol:
    """Packet semantics for one connected gdb: `handle` answers one packet, `report` sends
    the stop reply gdb waits for after a resume."""

    def __init__(self, ctl: Controller, link: Link, runner: Runner) -> None:
        self.ctl = ctl
        self.machine = ctl.machine
        self.link = link
        self.runner = runner
        self._limit_told = False          # a cap refusal was reported on stderr
        self.arch = arch_for(self.machine.domain.abi.abi.word)
        self.regfile = RegisterFile(self.arch)
        self.g_thread = ANY_THREAD       # Hg / Hc selections, as thread ids (ANY, ALL or vcpu + 1)
        self.c_thread = ALL_THREADS
        self.waiting = False             # gdb waits for a stop reply
        self.closed = False
        self.outcome = ""                # detached, killed
        self.saw_postmortem = False      # this gdb was shown a crash or limit stop
        self.phys = False                # Qqemu.PhyMemMode: m/M/X take guest-physical addresses
        self.threads = ThreadList()
        self._regs: dict[int, bytes] = {}
        self._memmap = b""
        self._tlb: dict[tuple[int, int], int | None] = {}      # (vcpu, page) -> machine address, this stop
        self._tlb_stop: StopEvent | None = None
        self.stats: dict[bytes, list[float]] | None = {} if os.environ.get("XENWB_GDB_STATS") else None
        self._resumed: tuple[bytes, float] | None = None     # stats: the resume waiting for its stop
        self._packet: tuple[bytes, float] = (b"", 0.0)         # stats: the packet being handled
        self._started = False                                  # this packet resumed the machine

    def forget_state(self) -> None:
        """The machine stopped without gdb asking (the shell, the Python API): registers and
        translations cached for gdb's view are stale."""
        self._regs.clear()
        self._tlb.clear()
        self._tlb_stop = None

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, pkt: bytes) -> None:
        """Answer one packet (a resume's answer is the stop reply that `report` sends)."""
        self._started = False
        if self.stats is not None:
            self._packet = (stat_key(pkt), time.perf_counter())
        reply = self.dispatch(pkt)
        if reply is not None:
            self.link.send(reply)
        if self.stats is not None and not self._started:   # a resume is counted until its stop reply
            self.count(self._packet[0], time.perf_counter() - self._packet[1])

    def dispatch(self, pkt: bytes) -> bytes | None:
        if not pkt:
            return b""
        if self.ctl.finished and pkt[0] not in b"?qQDkv":
            return E_PERM
        try:
            found = TABLE.lookup(pkt)
            if found is None:
                return b""                              # not supported
            cmd, params = found
            return cmd.handler(self, *params)
        except (ValueError, IndexError, KeyError) as e:     # malformed arguments
            log(f"malformed {pkt[:80]!r}: {e}")
            return E_INVAL
        except GuestFault:
            return E_FAULT
        except RefusedWrite as e:                       # Xen would not let it happen: its errno
            log(f"refused {pkt[:80]!r}: {e}")
            return b"E%02d" % min(e.errno, 99)
        except LimitReached as e:                       # gdb shows only "Cannot insert": say why, once
            if not self._limit_told:
                self._limit_told = True
                print(f"xenwb: gdb stub: {e}: refused (monitor why)", file=sys.stderr, flush=True)
            return E_PERM
        except (DebugError, RegisterError) as e:
            log(f"refused {pkt[:80]!r}: {e}")
            return E_PERM
        except Exception:                               # a bug of ours: say so, keep serving
            traceback.print_exc()
            return E_PERM

    def count(self, key: bytes, seconds: float) -> None:
        """XENWB_GDB_STATS=1: packets handled and the stub's time on them, per kind (for a
        resume, until its stop reply: for a single step, the step itself)."""
        if self.stats is not None:
            st = self.stats.setdefault(key, [0, 0.0])
            st[0] += 1
            st[1] += seconds

    def print_stats(self) -> None:
        if not self.stats:
            return
        total = sum(t for _, t in self.stats.values())
        print("xenwb gdb stats: packet kind, count, stub time (ms), per packet (us)", file=sys.stderr)
        for key, (n, t) in sorted(self.stats.items(), key=lambda kv: -kv[1][1]):
            print(f"  {key.decode(errors='replace'):<24} {n:>7} {t * 1e3:>9.1f} {t / n * 1e6:>9.1f}", file=sys.stderr)
        print(f"  {'total':<24} {sum(n for n, _ in self.stats.values()):>7} {total * 1e3:>9.1f}", file=sys.stderr)

    # -- vcpus ---------------------------------------------------------------------------------------
    @property
    def vcpus(self) -> list[Vcpu]:
        return self.machine.vcpus

    def _vcpu_id(self, tid: int) -> int:
        """The vcpu a thread id selects; ANY, ALL or a stale id mean the thread of the last stop."""
        vid = vcpu_of(tid)
        if tid in (ALL_THREADS, ANY_THREAD) or not 0 <= vid < len(self.vcpus):
            ev = self.ctl.last_stop
            return ev.vcpu if ev.vcpu is not None and ev.vcpu < len(self.vcpus) else 0
        return vid

    def _valid_tid(self, tid: int) -> bool:
        return tid in (ALL_THREADS, ANY_THREAD) or 0 <= vcpu_of(tid) < len(self.vcpus)

    def _mem_vcpu(self) -> int:
        """The vcpu whose pagetables translate memory accesses: the selected one, or, when it
        has none yet (a vcpu that is down), the first that has."""
        vid = self._vcpu_id(self.g_thread)
        if not self.vcpus[vid].cr3_mfn:
            for v in self.vcpus:
                if v.cr3_mfn:
                    return v.id
        return vid

    # -- registers -----------------------------------------------------------------------------------
    def registers(self, vid: int) -> bytes:
        """The vcpu's 'g' payload (raw), read once per stop."""
        regs = self._regs.get(vid)
        if regs is None:
            regs = self._regs[vid] = self.regfile.read(self.vcpus[vid], self.ctl.orig_eax(vid))
        return regs

    def _register(self, vid: int, n: int) -> bytes:
        off = self.arch.offsets
        return self.registers(vid)[off[n]:off[n + 1]]

    def read_registers(self) -> bytes:
        return self.registers(self._vcpu_id(self.g_thread)).hex().encode()

    def write_registers(self, data: bytes) -> bytes:
        if len(data) != self.arch.g_size:
            return E_INVAL
        vid = self._vcpu_id(self.g_thread)
        off = self.arch.offsets
        cur = self.registers(vid)
        self._regs.pop(vid, None)
        failed = False
        for i in range(len(self.arch.registers)):
            try:
                self.regfile.write(self.vcpus[vid], i, data[off[i]:off[i + 1]], cur[off[i]:off[i + 1]])
            except RegisterError as e:
                log(str(e))
                failed = True
        return E_PERM if failed else b"OK"

    def read_register(self, n: int) -> bytes:
        if n >= len(self.arch.registers):
            return E_INVAL
        return self._register(self._vcpu_id(self.g_thread), n).hex().encode()

    def write_register(self, n: int, data: bytes) -> bytes:
        if n >= len(self.arch.registers):
            return E_INVAL
        vid = self._vcpu_id(self.g_thread)
        cur = self._register(vid, n)
        self._regs.pop(vid, None)
        self.regfile.write(self.vcpus[vid], n, data, cur)
        return b"OK"

    # -- memory --------------------------------------------------------------------------------------
    def _address(self, addr: int) -> int:
        if addr > self.arch.addr_mask:
            raise ValueError(f"address {addr:#x} beyond {8 * self.arch.word} bits")
        return addr

    def _phys_chunks(self, addr: int, n: int) -> list[tuple[int, int]]:
        """(machine address, length) pieces of a guest-physical range (pfn << 12 | offset,
        through the domain's p2m), up to the first byte that is not guest RAM."""
        dom = self.machine.domain
        pm, mem = dom.physmap, dom.mem
        out = []
        pos = 0
        while pos < n:
            cur = addr + pos
            pfn = cur >> 12
            if not 0 <= pfn < pm.nr_pages:
                break
            k = min(n - pos, PAGE - (cur & 0xFFF))
            maddr = (pm.mfn(pfn) << 12) | (cur & 0xFFF)
            if not mem.valid(maddr, k):
                break
            out.append((maddr, k))
            pos += k
        return out

    def read_memory(self, addr: int, length: int) -> bytes:
        addr = self._address(addr)
        if length == 0:
            return E_INVAL
        length = min(length, MAX_MEMORY_READ)
        if self.phys:
            mem = self.machine.domain.mem
            data = b"".join(mem.read(m, k) for m, k in self._phys_chunks(addr, length))
        else:
            data = self._virt_read(self._mem_vcpu(), addr, length)
        return data.hex().encode() if data else E_FAULT

    def _virt_read(self, vid: int, addr: int, n: int) -> bytes:
        """Controller.read_memory (any mapped byte, Xen's range included, up to the first
        hole), keeping this stop's page translations: while the machine is stopped the tables
        change only through the debugger's own writes, which drop them (and so does every
        new stop, whichever front end made it)."""
        ctl = self.ctl
        if ctl.running:
            return ctl.read_memory(vid, addr, n)
        if ctl.last_stop is not self._tlb_stop:
            self._tlb.clear()
            self._tlb_stop = ctl.last_stop
        dom = self.machine.domain
        mem, mask = dom.mem, dom.geo.va_mask
        if addr > mask:
            return b""
        n = min(n, mask + 1 - addr)
        out = []
        pos = 0
        while pos < n:
            cur = addr + pos
            off = cur & 0xFFF
            k = min(n - pos, PAGE - off)
            key = (vid, cur - off)
            base = self._tlb.get(key, -1)
            if base == -1:
                base = self._tlb[key] = translate(mem, dom.mode, self.vcpus[vid].active_top_mfn, cur - off)
            if base is None or not mem.valid(base + off, k):
                break
            out.append(mem.read(base + off, k))
            pos += k
        return b"".join(out)

    def _write(self, addr: int, length: int, data: bytes) -> bytes:
        addr = self._address(addr)
        self._tlb.clear()                                # the write may change a pagetable
        if len(data) != length:
            return E_INVAL
        if not length:
            return b"OK"
        if not self.phys:
            self.ctl.write_memory(self._mem_vcpu(), addr, data)
            return b"OK"
        if self.ctl.running:
            raise DebugError("the machine is running")
        chunks = self._phys_chunks(addr, length)
        if sum(k for _, k in chunks) != length:
            return E_FAULT                               # all or nothing, as for virtual writes
        pieces, pos = [], 0
        for maddr, k in chunks:
            pieces.append((maddr, data[pos:pos + k]))
            pos += k
        self.ctl.write_machine(self._mem_vcpu(), pieces)     # validated as the Controller's writes
        return b"OK"

    def write_memory(self, addr: int, length: int, data: bytes) -> bytes:
        return self._write(addr, length, data)

    def write_memory_binary(self, addr: int, length: int, data: bytes = b"") -> bytes:
        return self._write(addr, length, data)

    def set_phys_mode(self, mode: int) -> bytes:
        if mode not in (0, 1):
            return E_INVAL
        self.phys = bool(mode)
        return b"OK"

    def phys_mode(self) -> bytes:
        return b"1" if self.phys else b"0"

    # -- breakpoints and watchpoints -----------------------------------------------------------------
    def _point(self, insert: bool, kind: int, addr: int, size: int, conditions: bytes = b"") -> bytes:
        addr = self._address(addr)
        ctl = self.ctl
        if kind in (0, 1):
            if insert:
                ctl.insert_breakpoint(addr, hardware=kind == 1)
            else:
                ctl.remove_breakpoint(addr, hardware=kind == 1)
            return b"OK"
        if kind in WATCH_TYPES:
            if not 0 < size <= 0x10000 or addr + size > self.arch.addr_mask + 1:
                return E_INVAL
            if insert:
                ctl.insert_watchpoint(addr, size, WATCH_TYPES[kind])
            else:
                ctl.remove_watchpoint(addr, size, WATCH_TYPES[kind])
            return b"OK"
        return b""

    def insert_point(self, kind: int, addr: int, size: int, conditions: bytes = b"") -> bytes:
        return self._point(True, kind, addr, size)

    def remove_point(self, kind: int, addr: int, size: int, conditions: bytes = b"") -> bytes:
        return self._point(False, kind, addr, size)

    # -- threads ---------------------------------------------------------------------------------------
    def set_thread(self, op: bytes, tid: int) -> bytes:
        if not self._valid_tid(tid):
            return E_INVAL
        if op == b"g":
            self.g_thread = tid_of(self._vcpu_id(tid)) if tid == ANY_THREAD else tid
        elif op in (b"c", b"s"):
            self.c_thread = tid
        else:
            return E_INVAL
        return b"OK"

    def thread_alive(self, tid: int) -> bytes:
        return b"OK" if tid not in (ALL_THREADS, ANY_THREAD) and self._valid_tid(tid) else E_INVAL

    def thread_list_first(self) -> bytes:
        return b"m" + b",".join(b"%x" % tid_of(v.id) for v in self.vcpus)

    def thread_list_next(self) -> bytes:
        return b"l"

    def current_thread(self) -> bytes:
        return b"QC%x" % tid_of(self._vcpu_id(ANY_THREAD))

    def thread_extra_info(self, tid: int) -> bytes:
        if tid in (ALL_THREADS, ANY_THREAD) or not self._valid_tid(tid):
            return E_INVAL
        return describe(self.vcpus[vcpu_of(tid)]).encode().hex().encode()

    # -- queries -----------------------------------------------------------------------------------------
    def supported(self, features: bytes = b"") -> bytes:
        return SUPPORTED

    @staticmethod
    def _xfer(doc: bytes, offset: int, length: int) -> bytes:
        """qXfer read replies: 'm' (more follows) or 'l' (last), binary data escaped."""
        chunk = doc[offset: offset + min(length, PACKET_SIZE // 2)]
        return (b"m" if offset + len(chunk) < len(doc) else b"l") + escape(chunk)

    def xfer_features(self, annex: bytes, offset: int, length: int) -> bytes:
        if annex != b"target.xml":
            return E_PERM
        return self._xfer(self.arch.xml, offset, length)

    def xfer_threads(self, annex: bytes, offset: int, length: int) -> bytes:
        return self._xfer(self.threads.xml(self.vcpus), offset, length)

    def xfer_memory_map(self, annex: bytes, offset: int, length: int) -> bytes:
        """Built from the current vcpu's pagetables when gdb starts reading it (offset 0)."""
        if offset == 0 or not self._memmap:
            dom = self.machine.domain
            v = self.vcpus[self._mem_vcpu()]
            self._memmap = memory_map_xml(dom.mem, dom.mode, v.active_top_mfn, guest_spans_of(dom.geo),
                                          dom.geo.va_mask + 1)
        return self._xfer(self._memmap, offset, length)

    def xfer_exec_file(self, annex: bytes, offset: int, length: int) -> bytes:
        """The guest's ELF (one process: any pid in the annex names it), so that a bare
        `target remote` finds the symbols."""
        path = self.machine.image.path.resolve()
        try:
            with open(path, "rb") as f:
                is_elf = f.read(4) == b"\x7fELF"
        except OSError:
            is_elf = False
        if not is_elf:
            return E_PERM                                # a bzImage: gdb cannot read it
        return self._xfer(str(path).encode(), offset, length)

    def attached(self, pid: int | None = None) -> bytes:
        return b"1"

    def offsets(self) -> bytes:
        return b"Text=0;Data=0;Bss=0"

    def symbol(self, args: bytes = b"") -> bytes:
        return b"OK"

    def qemu_supported(self) -> bytes:
        return b"PhyMemMode"

    def monitor(self, command: bytes) -> bytes:
        """qRcmd: a command of the machine's registry; its output as console (O) packets."""
        if self.ctl.running:
            return E_PERM
        line = command.decode("utf-8", "replace")
        self._tlb.clear()                                # a command may write guest memory
        try:
            ok, text = self.machine.commands.execute(self.machine, line)
        except Exception as e:               # a plugin's bug: report, do not crash
            ok, text = False, f"{type(e).__name__}: {e}"
        if not text.endswith("\n"):
            text += "\n"
        if not ok:
            text = "error: " + text
        data = text.encode("utf-8", "replace")
        step = max(1, PACKET_SIZE // 2 - 8)
        for i in range(0, len(data), step):
            self.link.send(b"O" + data[i: i + step].hex().encode())
        return b"OK"

    # -- settings ------------------------------------------------------------------------------------------
    def start_no_ack(self) -> None:
        self.link.send(b"OK")
        self.link.stop_acks()

    def catch_syscalls(self, on: int, numbers: bytes = b"") -> bytes:
        """QCatchSyscalls:1[;NR]... (hypercall numbers, none: all) or QCatchSyscalls:0."""
        if on == 0 and not numbers:
            self.ctl.catch_hypercalls(None)
            return b"OK"
        if on != 1:
            return E_INVAL
        self.ctl.catch_hypercalls([parse_hex(f) for f in numbers.split(b";")] if numbers else [])
        return b"OK"

    def non_stop(self, on: int) -> bytes:
        return b"OK" if on == 0 else E_PERM

    # -- resuming --------------------------------------------------------------------------------------------
    def _resume(self, mode: str, vid: int | None = None, *, start: int = 0, end: int = 0,
                run: set[int] | None = None, signal: int = 0) -> None:
        self._regs.clear()
        self._started = self.waiting = True     # before the hand-over: the stop may be reported at once
        self._resumed = self._packet if self.stats is not None else None
        try:
            self.runner.start(mode, vid, start=start, end=end, run=run, signal=signal)
        except BaseException:
            self._started = self.waiting = False
            self._resumed = None
            raise

    def _set_pc(self, addr: int | None) -> None:
        if addr is not None:
            self.vcpus[self._vcpu_id(self.c_thread)].set_guest_regs(pc=self._address(addr))

    def cont(self, addr: int | None = None) -> None:
        self._set_pc(addr)
        self._resume("continue")

    def step(self, addr: int | None = None) -> None:
        self._set_pc(addr)
        self._resume("step", self._vcpu_id(self.c_thread))

    def reverse_step(self) -> None:
        """bs: back to where the last stepi of the current thread started (time travel)."""
        self._resume("reverse-step", self._vcpu_id(self.c_thread))

    def reverse_cont(self) -> None:
        """bc: back to the last breakpoint/watchpoint/catchpoint hit before now."""
        self._resume("reverse-continue")

    def cont_signal(self, sig: int, addr: int | None = None) -> None:
        self._set_pc(addr)
        self._resume("continue", signal=sig)

    def step_signal(self, sig: int, addr: int | None = None) -> None:
        self._set_pc(addr)
        self._resume("step", self._vcpu_id(self.c_thread), signal=sig)

    def vcont_actions(self) -> bytes:
        return b"vCont;c;C;s;S;t;r"

    def vcont(self, spec: bytes) -> bytes | None:
        """vCont;ACTION[:TID]...: the leftmost action that applies to a vcpu wins."""
        nv = len(self.vcpus)
        actions: list[tuple[bytes, bytes, int | None]] = []     # (action, args, vcpu; None: every vcpu)
        for item in spec.split(b";"):
            act, _, thr = item.partition(b":")
            if not act:
                return E_INVAL
            letter = act[:1]
            if letter not in b"cCsStr" or (letter in b"ct" and len(act) > 1):
                return E_INVAL
            if letter in b"CS":
                parse_hex(act[1:])
            if letter == b"r":
                lo, hi = (parse_hex(x) for x in act[1:].split(b","))
                act = b"r%x,%x" % (lo, hi)
            who = None
            if thr:
                tid = parse_tid(thr)
                if not self._valid_tid(tid):
                    return E_INVAL
                who = None if tid in (ALL_THREADS, ANY_THREAD) else vcpu_of(tid)
            actions.append((letter, act[1:], who))
        per: dict[int, tuple[bytes, bytes]] = {}
        for vid in range(nv):
            for letter, args, who in actions:
                if who is None or who == vid:
                    per[vid] = (letter, args)
                    break
        steppers = [v for v, (a, _) in per.items() if a in b"sS"]
        rangers = [v for v, (a, _) in per.items() if a == b"r"]
        runners = {v for v, (a, _) in per.items() if a in b"cC"}
        signals = [parse_hex(args) for a, args in per.values() if a in b"CS" and args]
        signal = signals[0] if signals else 0
        if steppers or rangers:
            # the other vcpus run on as the schedule has it unless gdb keeps them stopped
            # (scheduler-locking: no continue action for them)
            vid = steppers[0] if steppers else rangers[0]
            others = None if len(runners) + 1 >= nv else {vid} | runners
            if steppers:
                self._resume("step", vid, run=others, signal=signal)
            else:
                lo, hi = (int(x, 16) for x in per[vid][1].split(b","))
                self._resume("range", vid, start=lo, end=hi, run=others, signal=signal)
        elif runners:
            self._resume("continue", None, run=None if len(runners) == nv else runners, signal=signal)
        else:
            return b"OK"                    # only 't' (stop) actions: everything is stopped already
        return None

    def ctrl_c(self) -> bytes:
        self.runner.interrupt()
        return b"OK"

    # -- stop replies ----------------------------------------------------------------------------------------
    def stop_reason(self) -> bytes:
        ev = self.ctl.last_stop
        if ev.kind is StopKind.interrupt:      # the stop that attached gdb: no signal to report
            ev = StopEvent(StopKind.initial, ev.vcpu)
        return self.stop_reply(ev)

    def stop_reply(self, ev: StopEvent) -> bytes:
        """T (with the pc, stack and frame registers and the reason), W (exited) or X (gone)."""
        if ev.kind is StopKind.exited:
            return b"W%02x" % (ev.code & 0xFF)
        if ev.final or (ev.kind in POSTMORTEM_KINDS and self.ctl.finished):
            return b"X%02x" % (ev.signal if ev.kind in POSTMORTEM_KINDS else ev.code & 0xFF)
        if ev.kind in POSTMORTEM_KINDS:
            self.saw_postmortem = True   # a stop like a fatal signal: inspectable until detach or kill
        vid = ev.vcpu if ev.vcpu is not None and ev.vcpu < len(self.vcpus) else 0
        a = self.arch
        if vid in self._regs:
            regs, off = self._regs[vid], a.offsets
            values = [regs[off[n]:off[n + 1]] for n in (a.pc, a.sp, a.fp)]
        else:
            values = list(self.regfile.expedite(self.vcpus[vid]))
        out = [b"T%02xthread:%x;" % (ev.signal, tid_of(vid))]
        for n, value in zip((a.pc, a.sp, a.fp), values, strict=True):
            out.append(b"%02x:%s;" % (n, value.hex().encode()))
        if ev.kind in STOP_REASON:
            out.append(STOP_REASON[ev.kind])
        elif ev.kind in WATCH_REASON and ev.addr is not None:
            out.append(b"%s:%x;" % (WATCH_REASON[ev.kind], ev.addr))
        elif ev.kind in SYSCALL_REASON and ev.nr is not None:
            out.append(b"%s:%x;" % (SYSCALL_REASON[ev.kind], ev.nr))
        elif ev.kind is StopKind.history_start:
            out.append(b"replaylog:begin;")          # gdb: "No more reverse-execution history."
        return b"".join(out)

    def report(self, ev: StopEvent) -> None:
        """A stop while gdb waited: tell it (console lines first for a crash or an error).
        Called from the machine thread: gdb may answer as soon as the reply is out, so the
        state is settled (and `waiting` cleared) before it is sent."""
        self._regs.clear()
        if ev.vcpu is not None and ev.vcpu < len(self.vcpus):
            self.g_thread = self.c_thread = tid_of(ev.vcpu)
        if ev.kind in CONSOLE_KINDS and ev.detail:
            self.link.send(b"O" + f"xenwb: {ev.detail.rstrip()}\n".encode().hex().encode())
        reply = self.stop_reply(ev)
        if self._resumed is not None:
            self.count(self._resumed[0], time.perf_counter() - self._resumed[1])
            self._resumed = None
        self.waiting = False
        self.link.send(reply)

    # -- ending ----------------------------------------------------------------------------------------------
    def detach(self, pid: int | None = None) -> None:
        self.link.send(b"OK")
        self.outcome = "detached"
        self.closed = True
        try:
            self.ctl.detach()
        except DebugError:
            pass

    def kill(self, pid: int | None = None) -> bytes | None:
        self.ctl.kill()
        self.outcome = "killed"
        self.closed = True
        return b"OK" if pid is not None else None


def stat_key(pkt: bytes) -> bytes:
    for prefix in (b"vCont;s", b"vCont;c", b"vCont;r", b"qXfer:threads", b"qXfer:features", b"qXfer:memory-map",
                   b"qRcmd"):
        if pkt.startswith(prefix):
            return prefix
    return pkt[:1] if pkt[:1] not in (b"q", b"Q", b"v") else pkt.split(b":")[0].split(b",")[0][:24]


P = Protocol
# Single-letter packets (gdb_handle_packet's switch, as a table).
BASIC = (
    Command(b"?", P.stop_reason),
    Command(b"g", P.read_registers),
    Command(b"G", P.write_registers, "x0", prefix=True),
    Command(b"p", P.read_register, "l0", prefix=True),
    Command(b"P", P.write_register, "l=x0", prefix=True),
    Command(b"m", P.read_memory, "l,l0", prefix=True),
    Command(b"M", P.write_memory, "l,l:x0", prefix=True),
    Command(b"X", P.write_memory_binary, "l,l:|b0", prefix=True),
    Command(b"Z", P.insert_point, "l,l,l;|s0", prefix=True),
    Command(b"z", P.remove_point, "l,l,l;|s0", prefix=True),
    Command(b"H", P.set_thread, "o.t0", prefix=True),
    Command(b"T", P.thread_alive, "t0", prefix=True),
    Command(b"c", P.cont, "|l0", prefix=True),
    Command(b"s", P.step, "|l0", prefix=True),
    Command(b"C", P.cont_signal, "l;|l0", prefix=True),
    Command(b"S", P.step_signal, "l;|l0", prefix=True),
    Command(b"D", P.detach),
    Command(b"D;", P.detach, "l0", prefix=True),
    Command(b"k", P.kill),
    Command(b"bs", P.reverse_step),
    Command(b"bc", P.reverse_cont),
)
# General queries (gdb_gen_query_table).
QUERIES = (
    Command(b"qSupported", P.supported),
    Command(b"qSupported:", P.supported, "s0", prefix=True),
    Command(b"qC", P.current_thread),
    Command(b"qfThreadInfo", P.thread_list_first),
    Command(b"qsThreadInfo", P.thread_list_next),
    Command(b"qThreadExtraInfo,", P.thread_extra_info, "t0", prefix=True),
    Command(b"qAttached", P.attached),
    Command(b"qAttached:", P.attached, "l0", prefix=True),
    Command(b"qOffsets", P.offsets),
    Command(b"qSymbol:", P.symbol, "s0", prefix=True),
    Command(b"qRcmd,", P.monitor, "x0", prefix=True),
    Command(b"qXfer:features:read:", P.xfer_features, "s:l,l0", prefix=True),
    Command(b"qXfer:threads:read:", P.xfer_threads, "s:l,l0", prefix=True),
    Command(b"qXfer:memory-map:read:", P.xfer_memory_map, "s:l,l0", prefix=True),
    Command(b"qXfer:exec-file:read:", P.xfer_exec_file, "s:l,l0", prefix=True),
    Command(b"qqemu.Supported", P.qemu_supported),
    Command(b"qqemu.PhyMemMode", P.phys_mode),
)
# General sets (gdb_gen_set_table).
SETS = (
    Command(b"QStartNoAckMode", P.start_no_ack),
    Command(b"QCatchSyscalls:", P.catch_syscalls, "l;|s0", prefix=True),
    Command(b"QNonStop:", P.non_stop, "l0", prefix=True),
    Command(b"Qqemu.PhyMemMode:", P.set_phys_mode, "l0", prefix=True),
)
# v packets (handle_v_commands).
V_PACKETS = (
    Command(b"vCont?", P.vcont_actions),
    Command(b"vCont;", P.vcont, "s0", prefix=True),
    Command(b"vCtrlC", P.ctrl_c),
    Command(b"vKill;", P.kill, "l0", prefix=True),
)
TABLE = CommandTable(BASIC, QUERIES, SETS, V_PACKETS)
del P
