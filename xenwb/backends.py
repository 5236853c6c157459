"""Workbench backends behind the toolstack's ports: the PV console and xenstore.

Console: struct xencons_interface (public/io/console.h). The guest writes at
out_prod and notifies; the backend drains out_cons..out_prod to the user and
notifies back. Input goes into in[] at in_prod, then a notification. Input the
user types is queued (queue_input) and moved into the ring by pump(), which the
machine calls between vcpu turns only, so a run depends on the input bytes and
not on when the host delivered them.

Xenstore: struct xenstore_domain_interface (public/io/xs_wire.h,
docs/misc/xenstore-ring.txt), served by xenwb/xenstore.py. On each notification
the backend takes the bytes between req_cons and req_prod (indices run freely mod
2^32, any start value), cuts complete messages out of the byte stream (a message may
arrive in pieces across notifications), answers them, and writes replies and watch
events at rsp_prod as space allows, then notifies the guest. It advertises ring
reconnection and the error indicator (server_features); an index pair more than a
ring apart sets error 2, a payload over 4096 bytes sets error 3, and the connection
is then ignored until the guest asks to reconnect.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xenwb.xenstore import HEADER, XENSTORE_PAYLOAD_MAX, XenStore, seed_domain

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain


class ConsoleBackend:
    def __init__(self, dom: Domain, port: int, ring_mfn: int) -> None:
        self.dom = dom
        self.port = port
        L = dom.abi.xencons_interface
        self.ring_mfn = ring_mfn
        self.base = ring_mfn << 12
        self.off = {f: L.offset(f) for f in ("in_", "out", "in_cons", "in_prod", "out_cons", "out_prod")}
        self.notifications = 0
        self.pending_input = bytearray()     # typed by the user, not yet in the ring
        self.input_total = 0

    def _u32(self, field: str) -> int:
        return self.dom.mem.read_u32(self.base + self.off[field])

    def _set(self, field: str, v: int) -> None:
        self.dom.mem.write_u32(self.base + self.off[field], v & 0xFFFFFFFF)

    def notify(self) -> None:
        """The guest signalled the console port: drain its output ring."""
        self.notifications += 1
        self.drain()

    def drain(self) -> bytes:
        cons, prod = self._u32("out_cons"), self._u32("out_prod")
        avail = (prod - cons) & 0xFFFFFFFF
        if not avail:
            return b""
        avail = min(avail, 2048)   # a corrupt index cannot make us read more than the ring
        out = _ring_read(self.dom, self.base + self.off["out"], 2048, cons, avail)
        self._set("out_cons", cons + avail)
        self.dom.console_write(None, bytes(out))
        self.dom.evtchn.notify_guest(self.port)
        return bytes(out)

    def feed(self, data: bytes) -> int:
        """Queue user input into the guest's in[] ring; returns bytes accepted."""
        cons, prod = self._u32("in_cons"), self._u32("in_prod")
        space = 1024 - ((prod - cons) & 0xFFFFFFFF)
        n = max(0, min(space, len(data)))
        if n:
            _ring_write(self.dom, self.base + self.off["in_"], 1024, prod, data[:n])
            self._set("in_prod", prod + n)
            self.dom.evtchn.notify_guest(self.port)
        return n

    # -- user input, paced by the machine ------------------------------------------------
    def queue_input(self, data: bytes) -> None:
        """Input for the guest; it enters the ring at the next pump()."""
        self.pending_input += data

    def pump(self) -> int:
        """Move queued input into in[] (as much as fits); bytes moved."""
        if not self.pending_input:
            return 0
        n = self.feed(bytes(self.pending_input))
        del self.pending_input[:n]
        self.input_total += n
        return n

    def input_idle(self) -> bool:
        """The guest has consumed every byte given to it (in_cons == in_prod)."""
        return self._u32("in_cons") == self._u32("in_prod")


