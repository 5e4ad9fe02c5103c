"""The store survives its medium: damaged files, flipped bytes, a WAL that lies, a file that
vanished. Each test damages a real SQLite file the way a failing SD card or a power cut
does, then checks the gateway's answer: it always opens, never sends or dies on a damaged
record, moves a damaged store aside with what it could salvage, and says what was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import wal
from gateway.store import Store
from gateway.store_file import StoreError
from gateway.store_rows import TELEMETRY, Mark, Record
from tests.support.brokers import Mosquitto
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    frame,
)
from tests.support.mqtt_capture import Capture, wait_for


def body(i: int) -> bytes:
    return b'{"marker":"REC-%06d","pad":"' % i + b"x" * 200 + b'"}'


def fill(path: Path, n: int) -> None:
    s = Store(path, 10**8, 86400)
    s.commit([Record(TELEMETRY, "mtr-1", 1, i, body(i)) for i in range(n)],
             {"mtr-1": Mark(1, n - 1, 1)})
    s.close()  # a clean close checkpoints: the records are in the main file


def flip(path: Path, offset: int, mask: int = 0x20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_record_is_quarantined_never_sent(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    fill(path, 50)
    flip(path, path.read_bytes().index(b"REC-000017") + 20)
    s = Store(path, 10**8, 86400)
    got = s.fetch(TELEMETRY, 0, 1000)
    assert [r.seq for r in got] == [i for i in range(50) if i != 17]
    assert all(json.loads(r.body) for r in got)
    assert s.counters()["quarantined"] == 1 and s.depth()["telemetry"] == 49
    recoveries, bad = s.take_events()
    assert recoveries == [] and [r.seq for r in bad] == [17]
    assert s.db.execute("SELECT seq FROM quarantine").fetchall() == [(17,)]
    s.close()


def damaged_index(path: Path) -> bytes:
    """A store whose every page passes quick_check but whose index (which quick_check
    does not compare with its table) fails the uplink's queries: found by flipping one
    byte at a time in the index's pages."""
    fill(path, 300)
    good = path.read_bytes()
    db = sqlite3.connect(path)
    pages = [r[0] for r in db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name LIKE 'records_by_%'")]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    for page in pages:
        start = (page - 1) * size
        for offset in range(start + size - 1, start + size // 2, -1):
            data = bytearray(good)
            data[offset] ^= 0x55
            path.write_bytes(bytes(data))
            db = sqlite3.connect(path)
            try:
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    continue
                db.execute("SELECT * FROM records WHERE priority = 1 AND id > 0 "
                           "ORDER BY id").fetchall()
                db.execute("SELECT * FROM records WHERE priority = 1 AND created_ms < 5 "
                           "ORDER BY id").fetchall()
            except sqlite3.DatabaseError:
                return bytes(data)
            finally:
                db.close()
    pytest.fail("no single-byte index damage passes quick_check here")


def test_a_store_whose_queries_fail_is_moved_aside_with_what_can_be_read(
        tmp_path: Path) -> None:
    path = tmp_path / "state" / "store.db"
    path.parent.mkdir()
    damaged_index(path)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{path.parent}"\n[uplink]\nenabled = false\n')
    status = subprocess.run([sys.executable, "-m", "gateway.cli", "status",
                             "--config", str(cfg)], capture_output=True, text=True)
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert "damaged" in status.stderr and len(status.stderr.splitlines()) == 1
    s = Store(path, 10**8, 86400)
    (r,) = s.recoveries
    assert r.cause == "corrupt" and Path(r.moved_to).exists()
    assert r.salvaged == 300 and r.dropped == 0  # the table itself was fine
    assert len(s.fetch(TELEMETRY, 0, 1000)) == 300
    assert s.marks()["mtr-1"].seq == 299
    s.close()


WRITER = textwrap.dedent("""
    import sys
    from gateway.store_rows import Mark, Record
    from gateway.store import Store
    s = Store(sys.argv[1], max_bytes=10**9, max_age_s=86400)
    for b in range(200):
        s.commit([Record(1, "mtr-1", 1, b, b"x" * 300)], {"mtr-1": Mark(1, b, 1)})
    print("done", flush=True)
    sys.stdin.read()  # killed here, before a clean close could checkpoint the WAL
""")


def killed_writer(path: Path) -> None:
    """200 commits to a store at ``path`` by a process then SIGKILLed: its WAL stays."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_flipped_byte_in_the_wal_is_found_and_what_it_lost_is_counted(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    killed_writer(path)
    wal_path = Path(str(path) + "-wal")
    before = wal.inspect(wal_path.read_bytes())
    assert before.replayed > 100 and not before.damaged  # the current WAL generation
    page = int.from_bytes(wal_path.read_bytes()[8:12], "big")
    flip(wal_path, wal.HEADER + before.replayed // 2 * (wal.FRAME_HEADER + page) + 500)
    s = Store(path, 10**9, 86400)
    (r,) = s.recoveries
    assert r.cause == "wal_lost_commits" and Path(r.moved_to).exists()
    kept = [x.seq for x in s.fetch(TELEMETRY, 0, 1000)]
    assert kept == list(range(kept[0], kept[0] + len(kept))) and len(kept) < 200
    assert r.salvaged == len(kept)
    # Every commit after the break is accounted for (a commit may hold a bounds check's
    # delete too, so there are at least as many lost commits as lost records).
    assert r.lost_commits >= 200 - kept[-1] - 1
    assert s.marks()["mtr-1"].seq == kept[-1]  # the marks rolled back with the records
    s.close()


def test_a_vanished_or_emptied_store_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    def causes() -> list[str]:
        s = Store(path, 10**8, 86400)
        s.close()
        return [r.cause for r in s.recoveries]

    fill(path, 5)
    path.unlink()
    assert causes() == ["missing"]
    assert causes() == []  # reported once; from then on it is the store
    path.write_bytes(b"")
    assert causes() == ["missing"]
    other = tmp_path / "other" / "s.db"
    fill(other, 3)
    os.replace(other, path)  # a store from somewhere else (a restored backup)
    assert causes() == ["replaced"]
    path = tmp_path / "new" / "s.db"
    assert causes() == []  # the first start is not an alarm


def test_a_store_that_breaks_while_running_is_replaced_and_work_goes_on(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    fill(path, 20)
    s = Store(path, 10**8, 86400)
    size = s.db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[size:] = os.urandom(len(data) - size)  # the card returns garbage now
    path.write_bytes(bytes(data))
    other = sqlite3.connect(path)  # a write elsewhere: the store's page cache is stale
    other.execute("PRAGMA user_version = 7")
    other.close()
    got = s.fetch(TELEMETRY, 0, 1000)  # replaced under it, then asked again
    assert [r.cause for r in s.recoveries] == ["runtime_error"] and got == []
    s.commit([Record(TELEMETRY, "mtr-1", 1, 20, body(20))], {"mtr-1": Mark(1, 20, 1)})
    assert [r.seq for r in s.fetch(TELEMETRY, 0, 10)] == [20]
    s.close()


def test_status_never_moves_a_damaged_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    with pytest.raises(StoreError, match="damaged"):
        Store(path, 10**8, 86400, repair=False)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_a_damaged_record_reaches_the_cloud_as_an_alarm_not_as_a_reading(
        tmp_path: Path, local: Mosquitto) -> None:
    """With CBOR on the uplink (where a damaged body used to kill the uplink thread): the
    other readings arrive, the damaged one is reported on the alarms topic."""
    cloud = Mosquitto(tmp_path / "cloud")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, cloud, ["mtr-1"], format="cbor"))
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    for s in range(30):
        pub.publish("mtr-1", frame("mtr-1", s))
    pub.close()
    store = tmp_path / "state" / "store.db"
    assert wait_for(lambda: Store(store, 10**8, 86400, repair=False)
                    .depth()["telemetry"] == 30, 10)
    assert gw.terminate() == 0  # a clean stop checkpoints the store into its main file
    flip(store, store.read_bytes().index(b'"seq":7,') + 3, 0x01)  # "sep":7, still JSON
    cloud.start()
    capture = Capture(cloud.port, topic="gridedge/v1/gw/#")
    gw.start()
    try:
        import cbor2

        def readings() -> list[int]:
            return sorted(r["seq"] for p in capture.payloads("/readings")
                          for r in cbor2.loads(p))

        assert wait_for(lambda: len(readings()) == 29, 20), readings()
        assert readings() == [s for s in range(30) if s != 7]
        assert wait_for(lambda: b"record_corrupt" in b"".join(capture.payloads("/alarms")),
                        10)
        (alarm,) = [a for p in capture.payloads("/alarms") for a in cbor2.loads(p)
                    if a["kind"] == "record_corrupt"]
        assert alarm["count"] == 1
        assert alarm["records"][0]["seq"] == 7  # the columns were intact, the body not
    finally:
        assert gw.terminate() == 0
        capture.close()
        cloud.stop()


@given(st.binary(max_size=3000))
@settings(max_examples=300)
def test_any_bytes_as_a_wal_are_read_without_an_exception(data: bytes) -> None:
    report = wal.inspect(data)
    assert 0 <= report.replayed <= report.frames and report.lost_commits <= report.frames


@given(st.data())
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_store_damaged_anywhere_always_opens(tmp_path_factory: pytest.TempPathFactory,
                                               data: st.DataObject) -> None:
    """Random damage to the database file or its WAL (flipped bytes, a truncation): the
    store opens, returns only records that are what was written, takes new commits and
    its own marks back, and opens again. (It found four crashes: a damaged row with a NULL
    column, text that was not UTF-8 in a record, a mark or the store's identity, and a
    row whose missing checksum passed as one from before checksums.)"""
    base = tmp_path_factory.getbasetemp() / "killed-writer"
    if not base.exists():  # made once, copied for each example
        base.mkdir()
        killed_writer(base / "s.db")
    folder = tmp_path_factory.mktemp("damaged")
    path = folder / "s.db"
    for name in ("s.db", "s.db-wal"):
        shutil.copyfile(base / name, folder / name)
    target = data.draw(st.sampled_from([path, Path(str(path) + "-wal")]))
    raw = bytearray(target.read_bytes())
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw))):]
    else:
        for _ in range(data.draw(st.integers(1, 20))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    target.write_bytes(bytes(raw))
    s = Store(path, 10**9, 86400)
    rows = s.fetch(TELEMETRY, 0, 1000)
    assert all(r.body == b"x" * 300 and r.device == "mtr-1" for r in rows)
    marks = s.marks()  # whatever the damage left, the marks go back in: usable
    s.commit([Record(TELEMETRY, "mtr-1", 2, 0, b"y")], {**marks, "mtr-1": Mark(2, 0, 1)})
    s.counters(), s.depth(), s.last_seen(), s.take_events()
    s.close()
    s = Store(path, 10**9, 86400)  # and it opens again as it is
    assert s.recoveries == [] and s.fetch(TELEMETRY, 0, 1000)[-1].body == b"y"
    s.close()
