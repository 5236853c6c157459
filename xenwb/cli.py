"""The `xenwb` command: info, run, examples."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from xenwb import __version__
from xenwb.errors import XenwbError

EXIT_OK, EXIT_GUEST, EXIT_WORKBENCH = 0, 1, 2


def _add_boot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("guest", nargs="?", help="guest kernel ELF, or a bundled example name (default: pvdemo-pae)")
    p.add_argument("--memory", type=int, default=64, metavar="MiB", help="guest memory (default 64)")
    p.add_argument("--cmdline", default="", help="kernel command line (start_info.cmd_line)")
    p.add_argument("--module", metavar="FILE", help="ramdisk/module loaded after the kernel")
    p.add_argument("--vcpus", type=int, default=1, help="number of vcpus (default 1)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xenwb", description="Workbench for Xen PV guests: boot, trace, debug.")
    ap.add_argument("--version", action="version", version=f"xenwb {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show a guest's Xen notes and the start-of-day layout")
    p.add_argument("guest", help="guest kernel ELF, or a bundled example name")
    p.add_argument("--memory", type=int, default=64, metavar="MiB", help="memory used to compute the layout")
    p.add_argument("--module", metavar="FILE", help="module whose size enters the layout")

    p = sub.add_parser("run", help="boot a guest; its console goes to stdout")
    _add_boot_options(p)
    p.add_argument("--max-instructions", type=int, metavar="N", help="stop after N guest instructions")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this much virtual time")
    p.add_argument("--trace", metavar="FILE", help="write every event to FILE (JSON lines; .json: Perfetto)")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    _add_plugin_options(p)
    # gdb remote stub (gdbstub/, issue 4)
    p.add_argument("--gdb", nargs="?", const="127.0.0.1:1234", metavar="[HOST:]PORT",
                   help="serve gdb's remote protocol (default 127.0.0.1:1234; another host only when given)")
    p.add_argument("--wait", action="store_true",
                   help="with --gdb: halt before the guest's first instruction until gdb continues (qemu -S)")

    p = sub.add_parser("trace", help="capture a trace of a guest run (JSONL or Perfetto)")
    _add_boot_options(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="trace file to write")
    p.add_argument("--format", choices=["jsonl", "perfetto"], help="default: from the file name (.json = perfetto)")
    p.add_argument("--name", help="only hypercalls with these names (comma-separated)")
    p.add_argument("--vcpu", help="only events of these vcpus (comma-separated)")
    p.add_argument("--failed", action="store_true", help="only hypercalls that failed")
    p.add_argument("--range", help="only hypercalls called from LO-HI or LO+SIZE")
    p.add_argument("--until", default="shutdown",
                   help="stop condition: shutdown (default), SYMBOL, events:N, time:SECONDS")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    _add_plugin_options(p)

    p = sub.add_parser("shell", help="full-screen workbench: console, hypercalls, vcpus, disassembly, commands")
    _add_boot_options(p)
    p.add_argument("--run", action="store_true", help="start the guest at once")
    p.add_argument("--gdb", nargs="?", const="127.0.0.1:1234", metavar="[HOST:]PORT",
                   help="also serve gdb on this address (default 127.0.0.1:1234)")

    p = sub.add_parser("examples", help="list the bundled example guests (building them)")
    p.add_argument("--no-build", action="store_true", help="list without building")
    return ap


def _add_plugin_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=None, metavar="NAME",
                   help="enable a plugin (repeatable; 'all' for every plugin)")
    p.add_argument("--exec", action="append", default=[], metavar="COMMAND", dest="exec_",
                   help="run a plugin/monitor command when the guest stops (repeatable), e.g. 'hypercalls summary'")
    p.add_argument("--json", action="store_true", help="print --exec results as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            from xenwb.info import cmd_info
            return cmd_info(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "examples":
            return cmd_examples(args)
        if args.command == "trace":
            return cmd_trace(args)
        if args.command == "shell":
            return cmd_shell(args)
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
    from xenwb.examples import list_examples
    exs = list_examples()
    if not exs:
        raise XenwbError("no bundled examples found (examples/guests is missing)")
    width = max(len(e.name) for e in exs)
    for e in exs:
        path = e.path if args.no_build else e.build()
        print(f"{e.name:<{width}}  {path}")
        print(f"{'':<{width}}  {e.description}")
    return EXIT_OK


def _session(args: argparse.Namespace, plugins: tuple[str, ...], event_filter=None):
    from xenwb.builder import load_module
    from xenwb.session import Session
    out = sys.stdout.buffer

    def sink(data: bytes) -> None:
        out.write(data)
        out.flush()

    if args.vcpus < 1:
        raise XenwbError("--vcpus must be at least 1")
    return Session(args.guest, memory_mib=args.memory, cmdline=args.cmdline, module=load_module(args.module),
                   vcpus=args.vcpus, plugins=plugins, console=sink, event_filter=event_filter)


def _plugins(args: argparse.Namespace, default: tuple[str, ...]) -> tuple[str, ...]:
    from xenwb.session import ALL_PLUGINS
    chosen = args.plugin
    if not chosen:
        needed = default
        if args.exec_:
            needed = ALL_PLUGINS
        return needed
    if "all" in chosen:
        return ALL_PLUGINS
    return tuple(chosen)


def _run_and_report(args: argparse.Namespace, session, until) -> int:
    from xenwb.machine import StopReason
    m = session.machine
    old = signal.signal(signal.SIGINT, lambda *_: m.stop())
    old_term = signal.signal(signal.SIGTERM, lambda *_: m.stop())
    try:
        result = session.run(until)
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
        session.close()
    dom = m.domain
    for line in args.exec_:
        ok, text = m.commands.execute(m, line, "json" if args.json else "text")
        print(text if ok else f"xenwb: {line}: {text}")
    if not args.quiet:
        print(f"xenwb: {result.reason.value}{f' ({result.detail})' if result.detail else ''}; "
              f"{dom.stats['hypercalls']} hypercalls, {dom.stats['faults']} faults bounced, "
              f"{m.now() / 1e9:.6f} s virtual time", file=sys.stderr)
    if result.reason is StopReason.shutdown and dom.shutdown_reason == 0:
        return EXIT_OK
    if result.reason is StopReason.requested:
        return EXIT_OK if until != "shutdown" else 130
    if result.reason is StopReason.time_limit and not isinstance(until, str):
        return EXIT_OK       # the stop condition the user asked for (--until time:S)
    return EXIT_GUEST


def cmd_run(args: argparse.Namespace) -> int:
    if args.max_instructions is not None and args.max_instructions <= 0:
        raise XenwbError("--max-instructions must be positive")
    if args.timeout is not None and args.timeout <= 0:
        raise XenwbError("--timeout must be positive")
    if args.wait and args.gdb is None:
        raise XenwbError("--wait needs --gdb")
    if args.gdb is not None:
        from gdbstub.server import parse_address
        try:
            parse_address(args.gdb)
        except ValueError as e:
            raise XenwbError(f"--gdb: {e} (write the guest before --gdb, or --gdb=PORT)") from None
    session = _session(args, _plugins(args, ()))
    if args.trace:
        session.record(args.trace)
    session.machine.set_limits(args.max_instructions, int(args.timeout * 1e9) if args.timeout else None)
    from xenwb.backends import stdin_input  # console input: a terminal, a pipe or a file (issue 7)
    console_in = session.machine.input_source = stdin_input()
    try:
        if args.gdb is not None:               # gdb remote stub (gdbstub/, issue 4)
            from gdbstub.server import GdbRun
            return _run_and_report(args, GdbRun(session, args.gdb, wait=args.wait), "shutdown")
        return _run_and_report(args, session, "shutdown")
    finally:
        if console_in is not None:
            console_in.close()


def cmd_shell(args: argparse.Namespace) -> int:
    from xenwb.builder import load_module
    from xenwb.session import ALL_PLUGINS, Session
    from xenwb.tui import Shell
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        raise XenwbError("xenwb shell needs a terminal (use xenwb run / xenwb trace in scripts)")
    session = Session(args.guest, memory_mib=args.memory, cmdline=args.cmdline, module=load_module(args.module),
                      vcpus=args.vcpus, plugins=ALL_PLUGINS)
    shell = Shell(session, gdb_address=args.gdb)
    if args.run:
        shell.ctl.cont()
    shell.run()
    return EXIT_OK


def _parse_until(text: str):
    from xenwb.session import Events, Symbol, Time
    if text == "shutdown":
        return "shutdown"
    kind, _, val = text.partition(":")
    try:
        if kind == "events" and val:
            return Events(int(val, 0))
        if kind == "time" and val:
            return Time(int(float(val) * 1e9))
    except ValueError:
        raise XenwbError(f"--until {text!r}: bad number") from None
    return Symbol(text)


def cmd_trace(args: argparse.Namespace) -> int:
    from plugins.filters import build_filter
    from xenwb.commands import CommandError
    try:
        flt = build_filter(args.name, args.vcpu, args.failed, args.range)
    except CommandError as e:
        raise XenwbError(str(e)) from None
    session = _session(args, _plugins(args, ("evmask",)), None if flt.empty else flt)
    session.record(args.output, args.format)
    return _run_and_report(args, session, _parse_until(args.until))


if __name__ == "__main__":
    sys.exit(main())
