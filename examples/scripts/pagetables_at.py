#!/usr/bin/env python3
"""Stop at a symbol and dump the pagetables (walk of that symbol, ranges, frames, check).

    python examples/scripts/pagetables_at.py [GUEST] [SYMBOL]
"""

import argparse
import sys

from xenwb.session import Session

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("guest", nargs="?", default="pvdemo-pae")
ap.add_argument("symbol", nargs="?", default="step_multicall")
a = ap.parse_args()

with Session(a.guest, plugins=("pagetable",)) as s:
    r = s.run(until=a.symbol)
    if r.reason.value != "requested":
        sys.exit(f"{a.symbol} was never reached ({r.reason.value})")
    for cmd in (f"pt walk {a.symbol}", "pt dump", "pt frames", "pt check"):
        print(f"== {cmd}")
        print(s.command(cmd).text)
