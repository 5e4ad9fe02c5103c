"""A virtual meter for firmware tests: board and config files, emulated ICs, the gateway side.

``VirtualMeter`` lays out a board's filesystem in a folder (board.json from boards/,
config.json, key.bin), attaches a PZEM-004T and an ADE7953 emulator to the virtual board
where that board file says they are, and decodes what the firmware sent on its serial
link with the gateway's own deframer and frame decoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fwrunner import REPO
from gridedge.gateway import framing
from gridedge.gateway.errors import ProtocolError
from gridedge.gateway.protocol import Frame, FrameDecoder
from gridedge.tools.emulators.ade7953 import ADE7953
from gridedge.tools.emulators.pzem004t import PZEM004T
from gridedge.tools.vboard import VirtualBoard

KEY = bytes(range(100, 132))
DEVICE = "mtr-test-01"


class VirtualMeter:
    def __init__(self, board: VirtualBoard, root: Path, board_name: str = "esp32-devkitc",
                 pzem_timeout_ms: int = 200, **config: Any) -> None:
        self.board = board
        self.root = root
        desc = json.loads((REPO / "boards" / f"{board_name}.json").read_text())
        for m in desc["meters"]:
            if m["type"] == "pzem004t":
                # The virtual bus answers instantly: no inter-request gap is needed.
                m.update(gap_ms=0, timeout_ms=pzem_timeout_ms)
        (root / "board.json").write_text(json.dumps(desc))
        cfg = {"device_id": DEVICE, "link": "serial", "sample_interval_ms": 1,
               "report_interval_s": 1, **config}
        (root / "config.json").write_text(json.dumps(cfg))
        (root / "key.bin").write_bytes(KEY)
        self.pzem = PZEM004T(1)
        self.pzem.set_reading(voltage=230.4, current=4.2, power=950.0, frequency=50.0, pf=0.98)
        board.attach_uart(f"uart{desc['uart']['pzem']['id']}", self.pzem)
        self.ade: ADE7953 | None = None
        if "ade" in desc.get("spi", {}):
            self.ade = ADE7953()
            self.ade.set_channel(0, current=10.0, power=2200.0, reactive=300.0, apparent=2300.0)
            self.ade.set_channel(1, current=1.0, power=-200.0, apparent=210.0)
            pins = desc["pins"]
            board.attach_spi(f"spi{desc['spi']['ade']['id']}", f"pin{pins['ade_cs']}",
                             self.ade)
            ade = self.ade
            board.on_pin(f"pin{pins['ade_reset']}",
                         lambda v: ade.chip_reset() if v == 0 else None)
        self.link_bus = board.uart(f"uart{desc['uart']['gateway']['id']}")

    def request(self, cycles: int) -> dict[str, Any]:
        return {"root": str(self.root) + os.sep, "cycles": cycles}

    def frames(self) -> tuple[list[Frame], list[ProtocolError]]:
        """Everything the firmware wrote to its gateway UART, decoded by the gateway code."""
        stream = b"".join(self.link_bus.written)
        decoder = FrameDecoder({DEVICE: KEY})
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
