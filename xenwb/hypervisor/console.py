"""console_io: xen/drivers/char/console.c (do_console_io, guest_console_write).

The workbench allows writes from the domU (as a debug Xen does) and serves
reads from its console input queue. A domU's writes go to the hypervisor console
(`xl dmesg`), not to its PV console ring (`xl console`): Xen strips what is not
printable, keeps a partial line in the domain's 200-byte buffer until its newline,
and prints each line with the domain's prefix, "(d1) ".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor.hypercall import PREEMPT_BATCH, create_continuation
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EFAULT, E2BIG, ENOSYS = -Errno.EFAULT, -Errno.E2BIG, -Errno.ENOSYS


_CMD_NAMES = {C.CONSOLEIO_write: "write", C.CONSOLEIO_read: "read"}


def decode_console_io(vcpu: Vcpu, cmd: int, count: int, buf: int) -> dict:
    out = {"cmd": _CMD_NAMES.get(cmd) or str(cmd), "count": count, "buf": f"{buf:#x}"}
    if cmd == C.CONSOLEIO_write:
        try:
            out["text"] = vcpu.read_virt(buf, min(count, 256)).decode("latin-1")
        except GuestFault:
            pass
    return out


KBUF_SIZE = 128                 # console.c guest_console_write: char kbuf[128], one byte for the NUL
DOMAIN_PBUF_SIZE = 200          # xen/sched.h: a domain's partial-line buffer


# isprint() of Xen's ctype (ASCII 0x20-0x7e) or a tab: what guest_console_write keeps
_UNPRINTABLE = bytes(c for c in range(256) if not (0x20 <= c <= 0x7E or c == 0x09))


def console_lines(dom_pbuf: bytearray, domid: int, kbuf: bytes) -> tuple[int, bytes | None]:
    """One pass of guest_console_write's loop over a domU's kbuf: (bytes consumed, the line
    printed or None). It consumes up to and including the first newline, keeps printable
    characters, and prints "(dN) " + the buffered part + this part when it saw the newline or
    the buffer would overflow (guest_printk), else buffers."""
    end = kbuf.find(b"\n")
    newline = end >= 0
    consumed = end + 1 if newline else len(kbuf)
    out = bytes(kbuf[:end] if newline else kbuf).translate(None, _UNPRINTABLE)
    if not newline and len(dom_pbuf) + len(out) < DOMAIN_PBUF_SIZE - 1:
        dom_pbuf += out
        return consumed, None
    line = b"(d%d) " % domid + bytes(dom_pbuf) + bytes(out) + b"\n"
    dom_pbuf.clear()
    return consumed, line


def do_console_io(vcpu: Vcpu, cmd: int, count: int, buf: int, *_: int) -> int:
    dom = vcpu.domain
    if cmd == C.CONSOLEIO_write:
        pos = 0
        while pos < count:
            if pos >= PREEMPT_BATCH * KBUF_SIZE and not vcpu.in_multicall:
                # console.c: hypercall_create_continuation(__HYPERVISOR_console_io, "iih", ...)
                return create_continuation(vcpu, cmd, count - pos, buf + pos)
            chunk = min(count - pos, KBUF_SIZE - 1)
            try:
                data = vcpu.read_virt(buf + pos, chunk)
            except GuestFault:
                return EFAULT
            consumed, line = console_lines(dom.console_pbuf, dom.domid, data)
            if line is not None:
                dom.console_write(vcpu, line, hypervisor=True)
            pos += consumed
        return 0
    if cmd == C.CONSOLEIO_read:
        if count > 0x7FFFFFFF:
            return E2BIG
        queue = dom.console_io_input
        data = bytes(queue[:count])
        try:
            vcpu.write_virt(buf, data)
        except GuestFault:
            return EFAULT
        del queue[: len(data)]
        return len(data)
    return ENOSYS
