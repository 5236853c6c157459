"""The `xenwb` command: info, run, examples."""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NoReturn

from gdbstub.server import GdbRun, parse_address
from plugins.filters import build_filter
from xenwb import __version__
from xenwb.backends import stdin_input
from xenwb.builder import load_module
from xenwb.errors import XenwbError
from xenwb.examples import list_examples
from xenwb.info import cmd_info
from xenwb.inputlog import Input
from xenwb.machine import StopReason
from xenwb.registry import CommandError, InternalCommandError
from xenwb.session import ALL_PLUGINS, DEFAULT_HISTORY, Events, Session, Symbol, Time
from xenwb.timetravel import DEFAULT_MEMORY
from xenwb.tracefile import SESSION_KIND
from xenwb.tui import Shell

EXIT_OK, EXIT_GUEST, EXIT_WORKBENCH = 0, 1, 2
MEMORY_MIB = (4, 1536)          # the guest memory build_domain accepts
MAX_INSTRUCTIONS = 10 ** 18
MAX_SECONDS = 10 ** 9           # virtual seconds (about 31 years): nanoseconds stay well within 64 bits
MAX_HISTORY = 10 ** 9


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other workbench error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_WORKBENCH, f"xenwb: {message} (see '{self.prog} --help')\n")


def _e(n: int) -> str:
    """A power of ten as people write it: 1e9."""
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")


def parse_count(text: str) -> int:
    """A positive whole number, at most MAX_INSTRUCTIONS."""
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_INSTRUCTIONS:
        raise ValueError(f"{n} is out of range (1 to {_e(MAX_INSTRUCTIONS)})")
    return n


def parse_seconds(text: str) -> int:
    """Virtual seconds (a decimal number: more than 0, at most MAX_SECONDS) as nanoseconds."""
    try:
        s = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(s) or not 0 < s <= MAX_SECONDS:
        raise ValueError(f"{text!r}: want more than 0 and at most {_e(MAX_SECONDS)} seconds")
    ns = round(s * 1e9)
    if ns < 1:
        raise ValueError(f"{text!r}: less than the virtual clock's 1 ns")
    return ns


def parse_memory(text: str) -> int:
    """Guest memory in MiB, within MEMORY_MIB."""
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of MiB") from None
    lo, hi = MEMORY_MIB
    if not lo <= n <= hi:
        raise ValueError(f"{n} MiB: want between {lo} and {hi} MiB")
    return n


def _option(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser raising ValueError: its message, not argparse's generic one."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def parse_history(text: str) -> int:
    """Records each plugin keeps: a whole number, at least 1."""
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_HISTORY:
        raise ValueError(f"{n} is out of range (1 to {_e(MAX_HISTORY)})")
    return n


def _add_history_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", type=_option(parse_history), default=DEFAULT_HISTORY, metavar="N",
                   help=f"events each plugin keeps for its commands (default {DEFAULT_HISTORY:,}; older ones are "
                        "dropped, a trace file keeps them all)")


def _add_boot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("guest", nargs="?", help="guest kernel ELF, or a bundled example name (default: pvdemo-pae)")
    p.add_argument("--memory", type=_option(parse_memory), default=64, metavar="MiB",
                   help=f"guest memory ({MEMORY_MIB[0]} to {MEMORY_MIB[1]}, default 64)")
    p.add_argument("--cmdline", default="", help="kernel command line (start_info.cmd_line)")
    p.add_argument("--module", metavar="FILE",
                   help="ramdisk/module loaded after the kernel (a regular file, at most 1 GiB and the guest's memory)")
    p.add_argument("--vcpus", type=int, default=1, help="number of vcpus (default 1)")
    p.add_argument("--symbols", metavar="FILE",
                   help="a System.map for the guest's symbols (default: the ELF's, else a System.map next to it)")


def parse_checkpoint_ms(text: str) -> int:
    """--checkpoint-every: virtual milliseconds (a decimal number, at least 0.001) as ns."""
    try:
        ms = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of milliseconds") from None
    if not math.isfinite(ms) or not 0.001 <= ms <= MAX_SECONDS * 1000:
        raise ValueError(f"{text!r}: want at least 0.001 ms of virtual time")
    return round(ms * 1e6)


