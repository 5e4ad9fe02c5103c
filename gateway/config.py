"""Gateway configuration: one schema, one loading pipeline, every problem at once.

The file is TOML (``/etc/gridedge/gateway.toml``, read with ``tomllib``). Loading runs in
three steps - parse, substitute ``${ENV}`` references in strings (secrets stay out of the
file), validate against the dataclasses below (schema.py) - and collects *every* problem
with its key path (``uplink.port: must be an integer 1..65535, got 'abc'``) before raising
one ``ConfigError``. Unknown keys are errors too, with a suggestion when one is close, so a
typo cannot silently fall back to a default. Files and topics the config names are checked
for what they must hold (``config_checks``), so ``run`` never meets a config problem that
``check-config`` passed. ``gridedge-gateway check-config FILE`` prints the same report.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.config_checks import tls_files, topic_filter, topic_name
from gateway.schema import build, choice, rng, substitute_env

DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


class ConfigError(Exception):
    """All problems of one configuration file, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(
            f"  {p}" for p in problems))
        self.problems = problems


@dataclass
class GatewaySection:
    id: str = field(default="gw-1", metadata={"pattern": DEVICE_ID})
    state_dir: str = "/var/lib/gridedge"
    log_level: str = field(default="info", metadata=choice("debug", "info", "warning", "error"))
    # Devices added with `gridedge-gateway devices add` (relative: next to this file).
    devices_file: str = "devices.toml"


@dataclass
class LocalBroker:
    """The gateway's own Mosquitto, where devices publish their frames."""

    host: str = "127.0.0.1"
    port: int = field(default=1883, metadata=rng(1, 65535))
    client_id: str = "gridedge-gateway-ingest"
    username: str = ""
    password: str = field(default="", metadata={"secret": True})
    topic: str = "gridedge/v1/dev/+/frame"


@dataclass
class SerialPort:
    port: str = ""
    baud: int = field(default=115200, metadata=rng(1200, 4_000_000))
    # The one device wired to this port, if it is one: frames with another key id are
    # rejected (wrong_source). Empty: a bus of several devices, any registered one.
    device: str = field(default="", metadata={"pattern": DEVICE_ID})


@dataclass
class StoreSection:
    max_bytes: int = field(default=256 * 1024 * 1024, metadata=rng(1024 * 1024, 2**40))
    max_age_s: int = field(default=7 * 86400, metadata=rng(60, 10 * 365 * 86400))
    commit_interval_ms: int = field(default=50, metadata=rng(1, 100))
    # Readings skip the store while the cloud acknowledges them within this (hold.py):
    # their local PUBACK waits for the cloud's. 0: every reading is committed first.
    hold_s: float = field(default=2.0, metadata=rng(0, 60))


@dataclass
class UplinkSection:
    """The cloud broker."""

    enabled: bool = True
    host: str = ""
    port: int = field(default=8883, metadata=rng(1, 65535))
    protocol: str = field(default="mqtt5", metadata=choice("mqtt5", "mqtt311"))
    tls: bool = True
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""
    username: str = ""
    password: str = field(default="", metadata={"secret": True})
    client_id: str = ""
    topic_prefix: str = "gridedge/v1/gw"
    format: str = field(default="json", metadata=choice("json", "cbor"))
    batch_size: int = field(default=50, metadata=rng(1, 1000))
    batch_delay_ms: int = field(default=200, metadata=rng(0, 60_000))
    max_inflight: int = field(default=64, metadata=rng(1, 1000))
    ack_timeout_s: float = field(default=30.0, metadata=rng(1, 3600))
    backoff_min_s: float = field(default=1.0, metadata=rng(0.1, 60))
    backoff_max_s: float = field(default=60.0, metadata=rng(1, 3600))
    drain_rate: int = field(default=0, metadata=rng(0, 10_000_000))  # records/s, 0 = no cap
    health_interval_s: float = field(default=10.0, metadata=rng(0, 86_400))  # 0 = off


@dataclass
class Device:
    id: str = field(default="", metadata={"pattern": DEVICE_ID, "required": True})
    key: str = field(default="", metadata={"pattern": re.compile(r"[0-9a-fA-F]{64}"),
                                           "required": True, "secret": True})
    site: str = ""
    feeder: str = ""
    role: str = field(default="meter", metadata=choice("meter", "line_sensor"))
    channels: list[str] = field(default_factory=list)
    # Raised by `devices resync`: the gateway forgets this device's replay marks (once per
    # raise), for a meter whose counters went back and that has no clock to prove it.
    resync: int = field(default=0, metadata=rng(0, 2**31))


