"""The guest's console output as the workbench keeps it: every byte counted, only the last
ones kept (a guest that prints without end does not fill the host's memory; the output
itself streams to stdout, the shell's pane and trace files as it comes)."""

from __future__ import annotations

CONSOLE_KEEP = 1 << 20          # bytes kept for the shell and commands (up to twice this between trims)


class ConsoleTail:
    """Positions are absolute (bytes written since boot): ``len()`` counts them all, slices
    and ``find`` take and give absolute positions, and see only the tail from ``start`` on."""

    def __init__(self, keep: int = CONSOLE_KEEP) -> None:
        self.keep = keep
        self.total = 0
        self._buf = bytearray()

    @property
    def start(self) -> int:
        """Absolute position of the first byte still kept."""
        return self.total - len(self._buf)

    def __len__(self) -> int:
        return self.total

    def __bytes__(self) -> bytes:
        return bytes(self._buf)

    def __eq__(self, other: object) -> bool:
        """Equal to bytes that are the whole output (nothing dropped yet)."""
        if isinstance(other, (bytes, bytearray)):
            return self.start == 0 and self._buf == other
        if isinstance(other, ConsoleTail):
            return (self.total, self._buf) == (other.total, other._buf)
        return NotImplemented

    def __contains__(self, sub: bytes) -> bool:
        return sub in self._buf

    __hash__ = None  # type: ignore[assignment]

    def __iadd__(self, data: bytes) -> ConsoleTail:
        self._buf += data
        self.total += len(data)
        if len(self._buf) > 2 * self.keep:
            del self._buf[: len(self._buf) - self.keep]
        return self

    def truncate(self, n: int) -> None:
        """Back to the first n bytes written (time travel); kept bytes before n stay."""
        if n >= self.total:
            return
        if n <= self.start:
            self._buf.clear()
        else:
            del self._buf[n - self.start:]
        self.total = n

    def __getitem__(self, where: slice) -> bytes:
        if not isinstance(where, slice) or where.step not in (None, 1):
            raise TypeError("ConsoleTail takes slices of absolute positions")
        lo = self.start if where.start is None else max(where.start, self.start)
        hi = self.total if where.stop is None else min(where.stop, self.total)
        return bytes(self._buf[lo - self.start: max(lo, hi) - self.start])

    def find(self, sub: bytes, start: int = 0) -> int:
        i = self._buf.find(sub, max(0, start - self.start))
        return i + self.start if i >= 0 else -1
