"""Fetch the firmware's MicroPython dependencies: pinned, hash-checked, unpacked into a cache.

``micropython-umqtt.simple`` is published as an old-style MicroPython source tarball that
pip refuses to install. (micropython-modbus was pinned too, and flashed, though nothing
used it: the PZEM-004T driver speaks Modbus itself, drivers/pzem004t.py says why.) This
fetcher asks the package index that pip is configured with (PIP_INDEX_URL / ``pip
config``, else pip's own default; extra indexes too) for the pinned file through the
simple repository API (PEP 691 JSON, PEP 503 HTML as a fallback, ``file://`` indexes
included), checks its sha256 against the pin below, and unpacks only the MicroPython
modules into the cache folder (tools/resources.py) for tests, the simulator and flashing.
No registry host name is written here, and no third-party source is committed. A stamp
file records what was unpacked, so a second run with the same pins does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tools.errors import ToolError


@dataclass(frozen=True)
class Pin:
    project: str
    version: str
    sha256: str
    packages: tuple[str, ...]  # top-level module folders or files to unpack


PINS = (
    Pin(
        "micropython-umqtt.simple", "1.3.4",
        "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f", ("umqtt",),
    ),
)

STAMP = ".fetched.json"
TIMEOUT = 60


class FetchError(ToolError):
    """A dependency could not be fetched or did not match its pin."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_config() -> dict[str, str]:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True, text=True, timeout=TIMEOUT, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    conf = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        conf[key.strip()] = value.strip().strip("'\"")
    return conf


def index_urls() -> list[str]:
    """The indexes pip would use, in pip's order: the index, then the extra indexes."""
    conf = _pip_config()

    def setting(name: str) -> str | None:
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            return env
        for section in ("install", "download", "global"):
            if f"{section}.{name}" in conf:
                return conf[f"{section}.{name}"]
        return None

    index = setting("index-url")
    if index is None:
        from pip._internal.models.index import PyPI  # pip's own default, not a name of ours

        index = PyPI.simple_url
    extra = (setting("extra-index-url") or "").split()
    return [index, *extra]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append(href)


def _project_files(index: str, project: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (url, sha256 or None) for a project on one index."""
    base = index.rstrip("/") + "/" + normalise(project) + "/"
    url = base
    if base.startswith("file:"):  # a local PEP 503 tree: the page is the folder's index.html
        folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(base).path))
        if not folder.is_dir():
            raise FileNotFoundError(f"no {folder}")
        url = (folder / "index.html").as_uri()
    req = urllib.request.Request(
        url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    )
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        body = resp.read()
        ctype = resp.headers.get("Content-Type", "") if hasattr(resp, "headers") else ""
    files: dict[str, tuple[str, str | None]] = {}
    if "json" in ctype:
        for f in json.loads(body)["files"]:
            files[f["filename"]] = (urllib.parse.urljoin(base, f["url"]), f["hashes"].get("sha256"))
        return files
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    for href in parser.links:
        url, _, frag = href.partition("#")
        name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        digest = frag[len("sha256="):] if frag.startswith("sha256=") else None
        files[name] = (urllib.parse.urljoin(base, url), digest)
    return files


def download(pin: Pin, indexes: list[str]) -> bytes:
    """The pinned sdist's bytes from the first index that has them with the right hash."""
    wanted = f"{pin.project}-{pin.version}.tar.gz"
    problems = []
    for index in indexes:
        try:
            files = _project_files(index, pin.project)
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{index}: {e}")
            continue
        if wanted not in files:
            problems.append(f"{index}: no {wanted}")
            continue
        url, _ = files[wanted]
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                data: bytes = resp.read()
        except OSError as e:
            problems.append(f"{url}: {e}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != pin.sha256:
            raise FetchError(f"{wanted}: sha256 {digest} does not match the pin {pin.sha256}")
        return data
    raise FetchError(f"{wanted} not found on any index: " + "; ".join(problems))


def unpack(pin: Pin, data: bytes, dest: Path) -> list[str]:
    """Unpack the pin's MicroPython modules (only .py files of its packages) into dest."""
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 2 or not member.isfile() or not member.name.endswith(".py"):
                continue
            rel = Path(*parts[1:])  # strip "<project>-<version>/"
            if rel.parts[0] not in pin.packages and rel.stem not in pin.packages:
                continue
            if ".." in rel.parts or rel.is_absolute():
                raise FetchError(f"{pin.project}: unsafe path {member.name}")
            src = tar.extractfile(member)
            if src is None:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read())
            written.append(str(rel))
    if not written:
        raise FetchError(f"{pin.project}: no modules of {pin.packages} in the archive")
    return sorted(written)


def fetch(dest: Path, pins: tuple[Pin, ...] = PINS, force: bool = False) -> dict[str, list[str]]:
    """Make dest hold exactly the pinned modules; returns project -> unpacked files."""
    stamp = dest / STAMP
    wanted = {p.project: f"{p.version} {p.sha256}" for p in pins}
    if not force and stamp.exists():
        try:
            done = json.loads(stamp.read_text())
        except ValueError:
            done = {}
        if done.get("pins") == wanted:
            return dict(done.get("files", {}))
    indexes = index_urls()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {p.project: unpack(p, download(p, indexes), tmp) for p in pins}
    (tmp / STAMP).write_text(json.dumps({"pins": wanted, "files": files}, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return files


def ensure() -> Path:
    """The pinned libraries in their cache folder (tools/resources.py), fetched if missing."""
    from tools.resources import mpy_lib

    dest = mpy_lib()
    fetch(dest)
    return dest


def main(dest: str, force: bool = False) -> int:
    files = fetch(Path(dest), force=force)  # FetchError: reported by tools/cli.py
    for project, names in files.items():
        print(f"{project}: {len(names)} modules in {dest}")
    return 0
