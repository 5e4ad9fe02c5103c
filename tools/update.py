"""``gridedge update``: a firmware bundle to meters, through their gateway, with progress bars.

The firmware is compiled for the board's architecture and packed (tools/bundle.py), then
sent to each device at once, each in its own thread, as signed commands on the cloud
broker (tools/command.py's ``Cloud``): ``update`` names the bundle (version, size,
sha256, the trial's time), ``update-chunk`` carries ``chunk`` bytes at an offset, at most
``window`` of them unanswered (a meter takes four commands a turn; a new one goes as each
answer comes), and every answer
says how much the meter holds, so any refusal or loss resumes from there (``update``
again with the same sha256 keeps what was received). The last chunk's answer says the
bundle is staged and the meter restarts into it; ``update-status`` is then asked every
``poll_s`` until the meter says it runs the new version (its trial over: it has sent
frames) or that it rolled back, and why. Exit status: 0 once every device runs it, 1 if
any refused it or rolled back, 3 if any gave no final word within ``timeout``.
"""

from __future__ import annotations

import base64
import queue
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from gateway.command_auth import ArgValue, sign
from tools import bundle as bundles
from tools.command import FINAL, Cloud, read_key
from tools.errors import ToolError

HAVE = re.compile(r"have (\d+) of (\d+)")
RETRIES = 8  # resumptions after a refused or lost chunk, per device


@dataclass
class Options:
    host: str
    port: int
    gateway: str
    devices: list[str]
    key_file: Path
    arch: str
    tls: bool = False
    ca: str | None = None
    user: str | None = None
    password_env: str | None = None
    prefix: str = "gridedge/v1/gw"
    chunk: int = 256
    window: int = 4
    trial_s: int = 600
    poll_s: float = 2.0
    timeout: float = 1800.0
    main: Path | None = None  # a main.py to ship instead of the firmware's
    only: tuple[str, ...] = ()  # a patch: these files alone (and main.py)


@dataclass
class Outcome:
    device: str
    code: int  # 0 running, 1 refused or rolled back, 3 no final word
    message: str
    sent_s: float = 0.0  # until the bundle was staged
    total_s: float = 0.0  # until the meter said it runs it
    chunks: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)


class _Gone(Exception):
    """No final answer in time."""


