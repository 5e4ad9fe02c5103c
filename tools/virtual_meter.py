"""A meter's hardware and flash laid out for the unmodified firmware on a virtual board.

``wire_meter`` writes a device folder as the firmware finds it on a board (board.json from
boards/, config.json, key.bin) and attaches datasheet emulators where the board file
puts the metering ICs: a PZEM-004T on its UART, an ADE7953 on its SPI bus with chip
select and a RESET pin that resets the chip. The fleet simulator and the firmware tests
both build their meters with it. ``find_micropython`` locates the unix port that runs
the firmware.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools import resources
from tools.emulators.ade7953 import ADE7953
from tools.emulators.pzem004t import PZEM004T
from tools.vboard import VirtualBoard


def find_micropython() -> str | None:
    """The `micropython` console script of this environment, else one on PATH.

    GRIDEDGE_MICROPYTHON overrides the search (a path; empty means "not installed").
    """
    if "GRIDEDGE_MICROPYTHON" in os.environ:
        forced = os.environ["GRIDEDGE_MICROPYTHON"]
        return forced if forced and Path(forced).exists() else None
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    return shutil.which("micropython")


@dataclass
class MeterRig:
    pzem: PZEM004T
    ade: ADE7953 | None  # None when the board file has no ADE7953
    gateway_uart: str  # the virtual bus of the board's serial link to the gateway
    board_file: dict[str, Any]


def wire_meter(board: VirtualBoard, folder: Path, board_name: str, config: dict[str, Any],
               key: bytes, pzem_timeout_ms: int = 200) -> MeterRig:
    """A device folder (board file, config, key) and its ICs' emulators on ``board``."""
    desc = load_board(board_name)
    for m in desc["meters"]:
        if m["type"] == "pzem004t":
            # The virtual bus answers instantly: no inter-request gap is needed.
            m.update(gap_ms=0, timeout_ms=pzem_timeout_ms)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "board.json").write_text(json.dumps(desc))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "key.bin").write_bytes(key)
    return attach_emulators(board, desc)


def load_board(board_name: str) -> dict[str, Any]:
    desc: dict[str, Any] = json.loads((resources.boards() / f"{board_name}.json").read_text())
    return desc


def attach_emulators(board: VirtualBoard, desc: dict[str, Any]) -> MeterRig:
    """The emulated ICs where the board file ``desc`` wires them: a PZEM-004T (address 1)
    on its UART, an ADE7953 on its SPI bus, chip select and reset pin, if it has one."""
    pzem = PZEM004T(1)
    board.attach_uart(f"uart{desc['uart']['pzem']['id']}", pzem)
    ade = None
    if "ade" in desc.get("spi", {}):
        ade = ADE7953()
        pins = desc["pins"]
        board.attach_spi(f"spi{desc['spi']['ade']['id']}", f"pin{pins['ade_cs']}", ade)
        chip = ade
        board.on_pin(f"pin{pins['ade_reset']}",
                     lambda v: chip.chip_reset() if v == 0 else None)
    return MeterRig(pzem, ade, f"uart{desc['uart']['gateway']['id']}", desc)
