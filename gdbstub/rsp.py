"""gdb remote serial protocol framing: checksums, binary escaping, hex helpers, and an
incremental reader that turns a byte stream into protocol events.

Per gdb's manual ("Overview" of the Remote Protocol appendix):
* a packet is ``$payload#cc`` where ``cc`` is the modulo-256 sum of the payload bytes
  (as transmitted, i.e. after escaping), in two lower-case or upper-case hex digits;
* the receiver answers ``+`` (good) or ``-`` (bad checksum: please retransmit) until
  ``QStartNoAckMode`` switched acknowledgments off;
* a bare 0x03 byte outside a packet is an interrupt request (Ctrl-C);
* binary data (X packets, qXfer replies) escapes ``$``, ``#``, ``}`` and ``*`` as
  ``}`` followed by the byte XOR 0x20.

The reader never raises on malformed input: every byte sequence maps to events, and a
packet that grows past ``max_payload`` is discarded up to its end and reported as
oversized (the server then answers it with an empty reply).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ESCAPE = 0x7D
INTERRUPT = 0x03
_NEEDS_ESCAPE = re.compile(rb"[\$#\}\*]")
_HEX_DIGITS = b"0123456789abcdefABCDEF"


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#cc`` (payload already escaped where it carries binary data)."""
    return b"$%b#%02x" % (payload, sum(payload) & 0xFF)


def escape(data: bytes) -> bytes:
    """Binary escaping for data sent inside a packet."""
    return _NEEDS_ESCAPE.sub(lambda m: bytes((ESCAPE, m.group()[0] ^ 0x20)), data)


def unescape(data: bytes) -> bytes:
    """Undo binary escaping (X packet data). A trailing lone escape byte is dropped."""
    if b"}" not in data:
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        j = data.find(b"}", i)
        if j < 0:
            out += data[i:]
            break
        out += data[i:j]
        if j + 1 < n:
            out.append(data[j + 1] ^ 0x20)
        i = j + 2
    return bytes(out)


def fromhex(text: bytes) -> bytes:
    """Hex digits to bytes; raises ValueError on anything else (odd length included)."""
    if len(text) % 2 or text.translate(None, _HEX_DIGITS):
        raise ValueError(f"not hex: {text[:40]!r}")
    return bytes.fromhex(text.decode("ascii"))


def parse_hex(text: bytes) -> int:
    """A hex number as gdb sends it (no sign, no 0x prefix); ValueError otherwise."""
    if not text or text.translate(None, _HEX_DIGITS):
        raise ValueError(f"not a hex number: {text[:40]!r}")
    return int(text, 16)


# --------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class Event:
    """One thing the peer sent: kind is 'packet', 'ack', 'nak', 'interrupt',
    'bad_checksum' (a packet whose checksum did not match) or 'oversized'."""

    kind: str
    payload: bytes = b""


ACK = Event("ack")
NAK = Event("nak")
INTERRUPT_EVENT = Event("interrupt")


class PacketReader:
    """Incremental parser: feed() bytes as they arrive, get complete events back."""

    def __init__(self, max_payload: int = 0x4000) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._in_packet = False
        self._oversized = False
        self._discarded = 0

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet held back."""
        return len(self._buf) + self._discarded

    def feed(self, data: bytes) -> list[Event]:
        n = len(data)
        if (not self._buf and not self._in_packet and n >= 4 and data[0] == 0x24 and data[n - 3] == 0x23
                and data.find(b"#", 1) == n - 3 and data.find(b"$", 1) < 0 and n - 4 <= self.max_payload):
            # the usual case, one whole packet: what the loop below would make of it, faster
            payload = data[1:-3]
            try:
                ok = parse_hex(data[-2:]) == sum(payload) & 0xFF
            except ValueError:
                ok = False
            return [Event("packet", payload) if ok else Event("bad_checksum", payload)]
        events: list[Event] = []
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n:
            if not self._in_packet:
                # between packets: acks, interrupts, the start of a packet; other bytes are noise
                start = buf.find(b"$", pos)
                end = n if start < 0 else start
                for b in buf[pos:end]:
                    if b == 0x2B:
                        events.append(ACK)
                    elif b == 0x2D:
                        events.append(NAK)
                    elif b == INTERRUPT:
                        events.append(INTERRUPT_EVENT)
                if start < 0:
                    pos = n
                    break
                self._in_packet = True
                self._oversized = False
                self._discarded = 0
                pos = start + 1
                continue
            hash_at = buf.find(b"#", pos)
            restart = buf.find(b"$", pos, hash_at if hash_at >= 0 else n)
            if restart >= 0:
                # a '$' cannot occur inside a packet (it is escaped): the previous packet was
                # cut short; drop it and start over at the new '$'
                self._in_packet = False
                pos = restart
                continue
            if hash_at < 0:
                if (n - pos) + self._discarded > self.max_payload:
                    self._oversized = True
                    self._discarded += n - pos
                    pos = n
                break
            if hash_at + 2 >= n:          # the checksum has not fully arrived
                if (hash_at - pos) + self._discarded > self.max_payload:
                    self._discarded += hash_at - pos
                    self._oversized = True
                    del buf[pos:hash_at]
                    n = len(buf)
                    hash_at = pos
                break
            payload = bytes(buf[pos:hash_at])
            cks = bytes(buf[hash_at + 1: hash_at + 3])
            pos = hash_at + 3
            self._in_packet = False
            if self._oversized or len(payload) > self.max_payload:
                events.append(Event("oversized"))
                continue
            try:
                ok = parse_hex(cks) == checksum(payload)
            except ValueError:
                ok = False
            events.append(Event("packet", payload) if ok else Event("bad_checksum", payload))
        del buf[:pos]
        return events