def _ring_read(dom: Domain, buf: int, size: int, idx: int, n: int) -> bytes:
    """n bytes of a ring buffer of `size` bytes at machine address buf, from free-running index idx."""
    off = idx & (size - 1)
    first = min(n, size - off)
    data = dom.mem.read(buf + off, first)
    if first < n:
        data += dom.mem.read(buf, n - first)
    return data


def _ring_write(dom: Domain, buf: int, size: int, idx: int, data: bytes) -> None:
    off = idx & (size - 1)
    first = min(len(data), size - off)
    dom.mem.write(buf + off, data[:first])
    if first < len(data):
        dom.mem.write(buf, data[first:])


# xenstore_domain_interface (xs_wire.h)
XS_RING_SIZE = 1024
XS_REQ, XS_RSP = 0, 1024
XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD = 2048, 2052, 2056, 2060
XS_SERVER_FEATURES, XS_CONNECTION, XS_ERROR = 2064, 2068, 2072
XENSTORE_SERVER_FEATURE_RECONNECTION, XENSTORE_SERVER_FEATURE_ERROR = 1, 2
XENSTORE_CONNECTED, XENSTORE_RECONNECT = 0, 1
XENSTORE_ERROR_NONE, XENSTORE_ERROR_COMM, XENSTORE_ERROR_RINGIDX, XENSTORE_ERROR_PROTO = 0, 1, 2, 3
MAX_PENDING_OUTPUT = 64 * 1024   # replies waiting for ring space: stop reading requests beyond this


