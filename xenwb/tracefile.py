"""Trace writers. JSONL: one event per line, flushed per event so a crash or Ctrl-C
leaves a valid file up to the last event written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from xenwb.errors import XenwbError


class JsonlWriter:
    def __init__(self, fh: IO[str], path: str) -> None:
        self.fh = fh
        self.path = path
        self.count = 0

    @classmethod
    def open(cls, path: str) -> JsonlWriter:
        try:
            fh = Path(path).open("w", encoding="utf-8")
        except OSError as e:
            raise XenwbError(f"{path}: cannot write trace: {e.strerror or e}") from None
        return cls(fh, path)

    def write(self, ev: dict[str, Any]) -> None:
        try:
            self.fh.write(json.dumps(ev, separators=(",", ":"), default=str) + "\n")
            self.fh.flush()
        except OSError as e:
            raise XenwbError(f"{self.path}: trace write failed: {e.strerror or e}") from None
        self.count += 1

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass
