"""`gridedge-gateway devices add|list|remove` and `status`, through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load
from gateway.registry import fingerprint
from tests.support.brokers import Mosquitto, free_port
from tests.support.fwrunner import firmware_module
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    device_key,
    frame,
)
from tests.support.mqtt_capture import wait_for


def gw(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)],
                          capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[uplink]\nenabled = false\n'
                   f'[[devices]]\nid = "by-hand"\nkey = "{"ab" * 32}"\n')
    return cfg


def test_add_generates_a_key_that_never_reaches_the_terminal(config: Path) -> None:
    out = gw("devices", "--config", config, "add", "mtr-0042", "--site", "sub-3",
             "--feeder", "F2", "--channel", "main", "--channel", "pv",
             "--key-out", config.parent / "mtr-0042.key")
    registry = config.parent / "devices.toml"
    assert os.stat(registry).st_mode & 0o777 == 0o640  # new: gateway.toml's group reads it
    key_file = config.parent / "mtr-0042.key"
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32 and key != bytes(32)
    assert key.hex() not in out.stdout + out.stderr
    assert fingerprint(key) in out.stdout
    # ...and it is the fingerprint the meter's console shows for the same key.
    assert fingerprint(key) == firmware_module("gemeter.keystore").fingerprint(key)
    cfg = load(config)  # the loader sees both places as one registry
    dev = {d.id: d for d in cfg.devices}["mtr-0042"]
    assert (dev.site, dev.feeder, dev.role, dev.channels) == ("sub-3", "F2", "meter",
                                                             ["main", "pv"])
    assert cfg.device_keys()["mtr-0042"] == key
    listed = json.loads(gw("devices", "--config", config, "list", "--json").stdout)
    assert [(r["id"], r["defined_in"]) for r in listed] == [
        ("by-hand", "gateway.toml"), ("mtr-0042", "registry")]
    assert "ab" * 32 not in gw("devices", "--config", config, "list").stdout


def test_add_with_given_key_then_remove(config: Path, tmp_path: Path) -> None:
    (tmp_path / "k").write_text("cd" * 32 + "\n")
    gw("devices", "--config", config, "add", "line-1", "--role", "line_sensor",
       "--key-file", tmp_path / "k")
    assert load(config).device_keys()["line-1"] == bytes.fromhex("cd" * 32)
    again = gw("devices", "--config", config, "add", "line-1", "--key-out",
               tmp_path / "k2", check=False)
    assert again.returncode == 1 and "already registered" in again.stderr
    by_hand = gw("devices", "--config", config, "remove", "by-hand", check=False)
    assert by_hand.returncode == 1 and "remove it there" in by_hand.stderr
    gw("devices", "--config", config, "remove", "line-1")
    assert [d.id for d in load(config).devices] == ["by-hand"]
    missing = gw("devices", "--config", config, "remove", "line-1", check=False)
    assert missing.returncode == 1 and "no device line-1" in missing.stderr
    (tmp_path / "bad").write_text("not hex\n")
    bad = gw("devices", "--config", config, "add", "x", "--key-file", tmp_path / "bad",
             check=False)
    assert bad.returncode == 1 and "64 hex digits" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_sudo_devices_add_keeps_the_files_owner_group_and_mode(config: Path,
                                                               tmp_path: Path) -> None:
    """`sudo gridedge-gateway devices add` must leave devices.toml readable by the service
    user: it keeps the owner, group and mode the file had."""
    nobody = 65534
    registry = config.parent / "devices.toml"
    (tmp_path / "k").write_text("cd" * 32 + "\n")
    gw("devices", "--config", config, "add", "mtr-1", "--key-file", tmp_path / "k")
    os.chown(registry, nobody, nobody + 1)
    os.chmod(registry, 0o640)
    gw("devices", "--config", config, "add", "mtr-2", "--key-file", tmp_path / "k")
    gw("devices", "--config", config, "remove", "mtr-1")
    st = os.stat(registry)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (nobody, nobody + 1, 0o640)
    assert [d.id for d in load(config).devices] == ["by-hand", "mtr-2"]
    assert [p.name for p in config.parent.iterdir() if p.name.startswith(".devices")] == []
    # A new registry file belongs to whom gateway.toml belongs to, mode 0640.
    registry.unlink()
    os.chown(config, nobody, nobody + 1)
    gw("devices", "--config", config, "add", "mtr-3", "--key-file", tmp_path / "k")
    st = os.stat(registry)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (nobody, nobody + 1, 0o640)


def test_a_registry_that_cannot_be_written_is_one_line(config: Path, tmp_path: Path) -> None:
    config.write_text(config.read_text().replace(
        "[gateway]\n", '[gateway]\ndevices_file = "/proc/gridedge/devices.toml"\n'))
    (tmp_path / "k").write_text("cd" * 32 + "\n")
    out = gw("devices", "--config", config, "add", "mtr-1", "--key-file", tmp_path / "k",
             check=False)
    assert (out.returncode, out.stderr) == (1, "gridedge-gateway: cannot write /proc/gridedge/"
                                               "devices.toml: No such file or directory\n")


def test_broken_registry_file_is_reported_with_its_path(config: Path) -> None:
    (config.parent / "devices.toml").write_text(
        '[[devices]]\nid = "by-hand"\nkey = "00"\nrole = "boss"\n')
    out = gw("check-config", config, check=False)
    assert out.returncode == 2
    assert "devices.toml: devices[0].key: (secret) does not match" in out.stderr
    assert "devices.toml: devices[0].role: must be one of meter, line_sensor" in out.stderr
    assert "duplicate device 'by-hand'" in out.stderr


def test_added_device_is_live_after_sighup_and_status_shows_it(
    tmp_path: Path, local: Mosquitto
) -> None:
    cfg = tmp_path / "gw.toml"
    metrics_port = free_port()
    cfg.write_text(config_text(tmp_path / "state", local, None, ["mtr-a"], metrics_port,
                               extra="[checks.limits]\nmin_duration_s = 0\n"))
    proc = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    try:
        (tmp_path / "k").write_text(device_key("mtr-new").hex())
        gw("devices", "--config", cfg, "add", "mtr-new", "--key-file", tmp_path / "k")
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "reloaded" in (tmp_path / "gw.log").read_text(), 10)
        pub.publish("mtr-new", frame("mtr-new", 0))
        pub.publish("mtr-new", frame("mtr-new", 4, volts=262.0))  # a gap and over-voltage
        pub.publish("mtr-a", frame("mtr-a", 0))

        def live() -> dict[str, object]:
            st: dict[str, object] = json.loads(gw("status", "--config", cfg).stdout)
            return st

        assert wait_for(lambda: live()["telemetry"] == 3, 10)
        st = live()
        daemon = st["daemon"]
        assert isinstance(daemon, dict) and daemon["running"] is True
        assert daemon["uplink"] == {"state": "disconnected", "connects": 0, "delivered": 0}
        assert daemon["ingest"]["accepted"] == 3 and daemon["ingest"]["state"] == "connected"
        assert {"kind": "over_voltage", "source": "mtr-new", "channel": "0"} in \
            daemon["open_alarms"]
        assert st["alarms"] == 2  # the over-voltage alarm and the gap event
        # The same unit as the health message and the metrics (it was oldest_age_ms here).
        assert "oldest_age_ms" not in st and 0 <= float(st["oldest_age_s"]) < 60
        devices = st["devices"]
        assert isinstance(devices, dict) and devices["mtr-new"]["seq"] == 4
        assert devices["mtr-new"]["silent_s"] < 10
    finally:
        pub.close()
        assert proc.terminate() == 0
    st = json.loads(gw("status", "--config", cfg).stdout)
    assert st["daemon"]["running"] is False and st["telemetry"] == 3


def test_config_goes_before_or_after_the_action_and_check_config_takes_both_forms(
    config: Path, tmp_path: Path
) -> None:
    """`devices list --config X` failed ("unrecognized arguments"); `check-config` took a
    file where every other command takes --config."""
    before = gw("devices", "--config", config, "list", "--json").stdout
    assert gw("devices", "list", "--json", "--config", config).stdout == before
    assert json.loads(before)[0]["id"] == "by-hand"
    (tmp_path / "k").write_text("cd" * 32 + "\n")
    gw("devices", "add", "line-1", "--key-file", tmp_path / "k", "--config", config)
    gw("devices", "remove", "line-1", "--config", config)
    assert gw("check-config", config).stdout == gw("check-config", "--config", config).stdout
    assert gw("check-config", "--config", config).stdout.startswith(f"{config}: OK")


def test_add_refuses_a_new_key_that_nobody_would_receive(config: Path) -> None:
    """Without --key-out or --key-file, `devices add` registered a random key written
    nowhere: a device that could never report, and no word about it."""
    out = gw("devices", "--config", config, "add", "mtr-9", check=False)
    assert out.returncode == 2 and "--key-out FILE" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert [d.id for d in load(config).devices] == ["by-hand"]  # nothing registered

