"""An in-memory xenstore: the database and the xenstored wire protocol.

Sources: docs/misc/xenstore.txt (the requests, their payloads and errors),
xen/include/public/io/xs_wire.h (message types, error names, limits) and the C
xenstored (tools/xenstore/xenstored_core.c, _transaction.c, _watch.c) for the
details the text leaves open:

* A path is absolute (``/...``) or relative to the caller's home
  ``/local/domain/<domid>``; ``@name`` is a special watch path. Path characters are
  ASCII alphanumerics and ``-/_@``; no ``//``, no trailing ``/`` except the root, at
  most 3072 bytes absolute, 2048 relative (is_valid_nodename) -> EINVAL.
* Permissions (perm_for_conn): a node carries a list like ``n0 r1``: the first
  entry names the owner and the access everyone else gets by default, later entries
  grant per-domain access. Domain 0 (the workbench, as the toolstack) and the owner
  have full access. A missing node reports ENOENT if its nearest existing ancestor
  grants the access asked for, else EACCES (errno_from_parents). A node created by
  an unprivileged domain inherits its parent's permissions with the creator as owner
  (construct_node).
* WRITE creates missing parents; MKDIR of an existing node is OK; RM of a missing
  node is OK when its parent exists (ENOENT otherwise), RM of ``/`` is EINVAL.
* Watches fire once at once, then on every change of the watched path or a node
  below it; when a parent of the watched path is removed they fire with the watch
  path (fire_watches, recurse). A relative watch reports relative paths. Events are
  only sent for nodes the watcher may read. Duplicate watch -> EEXIST, unknown
  unwatch -> ENOENT.
* A transaction works on a copy of the database; END ``T`` commits unless a node it
  read or wrote changed in between (EAGAIN), END ``F`` aborts. An unknown tx_id is
  ENOENT. Watches fire at commit.
* Limits: payload 4096 bytes (a longer request is a protocol violation the ring
  reports in its error field); a reply that would exceed it is E2BIG; 128 watches
  (E2BIG) and 10 open transactions (ENOSPC) per connection, as xenstored's quotas.

The workbench plays domain 0: ``XenStore.read/write/...`` work with full access and
fire the guest's watches. ``XenStore.dump(path)`` returns the tree as plain data for
monitors and UIs.
"""

from __future__ import annotations

import copy
import enum
import os
import re
import struct
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048
HEADER = struct.Struct("<IIII")          # struct xsd_sockmsg: type, req_id, tx_id, len
MAX_WATCHES = 128                        # xenstored quota_nb_watch_per_domain
MAX_TRANSACTIONS = 10                    # xenstored quota_max_transaction
PRIVILEGED = 0                           # the workbench acts as domain 0 (the toolstack)


class XsType(enum.IntEnum):
    """enum xsd_sockmsg_type (public/io/xs_wire.h)."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    INVALID = 0xFFFF


# xsd_errors[] (xs_wire.h): the names a reply carries
XS_ERRORS = ("EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO", "ENOTEMPTY",
             "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM")
PERM_CHARS = {"n": 0, "r": 1, "w": 2, "b": 3}     # XS_PERM_NONE/READ/WRITE/BOTH
PERM_READ, PERM_WRITE = 1, 2
_VALID = re.compile(r"[A-Za-z0-9\-/_@]*")
_NUMBER = re.compile(r"[0-9]{1,20}")
# requests only the privileged toolstack may make (xenstored: domain_is_unprivileged -> EACCES)
_PRIVILEGED_ONLY = {XsType.CONTROL, XsType.INTRODUCE, XsType.RELEASE, XsType.IS_DOMAIN_INTRODUCED,
                    XsType.RESUME, XsType.SET_TARGET, XsType.SET_FEATURE, XsType.GET_QUOTA,
                    XsType.SET_QUOTA}


class XsError(Exception):
    """A request failed with one of Xen's error names (EINVAL, ENOENT, ...)."""

    def __init__(self, name: str) -> None:
        assert name in XS_ERRORS, name
        super().__init__(name)
        self.name = name


