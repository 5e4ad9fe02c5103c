"""Firmware updates on the device's side: gemeter/ota.py receives and stages a bundle, boot.py
switches it in, counts the trial and rolls it back; power cut at every step.

Both interpreters run the firmware's own code on a real folder (the device's flash). The
files in the bundles here are small stand-ins: what boot.py and ota.py do does not depend
on what the files hold (tests/system/test_update.py updates the real firmware through
the gateway, and one whose main.py raises). A power cut is a kill -9 of the process at
a numbered filesystem change (tests/firmware/scripts/ota_steps.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gateway import framing
from gateway.command import Command
from tests.support.brokers import free_port
from tests.support.firmware_fixtures import DEVICE, KEY, VirtualMeter
from tests.support.fwrunner import FIRMWARE, SCRIPTS, FirmwareRunner, firmware_module
from tools.bundle import pack
from tools.vboard import VirtualBoard

OLD = {"main.py": b'FIRMWARE_VERSION = "0.1.0"\n', "gemeter/app.mpy": b"old app " * 40,
       "gemeter/drivers/pz.mpy": b"old pz " * 30, "gemeter/gone.mpy": b"only old " * 9}
NEW = {"main.py": b'FIRMWARE_VERSION = "0.2.0"\n', "gemeter/app.mpy": b"new app " * 50,
       "gemeter/drivers/pz.mpy": b"new pz " * 33, "lib/umqtt/simple.mpy": b"added " * 25}
KEPT = {"key.bin": bytes(range(32)), "config.json": b'{"device_id": "m"}',
        "boot.py": b"# stays\n"}
CHUNK = 96


def device(tmp_path: Path) -> Path:
    root = tmp_path / "dev"
    for name, data in {**OLD, **KEPT}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("ota")}


def firmware(root: Path) -> str:
    """Which firmware the folder holds: "old" or "new", whole; else what is mixed."""
    got = tree(root)
    for label, files in (("old", OLD), ("new", {**NEW, "gemeter/gone.mpy": OLD[
            "gemeter/gone.mpy"]})):
        if {n: d for n, d in got.items() if n not in KEPT} == files:
            return label
    return f"mixed: {sorted(got)}"


def begin(data: bytes, version: str = "0.2.0") -> list[object]:
    return ["begin", {"version": version, "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest(), "trial_s": 60}]


def chunks(data: bytes, start: int = 0, size: int = CHUNK) -> list[list[object]]:
    return [["chunk", {"at": at, "data": data[at:at + size].hex()}]
            for at in range(start, len(data), size)]


def run(fw: FirmwareRunner, root: Path, steps: list[list[object]]) -> list[object]:
    out = fw.run_json(SCRIPTS / "ota_steps.py", {"root": f"{root}/", "steps": steps,
                                                 "cut": 0})
    return list(out["results"])


BUNDLE = pack(NEW)


def test_a_good_bundle_is_staged_switched_and_confirmed(fw: FirmwareRunner,
                                                       tmp_path: Path) -> None:
    root = device(tmp_path)
    got = run(fw, root, [begin(BUNDLE), *chunks(BUNDLE), ["status", {}]])
    assert got[0] == ["done", f"have 0 of {len(BUNDLE)}"]
    assert got[-2] == ["done", "staged 0.2.0; restarting"]
    assert got[-1] == ["done", "staged 0.2.0"]
    assert firmware(root) == "old"  # nothing moves before the boot
    got = run(fw, root, [["boot", {}], ["status", {}], ["boot", {}], ["status", {}],
                         ["confirm", {}], ["status", {}], ["boot", {}]])
    assert got == ["trial", ["done", "trial of 0.2.0, boot 1"], "trial",
                   ["done", "trial of 0.2.0, boot 2"], None, ["done", "running 0.2.0"], "ok"]
    assert firmware(root) == "new"
    assert all((root / n).read_bytes() == d for n, d in KEPT.items())
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("ota")) == ["ota.json"]


def test_a_corrupted_chunk_is_refused_before_the_switch(fw: FirmwareRunner,
                                                       tmp_path: Path) -> None:
    root = device(tmp_path)
    bad = bytearray(BUNDLE)
    bad[CHUNK + 5] ^= 0x40  # one bit, in the second chunk
    got = run(fw, root, [begin(BUNDLE), *chunks(bytes(bad)), ["status", {}], ["boot", {}]])
    assert got[-3] == ["failed", "bundle sha256 mismatch"]
    assert got[-2] == ["done", f"receiving 0.2.0: have 0 of {len(BUNDLE)}"]
    assert got[-1] == "recv" and firmware(root) == "old"
    assert not (root / "ota" / "new").exists()
    # Sent again, whole: staged.
    got = run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)])
    assert got[0] == ["done", f"have 0 of {len(BUNDLE)}"]
    assert got[-1] == ["done", "staged 0.2.0; restarting"]


def test_a_bundle_resumes_where_it_stopped(fw: FirmwareRunner, tmp_path: Path) -> None:
    root = device(tmp_path)
    half = len(BUNDLE) // CHUNK // 2 * CHUNK
    got = run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)[:half // CHUNK]])
    assert got[-1] == ["done", f"have {half} of {len(BUNDLE)}"]
    again = chunks(BUNDLE)[0]  # held already: answered, not written again
    late = ["chunk", {"at": half + CHUNK, "data": "00"}]  # a gap: refused, with the place
    got = run(fw, root, [begin(BUNDLE), again, late, *chunks(BUNDLE, half)])
    assert got[:3] == [["done", f"have {half} of {len(BUNDLE)}"]] * 2 + [
        ["failed", f"have {half} of {len(BUNDLE)}"]]
    assert got[-1] == ["done", "staged 0.2.0; restarting"]
    # Another bundle starts afresh; none while one is staged.
    assert run(fw, root, [begin(b"x" * 10, "0.3.0")]) == [
        ["failed", f"an update is staged ({hashlib.sha256(BUNDLE).hexdigest()[:16]})"]]


@pytest.mark.parametrize(("files", "problem"), [
    ({"../key.bin": b"k"}, "bad bundle entry ../key.bin"),
    ({"boot.py": b"x"}, "bad bundle entry boot.py"),
    ({"config.json": b"{}"}, "bad bundle entry config.json"),
    ({"gemeter/app.py": b"x"}, "bad bundle entry gemeter/app.py"),
])
def test_a_bundle_cannot_reach_beyond_the_firmware(fw: FirmwareRunner, tmp_path: Path,
                                                  files: dict[str, bytes],
                                                  problem: str) -> None:
    root = device(tmp_path)
    data = pack({"main.py": NEW["main.py"], **files})
    got = run(fw, root, [begin(data), *chunks(data), ["status", {}], ["boot", {}]])
    assert got[-3] == ["failed", problem]
    assert got[-2] == ["done", "no update: " + problem] and got[-1] == "none"
    assert firmware(root) == "old" and all((root / n).read_bytes() == d
                                           for n, d in KEPT.items())


def test_a_file_that_differs_from_its_entry_is_refused(fw: FirmwareRunner,
                                                      tmp_path: Path) -> None:
    root = device(tmp_path)
    entry = f"main.py 5 {hashlib.sha256(b'other').hexdigest()}\n".encode()
    data = entry + b"12345"
    got = run(fw, root, [begin(data), *chunks(data)])
    assert got[-1] == ["failed", "sha256 mismatch: main.py"] and firmware(root) == "old"


def test_a_trial_that_never_ends_is_rolled_back(fw: FirmwareRunner, tmp_path: Path) -> None:
    """main.py raised, hung or reset at each boot: the fourth boot takes it back."""
    root = device(tmp_path)
    run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)])
    got = run(fw, root, [["boot", {}]] * 4 + [["status", {}]])
    assert got == ["trial"] * 3 + ["back", ["done", "rolled back from 0.2.0: did not "
                                              "start in 3 boots"]]
    assert firmware(root) == "old"
    # The firmware gave up (nothing went out in its trial time): the next boot says why.
    run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)])
    got = run(fw, root, [["boot", {}], ["give_up", "no frame sent in 60 s"], ["boot", {}],
                         ["status", {}]])
    assert got == ["trial", None, "back",
                   ["done", "rolled back from 0.2.0: no frame sent in 60 s"]]
    assert firmware(root) == "old"


def cut(fw: FirmwareRunner, root: Path, steps: list[list[object]], at: int) -> bool:
    """Run steps with a power cut before change ``at``; False if they made fewer."""
    cmd, env = fw.command(SCRIPTS / "ota_steps.py")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps({"root": f"{root}/", "steps": steps, "cut": at}))
    proc.stdin.close()
    line = proc.stdout.readline()
    proc.kill()  # SIGKILL: no finally, no flush, no close
    proc.wait(10)
    return line.startswith("CUT ")


@pytest.mark.parametrize("phase", ["receive", "switch", "rollback"])
def test_a_power_cut_at_any_step_leaves_a_bootable_board(
        fw: FirmwareRunner, tmp_path: Path, phase: str) -> None:
    """Every filesystem change of a phase, one run each: the process is killed -9 just
    before it. The next boot then finds a whole firmware, old or new, and the update,
    driven again as the gateway would (the same bundle; boots), ends as it would have."""
    stage = [begin(BUNDLE), *chunks(BUNDLE, size=256)]
    steps = stage if phase == "receive" else [["boot", {}]]
    start = device(tmp_path / "start")  # the folder as the phase finds it
    if phase != "receive":
        run(fw, start, stage)
    if phase == "rollback":
        run(fw, start, [["boot", {}]] * 3)  # the trial's three boots: the next rolls back
    at = 1
    while True:
        root = tmp_path / str(at)
        shutil.copytree(start, root)
        if not cut(fw, root, steps, at):
            break
        if phase == "receive":  # the next boot, the gateway's resending, and a boot
            got = run(fw, root, [["boot", {}], *stage, ["boot", {}]])
            assert got[0] in (None, "recv", "trial") and got[-1] == "trial", (at, got)
            assert firmware(root) == "new", at
            at += 1
            continue
        boots = run(fw, root, [["boot", {}]])
        assert firmware(root) in ("old", "new"), (phase, at, boots)
        if phase == "switch":
            assert boots == ["trial"] and firmware(root) == "new", at
        else:
            assert boots == ["back"] and firmware(root) == "old", at
        at += 1
    assert at > {"receive": 30, "switch": 12, "rollback": 5}[phase], at  # each was cut


def test_a_new_firmware_ends_its_trial_once_its_frames_went_out(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """The app started on trial (boot.py switched an update in): after its third frame
    has left, ota.json says ``ok`` and the old files are gone."""
    meter = VirtualMeter(vboard, tmp_path, report_interval_s=1, sample_interval_ms=10)
    (tmp_path / "ota" / "old").mkdir(parents=True)
    (tmp_path / "ota" / "old" / "main.py").write_text("old")
    trial = {"st": "trial", "v": "0.2.0", "boots": 1, "trial_s": 60, "size": 1,
             "sha256": "0" * 64, "id": b"up-1".hex()}
    (tmp_path / "ota.json").write_text(json.dumps(trial))
    fw.run_json(SCRIPTS / "app_run.py", meter.request(450), env=vboard.env())  # 4.5 s
    assert json.loads((tmp_path / "ota.json").read_text())["st"] == "ok"
    assert not (tmp_path / "ota").exists()
    frames, _ = meter.frames()
    # The update command's second result, in the frame after the third: it runs.
    assert [r for f in frames for r in f.results] == [(b"up-1", "done", "running 0.2.0")]
    assert [f.seq for f in frames if f.results] == [3]


def test_a_rolled_back_firmware_says_so_once(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """boot.py put the old files back: the firmware that then starts sends the update
    command's result, failed and why, in its first frame, and not again after a restart."""
    meter = VirtualMeter(vboard, tmp_path, report_interval_s=1, sample_interval_ms=10)
    (tmp_path / "ota.json").write_text(json.dumps(
        {"st": "back", "v": "0.3.0", "why": "did not start in 3 boots", "size": 1,
         "sha256": "0" * 64, "id": b"up-2".hex()}))
    for _ in range(2):
        fw.run_json(SCRIPTS / "app_run.py", meter.request(150), env=vboard.env())
    frames, _ = meter.frames()
    assert [(f.boot, f.seq) for f in frames if f.results] == [(1, 0)]
    assert [r for f in frames for r in f.results] == [
        (b"up-2", "failed", "rolled back from 0.3.0: did not start in 3 boots")]
    assert json.loads((tmp_path / "ota.json").read_text())["told"] is True


