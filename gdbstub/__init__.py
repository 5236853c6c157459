"""gdb remote serial protocol server for xenwb machines.

`serve_machine(machine, "[HOST:]PORT", wait=...)` runs a machine under the stub (what
`xenwb run GUEST --gdb` does); `GdbServer` and `GdbSession` are the pieces, over the
debug/control layer in xenwb/debug.py.
"""

from gdbstub.server import DEFAULT_HOST, DEFAULT_PORT, GdbServer, parse_address, serve_machine

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GdbServer", "parse_address", "serve_machine"]
