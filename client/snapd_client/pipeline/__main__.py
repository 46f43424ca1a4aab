"""python -m snapd_client.pipeline show RUN.jsonl [--run ID]: a pipeline event log as text."""

from __future__ import annotations

import argparse
import sys

from .events import format_events, read_events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapd_client.pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print an event log (JSON lines) as aligned text")
    show.add_argument("path")
    show.add_argument("--run", help="only this run id")
    args = parser.parse_args(argv)
    events = read_events(args.path)
    if args.run:
        events = [e for e in events if e.get("run") == args.run]
    runs = list(dict.fromkeys(e.get("run") for e in events))
    for n, run in enumerate(runs):
        if n:
            print()
        print(f"run {run}")
        print(format_events(e for e in events if e.get("run") == run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
