"""``gridedge provision``: set up a meter over its installer console and register it, in one step.

The meter's console (firmware/gemeter/console.py) is driven over the serial port with
pyserial, one command per line, each answer read up to the next ``gridedge> `` prompt; any
``error:`` line stops the run with a one-line message naming the command. The console is
reached by pressing Enter (repeatedly, so the tool may start before the board is reset), in
the boot window or at a console already open; at a MicroPython REPL it is started by import.
The order keeps the two sides consistent: first everything that needs no board (arguments,
secrets, the CA file, the gateway config, a duplicate id in its registry); then on the board
the settings (memory only), the TLS check below, the calibrations, the gateway's CA (``ca
begin``, ``ca add`` in hex chunks, ``ca end``: written to /ca.der at once, its SHA-256
checked), the key made here (``key set``, so board and gateway hold the same key), its
fingerprint checked against the key's, and ``save``; only then the registry entry, so a
failure never leaves a registered device without its settings. A failure before ``save``
makes the console discard what was set (``exit``). The key and the passwords are never
printed: the tool writes no console text anywhere, error messages name secret commands
without their values, and the board must echo a secret's characters as ``*``.

MQTT over Wi-Fi is TLS by default: with ``--ca-file`` (the gateway's CA, PEM or DER) the
board gets it as /ca.der and ``mqtt_tls on`` (unless the command line sets mqtt_tls). When
the request touches MQTT (link, an mqtt_* setting or password, a CA), the tool asks the
board what it will do and refuses a board that would send an MQTT password in clear (link
mqtt, a password, and TLS off or no CA) unless ``--allow-plaintext``, which warns instead;
mqtt_tls on without a CA on the board is refused too (the link could never come up).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.util
import os
import re
import secrets
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import serial

from gateway.config import DEVICE_ID, ConfigError
from gateway.registry import ROLES, Registry, RegistryError, fingerprint, read_key_file
from tools import resources
from tools.errors import ToolError

FIRMWARE_CONFIG = resources.firmware() / "gemeter" / "config.py"
PROMPT = "gridedge> "
REPL_PROMPT = ">>> "
REPL_START = "import gemeter.console as c; c.run()"
ENTER_EVERY_S = 0.5  # how often Enter is pressed until the console answers
QUIET_S = 0.3  # the console is ready once this long passes without output after a prompt
CAL_KINDS = ("voltage", "current", "power")
CA_MAX = 4096  # bytes of DER the console takes (firmware/gemeter/console.py CA_MAX)
CA_CHUNK = 200  # bytes per 'ca add' line: 400 hex digits, within the console's 512


class ProvisionError(ToolError):
    """Provisioning failed; the message is one line for the installer."""


def firmware_config() -> Any:
    """The firmware's own config module (gemeter/config.py): its schema and value parser,
    so settings are checked here exactly as the board's console checks them."""
    spec = importlib.util.spec_from_file_location("_gridedge_fw_config", FIRMWARE_CONFIG)
    if spec is None or spec.loader is None:
        raise ProvisionError(f"cannot load the firmware's settings schema {FIRMWARE_CONFIG}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_setting(schema: Any, key: str, value: str, option: str) -> None:
    """A --set before the port is opened: an unknown key (with the nearest known one) or a
    value the console would refuse."""
    if key not in schema.SCHEMA:
        near = difflib.get_close_matches(key, list(schema.SCHEMA), n=1)
        hint = f" (did you mean {near[0]}?)" if near else " (gridedge provision --help)"
        raise ProvisionError(f"{option} {key}: no such setting{hint}")
    problem = schema.parse_value(key, value)[1]
    if problem:
        raise ProvisionError(f"{option} {key}: {problem}")


@dataclass
class Request:
    port: str
    device_id: str
    gateway_config: Path
    settings: list[tuple[str, str]] = field(default_factory=list)  # sent in order
    secret_settings: dict[str, str] = field(default_factory=dict)  # never shown
    calibrations: list[tuple[str, str, str]] = field(default_factory=list)  # kind, ch, ref
    role: str = "meter"
    site: str = ""
    feeder: str = ""
    channels: tuple[str, ...] = ()
    key: bytes | None = None  # None: a new random key
    ca: bytes | None = None  # the gateway's CA certificate, DER, for /ca.der on the board
    allow_plaintext: bool = False  # warn, not refuse, an MQTT password without TLS
    reboot: bool = False
    timeout: float = 10.0


def _pair(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ProvisionError(f"{option}: expected KEY=VALUE")
    return key, value


def _check_text(key: str, value: str, shown: str) -> None:
    if not value.isprintable():
        raise ProvisionError(f"{key} {shown}: the console takes one line of printable text "
                             "(no line breaks, tabs or control characters)")


def console_value(value: str) -> str:
    """VALUE as typed after 'set KEY ': as it is when the console reads it back unchanged,
    else in double quotes (empty, outer spaces, or quotes at both ends)."""
    if value and value == value.strip() and not (
            len(value) >= 2 and value[0] == value[-1] == '"'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_settings(device_id: str, link: str | None, sets: Sequence[str],
                  secret_env: Sequence[str], secret_file: Sequence[str],
                  env: Mapping[str, str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The settings and the secrets from the command line's options. Secrets come from the
    environment or from files, never from --set (ps and the shell history show it)."""
    schema = firmware_config()
    hidden = {key for key, entry in schema.SCHEMA.items() if entry[4]}
    settings = [("device_id", device_id)] + ([("link", link)] if link else [])
    for text in sets:
        key, value = _pair(text, "--set")
        if key in hidden:
            raise ProvisionError(f"--set {key}: a secret on the command line shows in ps and "
                                 f"the shell history; use --secret-env {key}=VARIABLE or "
                                 f"--secret-file {key}=FILE")
        _check_text(key, value, repr(value))
        check_setting(schema, key, value, "--set")
        settings.append((key, value))
    for key, value in settings[:2]:
        check_setting(schema, key, value, f"--{key.replace('_', '-')}")
    found: dict[str, str] = {}
    for option, texts in (("--secret-env", secret_env), ("--secret-file", secret_file)):
        for text in texts:
            key, source = _pair(text, option)
            if key not in hidden:
                raise ProvisionError(f"{option} {key}: not a secret setting (those are "
                                     f"{', '.join(sorted(hidden))}); use --set")
            if option == "--secret-env" and source not in env:
                raise ProvisionError(f"{option} {key}: environment variable {source} is not set")
            try:
                value = env[source] if option == "--secret-env" else \
                    Path(source).read_text().rstrip("\r\n")
            except OSError as e:
                raise ProvisionError(f"{option} {key}: cannot read {source}: {e.strerror}") from e
            _check_text(key, value, "(secret)")
            if key in found:
                raise ProvisionError(f"{key} is given more than once")
            found[key] = value
    names = [k for k, _ in settings]
    for key in names:
        if names.count(key) > 1:
            raise ProvisionError(f"{key} is given more than once (--device-id and --link set "
                                 "device_id and link)")
    return settings, found


def read_key(key_file: Path | None) -> bytes | None:
    """The key in a file (64 hex digits), or None for a new random one."""
    if key_file is None:
        return None
    try:
        key = read_key_file(key_file)
    except RegistryError as e:
        raise ProvisionError(str(e)) from e
    if len(key) != 32:
        raise ProvisionError(f"key file {key_file} must hold 64 hex digits")
    return key


def read_ca(path: Path) -> bytes:
    """The CA certificate in a file (PEM or DER) as DER, checked to be one certificate
    that a TLS client can load and small enough for the board's console."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProvisionError(f"--ca-file {path}: cannot read it: {e.strerror}") from e
    der = data
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            der = ssl.PEM_cert_to_DER_cert(data.decode("ascii").strip())
        except (ValueError, UnicodeError) as e:
            raise ProvisionError(f"--ca-file {path}: not a PEM certificate") from e
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ssl.SSLError, ValueError) as e:
        raise ProvisionError(f"--ca-file {path}: not a certificate (PEM or DER)") from e
    if len(der) > CA_MAX:
        raise ProvisionError(f"--ca-file {path}: {len(der)} bytes of DER, the board takes at "
                             f"most {CA_MAX}")
    return der


class Console:
    """The installer console at the other end of an open serial port."""

    def __init__(self, port: serial.Serial, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.text: str = ""  # received since the last command; never printed (it may echo input)

    def _send(self, line: str) -> None:
        self.port.write((line + "\r").encode())
        self.port.flush()

    def _read(self) -> bool:
        try:
            data = self.port.read(self.port.in_waiting or 1)  # waits up to port.timeout
        except serial.SerialException as e:
            raise ProvisionError(f"lost the board on {self.port.port}: {e}") from e
        self.text += data.decode("utf-8", "replace").replace("\r", "")
        return bool(data)

    def enter(self) -> str:
        """Reach the console's prompt; returns " (gridedge firmware VERSION)" when the board
        printed its banner after the port was opened, else ""."""
        deadline = time.monotonic() + self.timeout
        next_enter, started = 0.0, False
        while not self.text.endswith(PROMPT):
            now = time.monotonic()
            if now > deadline:
                raise ProvisionError(
                    f"no console answering on {self.port.port} within {self.timeout:g} s: reset "
                    "the board and run provision again within its 3-s boot window")
            if self.text.endswith(REPL_PROMPT) and not started:
                self._send(REPL_START)
                started = True
            elif now >= next_enter:
                self._send("")  # Enter: opens the console in the boot window
                next_enter = now + ENTER_EVERY_S
            self._read()
        quiet_until = time.monotonic() + QUIET_S  # Enters still queued each get a prompt
        while time.monotonic() < quiet_until or not self.text.endswith(PROMPT):
            if time.monotonic() > deadline + QUIET_S * 10:
                raise ProvisionError(f"the console on {self.port.port} does not settle")
            if self._read():
                quiet_until = time.monotonic() + QUIET_S
        version = re.findall(r"gridedge firmware \S+", self.text)
        self.text = ""
        return f" ({version[-1]})" if version else ""

    def command(self, line: str, shown: str, secret: str = "") -> list[str]:
        """Send one command and return its answer lines; ProvisionError on an error line.
        ``shown`` names the command in messages (without secrets)."""
        self.text = ""
        self._send(line)
        deadline = time.monotonic() + self.timeout
        while not ("\n" in self.text and self.text.endswith(PROMPT)):
            if time.monotonic() > deadline:
                raise ProvisionError(f"no answer to '{shown}' within {self.timeout:g} s")
            self._read()
        echo, *answer = self.text[: -len(PROMPT)].split("\n")[:-1]
        self.text = ""
        if secret and not echo.endswith("*" * len(secret)):
            raise ProvisionError(f"the board did not mask the secret in '{shown}' as it was "
                                 "typed: its firmware may leak secrets; do not use it")
        for reply in answer:
            if reply.startswith("error:"):
                reason = reply[len("error:"):].strip().replace(secret or "\0", "(secret)")
                raise ProvisionError(f"the board refused '{shown}': {reason}")
        return list(answer)  # typed list[str], not the list[LiteralString] pyright infers

    def leave(self, reboot: bool) -> None:
        """``exit`` (unsaved changes are discarded, the meter starts) or ``reboot``."""
        self._send("reboot" if reboot else "exit")


def _number(text: str) -> bool:
    try:
        return float(text) > 0 and text.isprintable() and " " not in text
    except ValueError:
        return False


def _registry(req: Request) -> Registry:
    """The gateway's registry, after the checks that need no board."""
    if not DEVICE_ID.fullmatch(req.device_id):
        raise ProvisionError(f"device id {req.device_id!r} must be 1-32 of A-Z a-z 0-9 . _ -")
    if req.role not in ROLES:
        raise ProvisionError(f"role must be one of {', '.join(ROLES)}, got {req.role!r}")
    try:
        registry = Registry(req.gateway_config)
        taken = [e for e in registry.entries() if e.device.id == req.device_id]
    except ConfigError as e:
        raise ProvisionError(f"{req.gateway_config}: {'; '.join(e.problems)}") from e
    except RegistryError as e:
        raise ProvisionError(str(e)) from e
    if taken:
        where = registry.path if taken[0].source == "registry" else req.gateway_config
        raise ProvisionError(f"device {req.device_id} is already registered in {where}; "
                             "remove it there first (gridedge-gateway devices remove ID)")
    folder = registry.path.parent
    writable = os.access(registry.path if registry.path.exists() else folder, os.W_OK)
    if not writable or not folder.is_dir():
        raise ProvisionError(f"cannot write the registry {registry.path} (run as its owner)")
    return registry


def _settings(req: Request) -> list[tuple[str, str]]:
    """The settings to type: with a CA, mqtt_tls on unless the command line sets it."""
    if req.ca is not None and "mqtt_tls" not in [n for n, _ in req.settings]:
        return [*req.settings, ("mqtt_tls", "on")]
    return req.settings


def _value(con: Console, command: str) -> str:
    """The VALUE of a 'KEY = VALUE' answer ('get KEY') or 'ca: VALUE' ('ca fingerprint')."""
    answer = con.command(command, command)
    line = answer[0] if answer else ""
    return line.partition(" = " if " = " in line else ": ")[2]


def _check_tls(con: Console, req: Request, out: TextIO) -> None:
    """Refuse (or, with allow_plaintext, warn about) a board that would send its MQTT
    password in clear; refuse mqtt_tls on without a CA. Asked of the board after the
    settings were typed, so it covers what the board already held."""
    names = {n for n, _ in req.settings} | set(req.secret_settings)
    if req.ca is None and not any(n == "link" or n.startswith("mqtt_") for n in names):
        return  # this run does not touch MQTT
    link, tls = _value(con, "get link"), _value(con, "get mqtt_tls")
    has_ca = req.ca is not None or _value(con, "ca fingerprint") not in ("", "none")
    if tls == "on" and not has_ca:
        raise ProvisionError("mqtt_tls is on but the board has no CA certificate (/ca.der): "
                             "give the gateway's CA with --ca-file")
    if link != "mqtt" or tls == "on" or (tls == "auto" and has_ca):
        return
    why = "mqtt_tls is off" if tls == "off" else "no CA certificate (/ca.der) on the board"
    if _value(con, "get mqtt_password") == "(set)":
        if not req.allow_plaintext:
            raise ProvisionError(f"the board would send its MQTT password over Wi-Fi in clear "
                                 f"({why}): give the gateway's CA with --ca-file, or "
                                 "--allow-plaintext to accept that")
        print(f"WARNING: MQTT without TLS ({why}): the board's MQTT password crosses the "
              "Wi-Fi in clear (--allow-plaintext)", file=sys.stderr)
    else:
        print(f"warning: MQTT without TLS ({why}): frames are authenticated but readable on "
              "the Wi-Fi; give the gateway's CA with --ca-file for TLS", file=sys.stderr)


def _send_ca(con: Console, der: bytes, out: TextIO) -> None:
    """The CA to /ca.der in hex chunks; the board's SHA-256 must be the file's."""
    con.command("ca begin", "ca begin")
    for i in range(0, len(der), CA_CHUNK):
        con.command(f"ca add {der[i:i + CA_CHUNK].hex()}", "ca add (certificate)")
    digest = hashlib.sha256(der).hexdigest()[:16]
    got = con.command("ca end", "ca end")
    if got != [f"ca stored, {len(der)} bytes, sha256 {digest}"]:
        raise ProvisionError(f"the CA's sha256 is {digest} ({len(der)} bytes), but the board "
                             f"answered '{' / '.join(got)}'")
    print(f"the gateway's CA stored on the board as /ca.der ({len(der)} bytes, sha256 "
          f"{digest}): MQTT over TLS", file=out)


def _configure(con: Console, req: Request, key: bytes, out: TextIO) -> None:
    """Settings, TLS check, calibrations, CA, key, save. On a failure the console discards
    the unsaved settings (``exit``) and the message says what the board keeps."""
    fp = fingerprint(key)
    kept = "nothing saved on the board"
    try:
        if "(unsaved changes: save)" in con.command("show", "show"):
            raise ProvisionError("the console holds unsaved changes from another session: "
                                 "save or discard them (exit) there first")
        settings = _settings(req)
        for name, value in settings:
            typed = console_value(value)
            con.command(f"set {name} {typed}", f"set {name} {typed}")
        for name, value in req.secret_settings.items():
            typed = console_value(value)  # the console echoes each typed character as '*'
            con.command(f"set {name} {typed}", f"set {name} (secret)", secret=typed)
        names = [n for n, _ in settings] + [f"{n} (secret)" for n in req.secret_settings]
        print(f"set {', '.join(names)}", file=out)
        _check_tls(con, req, out)
        for kind, channel, reference in req.calibrations:
            command = f"calibrate {kind} {channel} {reference}"
            print(f"calibrated {con.command(command, command)[0].split(', not saved')[0]}",
                  file=out)
        if req.ca is not None:
            _send_ca(con, req.ca, out)
            kept = "the board keeps the gateway's CA (/ca.der), its settings are not saved"
        got = con.command(f"key set {key.hex()}", "key set (key)", secret=key.hex())
        kept = "the board keeps the new key (not registered), its settings are not saved"
        got += con.command("key fingerprint", "key fingerprint")
        if got != [f"key stored, fingerprint {fp}", f"fingerprint {fp}"]:
            answer = " / ".join(got).replace(key.hex(), "(key)")
            raise ProvisionError(f"the key's fingerprint is {fp}, but the board answered "
                                 f"'{answer}'")
        print(f"key set on the board, fingerprint {fp}", file=out)
        con.command("save", "save")
    except ProvisionError as e:
        with contextlib.suppress(serial.SerialException, OSError):
            con.leave(reboot=False)  # the console discards the unsaved settings
        raise ProvisionError(f"{e}; {kept}") from e
    print(f"saved the settings on the board as {req.device_id}", file=out)


def provision(req: Request, out: TextIO = sys.stdout) -> None:
    """Configure the board on ``req.port`` and register it; see the module docstring."""
    for kind, channel, reference in req.calibrations:
        if kind not in CAL_KINDS or not channel.isdigit() or not _number(reference):
            raise ProvisionError(f"--calibrate {kind} {channel} {reference}: expected "
                                 "voltage|current|power CHANNEL REFERENCE (a number)")
    registry = _registry(req)
    key = req.key if req.key is not None else secrets.token_bytes(32)
    if not Path(req.port).exists():
        raise ProvisionError(f"no port {req.port}: is the board plugged in "
                             "(ls /dev/ttyUSB* /dev/ttyACM*)?")
    try:
        port = serial.Serial(req.port, 115200, timeout=0.05)
    except (serial.SerialException, OSError) as e:
        raise ProvisionError(f"cannot open {req.port}: {e}") from e
    with port:
        con = Console(port, req.timeout)
        print(f"console on {req.port}{con.enter()}", file=out)
        _configure(con, req, key, out)
        try:
            registry.add(req.device_id, role=req.role, site=req.site, feeder=req.feeder,
                         channels=req.channels, key=key)
        except (RegistryError, ConfigError, OSError) as e:
            reason = "; ".join(e.problems) if isinstance(e, ConfigError) else str(e)
            raise ProvisionError(
                f"the board saved {req.device_id} with key fingerprint {fingerprint(key)} and "
                f"waits at its console, but registering it in {registry.path} failed: "
                f"{reason}; fix that and run provision again (it sets a new key)") from e
        print(f"registered {req.device_id} ({req.role}) in {registry.path}; apply it to a "
              "running gateway with: systemctl reload gridedge-gateway", file=out)
        con.leave(req.reboot)
        print("the board reboots with its new settings" if req.reboot else
              "left the console: the meter starts with its new settings", file=out)
