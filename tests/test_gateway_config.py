"""Gateway configuration: every problem reported at once, with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridedge.gateway.config import ConfigError, load, parse

KEY = "ab" * 32

GOOD = f"""
[gateway]
id = "gw-7"
state_dir = "/tmp/gw"

[local]
port = 1884

[[serial]]
port = "/dev/ttyUSB0"

[uplink]
host = "cloud.example"
tls = false
password = "${{CLOUD_PASSWORD}}"

[[devices]]
id = "mtr-0001"
key = "{KEY}"
site = "sub-12"
feeder = "F3"
channels = ["main"]

[[devices]]
id = "line-1"
key = "${{KEY_LINE_1}}"
role = "line_sensor"
"""


def test_good_file_with_env_secrets() -> None:
    cfg = parse(GOOD, env={"CLOUD_PASSWORD": "pw", "KEY_LINE_1": "cd" * 32})
    assert cfg.gateway.id == "gw-7" and cfg.local.port == 1884
    assert cfg.uplink.password == "pw" and cfg.uplink.protocol == "mqtt5"
    assert cfg.device_keys() == {"mtr-0001": bytes.fromhex(KEY), "line-1": bytes.fromhex("cd" * 32)}
    assert cfg.serial[0].baud == 115200
    assert cfg.store_path == Path("/tmp/gw/store.db")


def test_every_problem_at_once_with_paths() -> None:
    bad = f"""
[gateway]
id = "gw/7"
log_level = "chatty"

[local]
port = "1883"
prot = 1

[uplink]
host = ""
max_inflight = 0
format = "xml"
password = "${{NOPE}}"

[[devices]]
id = "mtr-0001"
key = "{KEY}"

[[devices]]
id = "mtr-0001"
key = "zz"
role = "sensor"

[surprise]
x = 1
"""
    with pytest.raises(ConfigError) as info:
        parse(bad, "gw.toml", env={})
    problems = info.value.problems
    expected = [
        "gateway.id: 'gw/7' does not match",
        "gateway.log_level: must be one of debug, info, warning, error, got 'chatty'",
        "local.port: must be an integer 1..65535, got '1883'",
        "local.prot: unknown key (did you mean port?)",
        "uplink.max_inflight: must be an integer 1..1000, got 0",
        "uplink.format: must be one of json, cbor, got 'xml'",
        "uplink.password: environment variable NOPE is not set",
        "devices[1].key: (secret) does not match",
        "devices[1].role: must be one of meter, line_sensor, got 'sensor'",
        "surprise: unknown key",
        "devices[1].id: duplicate device 'mtr-0001'",
        "uplink.host: required while uplink.enabled is true",
        "uplink.ca_file: required with uplink.tls = true",
    ]
    for e in expected:
        assert any(p.startswith(e) for p in problems), (e, problems)
    assert len(problems) == len(expected)
    assert "zz" not in str(info.value)  # a secret's value is never echoed
    assert str(info.value).startswith("gw.toml: 13 problem(s)")


def test_required_keys_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"devices\[0\].key: required"):
        parse('[uplink]\nenabled = false\n[[devices]]\nid = "a"\n', env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[uplink\n", env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = f'[uplink]\nhost = "c"\nca_file = "{tmp_path}/ca.pem"\nclient_cert = "x.pem"\n'
    with pytest.raises(ConfigError) as info:
        parse(text, env={})
    assert info.value.problems == [
        "uplink.client_cert, uplink.client_key: give both or neither",
        f"uplink.ca_file: no such file {tmp_path}/ca.pem",
        "uplink.client_cert: no such file x.pem",
    ]
