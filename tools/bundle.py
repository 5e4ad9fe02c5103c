"""Firmware update bundles: the flash tool's compiled tree, packed for ``update-chunk`` commands.

A bundle is, for each file, a line ``name size sha256-hex`` and then the file's bytes;
the whole bundle's size and sha256 go in the ``update`` command that opens it
(firmware/gemeter/ota.py reads it, docs/protocol.md section 8). It holds main.py and the
compiled modules (gemeter/ and the pinned libraries): never boot.py, which stays what
``gridedge flash`` installed, nor the board file, config, key or state. ``main`` replaces
the firmware's main.py (a test's failing one, or a new version); ``version`` is read
from the main.py it ships. ``only`` makes a patch: just those files (main.py always, for
its version); the board keeps the rest as they are.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools import flash
from tools.errors import ToolError

VERSION = re.compile(rb'^FIRMWARE_VERSION = "([^"]{1,16})"', re.MULTILINE)


@dataclass(frozen=True)
class Bundle:
    data: bytes
    version: str
    files: tuple[tuple[str, int, str], ...]  # (name, size, sha256 hex)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def pack(files: dict[str, bytes]) -> bytes:
    """The bundle of ``files`` (path on the board -> content), in name order."""
    out = bytearray()
    for name in sorted(files):
        data = files[name]
        out += f"{name} {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
        out += data
    return bytes(out)


def make(arch: str, main: bytes | None = None, only: tuple[str, ...] = ()) -> Bundle:
    """The firmware compiled for ``arch`` (a board file's mpy_arch; "x64" for the unix
    port), as a bundle."""
    with tempfile.TemporaryDirectory(prefix="gridedge-bundle-") as tmp:
        stage = Path(tmp)
        names = [n for n in flash.compile_tree(stage, arch) if n != "boot.py"]
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ToolError(f"not in the firmware: {', '.join(unknown)} (one of "
                            f"{', '.join(sorted(names))})")
        files = {n: (stage / n).read_bytes() for n in names
                 if not only or n in only or n == "main.py"}
    if main is not None:
        files["main.py"] = main
    found = VERSION.search(files["main.py"])
    if found is None:
        raise ToolError("main.py names no FIRMWARE_VERSION")
    data = pack(files)
    listing = tuple((n, len(files[n]), hashlib.sha256(files[n]).hexdigest())
                    for n in sorted(files))
    return Bundle(data, found.group(1).decode(), listing)
