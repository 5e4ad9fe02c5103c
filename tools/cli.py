"""The ``gridedge`` command: installer and developer tools.

One entry point with subcommands; each subcommand lives in its own module under
gridedge.tools and is imported only when used. Errors reach the user here, once, as one
line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _fetch_mpy_deps(args: argparse.Namespace) -> int:
    from gridedge.tools import mpy_deps

    return mpy_deps.main(args.dest, force=args.force)


def _frame_size(args: argparse.Namespace) -> int:
    import json

    from gridedge.tools import frame_size

    rows = frame_size.sizes()
    print(json.dumps(rows, indent=1) if args.json else frame_size.render(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridedge",
        description="gridedge installer and developer tools. Flashing, provisioning, the "
        "fleet simulator and benchmarks arrive as subcommands here.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "fetch-mpy-deps",
        help="download the pinned MicroPython libraries (umqtt.simple, umodbus), check "
        "their sha256 and unpack them for tests, simulation and flashing",
    )
    p.add_argument("--dest", default=str(Path("build") / "mpy-lib"), help="target folder")
    p.add_argument("--force", action="store_true", help="fetch again even if up to date")
    p.set_defaults(func=_fetch_mpy_deps)

    p = sub.add_parser(
        "frame-size", help="bytes per frame (CBOR + MAC, serial) against readable JSON"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_frame_size)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"gridedge: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