def parse_checkpoint_memory(text: str) -> int:
    """--checkpoint-memory: MiB (a whole number, 1 to 1048576) as bytes."""
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of MiB") from None
    if not 1 <= n <= 1 << 20:
        raise ValueError(f"{n} MiB: want between 1 and {1 << 20} MiB")
    return n << 20


def _add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint-every", type=_option(parse_checkpoint_ms), metavar="MS",
                   help="checkpoint the whole machine every MS milliseconds of virtual time (time travel: "
                        "restore, reverse-stepi/continue go back from the nearest one)")
    p.add_argument("--checkpoint-memory", type=_option(parse_checkpoint_memory), metavar="MiB",
                   default=DEFAULT_MEMORY, help=f"memory the checkpoints may take (default {DEFAULT_MEMORY >> 20}; "
                                                "the oldest automatic ones are dropped first)")


def _add_console_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hv-console", metavar="FILE",
                   help="write the hypervisor console (console_io lines, as `xl dmesg` shows them with their "
                        "`(d1) ` prefix) to FILE instead of stderr")
    p.add_argument("--merge-consoles", action="store_true",
                   help="put the hypervisor console's lines on stdout with the PV console's, in the order written")


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-instructions", type=_option(parse_count), metavar="N",
                   help="stop after N guest instructions (exact; counting halves emulation speed)")
    p.add_argument("--timeout", type=_option(parse_seconds), metavar="SECONDS",
                   help="stop after this much virtual time")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="xenwb", description="Workbench for Xen PV guests: boot, trace, debug.")
    ap.add_argument("--version", action="version", version=f"xenwb {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show a guest's Xen notes and the start-of-day layout")
    p.add_argument("guest", help="guest kernel ELF, or a bundled example name")
    p.add_argument("--memory", type=_option(parse_memory), default=64, metavar="MiB",
                   help="memory used to compute the layout (default 64)")
    p.add_argument("--module", metavar="FILE", help="module whose size enters the layout")
    p.add_argument("--symbols", metavar="FILE", help="a System.map for the guest's symbols")

    p = sub.add_parser("run", help="boot a guest; its PV console goes to stdout (stdin to it), the hypervisor "
                                   "console (console_io) to stderr")
    _add_boot_options(p)
    _add_console_options(p)
    _add_limit_options(p)
    p.add_argument("--trace", metavar="FILE", help="write every event to FILE (JSON lines; .json: Perfetto)")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    _add_plugin_options(p)
    # gdb remote stub (gdbstub/, issue 4)
    p.add_argument("--gdb", nargs="?", const="127.0.0.1:1234", metavar="[HOST:]PORT",
                   help="serve gdb's remote protocol (default 127.0.0.1:1234; another host only when given)")
    p.add_argument("--wait", action="store_true",
                   help="with --gdb: halt before the guest's first instruction until gdb continues (qemu -S)")
    _add_checkpoint_options(p)

    p = sub.add_parser("trace", help="capture a trace of a guest run (JSONL or Perfetto); stdin goes to its console")
    _add_boot_options(p)
    _add_console_options(p)
    _add_limit_options(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="trace file to write")
    p.add_argument("--format", choices=["jsonl", "perfetto"], help="default: from the file name (.json = perfetto)")
    p.add_argument("--vcpu", metavar="V[,V]",
                   help="only events of these vcpus (comma-separated), of every kind")
    p.add_argument("--name", metavar="N[,N]",
                   help="only hypercalls with these names (comma-separated; multicall entries included): "
                        "no other kind of event")
    p.add_argument("--failed", action="store_true",
                   help="only hypercalls that failed (result < 0; multicall entries included): no other kind of event")
    p.add_argument("--range", metavar="LO-HI",
                   help="only hypercalls called from LO-HI or LO+SIZE: no other kind of event")
    p.add_argument("--until", default="shutdown",
                   help="stop condition: shutdown (default), SYMBOL (stops before its first instruction), "
                        "events:N (events written), time:SECONDS")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    _add_plugin_options(p)
    _add_checkpoint_options(p)

    p = sub.add_parser("shell", help="full-screen workbench: console, hypercalls, vcpus, disassembly, commands")
    _add_boot_options(p)
    p.add_argument("--run", action="store_true", help="start the guest at once")
    _add_history_option(p)
    p.add_argument("--gdb", nargs="?", const="127.0.0.1:1234", metavar="[HOST:]PORT",
                   help="also serve gdb on this address (default 127.0.0.1:1234)")
    _add_checkpoint_options(p)

    p = sub.add_parser("replay", help="run a recorded session again (the trace's guest, options and input) "
                                      "and check that it gives the same trace, byte for byte")
    p.add_argument("trace", help="a JSONL trace written by xenwb run --trace or xenwb trace")
    p.add_argument("-o", "--output", metavar="FILE", help="write the replayed trace here too")
    p.add_argument("--guest", help="the guest ELF, when it is no longer where the trace says")
    p.add_argument("--module", metavar="FILE", help="the module, when the recorded run had one")
    p.add_argument("--symbols", metavar="FILE", help="the System.map, when it is no longer where the trace says")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")

    p = sub.add_parser("examples", help="list the bundled example guests (building them)")
    p.add_argument("--no-build", action="store_true", help="list without building")
    return ap


