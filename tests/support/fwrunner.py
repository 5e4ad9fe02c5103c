"""Run firmware code under CPython or the real MicroPython unix port, from pytest.

Both interpreters run the same script file in a subprocess with only the firmware tree, the
fetched MicroPython libraries and a test-only shim folder on their module path:

- CPython runs with ``-S`` (no site-packages) so firmware code cannot lean on PyPI packages,
  and finds ``micropython`` (const() and the ticks API) in tests/firmware/shim/cpython.
- MicroPython gets ``MICROPYPATH=tools/mpy_shim:firmware:build/mpy-lib:tests/firmware/lib:.frozen``
  (MICROPYPATH replaces the search path, so ``.frozen`` must stay for asyncio and friends).
- Both find tests/firmware/lib last: firmware-style code that only tests need (the CBOR decoder,
  the frame parser, the serial deframer), kept out of firmware/ so it is never flashed.
- Both find the virtual board's ``machine.py`` in tools/mpy_shim (never in firmware/); it
  talks to a tools.vboard.VirtualBoard named by GRIDEDGE_VBOARD (pass ``env``).

A non-zero exit becomes an ordinary test failure carrying the interpreter's stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tools.resources import mpy_lib

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
MPY_LIB = mpy_lib()  # where `make setup` (gridedge fetch-mpy-deps) put them
SHIMS = REPO / "tests" / "firmware" / "shim"
MACHINE_SHIM = REPO / "tools" / "mpy_shim"  # the virtual board's machine.py
SCRIPTS = REPO / "tests" / "firmware" / "scripts"
# Test-only firmware-side code (the decoders), never flashed.
FW_LIB = REPO / "tests" / "firmware" / "lib"

INTERPRETERS = ("cpython", "micropython")


def micropython_version(exe: str) -> str:
    out = subprocess.run(
        [exe, "-c", "import sys; print('%d.%d.%d' % sys.implementation.version[:3])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def firmware_module(name: str) -> Any:
    """Import a firmware module in-process under CPython (for hypothesis property tests)."""
    for p in (str(FIRMWARE), str(SHIMS / "cpython"), str(FW_LIB)):
        if p not in sys.path:
            sys.path.insert(0, p)
    importlib.import_module("micropython")  # the shim: const() and the tick API
    return importlib.import_module(name)


class FirmwareRunner:
    """Runs a firmware script under one interpreter; see the module docstring."""

    def __init__(self, name: str, exe: str, code: list[Path] | None = None,
                 machine: Path = MACHINE_SHIM) -> None:
        """``code`` replaces firmware/, build/mpy-lib and tests/firmware/lib on the module path
        (e.g. a tree staged by ``gridedge flash``, compiled by mpy-cross); ``machine``: the
        folder with the virtual board's machine module (e.g. compiled as well)."""
        self.name = name
        self.exe = exe
        self.code = code
        self.machine = machine

    def command(
        self, script: Path, heapsize: str | None = None, extra_env: dict[str, str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROPY"))}
        env.update(extra_env or {})
        if self.name == "cpython":
            path = [SHIMS / "cpython", self.machine, *(self.code or [FIRMWARE, MPY_LIB, FW_LIB])]
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
            env["PYTHONHASHSEED"] = "0"
            # Import the micropython shim first (it adds ticks_ms & co. to time), then run.
            boot = "import micropython, runpy, sys; sys.argv = sys.argv[1:]; " \
                "runpy.run_path(sys.argv[0], run_name='__main__')"
            return [self.exe, "-S", "-u", "-X", "utf8", "-c", boot, str(script)], env
        path = [self.machine, *(self.code or [FIRMWARE, MPY_LIB, FW_LIB])]
        env["MICROPYPATH"] = ":".join([*(str(p) for p in path), ".frozen"])
        cmd = [self.exe]
        if heapsize:
            cmd += ["-X", f"heapsize={heapsize}"]
        return [*cmd, str(script)], env

    def run(
        self,
        script: str | Path,
        stdin: str = "",
        heapsize: str | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> str:
        """Run a script (a path, a name in tests/firmware/scripts, or source text); return
        stdout."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self._script_path(script, Path(tmp))
            cmd, full_env = self.command(path, heapsize, env)
            proc = subprocess.run(
                cmd, input=stdin, capture_output=True, text=True, env=full_env,
                timeout=timeout, cwd=cwd,
            )
        if proc.returncode != 0:
            pytest.fail(
                f"firmware script under {self.name} exited {proc.returncode}\n"
                f"--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout[-2000:]}",
                pytrace=False,
            )
        return proc.stdout

    def run_code(self, code: str, data: Any = None) -> Any:
        """Run firmware code text (json and sys imported) with ``data`` as JSON on stdin;
        the last line it prints, parsed as JSON."""
        return self.run_json("import json, sys\n" + code, data if data is not None else {})

    def run_json(
        self,
        script: str | Path,
        data: Any,
        heapsize: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Any:
        """Send JSON on stdin, parse the last stdout line as JSON."""
        out = self.run(script, json.dumps(data), heapsize=heapsize, env=env)
        # split on "\n" only: str.splitlines() also breaks on U+0085 and U+2028 inside strings
        lines = [line for line in out.split("\n") if line.strip()]
        if not lines:
            pytest.fail(f"firmware script under {self.name} printed nothing", pytrace=False)
        return json.loads(lines[-1])

    def start(
        self, script: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[str]:
        """Start a long-running firmware script (e.g. main.py); the caller stops it."""
        cmd, full_env = self.command(script, None, env)
        return subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=full_env, cwd=cwd,
        )

    @staticmethod
    def _script_path(script: str | Path, tmp: Path) -> Path:
        if isinstance(script, Path):
            return script
        named = SCRIPTS / script
        if script.endswith(".py") and "\n" not in script and named.exists():
            return named
        path = tmp / "snippet.py"
        path.write_text(script)
        return path
