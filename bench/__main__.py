"""``python -m bench``: swarmbus benchmarks on a real Redis, side by side with references.

Starts a private redis-server unless ``--redis URL`` is given; prints a table and writes
JSON (environment, and min/median/max of every figure over the repeats).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio

from swarmbus.logging import configure_logging

from . import bus, coordinator, e2e, leases, memory
from .common import environment, redis_url, table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--redis", help="Redis URL (default: a private redis-server)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument("--only", choices=["bus", "e2e", "memory", "coordinator", "leases"],
                        help="run one group of workloads")
    args = parser.parse_args()
    configure_logging("console", "warning")
    if not e2e.HAVE_FASTSTREAM:
        print("FastStream is not installed (pip install -e '.[bench]'): its figures are skipped")
    repeats = 1 if args.quick else args.repeats
    started = time.perf_counter()
    with redis_url(args.redis) as url:
        env = environment(url)
        figures = []
        for name, group in (("bus", bus), ("memory", memory), ("coordinator", coordinator),
                            ("leases", leases)):
            if args.only in (None, name):
                figures += anyio.run(group.run, url, args.quick, repeats)
        if args.only in (None, "e2e"):
            figures += e2e.run(url, args.quick, repeats)
    print(table(figures))
    write_json(args.json, env, figures)
    print(f"\n{env} - {time.perf_counter() - started:.0f} s; JSON in {args.json}")


if __name__ == "__main__":
    main()
