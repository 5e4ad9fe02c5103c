"""The ``gridedge-gateway`` command: the daemon and its operator subcommands.

This is the one place that reports errors to the user: configuration and store problems
become one message on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from gridedge.gateway.config import ConfigError, load
from gridedge.gateway.store import StoreError

DEFAULT_CONFIG = "/etc/gridedge/gateway.toml"


def _version() -> str:
    try:
        return version("gridedge")
    except PackageNotFoundError:
        return "unknown"


def cmd_run(args: argparse.Namespace) -> int:
    from gridedge.gateway.daemon import Daemon

    cfg = load(args.config)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or cfg.gateway.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    Daemon(cfg, args.config).run()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load(args.file)
    print(f"{args.file}: OK ({len(cfg.devices)} devices, uplink "
          f"{'to ' + cfg.uplink.host if cfg.uplink.enabled else 'disabled'})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gridedge.gateway.store import Store

    cfg = load(args.config)
    store = Store(cfg.store_path, cfg.store.max_bytes, cfg.store.max_age_s)
    status = {"store": str(cfg.store_path), **store.depth(), "counters": store.counters(),
              "devices": {d: {"boot": m.boot, "seq": m.seq} for d, m in store.marks().items()}}
    print(json.dumps(status, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gridedge.gateway.protocol import VERSION

    parser = argparse.ArgumentParser(
        prog="gridedge-gateway",
        description="gridedge gateway: ingests authenticated frames from meters over serial "
        "and local MQTT, stores them durably, checks them at the edge and forwards them to "
        f"the cloud. Speaks wire protocol v{VERSION} (docs/protocol.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a config file; report every problem")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("status", help="queue depth, drops and devices from the store")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"gridedge-gateway: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"gridedge-gateway: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