class Sender:
    """Signed requests for one gateway; each answer routed to the request that awaits it."""

    def __init__(self, o: Options) -> None:
        self.o = o
        self.key = read_key(o.key_file)
        self._waiting: dict[bytes, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.cloud = Cloud(o, self._answer)

    def _answer(self, correlation: bytes, body: dict[str, Any]) -> None:
        with self._lock:
            q = self._waiting.get(correlation)
        if q is not None and body.get("state") in FINAL:
            q.put(body)

    def send(self, device: str, op: str, args: dict[str, ArgValue],
             expires_s: float = 600.0) -> bytes:
        cid = uuid.uuid4().hex[:16]
        with self._lock:
            self._waiting[cid.encode()] = queue.Queue()
        self.cloud.send(sign(self.key, self.o.gateway, cid, device, op, args,
                             int((time.time() + expires_s) * 1000)), cid.encode())
        return cid.encode()

    def wait(self, cid: bytes, deadline: float) -> dict[str, Any]:
        with self._lock:
            q = self._waiting[cid]
        try:
            return q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise _Gone from None
        finally:
            with self._lock:
                self._waiting.pop(cid, None)

    def call(self, device: str, op: str, args: dict[str, ArgValue],
             deadline: float) -> dict[str, Any]:
        return self.wait(self.send(device, op, args), deadline)


def _have(answer: dict[str, Any]) -> int | None:
    found = HAVE.search(str(answer.get("reason", "")))
    return int(found.group(1)) if found else None


def _chunks(s: Sender, device: str, b: bundles.Bundle, have: int, deadline: float,
            out: Outcome, progress: Callable[[int], None]) -> bool:
    """Send the bundle from ``have`` on, ``window`` chunks unanswered at most (a new one
    as each answer comes); True once the meter says it is staged, False at the first
    refusal or failure (after the answers of those still on their way)."""
    o = s.o
    flying: deque[bytes] = deque()
    at = have
    while True:
        while len(flying) < o.window and at < len(b.data):
            flying.append(s.send(device, "update-chunk", {
                "at": at, "data": base64.b64encode(b.data[at:at + o.chunk]).decode()}))
            out.chunks += 1
            at += o.chunk
        if not flying:
            return False
        answer = s.wait(flying.popleft(), deadline)
        out.answers.append(answer)
        if str(answer.get("reason", "")).startswith("staged"):
            return True
        if answer["state"] != "done":
            for cid in flying:  # resume from what the meter says it holds
                out.answers.append(s.wait(cid, deadline))
            return False
        progress(_have(answer) or 0)


def update_one(s: Sender, device: str, b: bundles.Bundle, progress: Progress,
               task: TaskID) -> Outcome:
    o, t0 = s.o, time.monotonic()
    deadline = t0 + o.timeout
    out = Outcome(device, 3, "")
    begin: dict[str, ArgValue] = {"version": b.version, "size": len(b.data),
                                  "sha256": b.sha256, "trial_s": o.trial_s}
    try:
        staged, tries, best = False, 0, -1
        while not staged and tries < RETRIES:
            answer = s.call(device, "update", begin, deadline)
            out.answers.append(answer)
            have = _have(answer)
            reason = str(answer.get("reason", ""))
            staged = reason.startswith("staged")
            if reason.startswith("an update is "):
                if f"({b.sha256[:16]})" not in reason:  # another bundle is on its way in
                    return Outcome(device, 1, f"update failed: {reason}",
                                   answers=out.answers)
                staged = True  # this one, sent before (the tool ran already): ask on
                break
            if answer["state"] != "done" or (have is None and not staged):
                return Outcome(device, 1, f"update {answer['state']}: {reason}",
                               answers=out.answers)
            if have is not None and not staged:
                tries = 0 if have > best else tries + 1  # tries without progress
                best = max(best, have)
                staged = _chunks(s, device, b, have, deadline, out,
                                 lambda k: progress.update(task, completed=k))
                last = out.answers[-1]
                if not staged and last["state"] == "failed" and _have(last) is None:
                    # the bundle or the flash: sending it again would fail again
                    return Outcome(device, 1, f"update-chunk {last['state']}: "
                                   f"{last.get('reason', '')}", answers=out.answers)
        if not staged:
            return Outcome(device, 1, f"not staged after {RETRIES} tries: "
                           f"{out.answers[-1].get('reason', '')}", answers=out.answers)
        out.sent_s = time.monotonic() - t0
        progress.update(task, completed=len(b.data), description=f"{device} restarting")
        while True:  # the restart, then the trial: until it runs, or rolled back
            time.sleep(o.poll_s)
            answer = s.call(device, "update-status", {}, deadline)
            reason = str(answer.get("reason", ""))
            if reason == f"running {b.version}":
                out.code, out.message = 0, reason
                break
            if reason.startswith("rolled back") or answer["state"] != "done":
                out.code, out.message = 1, reason or answer["state"]
                break
            progress.update(task, description=f"{device} {reason}")
    except _Gone:
        out.message = f"no final answer within {o.timeout:g} s"
    out.total_s = time.monotonic() - t0
    progress.update(task, description=f"{device} {out.message}")
    return out


def _guarded(s: Sender, device: str, b: bundles.Bundle, progress: Progress,
             task: TaskID) -> Outcome:
    """update_one, and any error it raised (the cloud broker gone) as no final word."""
    try:
        return update_one(s, device, b, progress, task)
    except Exception as e:  # one device's failure is its outcome, said
        return Outcome(device, 3, f"stopped: {e!r}"[:200])


def run(o: Options, out: TextIO | None = None) -> int:
    """``gridedge update``: the exit status (see the module docstring)."""
    _bundle, outcomes = send(o, out)
    return max((r.code for r in outcomes), default=0)


def send(o: Options, out: TextIO | None = None) -> tuple[bundles.Bundle, list[Outcome]]:
    """The bundle, sent to every device; what came of it for each."""
    stream = out or sys.stdout
    if not 1 <= o.chunk <= 300 or not 1 <= o.window <= 4:
        raise ToolError("--chunk is 1..300 bytes and --window 1..4 commands")
    b = bundles.make(o.arch, o.main.read_bytes() if o.main else None, o.only)
    print(f"bundle {b.version}: {len(b.files)} files, {len(b.data)} bytes, "
          f"sha256 {b.sha256[:16]}, for {o.arch}", file=stream, flush=True)
    sender = Sender(o)
    outcomes: list[Outcome] = []
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeElapsedColumn(),
                      console=Console(file=stream)) as progress:
            tasks = {d: progress.add_task(d, total=len(b.data)) for d in o.devices}
            threads = [threading.Thread(
                target=lambda d=d: outcomes.append(_guarded(sender, d, b, progress,
                                                            tasks[d])), daemon=True)
                for d in o.devices]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sender.cloud.close()
    for r in sorted(outcomes, key=lambda r: r.device):
        print(f"{r.device}: {r.message} (bundle sent in {r.sent_s:.1f} s, "
              f"{r.chunks} chunks; {r.total_s:.1f} s in all)", file=stream)
    return b, outcomes
