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
    p.add_argument("--trace", metavar="FILE", help="write every event as JSON lines to FILE")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")

    p = sub.add_parser("examples", help="list the bundled example guests (building them)")
    p.add_argument("--no-build", action="store_true", help="list without building")
    return ap


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


def cmd_run(args: argparse.Namespace) -> int:
    from xenwb.builder import load_module
    from xenwb.examples import resolve_guest
    from xenwb.machine import Machine, StopReason
    if args.max_instructions is not None and args.max_instructions <= 0:
        raise XenwbError("--max-instructions must be positive")
    if args.timeout is not None and args.timeout <= 0:
        raise XenwbError("--timeout must be positive")
    path = resolve_guest(args.guest)
    m = Machine(path, memory_mib=args.memory, cmdline=args.cmdline, module=load_module(args.module),
                vcpus=args.vcpus)
    out = sys.stdout.buffer

    def sink(data: bytes) -> None:
        out.write(data)
        out.flush()

    m.domain.console_sink = sink
    writer = None
    if args.trace:
        from xenwb.tracefile import JsonlWriter
        writer = JsonlWriter.open(args.trace)
        m.domain.trace.subscribe(writer.write)
    m.set_limits(args.max_instructions, int(args.timeout * 1e9) if args.timeout else None)
    old = signal.signal(signal.SIGINT, lambda *_: m.stop())
    try:
        result = m.run()
    finally:
        signal.signal(signal.SIGINT, old)
        if writer is not None:
            writer.close()
    dom = m.domain
    if not args.quiet:
        print(f"xenwb: {result.reason.value}{f' ({result.detail})' if result.detail else ''}; "
              f"{dom.stats['hypercalls']} hypercalls, {dom.stats['faults']} faults bounced, "
              f"{m.now() / 1e9:.6f} s virtual time", file=sys.stderr)
    if result.reason is StopReason.shutdown and dom.shutdown_reason == 0:
        return EXIT_OK
    if result.reason is StopReason.requested:
        return 130
    return EXIT_GUEST


if __name__ == "__main__":
    sys.exit(main())