def test_a_new_firmware_that_sends_nothing_in_its_trial_time_gives_up(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """Its broker never answers: once the trial's time has passed, the firmware says so
    in ota.json (the next boot rolls it back) and restarts."""
    VirtualMeter(vboard, tmp_path, report_interval_s=1, sample_interval_ms=10, link="mqtt",
                 mqtt_host="127.0.0.1", mqtt_port=free_port())
    (tmp_path / "ota.json").write_text(json.dumps(
        {"st": "trial", "v": "0.2.0", "boots": 1, "trial_s": 2, "size": 1,
         "sha256": "0" * 64}))
    proc = fw.start(SCRIPTS / "app_run.py", env=vboard.env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"root": f"{tmp_path}/", "cycles": 1000}))  # 10 s
    proc.stdin.close()
    assert proc.wait(30) == 75  # machine.reset() on the virtual board
    st = json.loads((tmp_path / "ota.json").read_text())
    assert (st["st"], st["boots"], st["why"]) == ("trial", 3, "no frame sent in 2 s")


def test_a_flash_that_cannot_take_the_update_fails_it_and_the_meter_goes_on(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """The update's state cannot be written (its temporary name is taken by a folder, as
    a failing flash refuses a write): the update command fails and says why, and the
    command after it runs; the OSError used to escape the meter's loop."""
    meter = VirtualMeter(vboard, tmp_path, sample_interval_ms=10, report_interval_s=1)
    (tmp_path / "ota.json.tmp").mkdir()
    expires = int(time.time() * 1000) + 60_000
    meter.link_bus.inject(b"".join(framing.encode(c.seal(KEY)) for c in (
        Command(DEVICE, 1, expires, b"u", "update", {
            "version": "0.2.0", "size": len(BUNDLE),
            "sha256": hashlib.sha256(BUNDLE).hexdigest()}),
        Command(DEVICE, 2, expires, b"r", "read"))))
    stats = fw.run_json(SCRIPTS / "app_run.py", meter.request(150), env=vboard.env())
    frames, _ = meter.frames()
    results = [r for f in frames for r in f.results]
    assert [r[:2] for r in results] == [(b"u", "failed"), (b"r", "done")], (results, stats,
                                                                             _)
    assert results[0][2] == "flash error 21" and stats["frames"] == len(frames) >= 2


def test_the_app_feeds_the_watchdog_boot_py_started_for_a_trial(
        fw: FirmwareRunner, vboard: VirtualBoard, tmp_path: Path) -> None:
    """A running watchdog cannot be set up again (on an ESP32 asking raises): during a
    trial the app feeds the one boot.py left in sys.modules, at its timeout."""
    meter = VirtualMeter(vboard, tmp_path, report_interval_s=1, sample_interval_ms=10)
    fw.run_json(
        "import json, sys, machine\n"
        "from gemeter.app import App, TRIAL_WDT\n"
        "sys.modules[TRIAL_WDT] = machine.WDT(timeout=30000)  # as boot.py leaves it\n"
        "req = json.loads(sys.stdin.read())\n"
        "print(json.dumps(App(req['root']).run(max_cycles=req['cycles'])))\n",
        meter.request(50), env=vboard.env())
    assert vboard.wdt_timeout_ms == 30000 and vboard.wdt_feeds == 50


def test_boot_py_imports_the_built_in_modules_whatever_the_board_holds(
        fw: FirmwareRunner, tmp_path: Path) -> None:
    """Files that would shadow a built-in module (an update's lib/json.mpy, or
    micropython-lib's lib/os/) on the board's path: boot.py still starts and works."""
    root = device(tmp_path)
    shutil.copyfile(FIRMWARE / "boot.py", root / "boot.py")  # as flashed: it runs from there
    for name in ("json.py", "lib/json.py", "machine.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("raise RuntimeError('a shadow')\n")
    run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)])
    out = fw.run("import sys\nsys.path.insert(0, '')\nsys.path.append('lib')\n"
                 "import boot\nprint(boot.boot(''))\n", cwd=root)
    assert out.split() == ["trial"]
    for name in ("json.py", "lib/json.py", "machine.py"):
        (root / name).unlink()
    shutil.rmtree(root / "__pycache__", ignore_errors=True)
    assert firmware(root) == "new"


