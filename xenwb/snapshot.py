"""Checkpoints of a whole machine in the running process (time travel, issue 11).

A snapshot holds everything the rest of a run depends on, and restoring one puts the
machine back exactly: the guest cannot tell (its console bytes and trace are those of a
run that never went back).

* RAM, page by page, shared between snapshots where pages did not change. The kernel finds
  the pages written since the last snapshot: each RAM region is remapped privately over a
  memfd that holds the contents of the last snapshot, so a page written since is an
  anonymous copy, which /proc/self/pagemap shows (present, not file-backed). A snapshot
  copies those pages, writes them into the file and drops the copies (MADV_DONTNEED): its
  cost follows what changed, nothing is paid while the guest runs but one minor fault on
  the first write to a page after a snapshot. (Soft-dirty bits, the usual way, are not
  available on every kernel; write hooks would put every guest store on unicorn's slow path.)
* Each engine's CPU state (unicorn's context: registers, segment caches, control registers,
  MSRs, FPU) and its virtual clock's counters, whatever the guest's width.
* The Python state of the hypervisor, the backends and xenstore, captured generically:
  every object reachable from the machine whose class is xenwb's, and every container, is
  saved shallowly (a copy of its attributes or items) and restored in place, so identities
  hold (a vcpu is the same object before and after). Configuration (the guest image, the
  layout, the hypercall table, ABI layouts, frozen dataclasses, enums), engine hooks and
  front-end state are left alone. Frame types and counts (mm.pages: an entry per frame of
  the domain) are versioned like RAM: only entries accessed since the last snapshot are
  copied again.

Unicorn caches translations of guest code and guest-virtual mappings: both are flushed on
restore (memory changed behind its back). Snapshots are taken and restored only while the
machine is stopped.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import dataclasses
import enum
import gc
import mmap
import operator
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unicorn import Uc

from xenwb.abi.constants import PAGE_SIZE
from xenwb.errors import XenwbError
from xenwb.hypervisor.cpu import CpuBase, RegBatch
from xenwb.hypervisor.debugreg import DebugRegisters
from xenwb.hypervisor.domain import Domain
from xenwb.hypervisor.memory import MachineMemory, RamRegion
from xenwb.hypervisor.mm import MM
from xenwb.hypervisor.upcall_mask import MaskObserver
from xenwb.hypervisor.xenarea import HvGeometry
from xenwb.inputlog import InputLog
from xenwb.layout import BootLayout
from xenwb.loader import GuestImage
from xenwb.machine import Machine
from xenwb.registry import CommandRegistry
from xenwb.trace import TraceBus
from xenwb.vclock import VClock
from xenwb.xenstore import LogEntry

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

CHUNK_SHIFT = 8                    # entries per shared chunk of a versioned map: 256 (1 MiB of RAM)
MAP_FIXED = 0x10                   # <sys/mman.h> on Linux (the mmap module does not export it)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
# pagemap's top byte: bit 63 present, 62 swapped, 61 file page or shared anonymous
_WRITTEN = bytes(1 if (b & 0xA0) == 0x80 or b & 0x40 else 0 for b in range(256))   # private copy
_TOUCHED = bytes(1 if b & 0xC0 else 0 for b in range(256))                         # any page in use
ZERO_PAGE = bytes(PAGE_SIZE)


# ------------------------------------------------------------------------------ versioned maps
Version = tuple[dict[int, Any], ...]


class VersionedMap:
    """Versions of a map int -> value, as tuples of chunk dicts shared between versions
    where no entry changed. An absent key reads as None."""

    def __init__(self, n_keys: int) -> None:
        self.empty: Version = tuple({} for _ in range((n_keys >> CHUNK_SHIFT) + 1))

    @staticmethod
    def commit(base: Version, changes: dict[int, Any]) -> tuple[Version, int]:
        """A new version: base with these keys set (None: removed); and the entries it holds
        that base did not (for its memory)."""
        new = len(changes) - list(changes.values()).count(None)
        if len(changes) > 4096 and not any(base):          # a first full version: chunk by slices
            keys = sorted(k for k, v in changes.items() if v is not None)
            chunks = [{} for _ in base]
            lo = 0
            while lo < len(keys):
                i = keys[lo] >> CHUNK_SHIFT
                hi = bisect.bisect_left(keys, (i + 1) << CHUNK_SHIFT, lo)
                part = keys[lo:hi]
                chunks[i] = dict(zip(part, map(changes.__getitem__, part), strict=True))
                lo = hi
            return tuple(chunks), new
        chunks = list(base)
        fresh: dict[int, dict[int, Any]] = {}
        for k, v in changes.items():
            i = k >> CHUNK_SHIFT
            c = fresh.get(i)
            if c is None:
                c = fresh[i] = dict(chunks[i])
                chunks[i] = c
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        return tuple(chunks), new

    @staticmethod
    def diff(a: Version, b: Version) -> list[int]:
        """Keys whose values differ (by identity) between two versions."""
        out = []
        for ca, cb in zip(a, b, strict=True):
            if ca is cb:
                continue
            for k in ca.keys() | cb.keys():
                if ca.get(k) is not cb.get(k):
                    out.append(k)
        return out

    @staticmethod
    def get(v: Version, key: int) -> Any:
        return v[key >> CHUNK_SHIFT].get(key)

    @staticmethod
    def only_in(old: Version, new: Version) -> list[Any]:
        """Values of old that new does not hold (what dropping old frees, new being the next
        version kept: a value lives in consecutive versions only)."""
        out = []
        for co, cn in zip(old, new, strict=True):
            if co is cn:
                continue
            out.extend(v for k, v in co.items() if cn.get(k) is not v)
        return out


# ------------------------------------------------------------------------------ RAM
class RamTracker:
    """One RAM region remapped MAP_PRIVATE over a memfd holding the last snapshot's
    contents: the pages written since are the private ones."""

    def __init__(self, region: RamRegion, index: int) -> None:
        self.region = region
        self.addr = region.ptr()
        self.npages = region.size // PAGE_SIZE
        self.view = region.view
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
        self.fd = os.memfd_create(f"xenwb-ram{index}", os.MFD_CLOEXEC)
        self._closer = weakref.finalize(self, _close_fds, self._pagemap, self.fd)
        os.ftruncate(self.fd, region.size)
        first: dict[int, Any] = {}
        touched = self._pages(_TOUCHED)            # what the region holds now goes into the file
        for p in touched:
            data = bytes(self.view[p * PAGE_SIZE: (p + 1) * PAGE_SIZE])
            if data != ZERO_PAGE:
                first[p] = data
        for lo, hi in _runs(touched):
            os.pwrite(self.fd, self.view[lo * PAGE_SIZE: hi * PAGE_SIZE], lo * PAGE_SIZE)
        got = _libc.mmap(self.addr, region.size, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | MAP_FIXED, self.fd, 0)
        if got != self.addr:
            err = ctypes.get_errno()
            raise XenwbError(f"time travel: cannot remap guest RAM ({os.strerror(err)})")
        self.versions = VersionedMap(self.npages)
        # the file's contents as a version (pages not in it read as zeros)
        self.latest, _ = self.versions.commit(self.versions.empty, first)

    def _scan(self, table: bytes) -> bytes:
        data = os.pread(self._pagemap, self.npages * 8, (self.addr // PAGE_SIZE) * 8)
        return data[7::8].translate(table)

    def _pages(self, table: bytes) -> list[int]:
        flags = self._scan(table)
        out = []
        i = flags.find(1)
        while i >= 0:
            out.append(i)
            i = flags.find(1, i + 1)
        return out

    def written(self) -> list[int]:
        """Pages written since the last snapshot (or put back by a restore)."""
        return self._pages(_WRITTEN)

    def commit(self) -> tuple[Version, int]:
        """A new version with the written pages; they go into the file and the private
        copies are dropped. Returns the version and how many pages it added."""
        pages = self.written()
        view = self.view
        changes: dict[int, Any] = {}
        for p in pages:
            data = bytes(view[p * PAGE_SIZE: (p + 1) * PAGE_SIZE])
            changes[p] = None if data == ZERO_PAGE else data
        if not pages:
            return self.latest, 0
        for lo, hi in _runs(pages):
            os.pwrite(self.fd, view[lo * PAGE_SIZE: hi * PAGE_SIZE], lo * PAGE_SIZE)
            self.region.buf.madvise(mmap.MADV_DONTNEED, lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE)
        self.latest, n = self.versions.commit(self.latest, changes)
        return self.latest, n

    def restore(self, target: Version, engines: list[Uc]) -> int:
        """Make the region hold `target`: the pages written since the last snapshot and the
        pages in which target and the last snapshot differ, written through every engine so
        each drops what it translated from them (and only that). Returns the pages written."""
        pages = set(self.written())
        pages.update(self.versions.diff(target, self.latest))
        get = self.versions.get
        base = self.region.base
        for p in pages:
            data = get(target, p) or ZERO_PAGE
            for uc in engines:
                uc.mem_write(base + p * PAGE_SIZE, data)
        return len(pages)

    def close(self) -> None:
        self._closer()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _runs(pages: Iterable[int] | bytes) -> list[tuple[int, int]]:
    """Sorted page numbers (or a 0/1 flag per page) as runs [lo, hi)."""
    if isinstance(pages, bytes):
        flags = pages
        pages = []
        i = flags.find(1)
        while i >= 0:
            pages.append(i)
            i = flags.find(1, i + 1)
    out: list[tuple[int, int]] = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


# ------------------------------------------------------------------------------ frame types
class TrackedDict(dict):
    """A dict whose values are mutable objects changed through the references it hands out
    (mm.pages: PageInfo per frame). It remembers the keys accessed since the last snapshot
    (touched) and, the first time a key is accessed, what it held when the history started
    (base: frozen by `freeze`). Handing out every value (iteration) counts as accessing every key."""

    __slots__ = ("touched", "base", "freeze")

    def __init__(self, data: dict[Any, Any], freeze: Callable[[Any], Any]) -> None:
        super().__init__(data)
        self.touched: set[Any] = set()
        self.base: dict[Any, Any] = {}
        self.freeze = freeze

    def _note(self, key: Any) -> None:
        self.touched.add(key)
        base = self.base
        if key not in base:
            base[key] = self.freeze(dict.get(self, key, ABSENT))

    def _note_all(self) -> None:
        for key in dict.keys(self):
            self._note(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return dict.get(self, key, default)

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return dict.__getitem__(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._note(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        self._note(key)
        dict.__delitem__(self, key)

    def pop(self, key: Any, *default: Any) -> Any:
        self._note(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return dict.setdefault(self, key, default)

    def __iter__(self):
        self._note_all()
        return dict.__iter__(self)

    def values(self):
        self._note_all()
        return dict.values(self)

    def items(self):
        self._note_all()
        return dict.items(self)

    def popitem(self) -> Any:
        self._note_all()
        return dict.popitem(self)

    def clear(self) -> None:
        self._note_all()
        dict.clear(self)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


ABSENT = _Marker("absent")        # a key not in the dict
LIVE = _Marker("live")            # a key never accessed since the history started: as it is now


class FrameVersions:
    """Versions of mm.pages: each snapshot holds the entries accessed before it (frozen);
    an entry no version holds is as it was when the history started (the dict's base)."""

    def __init__(self, pages: TrackedDict | dict[Any, Any], n_keys: int) -> None:
        self.codecs: dict[type, SlotCodec] = {}
        self.pages = pages if isinstance(pages, TrackedDict) else TrackedDict(pages, self.freeze)
        self.pages.freeze = self.freeze
        self.map = VersionedMap(n_keys)
        self.latest: Version = self.map.empty

    def freeze(self, obj: Any) -> Any:
        if obj is ABSENT:
            return ABSENT
        codec = self.codecs.get(type(obj))
        if codec is None:
            codec = self.codecs[type(obj)] = SlotCodec(type(obj))
        return codec.freeze_tagged(obj)

    @staticmethod
    def thaw(val: Any) -> Any:
        return val[0].thaw(val[1])

    def commit(self) -> tuple[Version, int]:
        pages = self.pages
        changes = {k: self.freeze(dict.get(pages, k, ABSENT)) for k in pages.touched}
        pages.touched = set()
        if not changes:
            return self.latest, 0
        self.latest, n = self.map.commit(self.latest, changes)
        return self.latest, n

    def restore(self, target: Version) -> None:
        pages = self.pages
        keys = set(pages.touched)
        keys.update(self.map.diff(target, self.latest))
        base = pages.base
        for k in keys:
            val = target[k >> CHUNK_SHIFT].get(k)
            if val is None:
                val = base.get(k, LIVE)
            if val is LIVE:
                continue
            if val is ABSENT:
                pages.pop(k, None)
            else:
                pages[k] = self.thaw(val)


class SlotCodec:
    """Fast value tuples of one __slots__ class (mm's PageInfo): one attrgetter call per
    object; the mutable containers among the fields are copied only when not empty; objects
    equal to a default instance share one tuple."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.names = tuple(n for c in reversed(cls.__mro__) for n in getattr(c, "__slots__", ()))
        self._get = operator.attrgetter(*self.names) if len(self.names) > 1 else None
        try:
            proto = cls()
            dflt = self.freeze(proto, shared=False)
        except TypeError:                   # no default constructor: no shared default
            dflt = None
        self.mutable = tuple(i for i, v in enumerate(dflt or ()) if type(v) in (set, list, dict))
        self.default = dflt
        self._tagged_default = (self, dflt)

    def freeze(self, obj: Any, shared: bool = True) -> tuple[Any, ...]:
        vals = self._get(obj) if self._get is not None else (getattr(obj, self.names[0]),)
        if shared:
            if vals == self.default:
                return self.default
            if self.mutable:
                vals = list(vals)
                for i in self.mutable:
                    v = vals[i]
                    if v:
                        vals[i] = type(v)(v)
                vals = tuple(vals)
        return vals

    def freeze_tagged(self, obj: Any) -> tuple[SlotCodec, tuple[Any, ...]]:
        """(codec, values): one shared object for every default-valued instance."""
        vals = self.freeze(obj)
        if vals is self.default:
            return self._tagged_default
        return (self, vals)

    def thaw(self, vals: tuple[Any, ...]) -> Any:
        obj = self.cls.__new__(self.cls)
        for n, v in zip(self.names, vals, strict=True):
            t = type(v)
            object.__setattr__(obj, n, t(v) if t is set or t is list or t is dict else v)
        return obj


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


# ------------------------------------------------------------------------------ Python state
ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex, range, memoryview, mmap.mmap,
                    frozenset})
OPAQUE = None                    # a rule: keep the object as it is, do not look inside


@dataclass(frozen=True)
class Rule:
    """How the walker treats a class: attributes to leave alone, or `only` these."""

    skip: frozenset[str] = frozenset()
    only: frozenset[str] | None = None
    slots: tuple[str, ...] = ()


# what belongs to the machine's configuration, its engines' hooks or its front ends: not state
RULES: dict[type, Rule | None] = {
    Machine: Rule(only=frozenset({"_next", "_last_run", "turn", "_futile", "turns", "pumps", "domain",
                                  "console", "store", "xenstore"})),
    Domain: Rule(skip=frozenset({"image", "abi", "hypercalls", "observer", "console_sink", "trace",
                                 "mask_observer", "geo", "mode", "_warned", "stub_cache"})),
    CpuBase: Rule(skip=frozenset({"uc", "clock", "_exact_reasons", "_breakpoint_hooks", "_pc_synced",
                                  "_pending_invalidations"})),
    MM: Rule(skip=frozenset({"pages"})),
    RegBatch: OPAQUE, VClock: OPAQUE, TraceBus: OPAQUE, MaskObserver: OPAQUE, RamRegion: OPAQUE,
    GuestImage: OPAQUE, BootLayout: OPAQUE, CommandRegistry: OPAQUE, HvGeometry: OPAQUE, InputLog: OPAQUE,
    LogEntry: OPAQUE, Uc: OPAQUE, DebugRegisters: OPAQUE,      # engine hooks, rebuilt from debugreg
}
_rules_cache: dict[type, Rule | None] = {}


def _rule(t: type) -> Rule | None:
    r = _rules_cache.get(t, _UNSET)
    if r is not _UNSET:
        return r  # type: ignore[return-value]
    r = OPAQUE
    if issubclass(t, enum.Enum) or not t.__module__.startswith("xenwb"):
        r = OPAQUE
    elif dataclasses.is_dataclass(t) and t.__dataclass_params__.frozen:   # type: ignore[attr-defined]
        r = OPAQUE
    else:
        r = Rule()
        for base in t.__mro__:
            if base in RULES:
                r = RULES[base]
                break
        if r is not OPAQUE and not t.__dictoffset__:                 # __slots__ only
            names = tuple(n for c in reversed(t.__mro__) for n in getattr(c, "__slots__", ()))
            r = Rule(r.skip, r.only, names)
    _rules_cache[t] = r
    return r


LIST, DICT, SET, BYTES, DEQUE, OBJ, SLOTS = range(7)
Record = tuple[Any, int, Any]


BIG = 256                         # containers this long are compared with their last copy first
Seen = dict[int, tuple[Any, Any, bool]]    # id -> (container, its last copy, only atomic items)


def capture_objects(roots: Iterable[Any], last: Seen | None = None) -> list[Record]:
    """Every mutable object reachable from roots (by the rules above), each saved shallowly.
    `last` (kept from one capture to the next) lets an object or container that did not
    change share its previous copy (no new objects: less memory, less garbage collection),
    and a long container of plain values skip looking at its items again."""
    recs: list[Record] = []
    seen: set[int] = set()
    stack = list(roots)
    atomic = ATOMIC
    prev_of: Seen = {} if last is None else last
    get_prev = prev_of.get
    add = recs.append
    is_ = operator.is_
    while stack:
        o = stack.pop()
        i = id(o)
        if i in seen:
            continue
        seen.add(i)
        t = type(o)
        prev = get_prev(i)
        if prev is not None and prev[0] is not o:
            prev = None                       # another object now lives at that address
        if t is list or t is dict or t is set:
            pc = prev[1] if prev is not None else None
            if pc is not None and len(pc) == len(o) and (
                    pc == o if t is set else
                    all(map(is_, pc, o)) if t is list else
                    pc.keys() == o.keys() and all(map(is_, pc.values(), o.values()))):
                c, only_atomic = prev[1], prev[2]
            else:
                c = o[:] if t is list else o.copy()
                only_atomic = len(c) >= BIG and set(map(type, c.values() if t is dict else c)) <= atomic
                prev_of[i] = (o, c, only_atomic)
            add((o, LIST if t is list else DICT if t is dict else SET, c))
            if only_atomic or t is set:
                continue
            vals: Iterable[Any] = c.values() if t is dict else c
        elif t is tuple:
            vals = o
        elif t is bytearray:
            add((o, BYTES, bytes(o)))
            continue
        elif t is deque:
            c = list(o)
            add((o, DEQUE, c))
            vals = c
        else:
            r = _rules_cache.get(t, _UNSET)
            if r is _UNSET:
                r = _rule(t)
            if r is None:
                continue
            if r.slots:
                c = tuple(getattr(o, n, _UNSET) for n in r.slots)
                if prev is not None and all(map(is_, prev[1], c)):
                    c = prev[1]
                else:
                    prev_of[i] = (o, c, False)
                add((o, SLOTS, c))
                vals = c
            else:
                d = o.__dict__
                if r.only is not None:
                    c = {k: v for k, v in d.items() if k in r.only}
                elif r.skip:
                    c = {k: v for k, v in d.items() if k not in r.skip}
                else:
                    pc = prev[1] if prev is not None else None
                    if pc is not None and len(pc) == len(d) and pc.keys() == d.keys() \
                            and all(map(is_, pc.values(), d.values())):
                        c = pc
                    else:
                        c = d.copy()
                if prev is None or c is not prev[1]:
                    pc = prev[1] if prev is not None else None
                    if pc is not None and len(pc) == len(c) and pc.keys() == c.keys() \
                            and all(map(is_, pc.values(), c.values())):
                        c = pc
                    else:
                        prev_of[i] = (o, c, False)
                add((o, OBJ, c))
                vals = c.values()
        for v in vals:
            if type(v) not in atomic:
                stack.append(v)
    return recs


def restore_objects(recs: list[Record]) -> None:
    for o, kind, c in recs:
        if kind == OBJ:
            d = o.__dict__
            r = _rules_cache[type(o)]
            assert r is not None
            if r.only is None:
                for k in [k for k in d if k not in c and k not in r.skip]:
                    del d[k]           # an attribute that appeared after the snapshot
            d.update(c)
        elif kind == LIST:
            o[:] = c
        elif kind == DICT:
            o.clear()
            o.update(c)
        elif kind == SET:
            o.clear()
            o.update(c)
        elif kind == BYTES:
            o[:] = c
        elif kind == DEQUE:
            o.clear()
            o.extend(c)
        else:
            r = _rules_cache[type(o)]
            assert r is not None
            for n, v in zip(r.slots, c, strict=True):
                if v is _UNSET:
                    if hasattr(o, n):
                        delattr(o, n)
                else:
                    object.__setattr__(o, n, v)


def _records_size(recs: list[Record], shared: set[int] | None = None) -> int:
    """A rough size of saved records (their copies; the objects they point at are shared),
    leaving out copies in `shared` (kept by an earlier snapshot)."""
    n = 0
    for _, kind, c in recs:
        if shared is not None and id(c) in shared:
            continue
        n += 64 + (8 * len(c) if kind in (LIST, DEQUE, SLOTS) else 40 * len(c) if kind in (DICT, OBJ, SET)
                   else len(c))
    return n


# ------------------------------------------------------------------------------ snapshots
@contextlib.contextmanager
def _no_gc():
    """No cyclic garbage collection while a snapshot makes or restores many small objects
    (it creates no cycles; a full collection there would cost more than the snapshot)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()



@dataclass
class Snapshot:
    """The whole machine at one moment. `size` is what keeping it costs beyond the snapshots
    before it (pages and frame entries it holds that they did not, and its own records)."""

    serial: int
    ram: list[Version]
    frames: Version
    records: list[Record]
    contexts: list[Any]
    clocks: list[bytes]
    trace_seq: int
    turns: int
    pumps: int
    time_ns: int
    vcpu_clock: list[int]
    size: int = 0
    ram_pages: int = 0                       # new pages it holds
    extra: dict[str, Any] = field(default_factory=dict)   # front ends' own state (participants)


class Snapshotter:
    """Takes and restores snapshots of one machine. The first snapshot installs the
    tracking (RAM remapped, mm.pages tracked); nothing is tracked before."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._ram: list[RamTracker] = []
        self._frames: FrameVersions
        self._serial = 0
        self.restores = 0
        self._last_copies: Seen = {}        # long containers' last copies (shared while unchanged)

    @property
    def tracking(self) -> bool:
        return bool(self._ram)

    def _start(self) -> None:
        dom = self.machine.domain
        mem: MachineMemory = dom.mem
        self._ram = [RamTracker(r, i) for i, r in enumerate(mem.regions)]
        mm = dom.mm
        self._frames = FrameVersions(mm.pages, mem.max_mfn)
        mm.pages = self._frames.pages

    def take(self) -> Snapshot:
        """A snapshot of the machine as it is now (stopped)."""
        with _no_gc():
            return self._take()

    def _take(self) -> Snapshot:
        m = self.machine
        if not self._ram:
            self._start()
        dom = m.domain
        ram, new_pages = [], 0
        for t in self._ram:
            v, n = t.commit()
            ram.append(v)
            new_pages += n
        frames, n_frames = self._frames.commit()
        kept = {id(v[1]) for v in self._last_copies.values()}
        recs = capture_objects([m], self._last_copies)
        vcpus: list[Vcpu] = m.vcpus
        contexts = [v.cpu.uc.context_save() for v in vcpus]
        clocks = [v.clock.save() for v in vcpus]
        self._serial += 1
        snap = Snapshot(self._serial, ram, frames, recs, contexts, clocks, dom.trace.seq,
                        m.turns, m.pumps, m.now(), [v.clock.units for v in vcpus])
        snap.ram_pages = new_pages
        snap.size = (new_pages * (PAGE_SIZE + 80) + n_frames * 200 + _records_size(recs, kept)
                     + sum(c.size for c in contexts) + sum(len(c) for c in clocks))
        return snap

    def restore(self, snap: Snapshot) -> None:
        """Put the machine back as it was at snap (stopped)."""
        with _no_gc():
            self._restore(snap)

    def _restore(self, snap: Snapshot) -> None:
        m = self.machine
        dom = m.domain
        engines = [v.cpu.uc for v in m.vcpus]
        for t, v in zip(self._ram, snap.ram, strict=True):
            t.restore(v, engines)
        self._frames.restore(snap.frames)
        restore_objects(snap.records)
        for v, ctx, clk in zip(m.vcpus, snap.contexts, snap.clocks, strict=True):
            v.cpu.uc.context_restore(ctx)
            v.clock.load(clk)
            v.cpu.flush_tlb()                   # mappings may differ (code changed was dropped above)
        dom.trace.seq = snap.trace_seq
        dom.stub_cache.clear()
        for v in m.vcpus:
            dom.mask_observer.vcpu_info_moved(v)    # the mask byte may be elsewhere now
            v.debug.rearm()                         # the guest's breakpoints as its DR7 says now
        self.restores += 1

    def freed_by_dropping(self, snap: Snapshot, successor: Snapshot | None) -> int:
        """What dropping snap frees, the next snapshot kept being `successor` (None: the
        newest contents tracked)."""
        n = 0
        for i, v in enumerate(snap.ram):
            nxt = successor.ram[i] if successor is not None else self._ram[i].latest
            n += len(VersionedMap.only_in(v, nxt)) * (PAGE_SIZE + 80)
        nf = successor.frames if successor is not None else self._frames.latest
        n += len(VersionedMap.only_in(snap.frames, nf)) * 200
        n += _records_size(snap.records) + sum(c.size for c in snap.contexts)
        return n

    def close(self) -> None:
        """Stop tracking (a later take() starts again from the contents then)."""
        for t in self._ram:
            t.close()
        self._ram = []

