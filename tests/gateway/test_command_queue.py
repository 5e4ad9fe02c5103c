"""The durable command queue (gateway/command_queue.py) on a real SQLite file, and
``gridedge-gateway commands``, which reads it while a gateway may be running."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gateway import cli
from gateway.command_auth import Request
from gateway.command_queue import MAX_PENDING, RESULT_GRACE_S, CommandQueue, Full

NOW = 1_789_948_800_000


def req(cid: str, device: str = "mtr-1", expires: int = NOW + 60_000) -> Request:
    return Request(cid, device, "relay", expires, "op", {"state": "off"})


def test_an_id_is_queued_once_and_the_counter_only_rises(tmp_path: Path) -> None:
    q = CommandQueue(tmp_path / "commands.db")
    first, new = q.add(req("a"), NOW)
    again, new_again = q.add(req("a"), NOW + 5)
    assert new and not new_again and again.counter == first.counter == NOW
    second, _ = q.add(req("b"), NOW)  # the same millisecond: still above the last
    assert second.counter == NOW + 1
    q.close()
    (tmp_path / "commands.db").unlink()  # the file is lost: time has moved on
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"commands.db{suffix}").unlink(missing_ok=True)
    q = CommandQueue(tmp_path / "commands.db")
    assert q.add(req("c"), NOW + 1000)[0].counter > second.counter
    q.close()


def test_delivered_without_a_result_is_due_again_then_expires(tmp_path: Path) -> None:
    """A delivered command with no result is listed to be sent again once it has waited;
    a result takes it off the list; with none, it expires a grace period after its
    expiry (the result may still be on its way before that)."""
    q = CommandQueue(tmp_path / "commands.db")
    for cid in ("a", "b"):
        q.add(req(cid, expires=NOW + 60_000), NOW)
        q.mark("mtr-1", cid, "delivered", NOW)
    q.add(req("c", device="mtr-2"), NOW)  # queued, never delivered: not due again
    assert {d: [e.id for e in es] for d, es in q.waiting(NOW).items()} == {"mtr-2": ["c"]}
    assert q.unanswered(NOW, NOW + 1000) == {}  # delivered at NOW: not before NOW
    due = q.unanswered(NOW + 20_000, NOW + 20_000)
    assert {d: [e.id for e in es] for d, es in due.items()} == {"mtr-1": ["a", "b"]}
    q.mark("mtr-1", "a", "done", NOW + 21_000)
    q.mark("mtr-1", "b", "delivered", NOW + 21_000)  # sent again
    assert q.unanswered(NOW + 21_000, NOW + 21_000) == {}
    assert q.unanswered(NOW + 61_000, NOW + 61_000) == {}  # b has expired by now
    late = NOW + 60_000 + RESULT_GRACE_S * 1000
    assert [(e.id, e.state) for e in q.expire(late - 1)] == [("c", "queued")]
    assert [(e.id, e.state) for e in q.expire(late)] == [("b", "delivered")]
    assert q.counts() == {"done": 1, "expired": 2}
    q.close()


def test_a_device_has_at_most_its_share_waiting_and_the_rest_expire(tmp_path: Path) -> None:
    q = CommandQueue(tmp_path / "commands.db")
    for i in range(MAX_PENDING):
        q.add(req(f"c{i}", expires=NOW + 1000 * (i + 1)), NOW)
    with pytest.raises(Full):
        q.add(req("one-more"), NOW)
    q.add(req("other", device="mtr-2"), NOW)  # another device's share is its own
    assert [e.id for e in q.expire(NOW + 2500)] == ["c0", "c1"]
    assert len(q.pending("mtr-1", NOW + 2500)) == MAX_PENDING - 2
    q.add(req("now-fits"), NOW + 2500)
    assert q.counts() == {"queued": MAX_PENDING - 1 + 1, "expired": 2}
    q.close()


def test_a_damaged_file_is_set_aside_and_the_queue_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "commands.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    q = CommandQueue(path)
    assert q.problem is not None and "moved to" in q.problem
    assert q.add(req("a"), NOW)[1] and list(tmp_path.glob("commands.db.corrupt-*"))
    q.close()


def test_the_cli_lists_the_queue_without_touching_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n[uplink]\nenabled = false\n')
    assert cli.main(["commands", "--config", str(cfg)]) == 0
    assert "0 command(s)" in capsys.readouterr().out
    q = CommandQueue(tmp_path / "commands.db")
    q.add(req("a"))
    q.add(req("b", device="mtr-2"))
    q.mark("mtr-2", "b", "done")
    q.add(Request("c", "mtr-2", "update-chunk", NOW + 60_000, "op",
                  {"at": 512, "data": base64.b64encode(bytes(256)).decode()}))
    before = (tmp_path / "commands.db").stat().st_mtime_ns
    assert cli.main(["commands", "--config", str(cfg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["device"], r["id"], r["state"]) for r in rows} == {
        ("mtr-1", "a", "queued"), ("mtr-2", "b", "done"), ("mtr-2", "c", "queued")}
    assert cli.main(["commands", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "mtr-1" in out and "relay" in out and "3 command(s)" in out
    assert "update-chunk  queued" in out and "at 512, 256 B" in out  # not the base64
    assert (tmp_path / "commands.db").stat().st_mtime_ns == before
    q.close()
