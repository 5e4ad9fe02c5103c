"""Records: what the uplink sends for an accepted frame and for an alarm or event.

A reading becomes one telemetry record, its body the reading's JSON (payloads.py) with the
device's site, feeder and channel names from the registry. An alarm or event (checks.py,
events.py) becomes one alarm record whose body carries a stable ``id``, unique per
gateway: kind:state:device:feeder:channel:quantity:time:boot:seq (docs/cloud.md §2.2), so
a resend is recognisable. Pure functions; the committer stores what they return.
"""

from __future__ import annotations

import json

from gateway.alarm import Alarm
from gateway.devices import Device
from gateway.payloads import reading_json
from gateway.protocol import Frame
from gateway.store_rows import ALARM, TELEMETRY, Record

_JSON = json.JSONEncoder(separators=(",", ":"))  # alarm records (readings: reading_json)
ID_FIELDS = ("kind", "state", "device", "feeder", "channel", "quantity", "time")


def reading(frame: Frame, info: Device) -> Record:
    body = reading_json(frame, info.site or None, info.feeder or None,
                        info.channel_names or None)
    return Record(TELEMETRY, frame.device_id, frame.boot, frame.seq, body.encode())


def alarm(ev: Alarm, boot: int = 0, seq: int = 0) -> Record:
    """Unique per event: one frame can raise the same kind on several quantities, and a
    device's (boot, seq) tells two events of one millisecond apart."""
    ident = ":".join(str(ev.get(k, "")) for k in ID_FIELDS)
    body = {"id": f"{ident}:{boot}:{seq}", **ev.body}
    return Record(ALARM, ev.device or ev.feeder or "", boot, seq, _JSON.encode(body).encode())
