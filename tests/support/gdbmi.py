"""Real gdb through its machine interface (pygdbmi), for the stub's end-to-end tests."""

from __future__ import annotations

import shutil
import time

from pygdbmi.gdbcontroller import GdbController

GDB = shutil.which("gdb")
STEP = 15.0          # bound for any single gdb command or stop
TEXT = ("console", "log", "target")


class Gdb:
    """A gdb/MI session: run() sends a command and returns its result record and console
    text; wait_stop() returns the next *stopped record."""

    def __init__(self, *args: str) -> None:
        self.mi = GdbController(command=[GDB or "gdb", "--nx", "--quiet", "--interpreter=mi3", *args],
                                time_to_check_for_additional_output_sec=0.01)
        self.records: list[dict] = []
        self.token = 100

    def _pull(self, timeout: float) -> None:
        self.records += self.mi.get_gdb_response(timeout_sec=timeout, raise_error_on_timeout=False)

    def run(self, cmd: str, timeout: float = STEP, ok: tuple[str, ...] = ("done", "running", "connected")
            ) -> tuple[dict, str]:
        self.token += 1
        tok = self.token
        if cmd.startswith("-"):
            line = f"{tok}{cmd}"
        else:
            quoted = cmd.replace("\\", "\\\\").replace('"', '\\"')
            line = f'{tok}-interpreter-exec console "{quoted}"'
        self.mi.write(line, read_response=False)
        console: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            for i, r in enumerate(self.records):
                if r.get("type") == "result" and r.get("token") == tok:
                    before = self.records[:i]
                    self.records = [x for x in before if x.get("type") not in TEXT] + self.records[i + 1:]
                    console += [x["payload"] for x in before if x.get("type") in ("console", "target")]
                    text = "".join(console)
                    assert r["message"] in ok, f"{cmd!r} -> {r['message']}: {r.get('payload')} {text}"
                    return r, text
            assert time.monotonic() < deadline, f"gdb did not answer {cmd!r} in {timeout}s: {self.records}"
            self._pull(0.05)

    def console(self, cmd: str, timeout: float = STEP) -> str:
        return self.run(cmd, timeout)[1]

    def wait_stop(self, timeout: float = STEP) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, r in enumerate(self.records):
                if r.get("type") == "notify" and r.get("message") == "stopped":
                    del self.records[i]
                    # gdb prints the stop location after the record: drop that text
                    self._pull(0.05)
                    self.records = [x for x in self.records if x.get("type") not in TEXT]
                    return r.get("payload") or {}
            assert time.monotonic() < deadline, f"no stop within {timeout}s: {self.records[-10:]}"
            self._pull(0.05)

    def cont(self, timeout: float = STEP) -> dict:
        self.run("-exec-continue")
        return self.wait_stop(timeout)

    def value(self, expr: str) -> str:
        """`output EXPR` (EXPR may start with a /FMT)."""
        sep = "" if expr.startswith("/") else " "
        return self.console(f"output{sep}{expr}").strip().splitlines()[-1]

    def close(self) -> None:
        try:
            self.mi.exit()
        except Exception:
            pass

    def python(self, call: str, timeout: float = STEP) -> str:
        """Run `python CALL` and return what it printed between "<<<" and ">>>". A call that
        resumes the target makes gdb answer ^running at once, so the wait is for that text
        (console records concatenated: gdb may split a long line); the stop records of what
        the call did are dropped with it."""
        self.token += 1
        tok = self.token
        self.mi.write(f'{tok}-interpreter-exec console "python {call}"', read_response=False)
        deadline = time.monotonic() + timeout
        while True:
            text = ""
            for i, r in enumerate(self.records):
                if r.get("type") == "result" and r.get("token") == tok and r["message"] == "error":
                    raise AssertionError(f"python {call}: {r.get('payload')}")
                if r.get("type") in ("console", "target"):
                    text += r["payload"]
                    if ">>>" in text and "<<<" in text:
                        self.records = self.records[i + 1:]
                        return text[text.index("<<<") + 3: text.index(">>>")]
            assert time.monotonic() < deadline, f"python {call}: no answer within {timeout}s"
            self._pull(0.05)
