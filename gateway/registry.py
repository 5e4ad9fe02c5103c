"""The device registry file: ``gridedge-gateway devices add|list|remove`` and provisioning.

Devices live in two places: ``[[devices]]`` tables in gateway.toml (written by hand, may
use ``${ENV}`` keys) and the registry file named by ``gateway.devices_file`` (default
``devices.toml`` next to gateway.toml), which this module owns. The config loader reads
both, so the daemon sees one registry, and a SIGHUP applies a change. Writes are atomic
(temporary file, fsync, rename) and keep the file's owner, group and mode, so a
``sudo gridedge-gateway devices add`` leaves it readable by the service; a new file gets
the owner and group of gateway.toml (whom the service already reads its config as) and
mode 0640: the file holds the devices' keys, so never readable by others.
Keys are generated here (32 bytes from ``secrets``) and shown only as their fingerprint
(first 8 bytes of SHA-256 over "gridedge-key:" + key, as the firmware console shows);
``export_key`` writes one to a 0600 file for provisioning, never to the terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config import (
    DEVICE_ID,
    Config,
    ConfigError,
    Device,
    devices_path,
    load,
    read_devices,
)

ROLES = ("meter", "line_sensor")


class RegistryError(Exception):
    """A registry change that cannot be made; the message says why."""


def read_key_file(path: Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except OSError as e:
        raise RegistryError(f"cannot read key file {path}: {e.strerror}") from e
    except ValueError as e:
        raise RegistryError(f"key file {path} must hold 64 hex digits") from e


def fingerprint(key: bytes) -> str:
    """The fingerprint the meter's console shows (docs/protocol.md, firmware auth.py)."""
    return hashlib.sha256(b"gridedge-key:" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    device: Device
    source: str  # "registry" (this module's file) or the config file's name

    @property
    def fingerprint(self) -> str:
        return fingerprint(bytes.fromhex(self.device.key))


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def render(devices: list[Device]) -> str:
    out = ["# gridedge device registry: written by `gridedge-gateway devices`; keys are "
           "secret (mode 0640 or tighter).\n"]
    for d in devices:
        out.append("\n[[devices]]\n")
        out.append(f"id = {_toml_str(d.id)}\nkey = {_toml_str(d.key)}\n")
        out.append(f"role = {_toml_str(d.role)}\n")
        if d.site:
            out.append(f"site = {_toml_str(d.site)}\n")
        if d.feeder:
            out.append(f"feeder = {_toml_str(d.feeder)}\n")
        if d.channels:
            out.append(f"channels = [{', '.join(_toml_str(c) for c in d.channels)}]\n")
        if d.resync:
            out.append(f"resync = {d.resync}\n")
    return "".join(out)


NEW_REGISTRY_MODE = 0o640  # owner writes, the service's group reads, others nothing


def registry_attrs(path: Path, config_path: Path) -> tuple[int, int, int]:
    """(mode, uid, gid) for writing the registry: the existing file's own; for a new one,
    gateway.toml's owner and group with mode 0640."""
    try:
        st = path.stat()
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        st = config_path.stat()
        return NEW_REGISTRY_MODE, st.st_uid, st.st_gid


def write_atomic(path: Path, text: str, mode: int = 0o600,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``text`` whole or not at all, with ``mode`` and, if given,
    ``owner`` (uid, gid), both set on the new file before it takes the old one's place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise RegistryError(f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w") as f:
            st = os.fstat(fd)
            if owner is not None and owner != (st.st_uid, st.st_gid):
                try:
                    os.fchown(fd, *owner)
                except PermissionError as e:
                    raise RegistryError(
                        f"cannot keep {path} owned by uid {owner[0]}, gid {owner[1]} "
                        f"({e.strerror}): run this as root or as that user; nothing "
                        "was changed") from e
            os.fchmod(fd, mode)
            f.write(text)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RegistryError(f"cannot write {path}: {e.strerror}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    """The registry of one gateway config file."""

    def __init__(self, config_path: str | Path) -> None:
        self.config_path = Path(config_path)
        cfg: Config = load(self.config_path)  # refuse to edit next to a broken config
        path = devices_path(cfg, self.config_path.parent)
        if path is None:
            raise RegistryError(f"{self.config_path}: gateway.devices_file is empty; "
                                "devices are managed in the config file itself")
        self.path = path
        self.cfg = cfg

    def _write(self, devices: list[Device]) -> None:
        try:
            mode, uid, gid = registry_attrs(self.path, self.config_path)
        except OSError as e:
            raise RegistryError(f"cannot read {self.path}'s owner and mode: "
                                f"{e.strerror}") from e
        write_atomic(self.path, render(devices), mode, (uid, gid))

    def _file_devices(self) -> list[Device]:
        problems: list[str] = []
        devices = read_devices(self.path, problems)
        if problems:
            raise ConfigError(str(self.path), problems)
        return devices

    def entries(self) -> list[Entry]:
        mine = {d.id for d in self._file_devices()}
        return [Entry(d, "registry" if d.id in mine else self.config_path.name)
                for d in self.cfg.devices]

    def add(self, device_id: str, *, role: str = "meter", site: str = "", feeder: str = "",
            channels: tuple[str, ...] = (), key: bytes | None = None) -> tuple[Entry, bytes]:
        """Register a device; generates its key unless given. Returns the entry and key."""
        if not DEVICE_ID.fullmatch(device_id):
            raise RegistryError(f"device id {device_id!r} must match {DEVICE_ID.pattern}")
        if role not in ROLES:
            raise RegistryError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if any(d.id == device_id for d in self.cfg.devices):
            raise RegistryError(f"device {device_id} is already registered")
        if key is None:
            key = secrets.token_bytes(32)
        elif len(key) != 32:
            raise RegistryError(f"a device key is 32 bytes, got {len(key)}")
        device = Device(id=device_id, key=key.hex(), site=site, feeder=feeder, role=role,
                        channels=list(channels))
        self._write([*self._file_devices(), device])
        self.cfg = load(self.config_path)
        return Entry(device, "registry"), key

    def resync(self, device_id: str) -> Entry:
        """Raise a device's ``resync``: once applied (SIGHUP), the gateway forgets its
        replay marks, so a meter whose counters went back is accepted again."""
        mine = self._file_devices()
        for i, d in enumerate(mine):
            if d.id == device_id:
                mine[i] = replace(d, resync=d.resync + 1)
                self._write(mine)
                self.cfg = load(self.config_path)
                return Entry(mine[i], "registry")
        for d in self.cfg.devices:
            if d.id == device_id:
                raise RegistryError(f"device {device_id} is defined in {self.config_path}: "
                                    f"set `resync = {d.resync + 1}` in its [[devices]] table "
                                    "there, then reload")
        raise RegistryError(f"no device {device_id} in the registry")

    def remove(self, device_id: str) -> Entry:
        mine = self._file_devices()
        keep = [d for d in mine if d.id != device_id]
        if len(keep) == len(mine):
            if any(d.id == device_id for d in self.cfg.devices):
                raise RegistryError(f"device {device_id} is defined in "
                                    f"{self.config_path}; remove it there")
            raise RegistryError(f"no device {device_id} in the registry")
        self._write(keep)
        gone = next(d for d in mine if d.id == device_id)
        self.cfg = load(self.config_path)
        return Entry(gone, "registry")

    def export_key(self, device_id: str, dest: Path) -> str:
        """Write a device's key (hex) to ``dest`` with mode 0600; returns the fingerprint."""
        for d in self.cfg.devices:
            if d.id == device_id:
                write_atomic(dest, d.key + "\n")
                return fingerprint(bytes.fromhex(d.key))
        raise RegistryError(f"no device {device_id} in the registry")
