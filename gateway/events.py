"""The gateway's own events for the alarms topic: what happened once, not a reading's check.

Edge checks (checks.py) raise and clear alarms about readings; these are the records the
gateway makes about itself and its inputs: frames lost upstream (``gap``), a damaged
store (``store_corrupt``: what was moved aside, lost and salvaged), records that failed
their checksum on the medium (``record_corrupt``). Each builder returns one record in the
shape docs/cloud.md and docs/schemas/alarm.schema.json define; ``Pipeline.alarm_record``
gives it its id.
"""

from __future__ import annotations

from collections.abc import Sequence

from gridedge.gateway.checks import Event
from gridedge.gateway.payloads import iso_ms
from gridedge.gateway.protocol import Frame
from gridedge.gateway.store import Recovery, Stored

MAX_LISTED = 20  # identities named in one record_corrupt event; all are counted


def _event(kind: str, device: str, now_ms: int, **fields: object) -> Event:
    return {"type": "event", "state": "event", "kind": kind, "device": device,
            "time": iso_ms(now_ms), **fields}


def gap(frame: Frame, missing: int, now_ms: int) -> Event:
    """Frames lost upstream (a late one may still fill the gap; the cloud sees it then)."""
    return _event("gap", frame.device_id, now_ms, boot=frame.boot, seq=frame.seq,
                  missing=missing)


def store_corrupt(r: Recovery) -> Event:
    """The store was found damaged and replaced (store_file.Recovery)."""
    return _event("store_corrupt", "", r.time_ms, feeder="", cause=r.cause, detail=r.detail,
                  moved_to=r.moved_to, lost_commits=r.lost_commits, salvaged=r.salvaged,
                  dropped=r.dropped)


def record_corrupt(bad: Sequence[Stored], now_ms: int) -> Event:
    """Stored records that failed their checksum: quarantined, not sent."""
    def plain(v: object) -> str | int:  # a damaged row may hold anything in any column
        return v if type(v) is int or type(v) is str else repr(v)[:64]

    return _event("record_corrupt", "", now_ms, feeder="", count=len(bad),
                  records=[{"device": plain(r.device), "boot": plain(r.boot),
                            "seq": plain(r.seq), "priority": plain(r.priority)}
                           for r in bad[:MAX_LISTED]])
