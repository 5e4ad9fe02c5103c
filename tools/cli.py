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


def _flash(args: argparse.Namespace) -> int:
    from gridedge.tools import flash

    try:
        flash.flash(args.board, args.port, Path(args.config) if args.config else None,
                    dry_run=args.dry_run, wipe=args.wipe, timeout=args.timeout)
    except flash.FlashError as e:
        print(f"gridedge flash: {e}", file=sys.stderr)
        return 1
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
        "flash",
        help="compile the firmware with mpy-cross and install it on a board with mpremote "
        "(key, calibration and counters stay unless --wipe)",
    )
    p.add_argument("--board", required=True, help="board name: a file in boards/ without .json")
    p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--config", help="initial settings (JSON, as config.json on the board); "
                   "the board's calibration is kept")
    p.add_argument("--dry-run", action="store_true",
                   help="print the mpremote commands without running anything")
    p.add_argument("--wipe", action="store_true",
                   help="also remove the device key, counters and config (with calibration)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the board to answer (default 10)")
    p.set_defaults(func=_flash)

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
