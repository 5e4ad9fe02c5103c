"""The devices the running gateway knows: one type, built from the configuration in one place.

``config.Device`` is an entry of the registry files as written (TOML, key in hex,
validated with the rest of the config; gateway/registry.py edits them). ``Device`` here is
that entry as the running gateway uses it: the key as bytes, the place (site, feeder), the
role, the channel names, and the generation its replay marks are bound to. ``from_config``
is the only place that turns one into the other; the committer, the verifier, the edge
checks, the records and Home Assistant discovery all take the same ``Devices`` mapping
(device id to Device), and a reload (SIGHUP) swaps the whole mapping at once.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import Config
from gateway.registry import fingerprint


@dataclass(frozen=True)
class Device:
    """A registered device, as the running gateway uses it."""

    key: bytes
    site: str = ""
    feeder: str = ""
    role: str = "meter"  # or "line_sensor" (feeder head: the energy balance's reference)
    channels: tuple[str, ...] = ()  # channel names, in channel order
    generation: str = ""  # what its replay marks are bound to (dedup.py): key, resyncs

    @functools.cached_property
    def channel_names(self) -> dict[int, str]:
        return dict(enumerate(self.channels))


Devices = Mapping[str, Device]  # device id -> Device


def from_config(cfg: Config) -> dict[str, Device]:
    """Every device of the config (gateway.toml and the registry file) as a Device."""
    out = {}
    for d in cfg.devices:
        key = bytes.fromhex(d.key)
        generation = fingerprint(key) + (f"+{d.resync}" if d.resync else "")
        out[d.id] = Device(key, d.site, d.feeder, d.role, tuple(d.channels), generation)
    return out
