"""Errors of the wire protocol, shared by the framing, COSE and frame-decoding stages.

Every rejected frame raises ``ProtocolError`` carrying a ``Reason``; the ingest pipeline
counts rejections per reason and logs the detail once, rate-limited, with the device id
when it is known.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a frame was rejected; the pipeline counts rejections per reason."""

    TOO_LARGE = "too_large"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    UNKNOWN_DEVICE = "unknown_device"
    BAD_MAC = "bad_mac"
    BAD_VERSION = "bad_version"
    OUT_OF_RANGE = "out_of_range"
    BAD_CRC = "bad_crc"
    WRONG_SOURCE = "wrong_source"  # key id differs from the device of its topic or port


MAX_DETAIL = 200  # characters: a detail may quote the input, never all of it


class ProtocolError(Exception):
    """A rejected frame: ``reason`` for counting, ``detail`` for the log line (bounded)."""

    def __init__(self, reason: Reason, detail: str, device_id: str | None = None) -> None:
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL - 1] + "…"
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.device_id = device_id
