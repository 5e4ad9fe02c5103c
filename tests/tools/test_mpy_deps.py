"""The MicroPython dependency fetcher: pins, hashes, unpacking, idempotence, index discovery.

Unit tests run against a throw-away PEP 503 index on the local file system holding archives
made here (no third-party code). The last test checks that `make setup` left the real pinned
libraries in build/mpy-lib and that they import under the MicroPython unix port.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.support.fwrunner import MPY_LIB, FirmwareRunner
from tools import mpy_deps
from tools.mpy_deps import FetchError, Pin


def make_sdist(name: str, version: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Pin]:
    sdist = make_sdist("micropython-demo", "1.0", {
        "demo/__init__.py": "X = 1\n",
        "demo/sub.py": "Y = 2\n",
        "setup.py": "raise SystemExit\n",
        "micropython_demo.egg-info/PKG-INFO": "Name: demo\n",
    })
    digest = hashlib.sha256(sdist).hexdigest()
    project = tmp_path / "index" / "micropython-demo"
    project.mkdir(parents=True)
    (project / "micropython-demo-1.0.tar.gz").write_bytes(sdist)
    (project / "index.html").write_text(
        f'<a href="micropython-demo-1.0.tar.gz#sha256={digest}">micropython-demo-1.0.tar.gz</a>'
    )
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    return tmp_path, Pin("micropython-demo", "1.0", digest, ("demo",))


def test_index_comes_from_pip_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///nowhere/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///a file:///b")
    assert mpy_deps.index_urls() == ["file:///nowhere/simple", "file:///a", "file:///b"]


def test_fetch_unpacks_only_modules(local_index: tuple[Path, Pin]) -> None:
    tmp, pin = local_index
    dest = tmp / "lib"
    files = mpy_deps.fetch(dest, (pin,))
    assert files == {"micropython-demo": ["demo/__init__.py", "demo/sub.py"]}
    assert sorted(p.name for p in dest.rglob("*.py")) == ["__init__.py", "sub.py"]
    stamp = json.loads((dest / mpy_deps.STAMP).read_text())
    assert stamp["pins"] == {"micropython-demo": f"1.0 {pin.sha256}"}


def test_second_fetch_is_a_no_op(local_index: tuple[Path, Pin]) -> None:
    tmp, pin = local_index
    dest = tmp / "lib"
    mpy_deps.fetch(dest, (pin,))
    (tmp / "index" / "micropython-demo" / "micropython-demo-1.0.tar.gz").unlink()
    assert mpy_deps.fetch(dest, (pin,))["micropython-demo"] == ["demo/__init__.py", "demo/sub.py"]
    with pytest.raises(FetchError, match="not found on any index"):
        mpy_deps.fetch(dest, (pin,), force=True)
    assert (dest / "demo" / "sub.py").exists()  # a failed refresh leaves the old copy alone


def test_hash_mismatch_is_refused(local_index: tuple[Path, Pin]) -> None:
    tmp, pin = local_index
    bad = Pin(pin.project, pin.version, "0" * 64, pin.packages)
    with pytest.raises(FetchError, match="does not match the pin"):
        mpy_deps.fetch(tmp / "lib", (bad,))
    assert not (tmp / "lib").exists()


def test_unsafe_paths_are_refused() -> None:
    data = make_sdist("p", "1", {"demo/../../evil.py": "x"})
    with pytest.raises(FetchError, match="unsafe path"):
        mpy_deps.unpack(Pin("p", "1", "", ("demo",)), data, Path("/nonexistent"))


def test_pinned_libraries_import_under_micropython(fw_micropython: FirmwareRunner) -> None:
    assert (MPY_LIB / "umqtt" / "simple.py").exists(), "run `make setup` first"
    out = fw_micropython.run(
        "from umqtt.simple import MQTTClient\n"
        "print(MQTTClient.__name__, hasattr(MQTTClient, 'publish'))\n"
    )
    assert out.split() == ["MQTTClient", "True"]