def test_a_switch_the_flash_refuses_is_rolled_back(fw: FirmwareRunner,
                                                    tmp_path: Path) -> None:
    """A folder the switch needs cannot be made (a file has its name, as a failing flash
    refuses a write) after two files went in: those go back, and the state says why."""
    root = device(tmp_path)
    run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)])
    (root / "lib").write_bytes(b"in the way")
    got = run(fw, root, [["boot", {}], ["status", {}], ["boot", {}]])
    assert got[0] == "back" and got[1][1].startswith("rolled back from 0.2.0: switch failed")
    assert got[2] == "back"
    (root / "lib").unlink()
    assert firmware(root) == "old"


def test_a_state_file_left_only_as_its_copy_is_restored(fw: FirmwareRunner,
                                                       tmp_path: Path) -> None:
    """A power cut between save's remove and rename leaves only ota.json.tmp: the next
    boot reads it and makes it ota.json again, before a save could overwrite it."""
    root = device(tmp_path)
    run(fw, root, [begin(BUNDLE), *chunks(BUNDLE)])
    (root / "ota.json").rename(root / "ota.json.tmp")
    assert run(fw, root, [["status", {}]]) == [["done", "staged 0.2.0"]]
    assert (root / "ota.json").exists() and not (root / "ota.json.tmp").exists()


