"""Workbench backends behind the toolstack's ports: the PV console and xenstore.

Console: struct xencons_interface (public/io/console.h). The guest writes at
out_prod and notifies; the backend drains out_cons..out_prod to the user and
notifies back. Input goes into in[] at in_prod, then a notification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain


class ConsoleBackend:
    def __init__(self, dom: Domain, port: int) -> None:
        self.dom = dom
        self.port = port
        L = dom.abi.xencons_interface
        self.base = dom.console_mfn << 12  # type: ignore[attr-defined]
        self.off = {f: L.offset(f) for f in ("in_", "out", "in_cons", "in_prod", "out_cons", "out_prod")}
        self.notifications = 0

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
        out = bytearray()
        for i in range(avail):
            out.append(self.dom.mem.read(self.base + self.off["out"] + ((cons + i) & 2047), 1)[0])
        self._set("out_cons", cons + avail)
        self.dom.console_write(None, bytes(out))
        self.dom.evtchn.notify_guest(self.port)  # type: ignore[attr-defined]
        return bytes(out)

    def feed(self, data: bytes) -> int:
        """Queue user input into the guest's in[] ring; returns bytes accepted."""
        cons, prod = self._u32("in_cons"), self._u32("in_prod")
        space = 1024 - ((prod - cons) & 0xFFFFFFFF)
        n = max(0, min(space, len(data)))
        for i in range(n):
            self.dom.mem.write(self.base + self.off["in_"] + ((prod + i) & 1023), data[i: i + 1])
        if n:
            self._set("in_prod", prod + n)
            self.dom.evtchn.notify_guest(self.port)  # type: ignore[attr-defined]
        return n


class StoreBackend:
    """Xenstore ring endpoint. Requests are accepted and counted; the xenstored
    protocol is served by the xenstore issue's implementation when present."""

    def __init__(self, dom: Domain, port: int) -> None:
        self.dom = dom
        self.port = port
        self.notifications = 0

    def notify(self) -> None:
        self.notifications += 1