def _add_plugin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=None, metavar="NAME",
                   help="enable a plugin (repeatable; 'all' for every plugin)")
    _add_history_option(p)
    p.add_argument("--exec", action="append", default=[], metavar="COMMAND", dest="exec_",
                   help="run a plugin/monitor command when the guest stops (repeatable), e.g. 'hypercalls summary'")
    p.add_argument("--json", action="store_true", help="print --exec results as JSON")


def _check_gdb_address(args: argparse.Namespace) -> None:
    """--gdb's [HOST:]PORT is well formed (the host is resolved and bound when the stub starts)."""
    try:
        parse_address(args.gdb)
    except ValueError as e:
        hint = "" if "range" in str(e) else " (write the guest before --gdb, or --gdb=PORT)"
        raise XenwbError(f"--gdb: {e}{hint}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return cmd_info(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "examples":
            return cmd_examples(args)
        if args.command == "trace":
            return cmd_trace(args)
        if args.command == "shell":
            return cmd_shell(args)
        if args.command == "replay":
            return cmd_replay(args)
    except XenwbError as e:
        print(f"xenwb: {e}", file=sys.stderr)
        return EXIT_WORKBENCH
    except KeyboardInterrupt:
        print("xenwb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_WORKBENCH
    return EXIT_WORKBENCH


def cmd_examples(args: argparse.Namespace) -> int:
    exs = list_examples()
    if not exs:
        raise XenwbError("no bundled examples found (examples/guests is missing)")
    width = max(len(e.name) for e in exs)
    for e in exs:
        path = e.path if args.no_build else e.build()
        print(f"{e.name:<{width}}  {path}")
        print(f"{'':<{width}}  {e.description}")
    return EXIT_OK


def _writer(out: BinaryIO) -> Callable[[bytes], None]:
    """A console sink writing to out, flushed at every write."""
    def sink(data: bytes) -> None:
        out.write(data)
        out.flush()
    return sink


def _hv_console_file(path: str | None) -> BinaryIO:
    """Where the hypervisor console goes: stderr, or the --hv-console file (created anew)."""
    if path is None:
        return sys.stderr.buffer
    try:
        return open(path, "wb")   # noqa: SIM115 - open for the whole run, closed at exit
    except OSError as e:
        raise XenwbError(f"--hv-console {path}: {e.strerror}") from None


def _session(args: argparse.Namespace, plugins: tuple[str, ...], event_filter=None, time_travel: bool = False):
    """The Session for run/trace: the module checked and read, the plugins enabled, the
    --exec commands checked; nothing has run yet."""
    if args.vcpus < 1:
        raise XenwbError("--vcpus must be at least 1")
    module = load_module(args.module, args.memory)
    hv_sink = None if args.merge_consoles else _writer(_hv_console_file(args.hv_console))
    try:
        session = Session(args.guest, memory_mib=args.memory, cmdline=args.cmdline, module=module,
                          vcpus=args.vcpus, plugins=plugins, console=_writer(sys.stdout.buffer),
                          hv_console=hv_sink, event_filter=event_filter,
                          symbols=args.symbols, history=args.history, time_travel=time_travel,
                          checkpoint_every_ns=args.checkpoint_every, checkpoint_memory=args.checkpoint_memory)
    except CommandError as e:          # a --plugin name that does not exist
        raise XenwbError(str(e)) from None
    if "all" in plugins:               # third-party plugins that could not be loaded: one line each
        for err in session.plugins.load_errors:
            print(f"xenwb: {err}", file=sys.stderr)
    _check_exec(session, args.exec_)
    return session


def _check_exec(session, lines: Sequence[str]) -> None:
    """Every --exec line names a known command (checked before the guest runs; its arguments
    are checked when it runs)."""
    reg = session.machine.commands
    for line in lines:
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise XenwbError(f"--exec {line!r}: cannot parse: {e}") from None
        if not words:
            raise XenwbError("--exec '': empty command (try --exec help)")
        hit = reg.lookup(words)
        if hit is not None:
            cmd, argv = hit
            if cmd.check is not None:           # declared arguments: checked now, not after the run
                try:
                    cmd.check(argv)
                except CommandError as e:
                    raise XenwbError(f"--exec {line!r}: {e}") from None
            continue
        for name in sorted(session.plugins.available):      # a command of a plugin left disabled
            try:
                plugin = session.plugins.get(name)
                names = [n.split() for n in session.plugins.command_names(plugin)]
            except Exception:  # noqa: BLE001 - a broken third-party plugin must not stop the workbench
                continue
            if not plugin.enabled and any(n == words[:len(n)] for n in names):
                raise XenwbError(f"--exec {line!r}: a command of plugin {name!r}, which is not enabled "
                                 f"(add --plugin {name})")
        best, score = None, 0.0
        for name in reg.names():
            n = len(name.split())
            r = difflib.SequenceMatcher(None, " ".join(words[:n]), name).ratio()
            if r > score:
                best, score = name, r
        near = f"; did you mean {best!r}?" if best is not None and score >= 0.6 else "; try --exec help"
        raise XenwbError(f"--exec {line!r}: unknown command {words[0]!r}{near}")


def _plugins(args: argparse.Namespace, default: tuple[str, ...]) -> tuple[str, ...]:
    chosen = args.plugin
    if not chosen:
        needed = default
        if args.exec_ or "all" in default:
            needed = ALL_PLUGINS
        return needed
    if "all" in chosen:
        return ALL_PLUGINS
    return tuple(chosen)


def _start_input(args: argparse.Namespace, session):
    """Limits set, stdin attached to the guest's console (run and trace alike); the input source."""
    session.machine.set_limits(args.max_instructions, args.timeout)
    session.machine.input_source = stdin_input()
    return session.machine.input_source


def _run_and_report(args: argparse.Namespace, session, until) -> int:
    m = session.machine
    dom = m.domain
    old = signal.signal(signal.SIGINT, lambda *_: m.stop())
    old_term = signal.signal(signal.SIGTERM, lambda *_: m.stop())
    try:
        result = session.run(until)
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
        session.close()
    failed = False
    for line in args.exec_:
        try:
            print(m.commands.run(m, line).render("json" if args.json else "text"))
        except InternalCommandError as e:
            failed = True
            print(f"xenwb: {e}", file=sys.stderr)
        except CommandError as e:
            failed = True
            print(f"xenwb: --exec {line!r}: {e}", file=sys.stderr)
    sys.stdout.flush()
    if not args.quiet:
        print(f"xenwb: {result.reason.value}{f' ({result.detail})' if result.detail else ''}; "
              f"{dom.stats['hypercalls']} hypercalls (+{dom.stats['multicall_entries']} multicall entries), "
              f"{dom.stats['faults']} faults bounced, {m.now() / 1e9:.6f} s virtual time", file=sys.stderr)
    if failed:
        return EXIT_WORKBENCH
    if result.reason is StopReason.shutdown and dom.shutdown_reason == 0:
        return EXIT_OK
    if result.reason is StopReason.requested:
        return EXIT_OK if until != "shutdown" else 130
    if (result.reason is StopReason.time_limit and isinstance(until, Time)
            and (args.timeout is None or until.ns <= args.timeout)):
        return EXIT_OK       # the stop condition the user asked for (--until time:S), not --timeout
    return EXIT_GUEST


def cmd_run(args: argparse.Namespace) -> int:
    if args.wait and args.gdb is None:
        raise XenwbError("--wait needs --gdb")
    if args.gdb is not None:
        _check_gdb_address(args)
    # under gdb every plugin is on from the start, so `monitor hypercalls ...` has the whole history
    # under gdb the history starts at boot (reverse execution, restart)
    session = _session(args, _plugins(args, ("all",) if args.gdb is not None else ()), time_travel=args.gdb is not None)
    if args.trace:
        session.record(args.trace, header=_header(args, "shutdown"))
    console_in = _start_input(args, session)
    try:
        if args.gdb is not None:               # gdb remote stub (gdbstub/, issue 4)
            return _run_and_report(args, GdbRun(session, args.gdb, wait=args.wait), "shutdown")
        return _run_and_report(args, session, "shutdown")
    finally:
        if console_in is not None:
            console_in.close()


def _header(args: argparse.Namespace, until: str) -> dict[str, Any]:
    """What a trace's header records of the command line (for `xenwb replay`)."""
    return {"until": until, "max_instructions": args.max_instructions, "timeout_ns": args.timeout,
            "module_path": os.path.abspath(args.module) if args.module else None,
            "filter": {k: getattr(args, k, None) for k in ("name", "vcpu", "failed", "range")}}


def _read_trace(path: str) -> tuple[dict[str, Any], list[str]]:
    """A JSONL trace's header and its event lines."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise XenwbError(f"{path}: cannot read the trace: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise XenwbError(f"{path}: not a JSONL trace (not text)") from None
    if not lines:
        raise XenwbError(f"{path}: empty trace")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        raise XenwbError(f"{path}: not a JSONL trace (the Perfetto format cannot be replayed; record with "
                         "--trace FILE.jsonl)") from None
    if not isinstance(head, dict) or head.get("kind") != SESSION_KIND:
        raise XenwbError(f"{path}: no session header in the first line (a trace from an older xenwb?)")
    return head, lines[1:]


def cmd_replay(args: argparse.Namespace) -> int:
    head, lines = _read_trace(args.trace)
    inputs = []
    for n, line in enumerate(lines, 2):
        if '"kind":"input"' not in line:
            continue
        try:
            inputs.append(Input.from_event(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as e:
            raise XenwbError(f"{args.trace}:{n}: bad input record: {e}") from None
    guest = args.guest or head.get("path") or head.get("guest")
    module_path = args.module or head.get("module_path")
    module = load_module(module_path, head.get("memory_mib", 64)) if module_path else None
    if head.get("module") and (module is None or hashlib.sha256(module).hexdigest() != head["module"]):
        raise XenwbError("the recorded run had a module" + (" that differs from " + module_path if module_path else "")
                         + ": give it with --module FILE")
    flt = head.get("filter") or {}
    try:
        event_filter = build_filter(flt.get("name"), flt.get("vcpu"), bool(flt.get("failed")), flt.get("range"))
        session = Session(guest, memory_mib=int(head.get("memory_mib", 64)), cmdline=str(head.get("cmdline", "")),
                          module=module, vcpus=int(head.get("vcpus", 1)), plugins=(),
                          symbols=args.symbols or head.get("symbols"),
                          event_filter=None if event_filter.empty else event_filter, time_travel=False,
                          console=lambda b: (sys.stdout.buffer.write(b), sys.stdout.flush()))
    except CommandError as e:
        raise XenwbError(str(e)) from None
    out = args.output or os.path.join(tempfile.mkdtemp(prefix="xenwb-replay-"), "replay.jsonl")
    extra = {k: v for k, v in head.items() if k not in ("seq", "vcpu", "time_ns", "kind", "name")
             and k not in session.describe()}
    session.record(out, "jsonl", header=extra)
    session.machine.inputs.load(inputs)
    session.machine.set_limits(head.get("max_instructions"), head.get("timeout_ns"))
    until = _parse_until(str(head.get("until") or "shutdown"))
    last = json.loads(lines[-1]) if lines else {}
    if last.get("kind") not in ("shutdown", "crash") and lines:
        until = Events(len(lines))      # the recording ended there (interrupted, a limit): so does the replay
    try:
        result = session.run(until)
    finally:
        session.close()
    _, again = _read_trace(out)
    same = again == lines
    if not args.quiet:
        print(f"xenwb: {result.reason.value}{f' ({result.detail})' if result.detail else ''}; "
              f"{len(inputs)} inputs replayed", file=sys.stderr)
    if same:
        if not args.quiet:
            print(f"xenwb: replay identical: {len(lines)} events", file=sys.stderr)
        return EXIT_OK
    for i, (a, b) in enumerate(zip(lines, again, strict=False)):
        if a != b:
            print(f"xenwb: replay differs at event {i} (line {i + 2}):\n  recorded: {a[:200]}\n  replayed: {b[:200]}",
                  file=sys.stderr)
            break
    else:
        print(f"xenwb: replay differs: {len(lines)} events recorded, {len(again)} replayed", file=sys.stderr)
    return EXIT_GUEST


def cmd_shell(args: argparse.Namespace) -> int:
    if args.gdb is not None:
        _check_gdb_address(args)
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise XenwbError("xenwb shell needs a terminal (use xenwb run / xenwb trace in scripts)")
    session = Session(args.guest, memory_mib=args.memory, cmdline=args.cmdline,
                      module=load_module(args.module, args.memory), vcpus=args.vcpus, plugins=ALL_PLUGINS,
                      symbols=args.symbols, history=args.history,
                      checkpoint_every_ns=args.checkpoint_every, checkpoint_memory=args.checkpoint_memory)
    shell = Shell(session, gdb_address=args.gdb)
    if args.run:
        shell.ctl.cont()
    shell.run()
    return EXIT_OK


def _parse_until(text: str):
    if text == "shutdown":
        return "shutdown"
    kind, _, val = text.partition(":")
    try:
        if kind == "events" and val:
            return Events(parse_count(val))
        if kind == "time" and val:
            return Time(parse_seconds(val))
    except ValueError as e:
        raise XenwbError(f"--until {text!r}: {e}") from None
    return Symbol(text)


def cmd_trace(args: argparse.Namespace) -> int:
    try:
        flt = build_filter(args.name, args.vcpu, args.failed, args.range)
    except CommandError as e:
        raise XenwbError(str(e)) from None
    if flt.vcpus is not None and not flt.vcpus <= set(range(args.vcpus)):
        bad = ",".join(str(v) for v in sorted(flt.vcpus - set(range(args.vcpus))))
        ids = "0" if args.vcpus == 1 else f"0 to {args.vcpus - 1}"
        raise XenwbError(f"--vcpu {bad}: no such vcpu (this run has vcpu {ids}; see --vcpus)")
    until = _parse_until(args.until)
    session = _session(args, _plugins(args, ("evmask",)), None if flt.empty else flt)
    if isinstance(until, Symbol):
        session.address(until.name)            # an unknown symbol is an error before anything is written
    session.record(args.output, args.format, header=_header(args, args.until))
    console_in = _start_input(args, session)
    try:
        return _run_and_report(args, session, until)
    finally:
        if console_in is not None:
            console_in.close()


if __name__ == "__main__":
    sys.exit(main())
