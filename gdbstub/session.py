"""One gdb connection: acknowledgments, packet dispatch, stop replies.

The session runs in the server's thread; the machine runs in the Controller's background
thread, never in this one, so the session always hears gdb (a Ctrl-C reaches a running
guest at once, whatever loop it spins in). While gdb waits for a stop reply the session
watches both the socket (for Ctrl-C) and a wake-up pipe the Controller's stop listener
writes to. Bytes are handled in the order they arrived: a 0x03 that follows a `c` in the
same TCP segment interrupts the run that `c` started. Every packet gets an answer: errors are ``E NN`` replies and
unknown or unsupported packets the empty reply; nothing a peer sends can raise out of here.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
import traceback
from collections import deque
from typing import TYPE_CHECKING

from gdbstub import rsp
from gdbstub.rsp import Event, fromhex, parse_hex, tohex
from gdbstub.target import EBP, EIP, ESP, G_SIZE, REGISTERS, TARGET_XML, RegisterError, RegisterFile
from gdbstub.threads import ALL, ANY, describe, parse_tid, threads_xml, tid_of, vcpu_of
from xenwb.control import POSTMORTEM_KINDS, DebugError, StopEvent, StopKind
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.traps import set_guest_regs

if TYPE_CHECKING:
    from xenwb.control import Controller

PACKET_SIZE = 0x20000            # what qSupported announces (bytes of payload we accept)
MAX_MEMORY_READ = PACKET_SIZE // 2 - 16
# error replies carry errno values written in decimal, as gdbserver does
E_FAULT = b"E14"                 # EFAULT: unmapped memory
E_INVAL = b"E22"                 # EINVAL: malformed or impossible request
E_PERM = b"E01"                  # EPERM: refused (read-only register, machine running...)

SUPPORTED = (b"PacketSize=%x;qXfer:features:read+;qXfer:threads:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
             b"vContSupported+;QCatchSyscalls+" % PACKET_SIZE)
STOP_REASON = {StopKind.swbreak: b"swbreak:;", StopKind.hwbreak: b"hwbreak:;"}
WATCH_REASON = {StopKind.watch: b"watch", StopKind.rwatch: b"rwatch", StopKind.awatch: b"awatch"}
SYSCALL_REASON = {StopKind.syscall_entry: b"syscall_entry", StopKind.syscall_return: b"syscall_return"}


DEBUG = bool(os.environ.get("XENWB_GDB_DEBUG"))     # log every packet on stderr


def _log(msg: str) -> None:
    if DEBUG:
        print(f"xenwb gdb: {msg}", file=sys.stderr, flush=True)


class GdbSession:
    """Serves one connected gdb until it detaches, kills, disconnects or the server stops."""

    def __init__(self, sock: socket.socket, debugger: Controller, *, stop_fd: int | None = None) -> None:
        self.sock = sock
        self.dbg = debugger
        self.machine = debugger.machine
        self.reader = rsp.PacketReader(max_payload=PACKET_SIZE)
        self.ack = True
        self.last_sent: bytes | None = None
        self.regfile = RegisterFile()
        self.g_thread = ANY              # Hg / Hc selections, as thread ids (ANY, ALL or vcpu + 1)
        self.c_thread = ALL
        self.waiting = False             # gdb waits for a stop reply
        self.queue: deque[Event] = deque()
        self.closed = False
        self.outcome = ""
        self.stop_fd = stop_fd
        self._regs: dict[int, list[bytes]] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.stats: dict[bytes, list[float]] | None = {} if os.environ.get("XENWB_GDB_STATS") else None
        self.saw_postmortem = False      # this gdb was shown a crash or limit stop
        self.dbg.add_listener(self._on_stop)

    # -- plumbing ---------------------------------------------------------------------------
    def _on_stop(self, ev: StopEvent) -> None:        # any thread
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def _send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            _log(f"send failed: {e}")
            self._disconnected()

    def send(self, payload: bytes) -> None:
        pkt = rsp.frame(payload)
        if self.ack:
            self.last_sent = pkt
        if DEBUG:
            _log(f"-> {payload[:200]!r}")
        self._send_raw(pkt)

    def _disconnected(self) -> None:
        if not self.closed:
            self.closed = True
            self.outcome = self.outcome or "disconnected"

    def run(self) -> str:
        """Serve until the connection ends; returns why: detached, killed, disconnected,
        finished (the guest is gone and gdb was told), or shutdown (the server stops)."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            if self.dbg.running:           # attach to a running guest: stop it, as qemu does
                self.dbg.interrupt()
                self.dbg.wait(5)
            self.dbg.take_stop()
            while not self.closed:
                self._pump()
        except Exception:                  # never take the workbench down
            traceback.print_exc()
            self.outcome = self.outcome or "disconnected"
        finally:
            self._finish()
        return self.outcome

    def _finish(self) -> None:
        self.print_stats()
        self.dbg.remove_listener(self._on_stop)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        if self.outcome in ("disconnected", "shutdown", "") and not self.dbg.finished:
            # gdb went away without detaching: forget its requests, the guest runs on
            try:
                if self.outcome == "shutdown":
                    if self.dbg.running:
                        self.dbg.interrupt()
                        self.dbg.wait(5)
                else:
                    self.dbg.detach()
            except Exception:
                traceback.print_exc()

    def _pump(self) -> None:
        if self.waiting:
            if self.queue and self.queue[0].kind == "interrupt":
                self._handle(self.queue.popleft())
            ev = self.dbg.take_stop()
            if ev is not None:
                self.waiting = False
                self._report(ev)
                return
        elif self.queue:
            self._handle(self.queue.popleft())
            return
        finished = not self.waiting and self.dbg.finished
        if not self.waiting and not finished:
            # gdb's turn to talk and nothing else can happen meanwhile: read directly
            # (abort() shuts the socket down to end this read)
            data = self._recv()
        else:
            fds = [self.sock, self._wake_r]
            if self.stop_fd is not None:
                fds.append(self.stop_fd)
            try:
                ready, _, _ = select.select(fds, [], [], 1.0 if finished else None)
            except InterruptedError:
                return
            except (OSError, ValueError):
                self._disconnected()
                return
            if not ready and finished:
                self.outcome = "finished"
                self.closed = True
                return
            if self.stop_fd is not None and self.stop_fd in ready:
                self.outcome = "shutdown"
                self.closed = True
                return
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            if self.sock not in ready:
                return
            data = self._recv()
        if data is None:
            return
        if not data:
            self._disconnected()
            return
        if DEBUG:
            _log(f"<- {data[:200]!r}")
        for ev in self.reader.feed(data):
            self._arrived(ev)

    def _recv(self) -> bytes | None:
        try:
            return self.sock.recv(1 << 16)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return b""

    def abort(self) -> None:
        """End the session from elsewhere (the server is stopping): any thread or a signal handler."""
        self.outcome = "shutdown"
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _arrived(self, ev: Event) -> None:
        """Acknowledge at once; act on interrupts at once; queue the rest in order."""
        kind = ev.kind
        if kind == "ack":
            return
        if kind == "nak":
            if self.last_sent is not None:
                self._send_raw(self.last_sent)
            return
        if kind == "interrupt":
            # in order: an interrupt queued behind a resume packet stops what it started
            if self.waiting and not self.queue:
                self.dbg.interrupt()
            else:
                self.queue.append(ev)
            return
        if kind == "bad_checksum":
            if self.ack:
                self._send_raw(b"-")
            return                          # no-ack mode: nobody would retransmit; drop it
        if self.ack:
            self._send_raw(b"+")
        self.queue.append(ev)

    # -- dispatch -----------------------------------------------------------------------------
    def _handle(self, ev: Event) -> None:
        if ev.kind == "oversized":
            self.send(b"")
            return
        if ev.kind == "interrupt":
            if self.waiting or self.dbg.running:
                self.dbg.interrupt()
            return
        pkt = ev.payload
        t0 = time.perf_counter() if self.stats is not None else 0.0
        try:
            reply = self._dispatch(pkt)
        except (ValueError, IndexError, KeyError) as e:     # malformed arguments
            _log(f"malformed {pkt[:80]!r}: {e}")
            reply = E_INVAL
        except DebugError as e:
            _log(f"refused {pkt[:80]!r}: {e}")
            reply = E_PERM
        except Exception:
            traceback.print_exc()
            reply = E_PERM
        if reply is not None:
            self.send(reply)
        if self.stats is not None:
            key = _stat_key(pkt)
            st = self.stats.setdefault(key, [0, 0.0])
            st[0] += 1
            st[1] += time.perf_counter() - t0

    def print_stats(self) -> None:
        """XENWB_GDB_STATS=1: packets handled and the stub's time spent on them, per kind
        (for a resume, until the stop reply when the stop was immediate: a single step)."""
        if not self.stats:
            return
        total = sum(t for _, t in self.stats.values())
        print("xenwb gdb stats: packet kind, count, stub time (ms), per packet (us)", file=sys.stderr)
        for key, (n, t) in sorted(self.stats.items(), key=lambda kv: -kv[1][1]):
            print(f"  {key.decode(errors='replace'):<24} {n:>7} {t * 1e3:>9.1f} {t / n * 1e6:>9.1f}", file=sys.stderr)
        print(f"  {'total':<24} {sum(n for n, _ in self.stats.values()):>7} {total * 1e3:>9.1f}", file=sys.stderr)

    def _dispatch(self, pkt: bytes) -> bytes | None:
        if not pkt:
            return b""
        c = pkt[:1]
        if self.dbg.finished and c not in b"?qQDkv":
            return E_PERM
        h = _HANDLERS.get(c)
        if h is None:
            return b""
        return h(self, pkt)

    # -- registers -------------------------------------------------------------------------------
    def _vcpu_id(self, tid: int) -> int:
        """The vcpu a thread id selects; ANY, ALL or a stale id mean the thread of the last stop."""
        vid = vcpu_of(tid)
        if tid in (ALL, ANY) or not 0 <= vid < len(self.machine.vcpus):
            ev = self.dbg.last_stop
            return ev.vcpu if ev.vcpu is not None and ev.vcpu < len(self.machine.vcpus) else 0
        return vid

    def _mem_vcpu(self) -> int:
        """The vcpu whose pagetables translate memory accesses: the selected one, or, when it
        has none yet (a vcpu that is down), the first that has."""
        vid = self._vcpu_id(self.g_thread)
        vcpus = self.machine.vcpus
        if not vcpus[vid].cr3_mfn:
            for v in vcpus:
                if v.cr3_mfn:
                    return v.id
        return vid

    def _regs_of(self, vid: int) -> list[bytes]:
        regs = self._regs.get(vid)
        if regs is None:
            regs = self.regfile.read_all(self.machine.vcpus[vid], self.dbg.orig_eax(vid))
            self._regs[vid] = regs
        return regs

    def h_g(self, pkt: bytes) -> bytes:
        return tohex(b"".join(self._regs_of(self._vcpu_id(self.g_thread))))

    def h_G(self, pkt: bytes) -> bytes:
        data = fromhex(pkt[1:])
        if len(data) != G_SIZE:
            return E_INVAL
        vid = self._vcpu_id(self.g_thread)
        cur = self._regs_of(vid)
        self._regs.pop(vid, None)
        v = self.machine.vcpus[vid]
        pos = 0
        failed = False
        for i, r in enumerate(REGISTERS):
            chunk = data[pos: pos + r.size]
            pos += r.size
            try:
                self.regfile.write(v, i, chunk, cur[i])
            except RegisterError as e:
                _log(str(e))
                failed = True
        return E_PERM if failed else b"OK"

    def h_p(self, pkt: bytes) -> bytes:
        n = parse_hex(pkt[1:])
        if n >= len(REGISTERS):
            return E_INVAL
        return tohex(self._regs_of(self._vcpu_id(self.g_thread))[n])

    def h_P(self, pkt: bytes) -> bytes:
        num, _, val = pkt[1:].partition(b"=")
        n = parse_hex(num)
        if n >= len(REGISTERS):
            return E_INVAL
        vid = self._vcpu_id(self.g_thread)
        cur = self._regs_of(vid)[n]
        self._regs.pop(vid, None)
        try:
            self.regfile.write(self.machine.vcpus[vid], n, fromhex(val), cur)
        except RegisterError as e:
            _log(str(e))
            return E_PERM
        return b"OK"

    # -- memory -----------------------------------------------------------------------------------
    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        a, _, n = text.partition(b",")
        addr, length = parse_hex(a), parse_hex(n)
        if addr > 0xFFFFFFFF:
            raise ValueError("address beyond 32 bits")
        return addr, length

    def h_m(self, pkt: bytes) -> bytes:
        addr, length = self._addr_len(pkt[1:])
        if length == 0:
            return E_INVAL
        data = self.dbg.read_memory(self._mem_vcpu(), addr, min(length, MAX_MEMORY_READ))
        return tohex(data) if data else E_FAULT

    def _write(self, addr: int, data: bytes) -> bytes:
        try:
            self.dbg.write_memory(self._mem_vcpu(), addr, data)
        except GuestFault:
            return E_FAULT
        return b"OK"

    def h_M(self, pkt: bytes) -> bytes:
        head, sep, hexdata = pkt[1:].partition(b":")
        if not sep:
            return E_INVAL
        addr, length = self._addr_len(head)
        data = fromhex(hexdata)
        if len(data) != length:
            return E_INVAL
        return self._write(addr, data) if length else b"OK"

    def h_X(self, pkt: bytes) -> bytes:
        head, sep, raw = pkt[1:].partition(b":")
        if not sep:
            return E_INVAL
        addr, length = self._addr_len(head)
        data = rsp.unescape(raw)
        if len(data) != length:
            return E_INVAL
        return self._write(addr, data) if length else b"OK"

    # -- breakpoints and watchpoints ------------------------------------------------------------------
    def _z(self, pkt: bytes, insert: bool) -> bytes:
        body = pkt[1:].split(b";", 1)[0]
        parts = body.split(b",")
        if len(parts) != 3:
            return E_INVAL
        kind, addr, size = parse_hex(parts[0]), parse_hex(parts[1]), parse_hex(parts[2])
        if addr > 0xFFFFFFFF:
            return E_INVAL
        dbg = self.dbg
        if kind in (0, 1):
            if insert:
                dbg.insert_breakpoint(addr, hardware=kind == 1)
            else:
                dbg.remove_breakpoint(addr, hardware=kind == 1)
            return b"OK"
        if kind in (2, 3, 4):
            wkind = {2: "write", 3: "read", 4: "access"}[kind]
            if not 0 < size <= 0x10000 or addr + size > 1 << 32:
                return E_INVAL
            if insert:
                dbg.insert_watchpoint(addr, size, wkind)
            else:
                dbg.remove_watchpoint(addr, size, wkind)
            return b"OK"
        return b""

    def h_Z(self, pkt: bytes) -> bytes:
        return self._z(pkt, True)

    def h_z(self, pkt: bytes) -> bytes:
        return self._z(pkt, False)

    # -- threads ----------------------------------------------------------------------------------------
    def _valid_tid(self, tid: int) -> bool:
        return tid in (ALL, ANY) or 0 <= vcpu_of(tid) < len(self.machine.vcpus)

    def h_H(self, pkt: bytes) -> bytes:
        op = pkt[1:2]
        tid = parse_tid(pkt[2:])
        if not self._valid_tid(tid):
            return E_INVAL
        if op == b"g":
            self.g_thread = tid_of(self._vcpu_id(tid)) if tid == ANY else tid
        elif op in (b"c", b"s"):
            self.c_thread = tid
        else:
            return E_INVAL
        return b"OK"

    def h_T(self, pkt: bytes) -> bytes:
        tid = parse_tid(pkt[1:])
        return b"OK" if tid not in (ALL, ANY) and self._valid_tid(tid) else E_INVAL

    # -- queries -----------------------------------------------------------------------------------------
    @staticmethod
    def _xfer(doc: bytes, offlen: bytes) -> bytes:
        off, length = (parse_hex(x) for x in offlen.split(b","))
        chunk = doc[off: off + min(length, PACKET_SIZE // 2)]
        more = off + len(chunk) < len(doc)
        return (b"m" if more else b"l") + rsp.escape(chunk)

    def h_q(self, pkt: bytes) -> bytes:
        name, _, args = pkt[1:].partition(b":")
        if pkt.startswith(b"qSupported"):
            return SUPPORTED
        if name == b"Xfer":
            obj, _, rest = args.partition(b":")
            op, _, rest = rest.partition(b":")
            annex, _, offlen = rest.partition(b":")
            if op != b"read":
                return b""
            if obj == b"features":
                if annex != b"target.xml":
                    return E_PERM
                return self._xfer(TARGET_XML, offlen)
            if obj == b"threads":
                return self._xfer(threads_xml(self.machine.vcpus), offlen)
            return b""
        if pkt == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % tid_of(v.id) for v in self.machine.vcpus)
        if pkt == b"qsThreadInfo":
            return b"l"
        if pkt == b"qC":
            return b"QC%x" % tid_of(self._vcpu_id(ANY))
        if name == b"Attached":
            return b"1"
        if pkt == b"qOffsets":
            return b"Text=0;Data=0;Bss=0"
        if pkt.startswith(b"qThreadExtraInfo,"):
            tid = parse_tid(pkt[len(b"qThreadExtraInfo,"):])
            if tid in (ALL, ANY) or not self._valid_tid(tid):
                return E_INVAL
            return tohex(describe(self.machine.vcpus[vcpu_of(tid)]).encode())
        if pkt.startswith(b"qRcmd,"):
            return self._monitor(fromhex(pkt[len(b"qRcmd,"):]).decode("utf-8", "replace"))
        if pkt.startswith(b"qSymbol"):
            return b"OK"
        return b""

    def _monitor(self, line: str) -> bytes:
        """qRcmd: the machine's command registry (help, info vcpus, xen version, plugins)."""
        if self.dbg.running:
            return E_PERM
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
            self.send(b"O" + tohex(data[i: i + step]))
        return b"OK"

    def h_Q(self, pkt: bytes) -> bytes | None:
        if pkt == b"QStartNoAckMode":
            self.send(b"OK")
            self.ack = False
            self.last_sent = None
            return None
        if pkt.startswith(b"QCatchSyscalls:"):
            arg = pkt[len(b"QCatchSyscalls:"):]
            fields = arg.split(b";")
            if fields[0] == b"0" and len(fields) == 1:
                self.dbg.catch_hypercalls(None)
                return b"OK"
            if fields[0] != b"1":
                return E_INVAL
            self.dbg.catch_hypercalls([parse_hex(f) for f in fields[1:]])
            return b"OK"
        if pkt == b"QNonStop:0":
            return b"OK"
        return b""

    def h_v(self, pkt: bytes) -> bytes | None:
        if pkt == b"vCont?":
            return b"vCont;c;C;s;S;t;r"
        if pkt.startswith(b"vCont;"):
            return self._vcont(pkt[len(b"vCont;"):])
        if pkt == b"vCtrlC":
            self.dbg.interrupt()
            return b"OK"
        if pkt.startswith(b"vKill"):
            self._kill()
            return b"OK"
        return b""

    def h_question(self, pkt: bytes) -> bytes:
        ev = self.dbg.last_stop
        if ev.kind is StopKind.interrupt:      # the stop that attached gdb: no signal to report
            ev = StopEvent(StopKind.initial, ev.vcpu)
        return self._stop_reply(ev)

    # -- resuming --------------------------------------------------------------------------------------
    def _resume(self, mode: str, vid: int | None = None, *, start: int = 0, end: int = 0,
                run: set[int] | None = None, signal: int = 0) -> None:
        self._regs.clear()
        self.dbg.resume(mode, vid, start=start, end=end, run=run, signal=signal)
        self.waiting = True              # the stop (a fast step's already) is reported by _pump

    def _set_pc(self, text: bytes) -> None:
        if text:
            vid = self._vcpu_id(self.c_thread)
            set_guest_regs(self.machine.vcpus[vid], eip=parse_hex(text))

    def h_c(self, pkt: bytes) -> None:
        self._set_pc(pkt[1:])
        self._resume("continue")

    def h_s(self, pkt: bytes) -> None:
        self._set_pc(pkt[1:])
        self._resume("step", self._vcpu_id(self.c_thread))

    def h_C(self, pkt: bytes) -> None:
        sig, _, addr = pkt[1:].partition(b";")
        signal = parse_hex(sig)
        self._set_pc(addr)
        self._resume("continue", signal=signal)

    def h_S(self, pkt: bytes) -> None:
        sig, _, addr = pkt[1:].partition(b";")
        signal = parse_hex(sig)
        self._set_pc(addr)
        self._resume("step", self._vcpu_id(self.c_thread), signal=signal)

    def _vcont(self, spec: bytes) -> bytes | None:
        """Per-thread actions; the leftmost action that applies to a vcpu wins."""
        nv = len(self.machine.vcpus)
        actions: list[tuple[bytes, bytes, int]] = []     # (action, args, vcpu or ALL)
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
                act = b"r" + b"%x,%x" % (lo, hi)
            who = ALL
            if thr:
                tid = parse_tid(thr)
                if not self._valid_tid(tid):
                    return E_INVAL
                who = tid if tid in (ALL, ANY) else vcpu_of(tid)
            actions.append((letter, act[1:], who))
        per: dict[int, tuple[bytes, bytes]] = {}
        for vid in range(nv):
            for letter, args, who in actions:
                if who in (ALL, ANY) or who == vid:
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

    # -- stop replies ----------------------------------------------------------------------------------
    def _stop_reply(self, ev: StopEvent) -> bytes:
        if ev.kind is StopKind.exited:
            return b"W%02x" % (ev.code & 0xFF)
        if ev.final or (ev.kind in POSTMORTEM_KINDS and self.dbg.finished):
            return b"X%02x" % (ev.signal if ev.kind in POSTMORTEM_KINDS else ev.code & 0xFF)
        if ev.kind in POSTMORTEM_KINDS:
            self.saw_postmortem = True   # a stop like a fatal signal: inspectable until detach or kill
        vid = ev.vcpu if ev.vcpu is not None and ev.vcpu < len(self.machine.vcpus) else 0
        regs = self._regs_of(vid)
        out = [b"T%02xthread:%x;%02x:%s;%02x:%s;%02x:%s;" % (
            ev.signal, tid_of(vid), EIP, regs[EIP].hex().encode(), ESP, regs[ESP].hex().encode(),
            EBP, regs[EBP].hex().encode())]
        if ev.kind in STOP_REASON:
            out.append(STOP_REASON[ev.kind])
        elif ev.kind in WATCH_REASON and ev.addr is not None:
            out.append(b"%s:%x;" % (WATCH_REASON[ev.kind], ev.addr))
        elif ev.kind in SYSCALL_REASON and ev.nr is not None:
            out.append(b"%s:%x;" % (SYSCALL_REASON[ev.kind], ev.nr))
        return b"".join(out)

    def _report(self, ev: StopEvent) -> None:
        """A stop while gdb waited: tell it (console lines first for a crash or an error)."""
        self._regs.clear()
        if ev.vcpu is not None and ev.vcpu < len(self.machine.vcpus):
            self.g_thread = self.c_thread = tid_of(ev.vcpu)
        if ev.kind in (StopKind.crashed, StopKind.error, StopKind.limit, StopKind.hang) and ev.detail:
            self.send(b"O" + tohex(f"xenwb: {ev.detail.rstrip()}\n".encode()))
        self.send(self._stop_reply(ev))

    # -- ending -----------------------------------------------------------------------------------------
    def h_D(self, pkt: bytes) -> bytes | None:
        self.send(b"OK")
        self.outcome = "detached"
        self.closed = True
        try:
            self.dbg.detach()
        except DebugError:
            pass
        return None

    def _kill(self) -> None:
        self.dbg.kill()
        self.outcome = "killed"
        self.closed = True

    def h_k(self, pkt: bytes) -> None:
        self._kill()
        return None


def _stat_key(pkt: bytes) -> bytes:
    for prefix in (b"vCont;s", b"vCont;c", b"vCont;r", b"qXfer:threads", b"qXfer:features", b"qRcmd"):
        if pkt.startswith(prefix):
            return prefix
    return pkt[:1] if pkt[:1] not in (b"q", b"Q", b"v") else pkt.split(b":")[0].split(b",")[0][:24]


_HANDLERS = {
    b"g": GdbSession.h_g, b"G": GdbSession.h_G, b"p": GdbSession.h_p, b"P": GdbSession.h_P,
    b"m": GdbSession.h_m, b"M": GdbSession.h_M, b"X": GdbSession.h_X,
    b"Z": GdbSession.h_Z, b"z": GdbSession.h_z, b"H": GdbSession.h_H, b"T": GdbSession.h_T,
    b"q": GdbSession.h_q, b"Q": GdbSession.h_Q, b"v": GdbSession.h_v, b"?": GdbSession.h_question,
    b"c": GdbSession.h_c, b"s": GdbSession.h_s, b"C": GdbSession.h_C, b"S": GdbSession.h_S,
    b"D": GdbSession.h_D, b"k": GdbSession.h_k,
}
