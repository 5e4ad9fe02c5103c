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

from gateway.config import ConfigError, load
from gateway.metrics import MetricsError
from gateway.registry import RegistryError
from gateway.store_file import StoreError

DEFAULT_CONFIG = "/etc/gridedge/gateway.toml"


def _version() -> str:
    try:
        return version("gridedge")
    except PackageNotFoundError:
        return "unknown"


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import Daemon

    cfg = load(args.config)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or cfg.gateway.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    Daemon(cfg, args.config).run()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    cfg = load(path)
    print(f"{path}: OK ({len(cfg.devices)} devices, uplink "
          f"{'to ' + cfg.uplink.host if cfg.uplink.enabled else 'disabled'})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.status import collect

    print(json.dumps(collect(load(args.config)), indent=1))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.registry import Registry, read_key_file

    reg = Registry(args.config)
    if args.action == "list":
        rows = [{"id": e.device.id, "role": e.device.role, "site": e.device.site,
                 "feeder": e.device.feeder, "channels": e.device.channels,
                 "fingerprint": e.fingerprint, "defined_in": e.source} for e in reg.entries()]
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"{'id':<20} {'role':<12} {'site':<12} {'feeder':<8} {'fingerprint':<17} "
                  "defined in")
            for r in rows:
                print(f"{r['id']:<20} {r['role']:<12} {r['site']:<12} {r['feeder']:<8} "
                      f"{r['fingerprint']:<17} {r['defined_in']}")
        return 0
    if args.action == "add":
        if not (args.key_file or args.key_out):
            # A new key that nobody receives registers a device that can never report.
            print("gridedge-gateway devices add: the device needs its key: give --key-out "
                  "FILE (a new key, written there for provisioning the device) or --key-file "
                  "FILE (the key it has); `gridedge provision` does both in one step",
                  file=sys.stderr)
            return 2
        key = None
        if args.key_file:
            key = read_key_file(Path(args.key_file))
        entry, _key = reg.add(args.id, role=args.role, site=args.site, feeder=args.feeder,
                              channels=tuple(args.channel or ()), key=key)
        print(f"added {args.id} ({args.role}), key fingerprint {entry.fingerprint}, "
              f"in {reg.path}")
        if args.key_out:
            reg.export_key(args.id, Path(args.key_out))
            print(f"key written to {args.key_out} (mode 0600) for provisioning")
    elif args.action == "resync":
        entry = reg.resync(args.id)
        print(f"{args.id}: resync {entry.device.resync}; once applied, the gateway forgets "
              "its replay marks and accepts its next frame, whatever its (boot, seq)")
    else:
        reg.remove(args.id)
        print(f"removed {args.id} from {reg.path}")
    print("apply it to a running gateway with: systemctl reload gridedge-gateway")
    return 0


def cmd_commands(args: argparse.Namespace) -> int:
    import sqlite3
    import time

    from gateway.command_queue import listing
    from gateway.payloads import iso_ms

    cfg = load(args.config)
    try:
        rows = listing(cfg.commands_path)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{cfg.commands_path}: {e}") from None
    if not args.all:
        recent = int(time.time() * 1000) - 86_400_000
        rows = [r for r in rows if r["state"] == "queued" or int(str(r["updated_ms"])) > recent]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'device':<20} {'id':<16} {'op':<13} {'state':<10} {'expires':<24} args")
    for r in rows:
        shown = r["args"]
        if r["op"] == "update-chunk":  # not a screenful of base64 per firmware chunk
            chunk = json.loads(str(shown))
            data = str(chunk.get("data", ""))
            shown = f"at {chunk.get('at')}, {len(data) * 3 // 4 - data.count('=')} B"
        print(f"{r['device']!s:<20} {r['id']!s:<16} {r['op']!s:<13} {r['state']!s:<10} "
              f"{iso_ms(int(str(r['expires_ms']))):<24} {shown}")
    print(f"{len(rows)} command(s) in {cfg.commands_path}"
          + ("" if args.all else " (waiting, or changed in the last 24 h; --all for every one)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gateway.protocol import VERSION

    parser = argparse.ArgumentParser(
        prog="gridedge-gateway",
        description="gridedge gateway: ingests authenticated frames from meters over serial "
        "and local MQTT, stores them durably, checks them at the edge and forwards them to "
        f"the cloud. Speaks wire protocol v{VERSION} (docs/protocol.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"the gateway's config file (default {DEFAULT_CONFIG})"
    # --config is taken before or after an action (`devices --config X list` and `devices
    # list --config X`): the actions' copy sets it only when given.
    late_config = argparse.ArgumentParser(add_help=False)
    late_config.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    p = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="overrides gateway.log_level until the next reload")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a config file; report every problem")
    p.add_argument("file", nargs="?", help="the config file (or --config FILE)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("status", help="queue depth, drops and devices from the store")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("devices", help="the device registry: add (generates a key), list, "
                       "resync, remove")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = dsub.add_parser("list", help="registered devices with their key fingerprints",
                        parents=[late_config])
    d.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    d = dsub.add_parser("add", help="register a device: its key from --key-file, or a new "
                        "random one written to --key-out", parents=[late_config])
    d.add_argument("id", help="device id (1-32 of A-Z a-z 0-9 . _ -)")
    d.add_argument("--role", choices=["meter", "line_sensor"], default="meter",
                   help="line_sensor: a feeder-head sensor (energy balance); default meter")
    d.add_argument("--site", default="", help="site name, carried with its readings")
    d.add_argument("--feeder", default="", help="feeder it is on (energy balance, outages)")
    d.add_argument("--channel", action="append", metavar="NAME",
                   help="channel name, in channel order (repeat)")
    d.add_argument("--key-file", help="use this key (64 hex digits) instead of a new one")
    d.add_argument("--key-out", help="write the key to this file (mode 0600) to provision "
                   "the device; the key is never printed")
    d = dsub.add_parser("resync", help="forget a device's replay marks once (a meter whose "
                        "boot counter went back, e.g. after a factory reset, and that has no "
                        "clock to prove its frames new)", parents=[late_config])
    d.add_argument("id", help="device id")
    d = dsub.add_parser("remove", help="remove a device added with `devices add`",
                        parents=[late_config])
    d.add_argument("id", help="device id")
    p.set_defaults(func=cmd_devices)
    p = sub.add_parser("commands", help="the command queue: what waits for each device, "
                       "what was delivered, expired, done or failed")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=config_help)
    p.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    p.add_argument("--all", action="store_true", help="every command kept (7 days), not "
                   "only those waiting or changed in the last 24 h")
    p.set_defaults(func=cmd_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"gridedge-gateway: {e}", file=sys.stderr)
        return 2
    except (StoreError, RegistryError, MetricsError) as e:
        print(f"gridedge-gateway: {e}", file=sys.stderr)
        return 1



if __name__ == "__main__":
    sys.exit(main())