@dataclass
class Limits:
    """Threshold limits; defaults follow EN 50160 for a 230 V 50 Hz LV network."""

    nominal_voltage: float = field(default=230.0, metadata=rng(50, 1000))
    voltage_band: float = field(default=0.10, metadata=rng(0.01, 0.5))
    frequency_min: float = field(default=49.5, metadata=rng(40, 70))
    frequency_max: float = field(default=50.5, metadata=rng(40, 70))
    min_power_factor: float = field(default=0.8, metadata=rng(0, 1))
    max_current: float = field(default=0.0, metadata=rng(0, 10_000))  # A, 0 = no check
    max_power: float = field(default=0.0, metadata=rng(0, 10_000_000))  # W, 0 = no check
    hysteresis: float = field(default=0.02, metadata=rng(0, 0.5))  # share of the limit
    min_duration_s: float = field(default=10.0, metadata=rng(0, 86_400))


@dataclass
class Override:
    """Limits for a site, a device or one channel of a device (most specific wins)."""

    site: str = ""
    device: str = ""
    channel: int | None = field(default=None, metadata=rng(0, 7))
    limits: Limits = field(default_factory=Limits)


@dataclass
class FeederSettings:
    """Per-feeder settings of the energy balance."""

    name: str = ""
    technical_loss: float = field(default=0.03, metadata=rng(0, 0.5))


@dataclass
class ChecksSection:
    enabled: bool = True
    limits: Limits = field(default_factory=Limits)
    override: list[Override] = field(default_factory=list)
    offline_after_periods: float = field(default=3.0, metadata=rng(1, 1000))
    anomaly_sensitivity: float = field(default=5.0, metadata=rng(1, 100))
    anomaly_warmup: int = field(default=30, metadata=rng(2, 100_000))
    # Days a series is learnt before it is judged: its daily profile's first day.
    anomaly_profile_days: float = field(default=1.0, metadata=rng(0, 7))
    stuck_periods: int = field(default=30, metadata=rng(2, 100_000))
    # rate_of_change: the fastest plausible change between two readings, per second
    # (0 = off). A step faster than that is a fault or an event worth a look.
    max_rate_v_per_s: float = field(default=0.0, metadata=rng(0, 1e6))
    max_rate_a_per_s: float = field(default=0.0, metadata=rng(0, 1e6))
    max_rate_w_per_s: float = field(default=0.0, metadata=rng(0, 1e9))
    balance_window_s: int = field(default=3600, metadata=rng(10, 7 * 86_400))
    # non-technical share of the throughput that raises the balance alarm: tuned with make
    # eval (tools/eval_balance.py, class-1 meter errors: 0 false alarms in 10 weeks at 0.01)
    balance_threshold: float = field(default=0.02, metadata=rng(0.001, 1))
    # the cables' losses, a share of the energy through the meters (per feeder: [[checks.feeder]])
    balance_technical_loss: float = field(default=0.03, metadata=rng(0, 0.5))
    feeder: list[FeederSettings] = field(default_factory=list)
    # outage: at least outage_min_meters meters and outage_share of a feeder's meters
    # silent together, or its line sensor below outage_voltage_share of nominal voltage.
    outage_min_meters: int = field(default=3, metadata=rng(2, 100_000))
    outage_share: float = field(default=0.5, metadata=rng(0.05, 1))
    outage_voltage_share: float = field(default=0.1, metadata=rng(0, 0.9))


@dataclass
class MetricsSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = field(default=9108, metadata=rng(1, 65535))