Perms = list[tuple[str, int]]


def _isnum(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def parse_perm(text: str) -> tuple[str, int]:
    if len(text) < 2 or text[0] not in PERM_CHARS or not _isnum(text[1:]):
        raise XsError("EINVAL")
    return text[0], int(text[1:]) & 0xFFFF


def format_perms(perms: Perms) -> list[str]:
    return [f"{c}{d}" for c, d in perms]


class Node:
    __slots__ = ("value", "children", "perms", "gen")

    def __init__(self, value: bytes, perms: Perms, gen: int) -> None:
        self.value = value
        self.children: dict[str, Node] = {}     # in creation order, as xenstored lists them
        self.perms = perms
        self.gen = gen


def _split(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def _parent(path: str) -> str:
    i = path.rfind("/")
    return "/" if i <= 0 else path[:i]


def _is_child(child: str, parent: str) -> bool:
    """xenstore.txt: identical, or parent is /, or parent + '/' prefixes child."""
    return child == parent or parent == "/" or child.startswith(parent + "/")


class Tree:
    """The node tree (the database, or a transaction's copy of it)."""

    def __init__(self, root: Node) -> None:
        self.root = root

    def get(self, path: str) -> Node | None:
        node = self.root
        for part in _split(path):
            nxt = node.children.get(part)
            if nxt is None:
                return None
            node = nxt
        return node

    def nearest(self, path: str) -> Node:
        """The node at path, or its nearest existing ancestor."""
        node = self.root
        for part in _split(path):
            nxt = node.children.get(part)
            if nxt is None:
                break
            node = nxt
        return node


def perm_for(node: Node, domid: int) -> int:
    """xenstored perm_for_conn: what domain `domid` may do with node."""
    if domid == PRIVILEGED:
        return PERM_READ | PERM_WRITE
    owner_char, owner = node.perms[0]
    if owner == domid:
        return PERM_READ | PERM_WRITE
    for c, d in node.perms[1:]:
        if d == domid:
            return PERM_CHARS[c]
    return PERM_CHARS[owner_char]


@dataclass
class Watch:
    path: str            # as given (relative or absolute, or @special)
    abs_path: str        # canonical
    token: str
    relative: bool


@dataclass
class Transaction:
    id: int
    tree: Tree           # the transaction's working copy
    base: Tree           # the database as it was at the start (untouched)
    base_gen: dict[str, int | None] = field(default_factory=dict)   # path -> gen at start (None: absent)
    ops: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)


@dataclass
class LogEntry:
    domid: int
    type: str
    tx_id: int
    args: list[str]
    reply: str           # "OK", the error name, or a short summary of the payload


class Connection:
    """One client of the store: a domain's ring (the guest), with its watches and transactions.
    Outgoing messages (replies and watch events) are queued as bytes in `out`; `on_output`
    is called when new ones are queued outside a request (watch events)."""

    def __init__(self, store: XenStore, domid: int) -> None:
        self.store = store
        self.domid = domid
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx = 1
        self.out: deque[bytes] = deque()
        self.on_output: Callable[[], None] | None = None

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    def queue(self, mtype: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self.out.append(HEADER.pack(mtype, req_id, tx_id, len(payload)) + payload)

    def reset(self) -> None:
        """Ring reconnection / RESET_WATCHES: forget watches, transactions, queued output."""
        self.watches.clear()
        self.transactions.clear()
        self.out.clear()

    def close(self) -> None:
        self.reset()
        if self in self.store.connections:
            self.store.connections.remove(self)


class XenStore:
    def __init__(self) -> None:
        self._gen = 0
        self.tree = Tree(Node(b"", [("n", 0)], 0))
        self.connections: list[Connection] = []
        self.log: deque[LogEntry] = deque(maxlen=1000)    # the latest requests from connections
        self.requests = 0
        self.on_request: Callable[[LogEntry], None] | None = None

    # ---------------------------------------------------------------- helpers
    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def connect(self, domid: int) -> Connection:
        c = Connection(self, domid)
        self.connections.append(c)
        return c

    @staticmethod
    def canonical(path: str, domid: int) -> str:
        """Absolute path of `path` as domain `domid` means it; EINVAL if malformed."""
        if not path:
            raise XsError("EINVAL")
        if path[0] == "@":
            return path
        if path[0] != "/":
            if len(path) > XENSTORE_REL_PATH_MAX:
                raise XsError("EINVAL")
            path = f"/local/domain/{domid}/{path}"
        if (len(path) > XENSTORE_ABS_PATH_MAX or not _VALID.fullmatch(path) or "//" in path
                or (path.endswith("/") and path != "/")):
            raise XsError("EINVAL")
        return path

    def _node_path(self, path: str, domid: int) -> str:
        p = self.canonical(path, domid)
        if p[0] == "@":
            raise XsError("EINVAL")
        return p

    # ---------------------------------------------------------------- primitive operations
    # Each takes the tree to act on (the database or a transaction's copy) and returns the
    # paths it changed, for watches and conflict tracking.
    def _check(self, tree: Tree, path: str, domid: int, perm: int) -> Node:
        node = tree.get(path)
        if node is None:
            anc = tree.nearest(path)
            raise XsError("ENOENT" if perm_for(anc, domid) & perm else "EACCES")
        if not perm_for(node, domid) & perm:
            raise XsError("EACCES")
        return node

    def _create(self, tree: Tree, path: str, domid: int) -> tuple[Node, list[str]]:
        """construct_node: create path and missing parents (write access to the nearest
        existing ancestor needed); returns the node and the paths created."""
        node = tree.root
        cur = ""
        created: list[str] = []
        parts = _split(path)
        anc = tree.nearest(path)
        if not perm_for(anc, domid) & PERM_WRITE:
            raise XsError("EACCES")
        for part in parts:
            cur += "/" + part
            nxt = node.children.get(part)
            if nxt is None:
                perms = list(node.perms)
                if domid != PRIVILEGED:
                    perms[0] = (perms[0][0], domid)
                nxt = Node(b"", perms, self._next_gen())
                node.children[part] = nxt
                node.gen = self._next_gen()
                created.append(cur)
            node = nxt
        return node, created

    def _write(self, tree: Tree, path: str, value: bytes, domid: int) -> list[str]:
        node = tree.get(path)
        if node is not None:
            if not perm_for(node, domid) & PERM_WRITE:
                raise XsError("EACCES")
            node.value = value
            node.gen = self._next_gen()
            return [path]
        node, _ = self._create(tree, path, domid)
        node.value = value
        return [path]                 # one event, for the path written (do_write)

    def _mkdir(self, tree: Tree, path: str, domid: int) -> list[str]:
        node = tree.get(path)
        if node is not None:
            if not perm_for(node, domid) & PERM_WRITE:
                raise XsError("EACCES")
            return []
        self._create(tree, path, domid)
        return [path]

    def _rm(self, tree: Tree, path: str, domid: int) -> list[str]:
        if path == "/":
            raise XsError("EINVAL")
        node = tree.get(path)
        parent = tree.get(_parent(path))
        if node is None:
            if parent is not None:
                if not perm_for(parent, domid) & PERM_WRITE:
                    raise XsError("EACCES")
                return []
            anc = tree.nearest(path)
            raise XsError("ENOENT" if perm_for(anc, domid) & PERM_WRITE else "EACCES")
        if not perm_for(node, domid) & PERM_WRITE:
            raise XsError("EACCES")
        assert parent is not None
        del parent.children[path.rsplit("/", 1)[1]]
        parent.gen = self._next_gen()
        return [path]

    def _set_perms(self, tree: Tree, path: str, perms: Perms, domid: int) -> list[str]:
        node = self._check(tree, path, domid, PERM_WRITE)
        if domid != PRIVILEGED and node.perms[0][1] != domid:
            raise XsError("EACCES")          # only the owner may change permissions
        if domid != PRIVILEGED and perms[0][1] != node.perms[0][1]:
            raise XsError("EPERM")           # an unprivileged owner may not give the node away
        node.perms = list(perms)
        node.gen = self._next_gen()
        return [path]

    def _apply(self, tree: Tree, op: str, args: tuple[Any, ...], domid: int) -> list[str]:
        fn = {"write": self._write, "mkdir": self._mkdir, "rm": self._rm, "set_perms": self._set_perms}[op]
        return fn(tree, *args, domid)  # type: ignore[operator]

    # ---------------------------------------------------------------- watches
    def _fire(self, changed: list[tuple[str, bool]]) -> None:
        """Send watch events for changed paths; (path, removed)."""
        for conn in self.connections:
            fired = False
            for path, removed in changed:
                for w in conn.watches:
                    if w.abs_path[0] == "@":
                        if path == w.abs_path:
                            self._event(conn, w, w.path)
                            fired = True
                        continue
                    if path[0] == "@":
                        continue
                    if _is_child(path, w.abs_path):
                        if self._readable_for_event(path, conn.domid):
                            self._event(conn, w, self._relative(w, path))
                            fired = True
                    elif removed and _is_child(w.abs_path, path):
                        self._event(conn, w, w.path)
                        fired = True
            if fired and conn.on_output is not None:
                conn.on_output()

    def _readable_for_event(self, path: str, domid: int) -> bool:
        node = self.tree.get(path)
        if node is None:
            node = self.tree.nearest(path)
        return bool(perm_for(node, domid) & PERM_READ)

    @staticmethod
    def _relative(w: Watch, path: str) -> str:
        if not w.relative:
            return path
        home = w.abs_path[: len(w.abs_path) - len(w.path) - 1]     # /local/domain/<id>
        return path[len(home) + 1:] if path.startswith(home + "/") else path

    @staticmethod
    def _event(conn: Connection, w: Watch, path: str) -> None:
        conn.queue(XsType.WATCH_EVENT, 0, 0, path.encode() + b"\0" + w.token.encode() + b"\0")

    def fire_special(self, name: str) -> None:
        """Fire @introduceDomain / @releaseDomain watches."""
        self._fire([(name, False)])

    # ---------------------------------------------------------------- the workbench's API (domain 0)
    def read(self, path: str) -> bytes | None:
        node = self.tree.get(self._node_path(path, PRIVILEGED))
        return None if node is None else node.value

    def write(self, path: str, value: bytes | str) -> None:
        p = self._node_path(path, PRIVILEGED)
        v = value.encode() if isinstance(value, str) else bytes(value)
        changed = self._write(self.tree, p, v, PRIVILEGED)
        self._fire([(c, False) for c in changed])

    def mkdir(self, path: str) -> None:
        p = self._node_path(path, PRIVILEGED)
        self._fire([(c, False) for c in self._mkdir(self.tree, p, PRIVILEGED)])

    def rm(self, path: str) -> None:
        p = self._node_path(path, PRIVILEGED)
        self._fire([(c, True) for c in self._rm(self.tree, p, PRIVILEGED)])

    def directory(self, path: str) -> list[str]:
        node = self.tree.get(self._node_path(path, PRIVILEGED))
        if node is None:
            raise XsError("ENOENT")
        return list(node.children)

    def get_perms(self, path: str) -> list[str]:
        node = self.tree.get(self._node_path(path, PRIVILEGED))
        if node is None:
            raise XsError("ENOENT")
        return format_perms(node.perms)

    def set_perms(self, path: str, perms: list[str]) -> None:
        p = self._node_path(path, PRIVILEGED)
        self._fire([(c, False) for c in self._set_perms(self.tree, p, [parse_perm(x) for x in perms], PRIVILEGED)])

    def exists(self, path: str) -> bool:
        return self.tree.get(self._node_path(path, PRIVILEGED)) is not None

    def walk(self, path: str = "/") -> Iterator[tuple[str, bytes, list[str]]]:
        """(path, value, perms) for path and every node below it, depth first."""
        p = self._node_path(path, PRIVILEGED)
        node = self.tree.get(p)
        if node is None:
            return
        stack = [(p, node)]
        while stack:
            cp, n = stack.pop()
            yield cp, n.value, format_perms(n.perms)
            for name in reversed(list(n.children)):
                stack.append(((cp.rstrip("/") + "/" + name), n.children[name]))

    def dump(self, path: str = "/") -> dict[str, Any]:
        """The subtree at path as plain data: {"value": str, "perms": [...], "children": {name: ...}}
        (values decoded as latin-1). For monitors, the TUI and tests. ENOENT if absent."""
        node = self.tree.get(self._node_path(path, PRIVILEGED))
        if node is None:
            raise XsError("ENOENT")

        def conv(n: Node) -> dict[str, Any]:
            return {"value": n.value.decode("latin-1"), "perms": format_perms(n.perms),
                    "children": {k: conv(c) for k, c in n.children.items()}}
        return conv(node)

    def format(self, path: str = "/") -> str:
        """xenstore-ls style text of the subtree at path."""
        lines = []
        base = self._node_path(path, PRIVILEGED)
        depth0 = len(_split(base))
        for p, value, perms in self.walk(path):
            name = p if p == base else p.rsplit("/", 1)[1]
            indent = " " * (len(_split(p)) - depth0)
            lines.append(f'{indent}{name} = "{value.decode("latin-1")}"  ({" ".join(perms)})')
        return "\n".join(lines)

    # ---------------------------------------------------------------- the wire protocol
    def request(self, conn: Connection, mtype: int, req_id: int, tx_id: int, payload: bytes) -> None:
        """Handle one request from conn; the reply is queued on conn.out."""
        self.requests += 1
        try:
            name = XsType(mtype).name
        except ValueError:
            name = str(mtype)
        args = [a.decode("latin-1") for a in payload.split(b"\0")][:4]
        queued = False
        try:
            rtype, reply = self._dispatch(conn, mtype, req_id, tx_id, payload)
            if len(reply) > XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG")
        except XsError as e:
            rtype, reply = XsType.ERROR, e.name.encode() + b"\0"
        except _Queued:
            rtype, reply, queued = mtype, b"OK\0", True   # WATCH: reply and initial event are queued
        except Exception:       # a workbench bug: the guest gets EIO, the workbench goes on
            if os.environ.get("XENWB_DEBUG"):
                traceback.print_exc()
            rtype, reply = XsType.ERROR, b"EIO\0"
        if not queued:
            conn.queue(rtype, req_id, tx_id, reply)
        summary = reply.rstrip(b"\0").decode("latin-1") if rtype == XsType.ERROR else _summary(mtype, reply)
        entry = LogEntry(conn.domid, name, tx_id, args, summary)
        self.log.append(entry)
        if self.on_request is not None:
            self.on_request(entry)

    def _tx(self, conn: Connection, tx_id: int) -> Transaction | None:
        if tx_id == 0:
            return None
        t = conn.transactions.get(tx_id)
        if t is None:
            raise XsError("ENOENT")
        return t

    @staticmethod
    def _touch(t: Transaction | None, path: str) -> None:
        """Remember the database's state of path (at the start of the transaction) when a
        transaction first looks at it: a change there by then makes the commit fail."""
        if t is not None and path not in t.base_gen:
            node = t.base.get(path)
            t.base_gen[path] = None if node is None else node.gen

    def _touch_create(self, t: Transaction | None, path: str) -> None:
        """Creating path in a transaction also changes the missing parents and the children
        list of the nearest existing ancestor."""
        if t is None:
            return
        while path != "/" and t.tree.get(path) is None:
            self._touch(t, path)
            path = _parent(path)
        self._touch(t, path)

    def _dispatch(self, conn: Connection, mtype: int, req_id: int, tx_id: int,
                  payload: bytes) -> tuple[int, bytes]:
        domid = conn.domid
        if mtype in _PRIVILEGED_ONLY and domid != PRIVILEGED:
            raise XsError("EACCES")
        T = XsType
        if mtype in (T.READ, T.DIRECTORY, T.GET_PERMS, T.MKDIR, T.RM, T.GET_DOMAIN_PATH):
            path = _onearg(payload)
            if mtype == T.GET_DOMAIN_PATH:
                if not _isnum(path):
                    raise XsError("EINVAL")
                return mtype, f"/local/domain/{int(path)}".encode() + b"\0"
            p = self._node_path(path, domid)
            t = self._tx(conn, tx_id)
            tree = t.tree if t is not None else self.tree
            self._touch(t, p)
            if mtype == T.READ:
                return mtype, self._check(tree, p, domid, PERM_READ).value
            if mtype == T.DIRECTORY:
                node = self._check(tree, p, domid, PERM_READ)
                return mtype, b"".join(n.encode() + b"\0" for n in node.children)
            if mtype == T.GET_PERMS:
                node = self._check(tree, p, domid, PERM_READ)
                return mtype, b"".join(x.encode() + b"\0" for x in format_perms(node.perms))
            op = "mkdir" if mtype == T.MKDIR else "rm"
            if op == "mkdir":
                self._touch_create(t, p)
            if op == "rm" and t is not None:
                node = tree.get(p)
                if node is not None:
                    for sub in _subtree_paths(p, node):
                        self._touch(t, sub)
                self._touch(t, _parent(p))
            return mtype, self._modify(conn, t, op, (p,), removed=(op == "rm"))
        if mtype == T.WRITE:
            i = payload.find(b"\0")
            if i < 0:
                raise XsError("EINVAL")
            p = self._node_path(payload[:i].decode("latin-1"), domid)
            t = self._tx(conn, tx_id)
            self._touch(t, p)
            self._touch_create(t, p)
            return mtype, self._modify(conn, t, "write", (p, payload[i + 1:]))
        if mtype == T.SET_PERMS:
            parts = _strings(payload)
            if len(parts) < 2:
                raise XsError("EINVAL")
            p = self._node_path(parts[0], domid)
            perms = [parse_perm(x) for x in parts[1:]]
            t = self._tx(conn, tx_id)
            self._touch(t, p)
            return mtype, self._modify(conn, t, "set_perms", (p, perms))
        if mtype == T.DIRECTORY_PART:
            parts = _strings(payload)
            if len(parts) != 2 or not _isnum(parts[1]):
                raise XsError("EINVAL")
            p = self._node_path(parts[0], domid)
            t = self._tx(conn, tx_id)
            self._touch(t, p)
            node = self._check(t.tree if t else self.tree, p, domid, PERM_READ)
            return mtype, _directory_part(node, int(parts[1]))
        if mtype == T.WATCH:
            parts = _strings(payload)
            if len(parts) < 2:
                raise XsError("EINVAL")
            path, token = parts[0], parts[1]
            ap = self.canonical(path, domid)
            if any(w.path == path and w.token == token for w in conn.watches):
                raise XsError("EEXIST")
            if len(conn.watches) >= MAX_WATCHES:
                raise XsError("E2BIG")
            w = Watch(path, ap, token, relative=path[0] not in "/@")
            conn.watches.append(w)
            conn.queue(T.WATCH, req_id, tx_id, b"OK\0")   # the reply first, then the initial event
            self._event(conn, w, w.path)
            raise _Queued
        if mtype == T.UNWATCH:
            parts = _strings(payload)
            if len(parts) < 2:
                raise XsError("EINVAL")
            self.canonical(parts[0], domid)
            for w in conn.watches:
                if w.path == parts[0] and w.token == parts[1]:
                    conn.watches.remove(w)
                    return mtype, b"OK\0"
            raise XsError("ENOENT")
        if mtype == T.RESET_WATCHES:
            conn.watches.clear()
            conn.transactions.clear()
            return mtype, b"OK\0"
        if mtype == T.TRANSACTION_START:
            if tx_id != 0:
                raise XsError("EBUSY")
            if len(conn.transactions) >= MAX_TRANSACTIONS:
                raise XsError("ENOSPC")
            tid = conn.next_tx
            while tid == 0 or tid in conn.transactions:
                tid = (tid + 1) & 0xFFFFFFFF
            conn.next_tx = (tid + 1) & 0xFFFFFFFF
            conn.transactions[tid] = Transaction(tid, Tree(copy.deepcopy(self.tree.root)),
                                                 Tree(copy.deepcopy(self.tree.root)))
            return mtype, str(tid).encode() + b"\0"
        if mtype == T.TRANSACTION_END:
            arg = _onearg(payload)
            if arg not in ("T", "F"):
                raise XsError("EINVAL")
            t = self._tx(conn, tx_id)
            if t is None:
                raise XsError("ENOENT")
            del conn.transactions[t.id]
            if arg == "F":
                return mtype, b"OK\0"
            for path, gen in t.base_gen.items():
                node = self.tree.get(path)
                if (None if node is None else node.gen) != gen:
                    raise XsError("EAGAIN")
            # replay the transaction's operations on a copy of the database, then install it
            trial = Tree(copy.deepcopy(self.tree.root))
            changed: list[tuple[str, bool]] = []
            try:
                for op, args in t.ops:
                    changed += [(c, op == "rm") for c in self._apply(trial, op, args, domid)]
            except XsError:
                raise XsError("EAGAIN") from None
            self.tree.root = trial.root
            self._fire(changed)
            return mtype, b"OK\0"
        if mtype == T.GET_FEATURE:
            parts = _strings(payload) if payload else []
            if parts and parts[0] and parts[0] != str(domid):
                raise XsError("EACCES")          # another domain's features: the toolstack's business
            return mtype, b"0\0"
        if mtype in (T.WATCH_EVENT, T.ERROR, T.INVALID):
            raise XsError("EINVAL")
        raise XsError("EINVAL")                  # unknown type (xenstored: EINVAL)

    def _modify(self, conn: Connection, t: Transaction | None, op: str, args: tuple[Any, ...],
                removed: bool = False) -> bytes:
        if t is not None:
            self._apply(t.tree, op, args, conn.domid)
            t.ops.append((op, args))
            return b"OK\0"
        changed = self._apply(self.tree, op, args, conn.domid)
        self._fire([(c, removed) for c in changed])
        return b"OK\0"


class _Queued(Exception):
    """The handler queued its own reply (WATCH: reply, then the initial event)."""


def _onearg(payload: bytes) -> str:
    """xenstored onearg: exactly one NUL-terminated string."""
    if not payload or payload[-1] != 0 or payload.index(b"\0") != len(payload) - 1:
        raise XsError("EINVAL")
    return payload[:-1].decode("latin-1")


def _strings(payload: bytes) -> list[str]:
    """NUL-separated strings (a final NUL is optional)."""
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return [p.decode("latin-1") for p in payload.split(b"\0")]


def _subtree_paths(path: str, node: Node) -> Iterator[str]:
    yield path
    for name, child in node.children.items():
        yield from _subtree_paths(path + "/" + name, child)


def _directory_part(node: Node, off: int) -> bytes:
    """xenstored send_directory_part: gen|names from byte offset off; a final extra NUL
    marks the end of the list."""
    gen = str(node.gen).encode() + b"\0"
    children = b"".join(n.encode() + b"\0" for n in node.children)
    if off >= len(children):
        return gen + b"\0"
    out = b""
    pos = off
    while pos < len(children):
        end = children.index(b"\0", pos) + 1
        if len(gen) + (end - off) + 1 > XENSTORE_PAYLOAD_MAX:
            break
        pos = end
    out = children[off:pos]
    if pos == len(children):
        return gen + out + b"\0"
    return gen + out


def _summary(mtype: int, reply: bytes) -> str:
    if reply == b"OK\0":
        return "OK"
    if mtype == XsType.DIRECTORY:
        return "[" + ", ".join(n.decode("latin-1") for n in reply.split(b"\0")[:-1]) + "]"
    text = reply.rstrip(b"\0").decode("latin-1")
    return repr(text if len(text) <= 64 else text[:61] + "...")


# ---------------------------------------------------------------- the toolstack's keys
def seed_domain(store: XenStore, domid: int, *, name: str, uuid: str, memory_kib: int, vcpus: int,
                console_port: int, console_mfn: int, store_port: int, store_mfn: int) -> None:
    """What libxl writes for a PV domU (libxl_create.c libxl__domain_make, libxl_dom.c
    libxl__build_post, libxl_console.c) and the basics of domain 0, with libxl's
    permissions: read-only keys `n0 r<domid>`, guest-writable ones owned by the guest."""
    ro = [("n", 0), ("r", domid)]
    rw = [("n", domid)]
    home = f"/local/domain/{domid}"
    w = store.write

    def put(path: str, value: str | int, perms: Perms = ro) -> None:
        w(path, str(value))
        store.tree.get(path).perms = list(perms)  # type: ignore[union-attr]

    for p in ("/local", "/local/domain", "/vm", "/libxl", "/tool"):
        store.mkdir(p)
    # domain 0 (the workbench plays the toolstack and the backends)
    put("/local/domain/0", "", [("n", 0)])
    put("/local/domain/0/domid", 0, [("n", 0)])
    put("/local/domain/0/name", "Domain-0", [("n", 0)])
    put("/local/domain/0/backend", "", [("n", 0)])
    put("/tool/xenstored", "", [("n", 0)])
    # the guest
    put(f"/vm/{uuid}", "", ro)
    put(f"/vm/{uuid}/uuid", uuid, ro)
    put(f"/vm/{uuid}/name", name, ro)
    put(f"/vm/{uuid}/start_time", "0.00", ro)
    put(home, "", ro)
    put(f"{home}/vm", f"/vm/{uuid}")
    put(f"{home}/name", name)
    put(f"{home}/domid", domid)
    put(f"{home}/cpu", "")
    for i in range(vcpus):
        put(f"{home}/cpu/{i}", "")
        put(f"{home}/cpu/{i}/availability", "online")
    put(f"{home}/memory", "")
    put(f"{home}/memory/static-max", memory_kib)
    put(f"{home}/memory/target", memory_kib)
    put(f"{home}/memory/videoram", "-1")
    put(f"{home}/store", "")
    put(f"{home}/store/port", store_port)
    put(f"{home}/store/ring-ref", store_mfn)
    # the primary console (libxl__device_console_add: PV console in the domain's own dir)
    cons_be = f"/local/domain/0/backend/console/{domid}/0"
    put(f"{home}/console", "")
    put(f"{home}/console/backend", cons_be)
    put(f"{home}/console/backend-id", 0)
    put(f"{home}/console/limit", 1048576)
    put(f"{home}/console/type", "xenconsoled")
    put(f"{home}/console/output", "pty")
    put(f"{home}/console/tty", "/dev/pts/0")
    put(f"{home}/console/port", console_port)
    put(f"{home}/console/ring-ref", console_mfn)
    put("/local/domain/0/backend/console", "", [("n", 0)])
    put(f"/local/domain/0/backend/console/{domid}", "", [("n", 0)])
    put(cons_be, "", [("n", 0), ("r", domid)])
    put(f"{cons_be}/frontend", f"{home}/console", [("n", 0), ("r", domid)])
    put(f"{cons_be}/frontend-id", domid, [("n", 0), ("r", domid)])
    put(f"{cons_be}/online", 1, [("n", 0), ("r", domid)])
    put(f"{cons_be}/state", 1, [("n", 0), ("r", domid)])
    put(f"{cons_be}/protocol", "vt100", [("n", 0), ("r", domid)])
    # control/: the toolstack asks, the guest answers (libxl: shutdown and feature-* writable)
    put(f"{home}/control", "", ro)
    put(f"{home}/control/shutdown", "", rw)
    for feat in ("feature-poweroff", "feature-reboot", "feature-suspend", "sysrq"):
        put(f"{home}/control/{feat}", "", rw)
    put(f"{home}/control/platform-feature-multiprocessor-suspend", 1)
    put(f"{home}/control/platform-feature-xs_reset_watches", 1)
    # the guest's own directories
    for d in ("device", "data", "drivers", "feature", "attr", "error"):
        put(f"{home}/{d}", "", rw)
