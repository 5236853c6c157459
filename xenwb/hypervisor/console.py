"""console_io: xen/drivers/char/console.c (do_console_io).

The workbench allows writes from the domU (as a debug Xen does) and serves
reads from its console input queue.
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


def decode_console_io(vcpu: Vcpu, cmd: int, count: int, buf: int) -> dict:
    out = {"cmd": {0: "write", 1: "read"}.get(cmd, str(cmd)), "count": count, "buf": f"{buf:#x}"}
    if cmd == C.CONSOLEIO_write:
        try:
            out["text"] = vcpu.read_virt(buf, min(count, 256)).decode("latin-1")
        except GuestFault:
            pass
    return out


def do_console_io(vcpu: Vcpu, cmd: int, count: int, buf: int, *_: int) -> int:
    dom = vcpu.domain
    if cmd == C.CONSOLEIO_write:
        pos = 0
        while pos < count:
            if pos >= PREEMPT_BATCH * 128 and not vcpu.in_multicall:
                # console.c: hypercall_create_continuation(__HYPERVISOR_console_io, "iih", ...)
                return create_continuation(vcpu, cmd, count - pos, buf + pos)
            chunk = min(count - pos, 128)   # console.c copies in 128-byte pieces
            try:
                data = vcpu.read_virt(buf + pos, chunk)
            except GuestFault:
                return EFAULT
            dom.console_write(vcpu, data)
            pos += chunk
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
