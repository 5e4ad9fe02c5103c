"""A virtual meter for firmware tests: board and config files, emulated ICs, the gateway side.

``VirtualMeter`` lays out a board's filesystem in a folder and attaches a PZEM-004T and an
ADE7953 emulator where that board file says they are (tools.virtual_meter, as
the fleet simulator does), gives them test readings, and decodes what the firmware sent
on its serial link with the gateway's own deframer and frame decoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway import framing
from gateway.errors import ProtocolError
from gateway.protocol import Frame, FrameDecoder
from tools.emulators.ade7953 import ADE7953
from tools.vboard import VirtualBoard
from tools.virtual_meter import wire_meter

KEY = bytes(range(100, 132))
DEVICE = "mtr-test-01"


class VirtualMeter:
    def __init__(self, board: VirtualBoard, root: Path, board_name: str = "esp32-devkitc",
                 pzem_timeout_ms: int = 200, **config: Any) -> None:
        self.board = board
        self.root = root
        self.key = KEY  # what the device signs with (a test may generate another)
        cfg = {"device_id": DEVICE, "link": "serial", "sample_interval_ms": 1,
               "report_interval_s": 1, **config}
        rig = wire_meter(board, root, board_name, cfg, KEY, pzem_timeout_ms)
        self.pzem = rig.pzem
        self.pzem.set_reading(voltage=230.4, current=4.2, power=950.0, frequency=50.0, pf=0.98)
        self.ade: ADE7953 | None = rig.ade
        if self.ade is not None:
            self.ade.set_channel(0, current=10.0, power=2200.0, reactive=300.0, apparent=2300.0)
            self.ade.set_channel(1, current=1.0, power=-200.0, apparent=210.0)
        self.link_bus = board.uart(rig.gateway_uart)

    def request(self, cycles: int) -> dict[str, Any]:
        return {"root": str(self.root) + os.sep, "cycles": cycles}

    def frames(self) -> tuple[list[Frame], list[ProtocolError]]:
        """Everything the firmware wrote to its gateway UART, decoded by the gateway code."""
        stream = b"".join(self.link_bus.written)
        decoder = FrameDecoder({DEVICE: self.key})
        frames: list[Frame] = []
        errors: list[ProtocolError] = []
        for item in framing.Deframer().feed(stream):
            if isinstance(item, ProtocolError):
                errors.append(item)
                continue
            try:
                frames.append(decoder.decode(item))
            except ProtocolError as e:
                errors.append(e)
        return frames, errors
