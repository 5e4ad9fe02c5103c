"""The gateway's own records for the alarms topic: about its inputs and itself.

Edge checks (checks.py) raise and clear alarms about readings; these are the records the
gateway makes about itself and its inputs: frames lost upstream (``gap``), a device whose
authentic frames are being refused as replays (``replay_rejected``, raised and cleared),
a device whose counters went back and whose newer clock proved its frames new
(``counter_reset``), a damaged store (``store_corrupt``: what was moved aside, lost and
salvaged), records that failed their checksum on the medium (``record_corrupt``), the
anomaly detectors' saved state, the command queue or the rotated keys found damaged
(``detector_state_lost``, ``command_queue_lost``, ``keyring_lost``). Each
builder returns one record in the shape docs/cloud.md and docs/schemas/alarm.schema.json
define; ``records.alarm`` gives it its id.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.alarm import Alarm
from gateway.protocol import Frame
from gateway.store_file import Recovery
from gateway.store_rows import Mark, Stored

MAX_LISTED = 20  # identities named in one record_corrupt event; all are counted


def _event(kind: str, device: str, now_ms: int, feeder: str | None = None,
           **fields: object) -> Alarm:
    return Alarm(kind, "event", device, now_ms, feeder=feeder, evidence=fields)


def gap(frame: Frame, missing: int, now_ms: int) -> Alarm:
    """Frames lost upstream (a late one may still fill the gap; the cloud sees it then)."""
    return _event("gap", frame.device_id, now_ms, boot=frame.boot, seq=frame.seq,
                  missing=missing)


def replay_rejected(device: str, state: str, cause: str, frame: Frame, mark: Mark,
                    now_ms: int) -> Alarm:
    """Raised at the first authentic frame of a device refused as replayed or stale (its
    counters are below what was accepted); cleared at its next accepted frame."""
    evidence: dict[str, object] = {"cause": cause, "boot": frame.boot, "seq": frame.seq,
                                   "accepted_boot": mark.boot, "accepted_seq": mark.seq}
    if state == "raised":
        evidence["hint"] = (f"if {device} was reset or re-flashed, resume it with: "
                            f"gridedge-gateway devices resync {device}")
    return Alarm("replay_rejected", state, device, now_ms, evidence=evidence)


def counter_reset(frame: Frame, before: Mark, now_ms: int) -> Alarm:
    """A device's (boot, seq) went back, and its clock proved the frame new."""
    return _event("counter_reset", frame.device_id, now_ms, boot=frame.boot, seq=frame.seq,
                  previous_boot=before.boot, previous_seq=before.seq)


def store_corrupt(r: Recovery) -> Alarm:
    """The store was found damaged and replaced (store_file.Recovery)."""
    return _event("store_corrupt", "", r.time_ms, feeder="", cause=r.cause, detail=r.detail,
                  moved_to=r.moved_to, lost_commits=r.lost_commits, salvaged=r.salvaged,
                  dropped=r.dropped)


def command_results(frame: Frame, now_ms: int) -> Alarm:
    """What a device did with the commands it received since its last frame."""
    return _event("command_results", frame.device_id, now_ms, boot=frame.boot,
                  seq=frame.seq, results=[
                      {"id": cid.decode("ascii", "replace"), "state": state,
                       **({"reason": reason} if reason else {})}
                      for cid, state, reason in frame.results])


def detector_state_lost(detail: str, now_ms: int) -> Alarm:
    """The detectors' saved state was damaged (detector_state.py): they start afresh."""
    return _event("detector_state_lost", "", now_ms, feeder="", detail=detail)


def command_queue_lost(detail: str, now_ms: int) -> Alarm:
    """The command queue's file was damaged (command_queue.py): a new one started."""
    return _event("command_queue_lost", "", now_ms, feeder="", detail=detail)


def keyring_lost(detail: str, now_ms: int) -> Alarm:
    """The rotated keys' file was damaged (keyring.py): devices are back on their
    registry keys, and those that had switched are rejected until provisioned again."""
    return _event("keyring_lost", "", now_ms, feeder="", detail=detail)


def record_corrupt(bad: Sequence[Stored], now_ms: int) -> Alarm:
    """Stored records that failed their checksum: quarantined, not sent."""
    def plain(v: object) -> str | int:  # a damaged row may hold anything in any column
        return v if type(v) is int or type(v) is str else repr(v)[:64]

    return _event("record_corrupt", "", now_ms, feeder="", count=len(bad),
                  records=[{"device": plain(r.device), "boot": plain(r.boot),
                            "seq": plain(r.seq), "priority": plain(r.priority)}
                           for r in bad[:MAX_LISTED]])
