"""The built wheel installs one import root, `gridedge`, and the two console scripts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from fwrunner import REPO


def test_wheel_has_one_import_root(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
         str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("gridedge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"gridedge"}
    assert "gridedge/gateway/protocol.py" in names
    assert "gridedge/tools/cli.py" in names
    assert not any(n.startswith("gridedge/__init__") for n in names)  # PEP 420 namespace
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "gridedge-gateway = gridedge.gateway.cli:main" in text
    assert "gridedge = gridedge.tools.cli:main" in text


def test_console_scripts_answer_help() -> None:
    bindir = Path(sys.executable).parent
    for script in ("gridedge", "gridedge-gateway"):
        proc = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {script}")
