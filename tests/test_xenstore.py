"""Xenstore: the database and wire protocol (xenwb/xenstore.py) and the ring backend
(xenwb/backends.py StoreBackend).

Sources: docs/misc/xenstore.txt, docs/misc/xenstore-ring.txt, public/io/xs_wire.h, and
tools/xenstore (xenstored_core.c, _watch.c, _transaction.c) for what the text leaves open.
The ring tests act as the guest: they write requests into the store page, signal the
store port with EVTCHNOP_send (the backend answers inside the hypercall) and read the
replies back.
"""

from __future__ import annotations

import random
import struct

import pytest
from support.harness import Hv

from xenwb.abi.constants import Hypercall as H
from xenwb.backends import (
    XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX,
    XS_CONNECTION,
    XS_ERROR,
    XS_REQ_CONS,
    XS_REQ_PROD,
    XS_RSP_CONS,
    XS_RSP_PROD,
    XS_SERVER_FEATURES,
)
from xenwb.xenstore import XenStore, XsError, XsType, seed_domain

DOMID = 1
HOME = "/local/domain/1"
EVTCHNOP_send = 4


# ---------------------------------------------------------------- a client speaking to XenStore directly
class Direct:
    """A domain's connection, request by request, without a ring."""

    def __init__(self, store: XenStore, domid: int = DOMID) -> None:
        self.store = store
        self.conn = store.connect(domid)
        self.req_id = 0
        self.events: list[tuple[int, int, int, bytes]] = []    # watch events seen by req()

    def raw(self, mtype: int, payload: bytes, tx: int = 0) -> list[tuple[int, int, int, bytes]]:
        """Every message the request produced (its reply and watch events, in stream order)."""
        self.req_id += 1
        self.store.request(self.conn, mtype, self.req_id, tx, payload)
        return self._take()

    def _take(self) -> list[tuple[int, int, int, bytes]]:
        out = []
        while self.conn.out:
            msg = self.conn.out.popleft()
            t, rid, tx, n = struct.unpack_from("<IIII", msg)
            assert len(msg) == 16 + n
            out.append((t, rid, tx, msg[16:]))
        return out

    def drain(self) -> list[tuple[int, int, int, bytes]]:
        """Watch events since the last drain (including those that came with replies)."""
        out, self.events = self.events + self._take(), []
        return out

    def req(self, mtype: int, *args: str | bytes, tx: int = 0, nul: bool = True) -> tuple[int, bytes]:
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        payload = b"\0".join(parts) + (b"\0" if nul else b"")
        msgs = self.raw(mtype, payload, tx)
        replies = [m for m in msgs if m[0] != XsType.WATCH_EVENT or mtype == XsType.WATCH_EVENT]
        assert len(replies) == 1, msgs
        self.events += [m for m in msgs if m not in replies]
        t, rid, rtx, body = replies[0]
        assert rid == self.req_id and rtx == tx
        return t, body

    def ok(self, mtype: int, *args: str | bytes, tx: int = 0, nul: bool = True) -> bytes:
        t, body = self.req(mtype, *args, tx=tx, nul=nul)
        assert t == mtype, body
        return body

    def err(self, mtype: int, *args: str | bytes, tx: int = 0, nul: bool = True) -> str:
        t, body = self.req(mtype, *args, tx=tx, nul=nul)
        assert t == XsType.ERROR, body
        assert body.endswith(b"\0")
        return body[:-1].decode()

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.ok(XsType.READ, path, tx=tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        v = value.encode() if isinstance(value, str) else value
        assert self.ok(XsType.WRITE, path.encode() + b"\0" + v, tx=tx, nul=False) == b"OK\0"

    def directory(self, path: str, tx: int = 0) -> list[str]:
        body = self.ok(XsType.DIRECTORY, path, tx=tx)
        assert body == b"" or body.endswith(b"\0")
        return [n.decode() for n in body.split(b"\0")[:-1]]


def seeded() -> XenStore:
    s = XenStore()
    seed_domain(s, DOMID, name="guest", uuid="00000000-0000-0000-0000-000000000001", memory_kib=65536,
                vcpus=2, console_port=2, console_mfn=0x1234, store_port=1, store_mfn=0x1235)
    return s


@pytest.fixture
def xs() -> Direct:
    return Direct(seeded())


# ---------------------------------------------------------------- the keys a domU sees
def test_seeded_keys(xs: Direct) -> None:
    assert xs.read("domid") == b"1"
    assert xs.read("name") == b"guest"
    assert xs.read(f"{HOME}/memory/target") == b"65536"
    assert xs.read("console/port") == b"2"
    assert xs.read("console/ring-ref") == str(0x1234).encode()
    assert xs.read("console/type") == b"xenconsoled"
    assert xs.read("store/port") == b"1"
    assert xs.read("control/shutdown") == b""
    assert xs.read("control/platform-feature-multiprocessor-suspend") == b"1"
    assert xs.read("cpu/1/availability") == b"online"
    assert xs.directory("device") == []
    assert xs.err(XsType.DIRECTORY, "device/vbd") == "ENOENT"
    assert xs.read(xs.read("vm").decode() + "/name") == b"guest"
    assert xs.store.read("/local/domain/0/name") == b"Domain-0"
    assert {"domid", "name", "console", "control", "memory", "device", "data"} <= set(xs.directory(HOME))


def test_permissions_like_libxl(xs: Direct) -> None:
    assert xs.ok(XsType.GET_PERMS, "domid") == b"n0\0r1\0"
    assert xs.ok(XsType.GET_PERMS, "device") == b"n1\0"
    assert xs.err(XsType.WRITE, "domid\0" "7", nul=False) == "EACCES"          # read-only for the guest
    assert xs.err(XsType.READ, "/local/domain/0/name") == "EACCES"            # dom0's home is private
    assert xs.err(XsType.READ, "/local/domain/0/nothere") == "EACCES"         # ...and so is what is not there
    assert xs.err(XsType.WRITE, "newkey\0v", nul=False) == "EACCES"           # the home dir is dom0's
    xs.write("data/x", "1")                                                   # data/ is the guest's
    assert xs.ok(XsType.GET_PERMS, "data/x") == b"n1\0"                       # created: inherits, owned by creator
    xs.write("control/shutdown", "poweroff")
    assert xs.store.read(f"{HOME}/control/shutdown") == b"poweroff"


# ---------------------------------------------------------------- read, write, mkdir, rm, directory
def test_write_read_binary_and_parents(xs: Direct) -> None:
    xs.write("data/a/b/c", b"\x00\x01binary\xff")
    assert xs.read("data/a/b/c") == b"\x00\x01binary\xff"
    assert xs.read("data/a/b") == b""
    assert xs.directory("data/a") == ["b"]
    assert xs.read(f"{HOME}/data/a/b/c") == b"\x00\x01binary\xff"       # absolute = relative
    xs.write("data/a/b/c", "")
    assert xs.read("data/a/b/c") == b""


def test_mkdir_and_rm(xs: Direct) -> None:
    assert xs.ok(XsType.MKDIR, "data/d/e") == b"OK\0"
    xs.write("data/d/e", "keep")
    assert xs.ok(XsType.MKDIR, "data/d/e") == b"OK\0"        # existing: left unchanged
    assert xs.read("data/d/e") == b"keep"
    xs.write("data/d/f", "x")
    assert xs.directory("data/d") == ["e", "f"]              # creation order
    assert xs.ok(XsType.RM, "data/d") == b"OK\0"             # and everything below
    assert xs.err(XsType.READ, "data/d/e") == "ENOENT"
    assert xs.ok(XsType.RM, "data/d") == b"OK\0"             # absent, parent present: fine
    assert xs.err(XsType.RM, "data/d/e") == "ENOENT"         # parent absent too
    assert Direct(xs.store, 0).err(XsType.RM, "/") == "EINVAL"


@pytest.mark.parametrize("path", ["", "data//x", "data/x/", "data/x y", "data/\xe9", "/" + "a" * 3072,
                                  "a" * 2049, "@special"])
def test_bad_paths_einval(xs: Direct, path: str) -> None:
    assert xs.err(XsType.READ, path.encode("latin-1")) == "EINVAL"


def test_malformed_payloads(xs: Direct) -> None:
    assert xs.err(XsType.READ, "domid", nul=False) == "EINVAL"          # no terminating NUL
    assert xs.err(XsType.READ, "domid\0extra") == "EINVAL"               # two arguments
    assert xs.err(XsType.WRITE, "data/x", nul=False) == "EINVAL"         # no separator
    assert xs.err(XsType.WATCH, "data") == "EINVAL"                      # no token
    assert xs.err(XsType.TRANSACTION_END, "X") == "EINVAL"
    assert xs.err(XsType.SET_PERMS, "data", "q1") == "EINVAL"
    assert xs.err(XsType.SET_PERMS, "data", "r\xb2".encode("latin-1")) == "EINVAL"   # not an ASCII digit
    assert xs.err(XsType.GET_DOMAIN_PATH, "\xb9".encode("latin-1")) == "EINVAL"
    assert xs.err(XsType.DIRECTORY_PART, "data", "-1") == "EINVAL"
    assert xs.err(0x1234, "x") == "EINVAL"                               # unknown type
    assert xs.err(XsType.WATCH_EVENT, "x") == "EINVAL"
    for t in (XsType.CONTROL, XsType.INTRODUCE, XsType.RELEASE, XsType.SET_TARGET, XsType.RESUME,
              XsType.IS_DOMAIN_INTRODUCED):
        assert xs.err(t, "1") == "EACCES"                                # the toolstack's requests


def test_get_domain_path(xs: Direct) -> None:
    assert xs.ok(XsType.GET_DOMAIN_PATH, "1") == b"/local/domain/1\0"
    assert xs.ok(XsType.GET_DOMAIN_PATH, "0") == b"/local/domain/0\0"
    assert xs.err(XsType.GET_DOMAIN_PATH, "x") == "EINVAL"


def test_directory_part(xs: Direct) -> None:
    names = [f"entry-{i:04d}-" + "x" * 40 for i in range(120)]          # ~6 KiB of names: > 4096
    for n in names:
        xs.write(f"data/big/{n}", "")
    assert xs.err(XsType.DIRECTORY, "data/big") == "E2BIG"
    got: list[str] = []
    off = 0
    gens = set()
    while True:
        body = xs.ok(XsType.DIRECTORY_PART, "data/big", str(off))
        assert len(body) <= 4096
        gen, _, rest = body.partition(b"\0")
        gens.add(gen)
        if rest == b"\0" or rest.endswith(b"\0\0"):
            got += [n.decode() for n in rest[:-1].split(b"\0")[:-1]]
            break
        part = [n.decode() for n in rest.split(b"\0")[:-1]]
        got += part
        off += len(rest)
    assert got == names and len(gens) == 1
    # past the end: just the generation and an empty string
    gen, _, rest = xs.ok(XsType.DIRECTORY_PART, "data/big", "999999").partition(b"\0")
    assert rest == b"\0"


def test_set_perms(xs: Direct) -> None:
    xs.write("data/p", "v")
    assert xs.ok(XsType.SET_PERMS, "data/p", "n1", "r0", "b5") == b"OK\0"
    assert xs.ok(XsType.GET_PERMS, "data/p") == b"n1\0r0\0b5\0"
    assert xs.err(XsType.SET_PERMS, "data/p", "n0") == "EPERM"             # no giving it away
    assert xs.err(XsType.SET_PERMS, "domid", "n1") == "EACCES"             # not the owner
    d0 = Direct(xs.store, 0)
    assert d0.ok(XsType.SET_PERMS, f"{HOME}/data/p", "n0") == b"OK\0"      # the toolstack may
    assert xs.err(XsType.READ, "data/p") == "EACCES"


# ---------------------------------------------------------------- watches
def test_watch_fires_at_once_then_on_change(xs: Direct) -> None:
    replies = xs.raw(XsType.WATCH, b"control/shutdown\0tok\0")
    assert [(t, body) for t, _, _, body in replies] == [
        (XsType.WATCH, b"OK\0"), (XsType.WATCH_EVENT, b"control/shutdown\0tok\0")]
    assert replies[1][1:3] == (0, 0)                       # req_id = tx_id = 0
    assert xs.err(XsType.WATCH, "control/shutdown", "tok") == "EEXIST"
    xs.store.write(f"{HOME}/control/shutdown", "poweroff")   # the toolstack asks
    assert xs.drain() == [(XsType.WATCH_EVENT, 0, 0, b"control/shutdown\0tok\0")]
    xs.store.write("/local/domain/1/data/unrelated", "x")
    assert xs.drain() == []


def test_watch_subtree_absolute_and_removal(xs: Direct) -> None:
    xs.raw(XsType.WATCH, f"{HOME}/data\0abs\0".encode())
    xs.raw(XsType.WATCH, b"data/a/b\0deep\0")
    xs.drain()                                   # the initial events
    xs.write("data/a/b/c", "1")                  # creates a, a/b, a/b/c: one event, for the path written
    events = [body for t, _, _, body in xs.drain() if t == XsType.WATCH_EVENT]
    assert events == [f"{HOME}/data/a/b/c\0abs\0".encode(), b"data/a/b/c\0deep\0"]   # relative stays relative
    xs.ok(XsType.RM, "data/a")
    events = [body for t, _, _, body in xs.drain() if t == XsType.WATCH_EVENT]
    assert f"{HOME}/data/a\0abs\0".encode() in events
    assert b"data/a/b\0deep\0" in events          # a parent's removal fires with the watch path
    assert xs.ok(XsType.UNWATCH, "data/a/b", "deep") == b"OK\0"
    assert xs.err(XsType.UNWATCH, "data/a/b", "deep") == "ENOENT"
    xs.write("data/a/b", "again")
    assert all(b"deep" not in body for *_, body in xs.drain())


def test_watch_special_and_reset(xs: Direct) -> None:
    xs.raw(XsType.WATCH, b"@releaseDomain\0r\0")
    xs.store.fire_special("@releaseDomain")
    assert xs.drain() == [(XsType.WATCH_EVENT, 0, 0, b"@releaseDomain\0r\0")]
    assert xs.ok(XsType.RESET_WATCHES, "") == b"OK\0"
    xs.store.fire_special("@releaseDomain")
    assert xs.drain() == []


def test_watch_not_sent_for_unreadable_nodes(xs: Direct) -> None:
    xs.raw(XsType.WATCH, b"/\0all\0")
    xs.store.write("/local/domain/0/secret", "x")
    assert xs.drain() == []
    xs.store.write(f"{HOME}/data/seen", "x")
    assert [b for *_, b in xs.drain()] == [f"{HOME}/data/seen\0all\0".encode()]


# ---------------------------------------------------------------- transactions
def _start(xs: Direct) -> int:
    body = xs.ok(XsType.TRANSACTION_START, "")
    assert body.endswith(b"\0")
    return int(body[:-1])


def test_transaction_commit(xs: Direct) -> None:
    xs.raw(XsType.WATCH, b"data\0w\0")
    t = _start(xs)
    assert t != 0
    xs.write("data/t1", "in-tx", tx=t)
    assert xs.read("data/t1", tx=t) == b"in-tx"
    assert xs.err(XsType.READ, "data/t1") == "ENOENT"          # invisible outside
    assert all(t_ != XsType.WATCH_EVENT or b"t1" not in b for t_, _, _, b in xs.drain())
    assert xs.ok(XsType.TRANSACTION_END, "T", tx=t) == b"OK\0"
    assert xs.read("data/t1") == b"in-tx"
    assert b"data/t1\0w\0" in [b for *_, b in xs.drain()]        # fired at commit
    assert xs.err(XsType.READ, "data/t1", tx=t) == "ENOENT"       # the id is gone


def test_transaction_abort_and_unknown(xs: Direct) -> None:
    t = _start(xs)
    xs.write("data/gone", "x", tx=t)
    assert xs.ok(XsType.TRANSACTION_END, "F", tx=t) == b"OK\0"
    assert xs.err(XsType.READ, "data/gone") == "ENOENT"
    assert xs.err(XsType.TRANSACTION_END, "T", tx=4242) == "ENOENT"
    assert xs.err(XsType.READ, "domid", tx=4242) == "ENOENT"


def test_transaction_conflict_eagain(xs: Direct) -> None:
    xs.write("data/c", "0")
    t = _start(xs)
    assert xs.read("data/c", tx=t) == b"0"
    xs.write("data/c", "1", tx=t)
    xs.write("data/c", "other")                                # an intervening write
    assert xs.err(XsType.TRANSACTION_END, "T", tx=t) == "EAGAIN"
    assert xs.read("data/c") == b"other"
    # a change elsewhere does not conflict
    t = _start(xs)
    xs.write("data/c", "mine", tx=t)
    xs.write("data/elsewhere", "x")
    assert xs.ok(XsType.TRANSACTION_END, "T", tx=t) == b"OK\0"
    assert xs.read("data/c") == b"mine"


def test_transaction_directory_conflict(xs: Direct) -> None:
    t = _start(xs)
    assert xs.directory("data", tx=t) == []
    xs.write("data/new", "x")                                  # a child appears: the listing changed
    xs.write("data/mark", "y", tx=t)
    assert xs.err(XsType.TRANSACTION_END, "T", tx=t) == "EAGAIN"


def test_transaction_limit(xs: Direct) -> None:
    ids = [_start(xs) for _ in range(10)]
    assert len(set(ids)) == 10
    assert xs.err(XsType.TRANSACTION_START, "") == "ENOSPC"
    xs.ok(XsType.TRANSACTION_END, "F", tx=ids[0])
    _start(xs)


# ---------------------------------------------------------------- the workbench's view
def test_dump_and_format(xs: Direct) -> None:
    tree = xs.store.dump(HOME)
    assert tree["children"]["domid"]["value"] == "1"
    assert tree["children"]["console"]["children"]["port"]["value"] == "2"
    assert tree["perms"] == ["n0", "r1"]
    text = xs.store.format(f"{HOME}/console")
    assert 'port = "2"' in text and text.splitlines()[0].startswith(f"{HOME}/console")
    with pytest.raises(XsError):
        xs.store.dump("/nothere")
    xs.read("domid")
    assert (xs.store.log[-1].type, xs.store.log[-1].args[0], xs.store.log[-1].reply) == ("READ", "domid", "'1'")


# ================================================================ the ring backend
class Ring:
    """The guest's side of the store ring of a built machine."""

    def __init__(self, hv: Hv) -> None:
        self.hv = hv
        self.dom = hv.dom
        self.m = hv.m
        self.base = self.m.store.ring_mfn << 12
        self.port = self.m.store.port
        self.req_id = 100

    def u32(self, off: int) -> int:
        return self.dom.mem.read_u32(self.base + off)

    def set(self, off: int, v: int) -> None:
        self.dom.mem.write_u32(self.base + off, v & 0xFFFFFFFF)

    def put(self, data: bytes) -> None:
        prod = self.u32(XS_REQ_PROD)
        for i, b in enumerate(data):
            self.dom.mem.write(self.base + ((prod + i) & 1023), bytes([b]))
        self.set(XS_REQ_PROD, prod + len(data))

    def notify(self) -> None:
        assert self.hv.call(H.event_channel_op, EVTCHNOP_send, self.hv.put_u32(self.port)) == 0

    def msg(self, mtype: int, payload: bytes, tx: int = 0) -> bytes:
        self.req_id += 1
        return struct.pack("<IIII", mtype, self.req_id, tx, len(payload)) + payload

    def take(self) -> bytes:
        cons, prod = self.u32(XS_RSP_CONS), self.u32(XS_RSP_PROD)
        n = (prod - cons) & 0xFFFFFFFF
        assert n <= 1024
        data = bytes(self.dom.mem.read(self.base + 1024 + ((cons + i) & 1023), 1)[0] for i in range(n))
        self.set(XS_RSP_CONS, cons + n)
        return data

    def replies(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        out = []
        while data:
            t, rid, tx, n = struct.unpack_from("<IIII", data)
            out.append((t, rid, tx, data[16: 16 + n]))
            data = data[16 + n:]
        return out

    def pending(self) -> bool:
        return self.dom.evtchn.is_pending(self.port)


@pytest.fixture
def ring(hv_pae: Hv) -> Ring:
    return Ring(hv_pae)


def test_ring_features_advertised(ring: Ring) -> None:
    assert ring.u32(XS_SERVER_FEATURES) & 3 == 3     # reconnection + error indicator
    assert ring.u32(XS_CONNECTION) == 0 and ring.u32(XS_ERROR) == 0


def test_ring_read_in_pieces_and_reply(ring: Ring) -> None:
    """GRUB's way: header, notify, payload, notify; the reply comes once the message is whole,
    and the guest is signalled."""
    m = ring.msg(XsType.READ, b"domid\0")
    ring.put(m[:16])
    ring.notify()
    assert ring.u32(XS_REQ_CONS) == 16 and ring.u32(XS_RSP_PROD) == 0
    ring.put(m[16:18])
    ring.notify()
    ring.put(m[18:])
    ring.notify()
    assert ring.pending()
    assert ring.replies(ring.take()) == [(XsType.READ, ring.req_id, 0, b"1")]
    assert ring.m.xenstore.log[-1].args[0] == "domid"


@pytest.mark.parametrize("start", [0xFFFFFF00, 1000, 0x7FFFFFF0])
def test_ring_indices_need_not_start_at_zero(ring: Ring, start: int) -> None:
    for off in (XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD):
        ring.set(off, start)
    msgs = [ring.msg(XsType.READ, b"name\0"), ring.msg(XsType.DIRECTORY, b"device\0"),
            ring.msg(XsType.GET_DOMAIN_PATH, b"1\0")]
    for _ in range(6):                           # enough traffic to wrap the 1024-byte buffers
        ring.put(b"".join(msgs))
        ring.notify()
        got = ring.replies(ring.take())
        assert [(t, body) for t, _, _, body in got] == [
            (XsType.READ, ring.m.xenstore.read(f"{HOME}/name")), (XsType.DIRECTORY, b""),
            (XsType.GET_DOMAIN_PATH, b"/local/domain/1\0")]
    assert ring.u32(XS_REQ_CONS) == ring.u32(XS_REQ_PROD)


def test_ring_reply_larger_than_free_space(ring: Ring) -> None:
    big = "v" * 2000
    ring.m.xenstore.write(f"{HOME}/data/big", big)
    ring.put(ring.msg(XsType.READ, b"data/big\0"))
    ring.notify()
    first = ring.take()
    assert len(first) == 1024                    # the ring was filled...
    ring.notify()                                # ...the guest made room and signalled
    second = ring.take()
    ring.notify()
    rest = ring.take()
    assert ring.replies(first + second + rest) == [(XsType.READ, ring.req_id, 0, big.encode())]


def test_ring_watch_event_from_the_toolstack(ring: Ring) -> None:
    ring.put(ring.msg(XsType.WATCH, b"control/shutdown\0t\0"))
    ring.notify()
    assert [t for t, *_ in ring.replies(ring.take())] == [XsType.WATCH, XsType.WATCH_EVENT]
    ring.dom.evtchn.ops.clear_pending(ring.port)                 # the guest took the event
    assert not ring.pending()
    ring.m.xenstore.write(f"{HOME}/control/shutdown", "reboot")
    assert ring.pending()
    assert ring.replies(ring.take()) == [(XsType.WATCH_EVENT, 0, 0, b"control/shutdown\0t\0")]


def test_ring_oversized_payload_sets_error_then_reconnect(ring: Ring) -> None:
    ring.put(struct.pack("<IIII", XsType.WRITE, 1, 0, 4097))
    ring.notify()
    assert ring.u32(XS_ERROR) == XENSTORE_ERROR_PROTO
    ring.put(ring.msg(XsType.READ, b"domid\0"))
    ring.notify()
    assert ring.take() == b""                    # ignored until the guest reconnects
    ring.set(XS_CONNECTION, 1)
    ring.notify()
    assert ring.u32(XS_CONNECTION) == 0 and ring.u32(XS_ERROR) == 0
    assert all(ring.u32(o) == 0 for o in (XS_REQ_CONS, XS_REQ_PROD, XS_RSP_CONS, XS_RSP_PROD))
    ring.put(ring.msg(XsType.READ, b"domid\0"))
    ring.notify()
    assert ring.replies(ring.take())[0][3] == b"1"


def test_ring_bad_indices_set_error(ring: Ring) -> None:
    ring.set(XS_REQ_PROD, 5000)
    ring.notify()
    assert ring.u32(XS_ERROR) == XENSTORE_ERROR_RINGIDX


def test_ring_reconnect_drops_watches_and_transactions(ring: Ring) -> None:
    ring.put(ring.msg(XsType.WATCH, b"data\0w\0") + ring.msg(XsType.TRANSACTION_START, b"\0"))
    ring.notify()
    ring.take()
    conn = ring.m.store.conn
    assert conn.watches and conn.transactions
    ring.set(XS_CONNECTION, 1)
    ring.notify()
    assert not conn.watches and not conn.transactions


def test_ring_garbage_never_raises(ring: Ring) -> None:
    """Random bytes and random well-framed requests: replies or the error field, never an
    exception out of the backend."""
    rnd = random.Random(7)
    for i in range(300):
        if ring.u32(XS_ERROR):
            ring.set(XS_CONNECTION, 1)
            ring.notify()
        if i % 3 == 0:
            data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
        else:
            payload = bytes(rnd.choice(b"abc/\0@-_1") for _ in range(rnd.randrange(0, 40)))
            data = struct.pack("<IIII", rnd.randrange(0, 30), i, rnd.choice([0, 0, 1, 99]), len(payload)) + payload
        ring.put(data)
        ring.notify()
        ring.take()
    assert ring.dom.crash_report is None