ota = firmware_module("gemeter.ota")


def _entry(name: str, data: bytes, sha: str | None = None) -> bytes:
    return f"{name} {len(data)} {sha or hashlib.sha256(data).hexdigest()}\n".encode() + data


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bundle=st.one_of(
    st.binary(max_size=600),  # anything at all, sent under its own (signed) sha256
    st.lists(st.tuples(  # entries that look right, or nearly
        st.sampled_from(["main.py", "gemeter/a.mpy", "lib/x/y.mpy", "gemeter/d/b.mpy"] * 4
                        + ["../key.bin", "boot.py", "gemeter/../../x.mpy", "lib//z.mpy",
                           "gemeter/A.mpy", "gemeter/x", "config.json", "main.py extra"]),
        st.binary(max_size=80), st.sampled_from([True] * 6 + [False]),
        st.sampled_from([0] * 12 + [-3, -1, 1, 3])), max_size=4).map(
        lambda es: b"".join(
            _entry(n, d, None if ok else "0" * 64)[:len(_entry(n, d)) + cut if cut < 0
                                                  else None] + bytes(max(cut, 0))
            for n, d, ok, cut in es))),
    chunk=st.integers(1, 300))
@example(bundle=_entry("main.py", b"a") + _entry("main.py", b"b"), chunk=7)  # named twice
def test_any_bundle_is_staged_whole_or_refused_and_touches_nothing_else(
        tmp_path: Path, bundle: bytes, chunk: int) -> None:
    """Whatever bytes a bundle holds (it is signed as it is: its sha256 matches), the
    last chunk stages it or fails with a reason; nothing raises, and nothing outside
    ota/ and ota.json changes."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example
    for name, data in {**OLD, **KEPT}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    before = tree(root)
    prefix = f"{root}/"
    res = ota.begin(prefix, {"version": "9.9", "size": max(len(bundle), 1),
                             "sha256": hashlib.sha256(bundle).hexdigest(), "trial_s": 60})
    if not bundle:
        assert res == ("failed", "bad args") or res[0] == "done"
        return
    assert res == ("done", f"have 0 of {len(bundle)}")
    for at in range(0, len(bundle), chunk):
        res = ota.chunk(prefix, {"at": at, "data": bundle[at:at + chunk]})
        assert isinstance(res, tuple) and res[0] in ("done", "failed"), res
    assert res[0] == "failed" or res == ("done", "staged 9.9; restarting"), res
    event(res[1].split(":")[0][:24])
    assert tree(root) == before  # only ota/ and ota.json: tree() leaves those out
    staged = root / "ota" / "new"
    if res[0] == "done":
        listed = [line.split()[0] for line in (root / "ota" / "files").read_text().splitlines()]
        assert sorted(listed) == sorted(p.relative_to(staged).as_posix()
                                        for p in staged.rglob("*") if p.is_file())
        assert all(ota._name_ok(n) for n in listed)
