"""vcpus as gdb threads: thread id = vcpu id + 1 (gdb reserves 0 for "any" and -1 for "all")."""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.sax.saxutils import escape as xml_escape

from gdbstub.rsp import parse_hex

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

ANY = 0
ALL = -1


def tid_of(vcpu_id: int) -> int:
    return vcpu_id + 1


def vcpu_of(tid: int) -> int:
    return tid - 1


def parse_tid(text: bytes) -> int:
    """A thread-id as gdb sends it: hex, '-1', '0', or the multiprocess 'pP.T' form."""
    if text.startswith(b"p"):
        _, _, text = text[1:].partition(b".")
        if not text:
            return ALL
    if text == b"-1":
        return ALL
    return parse_hex(text)


def describe(v: Vcpu) -> str:
    """What qThreadExtraInfo and `info threads` show: state, then the event channel
    view (upcall mask and pending), for a vcpu that is up."""
    state = v.state.value
    if state == "down":
        return f"vcpu{v.id} down"
    try:
        masked, pending = v.upcall_mask, v.upcall_pending
    except Exception:           # vcpu_info not reachable: say so rather than fail
        return f"vcpu{v.id} {state}"
    ev = "events masked" if masked else "events unmasked"
    if pending:
        ev += ", pending"
    return f"vcpu{v.id} {state}, {ev}"


def threads_xml(vcpus: list[Vcpu]) -> bytes:
    """qXfer:threads:read document."""
    out = ['<?xml version="1.0"?>\n<threads>\n']
    for v in vcpus:
        out.append(f'  <thread id="{tid_of(v.id):x}" core="{v.id}" name="vcpu{v.id}">'
                   f"{xml_escape(describe(v))}</thread>\n")
    out.append("</threads>\n")
    return "".join(out).encode()
