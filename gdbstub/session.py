"""One gdb connection: the transport (gdbstub/transport.py) and the protocol
(gdbstub/protocol.py) in one loop, and the thread the machine runs in.

The session's own thread only talks to gdb; the machine runs in another thread, so the
session always hears gdb (a Ctrl-C reaches a running guest at once, whatever loop it spins
in). While gdb waits for a stop reply the session watches both the socket and a wake-up
pipe. Bytes are handled in the order they arrived: a 0x03 that follows a `c` in the same
TCP segment interrupts the run that `c` started. Nothing a peer sends can raise out of here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING

from gdbstub.protocol import E_PERM, PACKET_SIZE, Protocol
from gdbstub.transport import Transport
from xenwb.control import DebugError, StopEvent

if TYPE_CHECKING:
    import socket

    from xenwb.control import Controller


class MachineThread:
    """Runs the machine for one connection in one long-lived thread, through Controller.run.

    A resume is a hand-off to a waiting thread (~10 us) instead of a thread started per
    resume (Controller.resume: 0.3-0.5 ms here, as long as a whole stepi round trip). Only
    a resume that holds some vcpus (gdb's scheduler-locking) uses Controller.resume, the one
    entry point that takes the set of vcpus to run."""

    def __init__(self, ctl: Controller, wake_fd: int) -> None:
        self.ctl = ctl
        self._wake_fd = wake_fd
        self._jobs: queue.SimpleQueue[tuple[str, int | None, int, int, int] | None] = queue.SimpleQueue()
        self._result: StopEvent | DebugError | None = None
        self._busy = False
        self._via_controller = False
        self._thread = threading.Thread(target=self._loop, name="xenwb-gdb-machine", daemon=True)
        self._thread.start()

    def start(self, mode: str, vcpu: int | None, *, start: int = 0, end: int = 0, run: set[int] | None = None,
              signal: int = 0) -> None:
        if self.ctl.running or self._busy:
            raise DebugError("the machine is already running")
        self._result = None
        self._via_controller = run is not None
        if run is not None:
            self.ctl.resume(mode, vcpu, start=start, end=end, run=run, signal=signal)
        else:
            self._busy = True
            self._jobs.put((mode, vcpu, start, end, signal))

    def take(self) -> StopEvent | DebugError | None:
        """The stop of the last resume, once it happened."""
        if self._via_controller:
            return self.ctl.take_stop()
        r, self._result = self._result, None
        return r

    def interrupt(self) -> None:
        """Stop the machine (gdb's Ctrl-C). A resume handed over but not yet begun is let
        begin first, so that the interrupt cannot miss it."""
        deadline = time.monotonic() + 2.0
        while self._busy and self._result is None and not self.ctl.running and time.monotonic() < deadline:
            time.sleep(0.0002)
        self.ctl.interrupt()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            mode, vcpu, start, end, signal = job
            try:
                result: StopEvent | DebugError = self.ctl.run(mode, vcpu, start=start, end=end, signal=signal)
            except DebugError as e:          # another front end resumed it meanwhile
                result = e
            self._result = result
            self._busy = False
            try:
                os.write(self._wake_fd, b"!")
            except OSError:
                pass

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
        self.runner = MachineThread(ctl, self._wake_w)
        self.protocol = Protocol(ctl, self.transport, self.runner)
        self.outcome = ""
        self._aborted = False
        ctl.add_listener(self._on_stop)

    @property
    def saw_postmortem(self) -> bool:
        return self.protocol.saw_postmortem

    def _on_stop(self, ev: StopEvent) -> None:        # any thread
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

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
            stop = self.runner.take()
            if stop is not None:
                if isinstance(stop, DebugError):
                    p.waiting = False
                    t.send(E_PERM)
                else:
                    p.report(stop)
                return
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
        self.ctl.remove_listener(self._on_stop)
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
