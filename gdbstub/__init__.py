"""gdb remote serial protocol server for xenwb machines.

`serve(controller, "[HOST:]PORT", wait=...)` runs a machine under the stub (what
`xenwb run GUEST --gdb` does). The pieces, over the control API in xenwb/control.py:
server.py (listening, one connection after the other), session.py (one connection and the
thread the machine runs in), transport.py (bytes, acknowledgments, interrupts),
protocol.py (packet semantics, dispatched through tables: packets.py), target.py (target
descriptions and register files, i386 and amd64), threads.py, memmap.py (the memory map
from the pagetables), syscalls.py (hypercall names for `catch syscall`), rsp.py (framing).
"""

from gdbstub.server import DEFAULT_HOST, DEFAULT_PORT, GdbServer, parse_address, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GdbServer", "parse_address", "serve"]
