"""vcpus as gdb threads: thread id = vcpu id + 1 (gdb reserves 0 for "any" and -1 for "all").

gdb refreshes its thread list at every stop (infrun's normal_stop), so qXfer:threads is
read once per stepi: the document is rebuilt only when something it shows changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as xml_escape

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu


def tid_of(vcpu_id: int) -> int:
    return vcpu_id + 1


def vcpu_of(tid: int) -> int:
    return tid - 1


def _state(v: Vcpu) -> tuple[str, int, int] | tuple[str]:
    """What the thread list shows of a vcpu: its state, then (when it is up) the upcall
    mask and pending flag from its vcpu_info."""
    state = v.state.value
    if state == "down":
        return (state,)
    try:
        return state, v.upcall_mask, v.upcall_pending
    except Exception:           # vcpu_info not reachable: show the state alone
        return (state,)


def describe(v: Vcpu) -> str:
    """What qThreadExtraInfo and `info threads` show."""
    st = _state(v)
    if len(st) == 1:
        return f"vcpu{v.id} {st[0]}"
    ev = "events masked" if st[1] else "events unmasked"
    if st[2]:
        ev += ", pending"
    return f"vcpu{v.id} {st[0]}, {ev}"


class ThreadList:
    """The qXfer:threads:read document of a machine's vcpus, rebuilt when it changes."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._doc = b""

    def xml(self, vcpus: list[Vcpu]) -> bytes:
        key = tuple(_state(v) for v in vcpus)
        if key != self._key:
            out = ['<?xml version="1.0"?>\n<threads>\n']
            for v in vcpus:
                out.append(f'  <thread id="{tid_of(v.id):x}" core="{v.id}" name="vcpu{v.id}">'
                           f"{xml_escape(describe(v))}</thread>\n")
            out.append("</threads>\n")
            self._key, self._doc = key, "".join(out).encode()
        return self._doc
