"""One type for everything on the alarms topic: an alarm (raised, cleared) or an event.

The edge checks (checks.py), the gateway's records about itself (events.py) and the
verifier (replay_rejected, counter_reset) all build an ``Alarm``; records.alarm turns one
into an uplink record with its stable id. The common fields are typed attributes; what a
kind adds (``value`` and ``threshold``, ``silent_s``, ``missing``, …: docs/cloud.md and
docs/schemas/alarm.schema.json, per kind) is its ``evidence``. As a read-only mapping an
Alarm is its JSON body, in the documented key order: ``type``, ``state``, ``kind``,
``device``, ``time``, then ``site`` and ``feeder`` where the kind carries them, ``channel``
for a channel's alarm, then the evidence.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from gateway.payloads import iso_ms

STATES = ("raised", "cleared", "event")


@dataclass(frozen=True, eq=False)
class Alarm(Mapping[str, object]):
    kind: str
    state: str  # raised or cleared (an alarm), or event (something that happened)
    device: str  # "" for what is not one device's (a feeder's loss, the store)
    time_ms: int
    site: str | None = None  # None: not part of this kind's body
    feeder: str | None = None
    channel: int | None = None
    evidence: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"alarm state {self.state!r} is not one of {STATES}")

    @property
    def type(self) -> str:
        return "event" if self.state == "event" else "alarm"

    @functools.cached_property
    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"type": self.type, "state": self.state, "kind": self.kind,
                                  "device": self.device, "time": iso_ms(self.time_ms)}
        if self.site is not None:
            out["site"] = self.site
        if self.feeder is not None:
            out["feeder"] = self.feeder
        if self.channel is not None:
            out["channel"] = self.channel
        out.update(self.evidence)
        return out

    def __getitem__(self, key: str) -> object:
        return self.body[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.body)

    def __len__(self) -> int:
        return len(self.body)
