"""The ``gridedge-gateway`` command: the gateway daemon and its operator subcommands.

Subcommands (``run``, ``status``, ``check-config``, ``devices``) arrive with the gateway
pipeline; for now the command reports its version and the protocol it speaks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("gridedge")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from gridedge.gateway.protocol import VERSION

    parser = argparse.ArgumentParser(
        prog="gridedge-gateway",
        description="gridedge gateway: ingests authenticated frames from meters over serial "
        "and local MQTT, stores them durably, checks them at the edge and forwards them to "
        f"the cloud. Speaks wire protocol v{VERSION} (docs/protocol.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("gridedge-gateway: no subcommand yet; see --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
