"""The TCP server: one gdb at a time, any number one after the other.

``serve`` is what ``xenwb run GUEST --gdb [HOST:]PORT [--wait]`` calls: it listens
(127.0.0.1 unless an address is given explicitly) and serves gdb connections on the
session's Controller until the guest has shut down (and a connected gdb was told), gdb
kills it, or the workbench is interrupted. Between connections the guest keeps running. A
crash (or a limit) is kept for inspection, as QEMU's -no-shutdown does: the stub goes on
serving until a gdb that saw it detaches or kills, or the workbench is interrupted.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from gdbstub.session import GdbSession
from gdbstub.syscalls import data_directory, system_data_directory
from xenwb.abi import constants as C
from xenwb.control import Controller, StopEvent, StopKind
from xenwb.errors import XenwbError
from xenwb.machine import RunResult, StopReason

if TYPE_CHECKING:
    from xenwb.machine import Machine
    from xenwb.session import Session

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1234


def parse_address(text: str | None) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT``; no host means 127.0.0.1."""
    if text is None or text == "":
        return DEFAULT_HOST, DEFAULT_PORT
    host, port_s = DEFAULT_HOST, text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1: end + 2] != ":":
            raise ValueError(f"bad address {text!r}: use [V6ADDR]:PORT")
        host, port_s = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
        host = host or DEFAULT_HOST
    try:
        port = int(port_s, 10)
    except ValueError:
        raise ValueError(f"bad port in {text!r} (want [HOST:]PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host, port


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a host that does not resolve, an address this machine
    does not have, a port in use or refused: XenwbError with one line saying which."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise XenwbError(f"gdb stub: cannot resolve {host!r}: {getattr(e, 'strerror', None) or e}") from None
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1)
    except OSError as e:
        sock.close()
        hint = {errno.EADDRINUSE: " (another program listens there: pick another port, or 0 for any)",
                errno.EADDRNOTAVAIL: " (not an address of this machine)",
                errno.EACCES: " (ports below 1024 need privileges)"}.get(e.errno or 0, "")
        raise XenwbError(f"gdb stub: cannot listen on {shown}: {e.strerror or e}{hint}") from None
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_hint(shown: str) -> str:
    """The gdb command line that attaches with hypercall names for `catch syscall` (see
    gdbstub/syscalls.py); empty when gdb is not installed here."""
    system = system_data_directory()
    if system is None:
        return ""
    try:
        ddir = data_directory(system)
    except OSError:
        return ""
    return f"xenwb: attach with: gdb --data-directory {ddir} -ex 'target remote {shown}'" \
           " (the data directory names hypercalls for `catch syscall`)"


