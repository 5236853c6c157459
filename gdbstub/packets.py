"""Packet tables: every packet the stub understands is a `Command` (its name, its handler and
a declared parameter schema), matched and parsed the way QEMU's gdbstub does it
(gdbstub/gdbstub.c: GdbCmdParseEntry, cmd_parse_params, process_string_cmd).

A schema is a sequence of (type, delimiter) pairs, as QEMU's:

* types: ``l`` a hex number; ``t`` a thread-id (hex, ``-1``, ``0`` or ``pP.T``); ``o`` one
  byte; ``s`` raw bytes; ``x`` hex-encoded bytes (decoded); ``b`` binary data, escaped as
  gdb's manual says ("Overview": ``}`` then the byte XOR 0x20), unescaped;
* delimiters: ``,`` ``:`` ``;`` ``=`` end the field at the next such byte, ``.`` makes the
  field exactly one byte long, ``0`` runs it to the end of the packet;
* a ``|`` before a pair starts the optional parameters: the packet may end there.

Parameters are passed to the handler positionally; missing optional ones are left to the
handler's defaults. A packet that does not fit its schema (a bad number, a missing field,
bytes left over) raises ValueError, which the protocol answers with ``E22``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gdbstub.rsp import fromhex, parse_hex, unescape

ANY_THREAD = 0
ALL_THREADS = -1


def parse_tid(text: bytes) -> int:
    """A thread-id as gdb sends it: hex, '-1' (all), '0' (any), or the multiprocess 'pP.T'."""
    if text.startswith(b"p"):
        _, _, text = text[1:].partition(b".")
        if not text:
            return ALL_THREADS
    if text == b"-1":
        return ALL_THREADS
    return parse_hex(text)


def _one_byte(text: bytes) -> bytes:
    if len(text) != 1:
        raise ValueError(f"want one byte, got {text!r}")
    return text


_TYPES: dict[str, Callable[[bytes], object]] = {
    "l": parse_hex, "t": parse_tid, "o": _one_byte, "s": bytes, "x": fromhex, "b": unescape,
}
_DELIMITERS = ",:;=.0"


def compile_schema(schema: str) -> tuple[tuple[tuple[Callable[[bytes], object], bytes | None], ...], int]:
    """(fields as (converter, delimiter), number of required fields). Delimiter None: to the
    end of the packet; b"": exactly one byte."""
    fields: list[tuple[Callable[[bytes], object], bytes | None]] = []
    required = -1
    i = 0
    while i < len(schema):
        if schema[i] == "|":
            if required >= 0:
                raise ValueError(f"schema {schema!r}: two '|'")
            required = len(fields)
            i += 1
            continue
        kind, delim = schema[i], schema[i + 1: i + 2]
        if kind not in _TYPES or not delim or delim not in _DELIMITERS:
            raise ValueError(f"schema {schema!r}: bad pair {schema[i:i + 2]!r}")
        fields.append((_TYPES[kind], None if delim == "0" else b"" if delim == "." else delim.encode()))
        i += 2
    if fields and fields[-1][1] not in (None, b""):
        raise ValueError(f"schema {schema!r}: the last field must end the packet ('0') or be one byte ('.')")
    return tuple(fields), len(fields) if required < 0 else required


def parse_params(data: bytes, fields: tuple[tuple[Callable[[bytes], object], bytes | None], ...],
                 required: int) -> list[object]:
    """The parameters of one packet (the bytes after the command's name)."""
    out: list[object] = []
    pos, n = 0, len(data)
    for i, (conv, delim) in enumerate(fields):
        if pos >= n and i >= required:
            break
        if delim is None:
            end = nxt = n
        elif delim == b"":
            end = nxt = pos + 1
        else:
            end = data.find(delim, pos)
            if end < 0:
                end = nxt = n
            else:
                nxt = end + 1
        out.append(conv(data[pos:end]))
        pos = nxt
    if pos < n:
        raise ValueError(f"unexpected {data[pos:pos + 20]!r}")
    return out


@dataclass(frozen=True)
class Command:
    """One packet: `name` (the whole packet, or with `prefix` its start, parameters after),
    the handler (called with the protocol object and the parsed parameters) and its schema."""

    name: bytes
    handler: Callable[..., bytes | None]
    schema: str = ""
    prefix: bool = False
    fields: tuple[tuple[Callable[[bytes], object], bytes | None], ...] = field(init=False, repr=False,
                                                                                compare=False)
    required: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.schema and not self.prefix:
            raise ValueError(f"{self.name!r}: a command with parameters must be a prefix")
        fields, required = compile_schema(self.schema)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "required", required)


class CommandTable:
    """The commands, looked up as QEMU's process_string_cmd does (first match in table
    order), with exact names found by one dictionary lookup."""

    def __init__(self, *tables: Iterable[Command]) -> None:
        self.commands = tuple(c for t in tables for c in t)
        self._exact: dict[bytes, Command] = {}
        self._prefixes: dict[int, list[Command]] = {}
        for c in self.commands:
            if c.prefix:
                self._prefixes.setdefault(c.name[0], []).append(c)
            elif c.name in self._exact:
                raise ValueError(f"{c.name!r} listed twice")
            else:
                self._exact[c.name] = c

    def lookup(self, pkt: bytes) -> tuple[Command, list[object]] | None:
        """The command for a packet and its parsed parameters; None when no command matches
        (the protocol then answers with the empty reply: "not supported")."""
        c = self._exact.get(pkt)
        if c is not None:
            return c, []
        for c in self._prefixes.get(pkt[0], ()) if pkt else ():
            if pkt.startswith(c.name):
                return c, parse_params(pkt[len(c.name):], c.fields, c.required)
        return None
