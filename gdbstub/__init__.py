"""gdb remote serial protocol server for xenwb machines.

`serve(controller, "[HOST:]PORT", wait=...)` runs a machine under the stub (what
`xenwb run GUEST --gdb` does); `GdbServer` and `GdbSession` are the pieces, over the
control API in xenwb/control.py.
"""

from gdbstub.server import DEFAULT_HOST, DEFAULT_PORT, GdbServer, parse_address, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GdbServer", "parse_address", "serve"]