class GdbServer:
    """Listens on host:port and serves one gdb connection after the other on a Controller."""

    def __init__(self, debugger: Controller, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 resume_when_idle: bool = True) -> None:
        self.dbg = debugger
        # Standalone, a stop with no gdb attached is nobody's business and the guest runs on;
        # under the TUI the user at the terminal owns such stops.
        self.resume_when_idle = resume_when_idle
        debugger.idle_on_hang = True        # a guest that hangs idles until gdb interrupts it
        self.sock = listen(host, port)
        self.address = self.sock.getsockname()[:2]
        self._stop_r, self._stop_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self.sessions = 0
        self.session: GdbSession | None = None
        self.postmortem_seen = False
        self.dbg.add_listener(self._on_stop)

    @property
    def port(self) -> int:
        return self.address[1]

    def _on_stop(self, ev: StopEvent) -> None:
        if self.session is not None:          # the session reports its own stops
            self.session.protocol.forget_state()   # and any other front end's leaves its caches stale
            return
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    def shutdown(self) -> None:
        """Stop serving (any thread, or a signal handler)."""
        self._stopping = True
        try:
            os.write(self._stop_w, b"!")
        except OSError:
            pass
        if self.session is not None:
            self.session.abort()

    def serve(self) -> str:
        """Serve connections one after the other. Returns why it ended: finished,
        killed, or shutdown."""
        while True:
            if self._stopping:
                return "shutdown"
            if self.dbg.finished:
                return "killed" if self.dbg.killed else "finished"
            if self.postmortem_seen and not self.dbg.running:
                return "postmortem"          # a gdb saw the crash and left: nothing more to serve
            ready, _, _ = select.select([self.sock, self._stop_r, self._wake_r], [], [])
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
                self.dbg.take_stop()          # nobody attached: the stop is nobody's business
                self._idle_stop()
            if self._stop_r in ready:
                return "shutdown"
            if self.sock not in ready:
                continue
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                continue
            self.sessions += 1
            self.session = GdbSession(conn, self.dbg, stop_fd=self._stop_r)
            try:
                outcome = self.session.run()
            finally:
                if self.session is not None and self.session.saw_postmortem:
                    self.postmortem_seen = True
                self.session = None
            if outcome == "killed":
                return "killed"
            if outcome == "shutdown":
                return "shutdown"

    def _idle_stop(self) -> None:
        """A stop with no gdb attached (e.g. the session's last request raced its
        disconnect): the guest keeps running unless it is gone or crashed (then it waits,
        inspectable, for a gdb)."""
        if self.resume_when_idle and not self.dbg.running and not self.dbg.finished and not self.dbg.postmortem:
            self.dbg.clear_all()
            self.dbg.resume("continue")

    def close(self) -> None:
        self.dbg.remove_listener(self._on_stop)
        for fd in (self._stop_r, self._stop_w, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass


def serve(ctl: Controller, address: str | None = None, *, wait: bool = False,
          log: TextIO | None = None) -> RunResult:
    """Run a machine under the gdb stub until the guest is gone (see the module doc)."""
    log = log or sys.stderr
    host, port = parse_address(address)
    machine = ctl.machine
    server = GdbServer(ctl, host, port)
    old: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):       # before anyone learns the port
            old[sig] = signal.signal(sig, lambda *_: server.shutdown())

    def announce_postmortem(ev: StopEvent) -> None:
        if ev.kind in (StopKind.crashed, StopKind.limit) and server.session is None:
            print(f"xenwb: {ev.detail}; kept for inspection: attach gdb to {shown} (Ctrl-C ends)",
                  file=log, flush=True)
    try:
        h, p = server.address
        shown = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        note = "; the guest waits for gdb (continue to start it)" if wait else ""
        print(f"xenwb: gdb stub listening on {shown}{note}", file=log, flush=True)
        hint = connect_hint(shown)
        if hint:
            print(hint, file=log, flush=True)
        if not is_loopback(h):
            print(f"xenwb: warning: the gdb stub on {h} accepts connections from the network; "
                  "anyone who reaches it controls the guest", file=log, flush=True)
        ctl.add_listener(announce_postmortem)
        if not wait:
            ctl.resume("continue")
        why = server.serve()
    finally:
        ctl.remove_listener(announce_postmortem)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if ctl.running:
            ctl.interrupt()
            ctl.wait(5)
        server.close()
    dom = machine.domain
    if why == "killed" or ctl.killed:
        return RunResult(StopReason.requested, "killed by gdb")
    if dom.crash_report is not None:
        return RunResult(StopReason.crash, str(dom.crash_report))
    if dom.shutdown_reason is not None:
        try:
            name = C.ShutdownReason(dom.shutdown_reason).name
        except ValueError:
            name = f"reason {dom.shutdown_reason}"
        return RunResult(StopReason.shutdown, name)
    last = ctl.last_stop
    if last.kind is StopKind.limit:
        reason = StopReason.time_limit if "second" in last.detail else StopReason.instruction_limit
        return RunResult(reason, last.detail)
    return RunResult(StopReason.requested, "interrupted")


class GdbRun:
    """For the CLI: looks like a xenwb.session.Session whose run() serves gdb."""

    def __init__(self, session: Session, address: str | None, *, wait: bool = False) -> None:
        self.session = session
        self.address = address
        self.wait = wait

    @property
    def machine(self) -> Machine:
        return self.session.machine

    def run(self, until: object = "shutdown") -> RunResult:
        return serve(self.session.controller, self.address, wait=self.wait)

    def close(self) -> None:
        self.session.close()
