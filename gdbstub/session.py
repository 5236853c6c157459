"""One gdb connection: the transport (gdbstub/transport.py) and the protocol
(gdbstub/protocol.py) in one loop, and the thread the machine runs in.

The session's own thread only listens to gdb; the machine runs in another thread, which
sends the stop replies, so the session always hears gdb (a Ctrl-C reaches a running guest at
once, whatever loop it spins in) and a stop costs no wake-up of the session. Bytes are
handled in the order they arrived: a 0x03 that follows a `c` in the same TCP segment
interrupts the run that `c` started. Nothing a peer sends can raise out of here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from gdbstub.protocol import E_PERM, PACKET_SIZE, Protocol
from gdbstub.transport import Transport
from xenwb.control import DebugError, StopEvent

if TYPE_CHECKING:
    import socket

    from xenwb.control import Controller


class MachineThread:
    """Runs the machine for one connection and reports each stop (`on_stop`: the stop reply
    goes out at once, from the thread that saw the stop).

    A single step (or range step) runs in the caller's thread, the session's: no hand-off
    at all, which on a loaded machine means no wait for a scheduler slot either. Meanwhile
    this class's thread keeps watch: a step still running after WATCH seconds (a vcpu that
    is blocked, a long range) makes it watch gdb's socket and the server's stop pipe in the
    session's place, and interrupt the machine on a Ctrl-C, a disconnect or a shutdown. A
    continue is handed to that thread (one hand-off, ~10 us idle, instead of a thread
    started per resume by Controller.resume: 0.3-0.5 ms here). A resume that holds some
    vcpus (gdb's scheduler-locking) goes through Controller.resume, the entry point that
    takes the set of vcpus to run, and waits there."""

    WATCH = 0.02

    def __init__(self, ctl: Controller, on_stop: Callable[[StopEvent | DebugError], None],
                 interrupt_pending: Callable[[float], bool]) -> None:
        self.ctl = ctl
        self.on_stop = on_stop
        self.interrupt_pending = interrupt_pending
        self._jobs: queue.SimpleQueue[tuple[str, int | None, int, int, set[int] | None, int] | None] = \
            queue.SimpleQueue()
        self._busy = False
        self._sync = 0                      # the step running in the caller's thread (0: none), by number
        self._steps = 0                     # steps numbered so far (each step its own number)
        self._thread = threading.Thread(target=self._loop, name="xenwb-gdb-machine", daemon=True)
        self._thread.start()

    def start(self, mode: str, vcpu: int | None, *, start: int = 0, end: int = 0, run: set[int] | None = None,
              signal: int = 0) -> None:
        if self.ctl.running or self._busy:
            raise DebugError("the machine is already running")
        if mode != "continue" and mode != "reverse-continue" and run is None:
            # a number of its own: the watcher takes the same number one period apart for one
            # step running long, so two short steps must never share it (_sync is 0 between steps)
            self._steps = self._steps % 1_000_000 + 1
            self._sync = self._steps
            try:
                result = self._run(mode, vcpu, start, end, signal)
            finally:
                self._sync = 0
            self.on_stop(result)
            return
        self._busy = True
        self._jobs.put((mode, vcpu, start, end, run, signal))

    def _run(self, mode: str, vcpu: int | None, start: int, end: int, signal: int) -> StopEvent:
        """Run the machine (or re-execute its history: reverse-step, reverse-continue) to the stop."""
        tt = self.ctl.timetravel
        if mode in ("reverse-step", "reverse-continue"):
            if tt is None:
                raise DebugError("no time travel on this machine")
            ev = tt.reverse_step(vcpu or 0) if mode == "reverse-step" else tt.reverse_continue()
            self.ctl.take_stop()
            return ev
        return self.ctl.run(mode, vcpu, start=start, end=end, signal=signal)

    def interrupt(self) -> None:
        """Stop the machine (gdb's Ctrl-C). A resume handed over but not yet begun is let
        begin first, so that the interrupt cannot miss it."""
        deadline = time.monotonic() + 2.0
        while self._busy and not self.ctl.running and time.monotonic() < deadline:
            time.sleep(0.0002)
        self.ctl.interrupt()

    def _watch(self, step: int) -> None:
        """The step numbered `step` runs long: stand in for the session until it ends."""
        while self._sync == step:
            if self.interrupt_pending(self.WATCH):
                self.ctl.interrupt()
                return

    def _loop(self) -> None:
        seen = 0
        while True:
            try:
                job = self._jobs.get(timeout=self.WATCH)
            except queue.Empty:
                step = self._sync
                if step and step == seen:       # the same step as one period ago
                    self._watch(step)
                seen = step
                continue
            if job is None:
                return
            mode, vcpu, start, end, run, signal = job
            result: StopEvent | DebugError
            try:
                if run is None:
                    result = self._run(mode, vcpu, start, end, signal)
                else:
                    self.ctl.resume(mode, vcpu, start=start, end=end, run=run, signal=signal)
                    self.ctl.wait()
                    result = self.ctl.take_stop() or self.ctl.last_stop
            except DebugError as e:          # another front end resumed it meanwhile
                result = e
            self._busy = False
            try:
                self.on_stop(result)
            except Exception:                # never lose the thread: the session goes on
                traceback.print_exc()

    def close(self, timeout: float = 5.0) -> bool:
        """End the thread; True once it has ended."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class GdbSession:
    """Serves one connected gdb until it detaches, kills, disconnects or the server stops."""

    def __init__(self, sock: socket.socket, ctl: Controller, *, stop_fd: int | None = None) -> None:
        self.ctl = ctl
        self.stop_fd = stop_fd
        self.transport = Transport(sock, max_payload=PACKET_SIZE)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.runner = MachineThread(ctl, self._stopped, self._interrupt_pending)
        self.protocol = Protocol(ctl, self.transport, self.runner)
        self.outcome = ""
        self._aborted = False

    @property
    def saw_postmortem(self) -> bool:
        return self.protocol.saw_postmortem

    def _stopped(self, result: StopEvent | DebugError) -> None:
        """The stop gdb waits for, reported by the thread that ran the machine (a continue's
        in the machine thread: the session's own thread sleeps until gdb speaks again)."""
        if isinstance(result, DebugError):
            self.protocol.waiting = False
            self.transport.send(E_PERM)
        else:
            self.protocol.report(result)
        if self.ctl.finished:                 # the session changes how it waits: wake it
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    def _interrupt_pending(self, timeout: float) -> bool:
        """For the machine thread, while a long step runs in the session's thread: a Ctrl-C,
        a disconnect or the server stopping, within timeout (bytes stay for the session)."""
        extra = [] if self.stop_fd is None else [self.stop_fd]
        return self._aborted or self.transport.interrupt_pending(extra, timeout)

    def abort(self) -> None:
        """End the session from elsewhere (the server is stopping): any thread or a signal handler."""
        self._aborted = True
        self.transport.shutdown()

    def run(self) -> str:
        """Serve until the connection ends; returns why: detached, killed, disconnected,
        finished (the guest is gone and gdb was told), or shutdown (the server stops)."""
        try:
            if self.ctl.running:           # attach to a running guest: stop it, as qemu does
                self.ctl.interrupt()
                self.ctl.wait(5)
            self.ctl.take_stop()
            while not (self.transport.closed or self.protocol.closed or self.outcome):
                self._pump()
        except Exception:                  # never take the workbench down
            traceback.print_exc()
        finally:
            self._finish()
        return self.outcome

    def _pump(self) -> None:
        t, p = self.transport, self.protocol
        if p.waiting:
            if t.interrupt_first():
                self.runner.interrupt()
        else:
            ev = t.pop()
            if ev is not None:
                if ev.kind == "packet":
                    p.handle(ev.payload)
                elif ev.kind == "oversized":
                    t.send(b"")
                elif self.ctl.running:          # an interrupt while gdb thinks all is stopped
                    self.runner.interrupt()
                return
        finished = not p.waiting and self.ctl.finished
        if not p.waiting and not finished:
            t.receive()                         # gdb's turn to talk, nothing else can happen
            if self._aborted:
                self.outcome = "shutdown"
            return
        extra = [self._wake_r] if self.stop_fd is None else [self._wake_r, self.stop_fd]
        ready = t.wait(extra, 1.0 if finished else None)
        if not ready and finished:
            self.outcome = "finished"           # gdb was told and has nothing more to ask
            return
        if self._aborted or (self.stop_fd is not None and self.stop_fd in ready):
            self.outcome = "shutdown"
            return
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass
        if t.fileno() in ready:
            t.receive()

    def _finish(self) -> None:
        p = self.protocol
        self.outcome = self.outcome or p.outcome or "disconnected"
        p.print_stats()
        try:
            if self.outcome in ("disconnected", "shutdown") and not self.ctl.finished:
                if self.ctl.running or p.waiting:
                    self.runner.interrupt()
                    self.ctl.wait(5)
                if self.outcome == "disconnected":
                    self.ctl.detach()           # gdb went away: forget its requests, the guest runs on
        except Exception:
            traceback.print_exc()
        self.transport.close()
        if self.runner.close():                 # its thread is gone: nobody writes the pipe any more
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