class StoreBackend:
    """The xenstored end of the domain's store ring; the database is dom.xenstore."""

    def __init__(self, dom: Domain, port: int, ring_mfn: int, *, console_port: int, console_mfn: int) -> None:
        self.dom = dom
        self.port = port
        self.ring_mfn = ring_mfn
        self.base = ring_mfn << 12
        self.notifications = 0
        self.store = XenStore()
        seed_domain(self.store, dom.domid, name=_domain_name(dom), uuid=f"00000000-0000-0000-0000-{dom.domid:012x}",
                    memory_kib=dom.nr_pages * 4, vcpus=0, console_port=console_port,
                    console_mfn=console_mfn, store_port=port, store_mfn=ring_mfn)
        self.conn = self.store.connect(dom.domid)
        self.conn.on_output = self._output_ready
        self.inbuf = bytearray()       # request bytes taken from the ring, not yet a whole message
        self.outbuf = bytearray()      # reply bytes not yet in the ring
        self.error = XENSTORE_ERROR_NONE
        self.bytes_in = self.bytes_out = 0
        mem = dom.mem
        mem.write_u32(self.base + XS_SERVER_FEATURES,
                      XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR)
        self.store.on_request = self._traced

    def seed_vcpus(self, n: int) -> None:
        """cpu/<i>/availability for the domain's vcpus (the builder knows how many)."""
        home = f"/local/domain/{self.dom.domid}"
        for i in range(n):
            if not self.store.exists(f"{home}/cpu/{i}"):
                self.store.write(f"{home}/cpu/{i}/availability", "online")
                for p in (f"{home}/cpu/{i}", f"{home}/cpu/{i}/availability"):
                    self.store.tree.get(p).perms = [("n", 0), ("r", self.dom.domid)]  # type: ignore[union-attr]

    # -- ring access -----------------------------------------------------------------------
    def _u32(self, off: int) -> int:
        return self.dom.mem.read_u32(self.base + off)

    def _set(self, off: int, v: int) -> None:
        self.dom.mem.write_u32(self.base + off, v & 0xFFFFFFFF)

    def _traced(self, entry) -> None:
        dom = self.dom
        dom.trace.emit_xenstore(dom.current, entry.type, entry.domid, entry.tx_id, entry.args, entry.reply)

    # -- the protocol engine -----------------------------------------------------------------
    def notify(self) -> None:
        """The guest signalled the store port: reconnect, or take requests and answer them."""
        self.notifications += 1
        self.service()

    def service(self) -> None:
        if self._u32(XS_CONNECTION) == XENSTORE_RECONNECT:
            self._reconnect()
            return
        if self.error:
            return                       # the connection is dead until the guest reconnects
        signal = self._take_requests()
        if self.error:
            return
        signal |= self._flush()
        if signal:
            self.dom.evtchn.notify_guest(self.port)

    def _take_requests(self) -> bool:
        """Move the guest's request bytes into inbuf and answer the complete messages.
        True if the ring changed (bytes consumed)."""
        if len(self.outbuf) + sum(map(len, self.conn.out)) >= MAX_PENDING_OUTPUT:
            return False                 # the guest is not reading its replies: stop reading requests
        cons, prod = self._u32(XS_REQ_CONS), self._u32(XS_REQ_PROD)
        avail = (prod - cons) & 0xFFFFFFFF
        if avail > XS_RING_SIZE:
            self._fail(XENSTORE_ERROR_RINGIDX)
            return False
        if avail:
            self.inbuf += _ring_read(self.dom, self.base + XS_REQ, XS_RING_SIZE, cons, avail)
            self._set(XS_REQ_CONS, cons + avail)
            self.bytes_in += avail
        self._process()
        return bool(avail)

    def _process(self) -> None:
        """Answer every complete message in inbuf."""
        while len(self.inbuf) >= HEADER.size:
            mtype, req_id, tx_id, length = HEADER.unpack_from(self.inbuf)
            if length > XENSTORE_PAYLOAD_MAX:
                self._fail(XENSTORE_ERROR_PROTO)
                return
            if len(self.inbuf) < HEADER.size + length:
                break
            payload = bytes(self.inbuf[HEADER.size: HEADER.size + length])
            del self.inbuf[: HEADER.size + length]
            self.store.request(self.conn, mtype, req_id, tx_id, payload)

    def _flush(self) -> bool:
        """Write queued replies and events into rsp[] as space allows; True if any bytes went."""
        while self.conn.out:
            self.outbuf += self.conn.out.popleft()
        if not self.outbuf:
            return False
        cons, prod = self._u32(XS_RSP_CONS), self._u32(XS_RSP_PROD)
        used = (prod - cons) & 0xFFFFFFFF
        if used > XS_RING_SIZE:
            self._fail(XENSTORE_ERROR_RINGIDX)
            return False
        n = min(XS_RING_SIZE - used, len(self.outbuf))
        if not n:
            return False
        _ring_write(self.dom, self.base + XS_RSP, XS_RING_SIZE, prod, bytes(self.outbuf[:n]))
        del self.outbuf[:n]
        self._set(XS_RSP_PROD, prod + n)
        self.bytes_out += n
        return True

    def _output_ready(self) -> None:
        """Watch events queued by a change made outside a request (the workbench's writes)."""
        if not self.error and self._flush():
            self.dom.evtchn.notify_guest(self.port)

    def _fail(self, err: int) -> None:
        """The connection error feature: record why, drop the connection's state, stop serving."""
        self.error = err
        self._set(XS_ERROR, err)
        self.inbuf.clear()
        self.outbuf.clear()
        self.conn.reset()
        self.dom.evtchn.notify_guest(self.port)

    def _reconnect(self) -> None:
        """The ring reconnection feature: empty both queues, forget watches and transactions,
        clear the error, mark the ring connected again and signal the guest."""
        self.inbuf.clear()
        self.outbuf.clear()
        self.conn.reset()
        for off in (XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD, XS_ERROR):
            self._set(off, 0)
        self.error = XENSTORE_ERROR_NONE
        self._set(XS_CONNECTION, XENSTORE_CONNECTED)
        self.dom.evtchn.notify_guest(self.port)


def _domain_name(dom: Domain) -> str:
    """The domain's name, as a config file would give it: the kernel's file name."""
    try:
        name = Path(dom.image.path).name
    except (AttributeError, TypeError):
        return "domU"
    for suffix in (".bin", ".elf", ".gz"):
        name = name.removesuffix(suffix)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "domU"


