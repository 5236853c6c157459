#!/usr/bin/env python3
"""Decode the largest multicall batch of a boot, entry by entry.

    python examples/scripts/largest_multicall.py [GUEST]
"""

import argparse
import json

from xenwb.session import Session

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("guest", nargs="?", default="pvdemo-pae")
ap.add_argument("--json", action="store_true", help="print the batch as JSON")
a = ap.parse_args()

with Session(a.guest, plugins=("multicall",)) as s:
    s.run()
    res = s.command("multicall show largest")
print(json.dumps(res.data, indent=2) if a.json else res.text)
