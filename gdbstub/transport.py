"""The transport of one gdb connection: the socket, acknowledgments, no-ack mode,
retransmission, interrupts, and the queue of what gdb sent, in arrival order.

Per gdb's manual (Remote Protocol, "Overview" and "Packet Acknowledgment"): every packet
is acknowledged with ``+`` (or ``-`` for a bad checksum, asking for a retransmission) until
``QStartNoAckMode`` switched acknowledgments off; a ``-`` from gdb makes us send our last
packet again; a bare 0x03 is an interrupt request (see "Interrupts"). Nothing here knows
what a packet means: that is the protocol's business (gdbstub/protocol.py).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
import threading
import time
from collections import deque

from gdbstub.rsp import INTERRUPT, Event, PacketReader, frame

DEBUG = bool(os.environ.get("XENWB_GDB_DEBUG"))     # log every packet on stderr
# What may wait in the queue: gdb sends nothing but 0x03 while the guest runs (all-stop), so
# packets beyond this are dropped, as gdbserver's input_interrupt drops every byte but 0x03
# then; interrupts in a row count as one. Host memory stays bounded whatever a client sends.
MAX_QUEUED_PACKETS = 256
MAX_QUEUED_BYTES = 1 << 20


def log(msg: str) -> None:
    if DEBUG:
        print(f"xenwb gdb: {msg}", file=sys.stderr, flush=True)


class Transport:
    """Bytes in and out of one connected gdb. `receive` reads what arrived, acknowledges
    packets at once and queues them, with interrupts, in order; `pop` hands them out."""

    def __init__(self, sock: socket.socket, *, max_payload: int) -> None:
        self.sock = sock
        self.reader = PacketReader(max_payload=max_payload)
        self.ack = True
        self.closed = False
        self.queue: deque[Event] = deque()
        self.queued_bytes = 0
        self.dropped = 0                     # packets dropped because the queue was full
        self._last_sent: bytes | None = None
        self._send_lock = threading.Lock()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending -------------------------------------------------------------------------------
    def send(self, payload: bytes) -> None:
        """One packet (payload already escaped where it carries binary data)."""
        pkt = frame(payload)
        if self.ack:
            self._last_sent = pkt
        if DEBUG:
            log(f"-> {payload[:200]!r}")
        self._send_raw(pkt)

    def _send_raw(self, data: bytes) -> None:
        try:
            with self._send_lock:           # stop replies come from the machine thread
                self.sock.sendall(data)
        except OSError as e:
            log(f"send failed: {e}")
            self.closed = True

    def stop_acks(self) -> None:
        """QStartNoAckMode was answered: from now on neither side acknowledges."""
        self.ack = False
        self._last_sent = None

    # -- receiving -------------------------------------------------------------------------------
    def wait(self, fds: list[int], timeout: float | None) -> list[int]:
        """Block until the socket or one of `fds` is readable (or the timeout): the ready ones."""
        try:
            ready, _, _ = select.select([self.sock.fileno(), *fds], [], [], timeout)
        except InterruptedError:
            return []
        except (OSError, ValueError):
            self.closed = True
            return []
        return ready

    def receive(self) -> None:
        """Read what gdb sent (blocking until something arrives) and queue it; a closed or
        broken connection sets `closed`."""
        try:
            data = self.sock.recv(1 << 16)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return
            data = b""
        if not data:
            self.closed = True
            return
        if DEBUG:
            log(f"<- {data[:200]!r}")
        for ev in self.reader.feed(data):
            self._arrived(ev)

    def _arrived(self, ev: Event) -> None:
        kind = ev.kind
        if kind == "ack":
            return
        if kind == "nak":
            if self._last_sent is not None:
                self._send_raw(self._last_sent)
            return
        if kind == "bad_checksum":
            if self.ack:
                self._send_raw(b"-")
            return                          # no-ack mode: nobody would retransmit; drop it
        if kind == "interrupt":
            if not self.queue or self.queue[-1].kind != "interrupt":
                self.queue.append(ev)
            return
        if len(self.queue) >= MAX_QUEUED_PACKETS or self.queued_bytes + len(ev.payload) > MAX_QUEUED_BYTES:
            self.dropped += 1
            if self.dropped == 1:
                log("queue full: dropping packets until it drains")
            return
        if self.ack:
            self._send_raw(b"+")
        self.queue.append(ev)
        self.queued_bytes += len(ev.payload)

    def interrupt_pending(self, fds: list[int], timeout: float) -> bool:
        """Whether, within timeout, one of fds becomes readable, gdb sends 0x03 or the
        connection ends: the bytes are only peeked at (another thread reads them later)."""
        ready = self.wait(fds, timeout)
        if any(fd in ready for fd in fds) or self.closed:
            return True
        if self.sock.fileno() not in ready:
            return False
        try:
            # never block here: the session's thread may have read the bytes since the select,
            # and a blocking peek would then wait for gdb, which waits for this thread's stop reply
            data = self.sock.recv(1 << 12, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data or INTERRUPT in data:
            return True
        time.sleep(timeout)                 # something else waits to be read: do not spin on it
        return False

    def pop(self) -> Event | None:
        if not self.queue:
            return None
        ev = self.queue.popleft()
        self.queued_bytes -= len(ev.payload)
        return ev

    def interrupt_first(self) -> bool:
        """While the guest runs: whether gdb interrupted it. What else it sent meanwhile is
        dropped (in all-stop mode gdb sends only 0x03 then; gdbserver's input_interrupt
        discards the rest too); what came before the resume in the same segment was handled."""
        while self.queue and self.queue[0].kind != "interrupt":
            self.pop()
            self.dropped += 1
        if self.queue:
            self.pop()
            return True
        return False

    # -- ending ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """End a blocking receive from another thread (or a signal handler)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
