"""Where the files a command needs at run time live: in the installed ``tools`` package.

The firmware sources, the board files, the scenarios and the virtual board's ``machine.py``
ship inside the ``tools`` package and are found with ``importlib.resources``, so a wheel
installed anywhere finds its own copies and a venv never reads another checkout's files.
In the repository they are the top-level folders (firmware/, boards/, scenarios/), which
tools/ reaches through committed symbolic links (tools/firmware -> ../firmware, …); the
wheel build copies their contents (docs/adr/0001-layout.md says why). The MicroPython
libraries the firmware needs (umqtt.simple) are fetched, pinned and hash-checked, into a
cache folder: ``GRIDEDGE_MPY_LIB`` if set, else ``$XDG_CACHE_HOME/gridedge/mpy-lib``.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from tools.errors import ToolError


def _folder(name: str) -> Path:
    path = Path(str(files("tools") / name))
    if not path.is_dir():
        raise ToolError(f"this gridedge installation has no {name}/ ({path}): reinstall it")
    return path


def firmware() -> Path:
    """The firmware sources: main.py and the gemeter package (flashed, simulated)."""
    return _folder("firmware")


def boards() -> Path:
    """The board files, one JSON per board (pin maps and buses)."""
    return _folder("boards")


def scenarios() -> Path:
    """The fleet scenarios of ``gridedge simulate`` and ``gridedge demo``."""
    return _folder("scenarios")


def machine_shim() -> Path:
    """The folder holding the virtual board's ``machine.py`` (never flashed)."""
    return _folder("mpy_shim")


def mpy_lib() -> Path:
    """Where the pinned MicroPython libraries are (or will be) fetched."""
    override = os.environ.get("GRIDEDGE_MPY_LIB")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gridedge" / "mpy-lib"