# ---------------------------------------------------------------- console input from the host
class ConsoleInput:
    """Where user input for the console comes from; the machine asks between vcpu turns,
    when the guest has read everything given so far.

    next_chunk() returns bytes to queue now (b"" for none yet, None once the source has
    ended). wait() is used only when every vcpu is blocked for good and the guest has read
    all its input: a guest waiting for a key. Host time passes there, virtual time does not,
    so waiting changes nothing the guest can see."""

    interactive = False     # a person types: waiting is worth it even before the guest read anything

    def next_chunk(self) -> bytes | None:
        return None

    def wait(self, seconds: float) -> bool | None:
        """Block up to `seconds` of host time: True when input is ready, False on timeout,
        None when no more input will come."""
        return None

    def close(self) -> None:
        pass


class ScriptedInput(ConsoleInput):
    """Input given in advance (a file, a test's script): one line at a time, each once the
    guest has read everything before it. Deterministic: only the bytes matter."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def next_chunk(self) -> bytes | None:
        if not self.data:
            return None
        i = self.data.find(b"\n")
        n = len(self.data) if i < 0 else i + 1
        chunk = bytes(self.data[:n])
        del self.data[:n]
        return chunk


class StreamInput(ConsoleInput):
    """stdin as a pipe: a thread reads it; complete lines are handed out one at a time, each
    once the guest has read everything before it (the rest at end of file). The machine does
    not wait for the pipe: input already in the pipe when the guest gets to it (printf ... |
    xenwb run) gives the same run every time."""

    def __init__(self, fd: int) -> None:
        import threading
        self.fd = fd
        self.buf = bytearray()
        self.eof = False
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._reader, name="xenwb-stdin", daemon=True)
        self.thread.start()

    def _reader(self) -> None:
        import os
        while True:
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                data = b""
            with self.lock:
                if not data:
                    self.eof = True
                else:
                    self.buf += data
                self.lock.notify_all()
            if not data:
                return

    def next_chunk(self) -> bytes | None:
        with self.lock:
            i = self.buf.find(b"\n")
            if i >= 0:
                chunk = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return chunk
            if self.eof:
                chunk = bytes(self.buf)
                self.buf.clear()
                return chunk or None
            return b""

    def wait(self, seconds: float) -> bool | None:
        with self.lock:
            self.lock.wait_for(lambda: b"\n" in self.buf or self.eof, seconds)
            if b"\n" in self.buf or (self.eof and self.buf):
                return True
            return None if self.eof else False


class TerminalInput(ConsoleInput):
    """stdin as a terminal: keys go to the guest as typed (no local echo, no line editing:
    the guest echoes and edits). Ctrl-C still stops the workbench."""

    interactive = True

    def __init__(self, fd: int) -> None:
        import termios
        import tty
        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.ended = False

    def next_chunk(self) -> bytes | None:
        import os
        import select
        if self.ended:
            return None
        if not select.select([self.fd], [], [], 0)[0]:
            return b""
        data = os.read(self.fd, 1024)
        if not data:
            self.ended = True
            return None
        return data.replace(b"\n", b"\r")       # Enter, as a serial terminal sends it

    def wait(self, seconds: float) -> bool | None:
        import select
        if self.ended:
            return None
        return bool(select.select([self.fd], [], [], seconds)[0])

    def close(self) -> None:
        import termios
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def stdin_input() -> ConsoleInput | None:
    """The console input source for `xenwb run`: the terminal (when the console is shown on it
    too and the workbench runs in the foreground), a pipe or a file on stdin (None for anything
    else, such as /dev/null)."""
    import os
    import stat
    import sys
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return None
    if os.isatty(fd):
        try:
            if os.tcgetpgrp(fd) != os.getpgrp():
                return None             # in the background: the terminal belongs to someone else
            if not os.isatty(sys.stdout.fileno()):
                return None             # the console is not on the terminal: nobody types at it
            return TerminalInput(fd)
        except Exception:  # noqa: BLE001 - no usable terminal: no input
            return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return StreamInput(fd)
    if stat.S_ISREG(mode):
        with os.fdopen(os.dup(fd), "rb") as f:
            return ScriptedInput(f.read())
    return None
