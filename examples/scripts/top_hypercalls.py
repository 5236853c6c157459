#!/usr/bin/env python3
"""Capture a boot trace and print the top hypercalls.

    python examples/scripts/top_hypercalls.py [GUEST] [-o boot.jsonl] [-n 10]
"""

import argparse
import collections
import json

from xenwb.session import Session

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("guest", nargs="?", default="pvdemo-pae")
ap.add_argument("-o", "--output", default="boot.jsonl")
ap.add_argument("-n", type=int, default=10)
a = ap.parse_args()

with Session(a.guest, plugins=()) as s:
    s.record(a.output)
    result = s.run()

counts: collections.Counter[str] = collections.Counter()
failures: collections.Counter[str] = collections.Counter()
with open(a.output) as f:
    for line in f:
        ev = json.loads(line)
        if ev["kind"] == "hypercall":
            counts[ev["name"]] += 1
            failures[ev["name"]] += ev["ret"] < 0
print(f"{a.guest}: {result.reason.value}, {sum(counts.values())} hypercalls, trace in {a.output}")
for name, n in counts.most_common(a.n):
    print(f"{n:8d}  {name:<24} {failures[name]} failed")
