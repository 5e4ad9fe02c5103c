"""The test harness itself: a missing MicroPython is skipped loudly, and fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.fwrunner import REPO


def run_pytest(ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["GRIDEDGE_MICROPYTHON"] = ""  # pretend the unix port is not installed
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{REPO / 'tests' / 'firmware' / 'test_framing.py'}::test_software_crc32_matches_zlib"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


def test_missing_micropython_is_skipped_loudly() -> None:
    proc = run_pytest(ci=False)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout
    assert "MICROPYTHON TESTS SKIPPED" in proc.stdout
    assert "firmware tests under MicroPython were NOT run" in proc.stdout


def test_missing_micropython_fails_under_ci() -> None:
    proc = run_pytest(ci=True)
    assert proc.returncode == 1, proc.stdout
    assert "1 passed, 1 error" in proc.stdout
    assert "CI requires them" in proc.stdout