@dataclass
class HomeAssistantSection:
    """MQTT discovery for Home Assistant on the local broker (off by default)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    state_prefix: str = "gridedge/v1/state"


@dataclass
class CommandsSection:
    """Commands from the cloud to the meters (commander.py): off until an operator key is
    trusted. A key is an Ed25519 public key, 64 hex digits (``gridedge operator-key``)."""

    enabled: bool = False
    operator_keys: list[str] = field(default_factory=list)


@dataclass
class Config:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    local: LocalBroker = field(default_factory=LocalBroker)
    serial: list[SerialPort] = field(default_factory=list)
    store: StoreSection = field(default_factory=StoreSection)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    devices: list[Device] = field(default_factory=list)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    checks: ChecksSection = field(default_factory=ChecksSection)
    homeassistant: HomeAssistantSection = field(default_factory=HomeAssistantSection)
    commands: CommandsSection = field(default_factory=CommandsSection)

    def device_keys(self) -> dict[str, bytes]:
        return {d.id: bytes.fromhex(d.key) for d in self.devices}

    @property
    def commands_path(self) -> Path:
        return Path(self.gateway.state_dir) / "commands.db"

    @property
    def keys_path(self) -> Path:
        return Path(self.gateway.state_dir) / "keys.db"

    @property
    def store_path(self) -> Path:
        return Path(self.gateway.state_dir) / "store.db"


# ---------------------------------------------------------------- the loading pipeline


def cross_checks(cfg: Config, problems: list[str]) -> None:
    seen: set[str] = set()
    for i, d in enumerate(cfg.devices):
        if d.id in seen:
            problems.append(f"devices[{i}].id: duplicate device {d.id!r}")
        seen.add(d.id)
    up = cfg.uplink
    if up.enabled and not up.host:
        problems.append("uplink.host: required while uplink.enabled is true")
    if up.enabled and up.tls and not up.ca_file:
        problems.append("uplink.ca_file: required with uplink.tls = true (the gateway never "
                        "connects without verifying the cloud broker; set tls = false only "
                        "for a broker on a trusted network)")
    if bool(up.client_cert) != bool(up.client_key):
        problems.append("uplink.client_cert, uplink.client_key: give both or neither")
    if up.backoff_min_s > up.backoff_max_s:
        problems.append("uplink.backoff_min_s: must not exceed uplink.backoff_max_s")
    if up.enabled:
        tls_files("uplink", up.ca_file, up.client_cert, up.client_key, problems)
        topic_name("uplink.topic_prefix", up.topic_prefix, problems)
    if not cfg.local.host:
        problems.append("local.host: must not be empty")
    if not cfg.local.client_id:
        problems.append("local.client_id: must not be empty (the local broker keeps the "
                        "gateway's frames in the session of this id)")
    topic_filter("local.topic", cfg.local.topic, problems)
    feeders: set[str] = set()
    for i, f in enumerate(cfg.checks.feeder):
        if not f.name:
            problems.append(f"checks.feeder[{i}].name: must name the feeder (as devices do)")
        elif f.name in feeders:
            problems.append(f"checks.feeder[{i}].name: feeder {f.name!r} is set twice")
        feeders.add(f.name)
    if cfg.homeassistant.enabled:
        topic_name("homeassistant.discovery_prefix", cfg.homeassistant.discovery_prefix,
                   problems)
        topic_name("homeassistant.state_prefix", cfg.homeassistant.state_prefix, problems)
    for i, k in enumerate(cfg.commands.operator_keys):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", k):
            problems.append(f"commands.operator_keys[{i}]: an Ed25519 public key, 64 hex "
                            "digits (gridedge operator-key prints it)")
    if cfg.commands.enabled and not cfg.commands.operator_keys:
        problems.append("commands.operator_keys: required while commands.enabled is true "
                        "(a command must be signed by a key this gateway trusts)")
    if cfg.commands.enabled and not cfg.uplink.enabled:
        problems.append("commands.enabled: commands come from the cloud: needs uplink.enabled")


def _inherit_limits(cfg: Config, raw: dict[str, Any]) -> None:
    """An override changes only the limits it names; the rest come from [checks.limits]."""
    overrides = raw.get("checks", {}).get("override", []) if isinstance(raw, dict) else []
    for o, table in zip(cfg.checks.override, overrides, strict=False):
        named = table.get("limits", {}) if isinstance(table, dict) else {}
        o.limits = replace(cfg.checks.limits, **{k: getattr(o.limits, k) for k in named
                                                 if hasattr(o.limits, k)})


def devices_path(cfg: Config, base_dir: Path | None) -> Path | None:
    """The registry file that ``devices add`` writes, or None when switched off."""
    if not cfg.gateway.devices_file:
        return None
    path = Path(cfg.gateway.devices_file)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def read_devices(path: Path, problems: list[str]) -> list[Device]:
    """The devices of a registry file (a list of [[devices]] tables); [] if absent."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return []
    except OSError as e:
        problems.append(f"{path}: cannot read: {e.strerror}")
        return []
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: not valid TOML: {e}")
        return []
    unknown = sorted(set(raw) - {"devices"})
    if unknown:
        problems.append(f"{path}: {', '.join(unknown)}: unknown key (only [[devices]])")
    table = raw.get("devices", [])
    if not isinstance(table, list):
        problems.append(f"{path}: devices: must be a list of tables")
        return []
    return [build(Device, d, f"{path}: devices[{i}]", problems) for i, d in enumerate(table)]


def parse(text: str, source: str = "<config>", env: dict[str, str] | None = None,
          base_dir: Path | None = None) -> Config:
    """A Config from TOML text; ``base_dir`` is where relative file names resolve
    (the config file's folder); without it no devices file is read."""
    problems: list[str] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from e
    raw = substitute_env(raw, "", dict(os.environ) if env is None else env, problems)
    cfg = build(Config, raw, "", problems)
    registry = devices_path(cfg, base_dir)
    if registry is not None and base_dir is not None:
        cfg.devices.extend(read_devices(registry, problems))
    cross_checks(cfg, problems)
    _inherit_limits(cfg, raw)
    if problems:
        raise ConfigError(source, problems)
    return cfg  # type: ignore[no-any-return]


def load(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror}"]) from e
    return parse(text, str(path), env, Path(path).parent)
