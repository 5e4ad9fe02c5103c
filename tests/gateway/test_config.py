"""Gateway configuration: every problem reported at once, with its key path."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.config import ConfigError, load, parse
from tests.support.certs import make_pki

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


def gw(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=30)


def test_tls_files_must_hold_what_their_key_says(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    (tmp_path / "locked.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret passphrase")))

    def problems(ca: Path, cert: Path | None = None, key: Path | None = None) -> list[str]:
        text = f'[uplink]\nhost = "c"\nca_file = "{ca}"\n'
        if cert is not None and key is not None:
            text += f'client_cert = "{cert}"\nclient_key = "{key}"\n'
        try:
            parse(text, env={})
        except ConfigError as e:
            return e.problems
        return []

    assert problems(pki.ca_pem, pki.client_cert, pki.client_key) == []
    assert problems(tmp_path / "junk.pem") == [
        f"uplink.ca_file: {tmp_path}/junk.pem holds no PEM certificate (a DER file, a key or "
        "something else? the gateway needs the CA certificate(s) in PEM, '-----BEGIN "
        "CERTIFICATE-----')"]
    assert problems(pki.ca_der)[0].startswith(f"uplink.ca_file: {pki.ca_der} holds no PEM")
    assert problems(pki.client_key)[0].startswith("uplink.ca_file: ")  # a key, not a CA
    assert problems(tmp_path, pki.client_cert, pki.client_key) == [
        f"uplink.ca_file: {tmp_path} is a folder, not a file"]
    assert problems(pki.ca_pem, pki.client_cert, pki.server_key) == [
        f"uplink.client_key: {pki.server_key} is not the key of uplink.client_cert "
        f"{pki.client_cert}"]
    assert problems(pki.ca_pem, tmp_path / "junk.pem", pki.client_key) == [
        f"uplink.client_cert: {tmp_path}/junk.pem holds no PEM certificate"]
    assert problems(pki.ca_pem, pki.client_cert, tmp_path / "junk.pem")[0].startswith(
        f"uplink.client_key: {tmp_path}/junk.pem holds no PEM private key")
    # OpenSSL would ask for the passphrase on the terminal (or hang under systemd)
    assert problems(pki.ca_pem, pki.client_cert, tmp_path / "locked.key") == [
        f"uplink.client_key: {tmp_path}/locked.key is encrypted; the gateway cannot ask "
        "for a passphrase (store the key unencrypted, readable only by the gateway's user)"]


def test_a_bad_ca_file_stops_check_config_and_run_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nbm9wZQ==\n")
    cfg = tmp_path / "gateway.toml"
    text = (f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nenabled = false\n'
            f'[uplink]\nhost = "c"\nca_file = "{tmp_path / "ca.pem"}"\n')
    cfg.write_text(text)
    for out in (gw("check-config", cfg), gw("run", "--config", cfg)):
        assert (out.returncode, out.stderr) == (2, (
            f"gridedge-gateway: {cfg}: 1 problem(s)\n  uplink.ca_file: {tmp_path}/ca.pem "
            "holds no PEM certificate (a DER file, a key or something else? the gateway "
            "needs the CA certificate(s) in PEM, '-----BEGIN CERTIFICATE-----')\n")), out
    cfg.write_text(text + "max_inflight = 0\n")  # reported with the others, at once
    out = gw("check-config", cfg)
    assert out.stderr.startswith(f"gridedge-gateway: {cfg}: 2 problem(s)\n")
    assert "uplink.max_inflight: must be an integer 1..1000, got 0" in out.stderr


def test_names_paho_would_refuse_are_config_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse('[local]\nhost = ""\nclient_id = ""\ntopic = "gridedge/#/frame"\n'
              '[uplink]\nhost = "c"\ntls = false\ntopic_prefix = "gridedge/+"\n'
              '[homeassistant]\nenabled = true\nstate_prefix = ""\n', env={})
    assert info.value.problems == [
        "uplink.topic_prefix: 'gridedge/+' must not contain the wildcards + or #",
        "local.host: must not be empty",
        "local.client_id: must not be empty (the local broker keeps the gateway's frames in "
        "the session of this id)",
        "local.topic: 'gridedge/#/frame' is not an MQTT topic filter ('+' and '#' stand for "
        "whole levels, '#' only at the end)",
        "homeassistant.state_prefix: must not be empty",
    ]
    for good in ("gridedge/v1/dev/+/frame", "#", "a/+/#", "+"):
        parse(f'[local]\ntopic = "{good}"\n[uplink]\nenabled = false\n', env={})


def test_metrics_port_in_use_stops_run_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[local]\nport = 1\n'
                       f'[uplink]\nenabled = false\n[metrics]\nport = {port}\n')
        out = gw("run", "--config", cfg)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out
    assert out.stderr == (f"gridedge-gateway: metrics.host, metrics.port: cannot listen on "
                          f"127.0.0.1:{port}: Address already in use (another gateway "
                          "running? set another metrics.port)\n")


def test_passwords_are_never_shown(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[local]\npassword = 12345\n[uplink]\nhost = "c"\ntls = false\n'
                   'password = 67890.5\n[[devices]]\nid = "a"\nkey = 31337\n')
    out = gw("check-config", cfg)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines()[1:] == [
        "  local.password: must be a string, got (secret)",
        "  uplink.password: must be a string, got (secret)",
        "  devices[0].key: must be a string, got (secret)",
    ]
    for value in ('["hunter2"]', '{p = "hunter2"}', "true", "2024-01-01"):
        with pytest.raises(ConfigError) as info:
            parse(f"[local]\npassword = {value}\n[uplink]\nenabled = false\n"
                  f"password = {value}\n", env={})
        assert info.value.problems == ["local.password: must be a string, got (secret)",
                                       "uplink.password: must be a string, got (secret)"]


def test_feeder_settings_need_a_name_each_once() -> None:
    """[[checks.feeder]]: every problem at once, with its path."""
    text = ("[uplink]\nenabled = false\n[[checks.feeder]]\ntechnical_loss = 0.04\n"
            "[[checks.feeder]]\nname = \"F1\"\n[[checks.feeder]]\nname = \"F1\"\n"
            "technical_loss = 0.9\n")
    with pytest.raises(ConfigError) as info:
        parse(text, "gw.toml", env={})
    assert info.value.problems == [
        "checks.feeder[2].technical_loss: must be a number 0..0.5, got 0.9",
        "checks.feeder[0].name: must name the feeder (as devices do)",
        "checks.feeder[2].name: feeder 'F1' is set twice"]
    cfg = parse(text.replace("technical_loss = 0.04\n", "name = \"F2\"\n")
                .replace("name = \"F1\"\ntechnical_loss = 0.9\n", "name = \"F3\"\n"), env={})
    assert [(f.name, f.technical_loss) for f in cfg.checks.feeder] == [
        ("F2", 0.03), ("F1", 0.03), ("F3", 0.03)]
