"""The readers' side of the committer: frames handed over with their source and their ack.

The ingest readers (local MQTT, serial ports) and the committer (pipeline.py) share only
this bounded queue, so a reader needs nothing of the committer to be built, and the
committer is built last, with everything it reports to. A reader ``submit``s each frame's
bytes (or its own verdict on them: a ProtocolError such as a serial CRC error or a message
too large to read, counted by the verifier like any other rejection), the source it came
from, the device that source stands for (a topic level, a serial port's configured
device) and the acknowledgement to call once the frame is safe. ``submit`` blocks while
the committer is far behind: back-pressure to the broker or the serial line, never an
unbounded queue.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

from gateway.errors import ProtocolError

Ack = Callable[[], None]
# A frame as a reader hands it over: its bytes (or the reader's verdict on them), its
# source, the device the source stands for, its acknowledgement.
Item = tuple[bytes | ProtocolError, str, str | None, Ack | None]
MAX_WAITING = 100_000  # frames; a reader blocks beyond this


class Inbox:
    def __init__(self, max_waiting: int = MAX_WAITING) -> None:
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=max_waiting)

    def submit(self, raw: bytes | ProtocolError, source: str, ack: Ack | None = None,
               claimed: str | None = None) -> None:
        self.queue.put((raw, source, claimed, ack))
