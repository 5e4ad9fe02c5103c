"""Home Assistant MQTT discovery: what is announced, and bad readings shown as unavailable."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.devices import Device
from gateway.homeassistant import Discovery, discovery, state
from gateway.protocol import ST_INVALID, ST_TIMEOUT, Channel, Frame, Stat, build_frame
from tests.support.brokers import Mosquitto
from tests.support.gateway_fixtures import (
    DevicePublisher,
    GatewayProcess,
    config_text,
    device_key,
    frame,
)
from tests.support.mqtt_capture import Capture, wait_for

INFO = Device(bytes(32), site="sub-1", channels=("main", "pv"))


def two_channels(seq: int, pv_ok: bool = True) -> Frame:
    pv = Channel(1, 0, {"power": -1500_000, "energy": -12}) if pv_ok else \
        Channel(1, ST_INVALID | ST_TIMEOUT, {"errors": 3})
    return Frame("mtr-1", 1, seq, seq * 10_000, 10_000, (
        Channel(0, 0, {"voltage": Stat(230_500, 229_000, 232_000), "frequency": 50_010,
                       "samples": 10}), pv))


def test_state_marks_an_invalid_channel_and_carries_no_stale_value() -> None:
    assert state(two_channels(1)) == {
        "boot": 1, "seq": 1, "ch0_valid": True, "ch0_voltage_v": 230.5,
        "ch0_frequency_hz": 50.01, "ch1_valid": True, "ch1_power_w": -1500.0,
        "ch1_energy_wh": -12}
    bad = state(two_channels(2, pv_ok=False))
    assert bad["ch1_valid"] is False and not any(k.startswith("ch1_") and k != "ch1_valid"
                                                 for k in bad)


def test_discovery_config_per_quantity() -> None:
    configs = dict(discovery(two_channels(1), INFO, "st/mtr-1/state", "homeassistant"))
    assert sorted(configs) == [f"homeassistant/sensor/gridedge_mtr_1_{f}/config" for f in
                               ("ch0_frequency_hz", "ch0_voltage_v", "ch1_energy_wh",
                                "ch1_power_w")]
    v = configs["homeassistant/sensor/gridedge_mtr_1_ch0_voltage_v/config"]
    assert v["name"] == "main voltage" and v["device_class"] == "voltage"
    assert v["unit_of_measurement"] == "V" and v["state_class"] == "measurement"
    assert v["expire_after"] == 30 and v["state_topic"] == "st/mtr-1/state"
    assert "ch0_valid" in v["availability"][0]["value_template"]
    assert v["device"]["identifiers"] == ["gridedge_mtr-1"]
    e = configs["homeassistant/sensor/gridedge_mtr_1_ch1_energy_wh/config"]
    assert e["state_class"] == "total" and e["name"] == "pv energy"


def test_announces_once_and_again_only_for_new_quantities() -> None:
    sent: list[tuple[str, bytes, int, bool]] = []
    d = Discovery(lambda t, p, q, r: sent.append((t, p, q, r)), "ha", "st")
    d.frames([two_channels(1, pv_ok=False)], {"mtr-1": INFO})
    assert [t for t, *_ in sent if t.endswith("/config")] == [
        "ha/sensor/gridedge_mtr_1_ch0_voltage_v/config",
        "ha/sensor/gridedge_mtr_1_ch0_frequency_hz/config"]
    sent.clear()
    d.frames([two_channels(2), two_channels(3)], {"mtr-1": INFO})  # pv back: announce
    assert sum(t.endswith("/config") for t, *_ in sent) == 4
    states = [json.loads(p) for t, p, q, r in sent if t == "st/mtr-1/state"]
    assert [s["seq"] for s in states] == [3]  # the latest of the batch only
    sent.clear()
    d.frames([two_channels(4)], {"mtr-1": INFO})
    assert [t for t, *_ in sent] == ["st/mtr-1/state"]
    d.frames([two_channels(5)], {"mtr-1": Device(bytes(32), role="line_sensor")})
    assert len(sent) == 1  # only meters are announced


def test_gateway_announces_meters_on_the_local_broker(tmp_path: Path, local: Mosquitto) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config_text(tmp_path / "state", local, None, ["mtr-1"],
                               extra="[homeassistant]\nenabled = true\n"))
    capture = Capture(local.port, topic="homeassistant/#")
    states = Capture(local.port, topic="gridedge/v1/state/#")
    proc = GatewayProcess(cfg, tmp_path / "gw.log").start(wait_subscribed=True)
    pub = DevicePublisher(local.port)
    try:
        pub.publish("mtr-1", frame("mtr-1", 0, volts=231.5))
        assert wait_for(lambda: len(states.payloads("/state")) == 1, 10)
        pub.publish("mtr-1", build_frame(two_channels(1, pv_ok=False), device_key("mtr-1")))
        assert wait_for(lambda: len(states.payloads("/state")) == 2, 10)
        first, second = (json.loads(p) for p in states.payloads("/state"))
        assert first["ch0_voltage_v"] == 231.5 and second["ch1_valid"] is False
        topics = {t for t, _p, _r in capture.messages}
        assert "homeassistant/sensor/gridedge_mtr_1_ch0_voltage_v/config" in topics
        late = Capture(local.port, topic="homeassistant/#")  # Home Assistant starting later
        try:
            assert wait_for(lambda: len(late.messages) == len(topics), 5)
            assert all(retained for _t, _p, retained in late.messages)
        finally:
            late.close()
    finally:
        pub.close()
        assert proc.terminate() == 0
        capture.close()
        states.close()
