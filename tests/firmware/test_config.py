"""firmware/gemeter/config.py: settings that never brick a meter. Under CPython and MicroPython
(``fw``), with stand-ins for drivers and the frame builder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.fwrunner import FirmwareRunner


def test_config_never_bricks_a_meter(fw: FirmwareRunner, tmp_path: Path) -> None:
    """Missing file: defaults. Bad JSON: defaults and a problem. Each bad key: its default,
    the others kept, every problem named. save() writes atomically; secrets never show."""
    path = tmp_path / "config.json"
    cases = {
        "missing": None,
        "garbage": "{not json",
        "list": "[1, 2]",
        "mixed": json.dumps({"device_id": "m-1", "sample_interval_ms": 0, "link": "carrier",
                             "report_interval_s": 30, "nosuch": 1, "calibration": 5,
                             "mqtt_password": "pw", "ade_invert_a": "yes"}),
    }
    results = {}
    for name, text in cases.items():
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
        results[name] = fw.run_code("""
from gemeter.config import Config
req = json.loads(sys.stdin.read())
c = Config(req["path"], defaults={"report_interval_s": 5}).load()
print(json.dumps({"values": c.values, "problems": c.problems,
                  "shown": c.shown("mqtt_password")}))
""", {"path": str(path)})
    assert results["missing"]["problems"] == [] and results["missing"]["values"][
        "report_interval_s"] == 5  # the board's default
    assert results["garbage"]["problems"] == [f"{path} is not valid JSON: using defaults"]
    assert results["list"]["problems"] == [f"{path} does not hold an object: using defaults"]
    mixed = results["mixed"]
    assert (mixed["values"]["device_id"], mixed["values"]["report_interval_s"]) == ("m-1", 30)
    assert mixed["values"]["sample_interval_ms"] == 1000 and mixed["values"]["link"] == "serial"
    assert mixed["values"]["ade_invert_a"] is False
    assert len(mixed["problems"]) == 5, mixed["problems"]
    for word in ("sample_interval_ms", "link", "nosuch", "calibration", "ade_invert_a"):
        assert any(word in p for p in mixed["problems"]), (word, mixed["problems"])
    assert mixed["shown"] == "(set)" and "pw" not in json.dumps(mixed["problems"])

    saved = fw.run_code("""
from gemeter.config import Config
req = json.loads(sys.stdin.read())
c = Config(req["path"]).load()
problem = c.set("report_interval_s", "99999")
c.set("report_interval_s", "60")
c.calibration["1"] = {"volts": 25000.0}
c.save()
print(json.dumps({"problem": problem}))
""", {"path": str(path)})
    assert "report_interval_s must be 1..3600" in saved["problem"]
    stored = json.loads(path.read_text())
    assert stored["report_interval_s"] == 60 and stored["calibration"] == {"1": {"volts": 25000.0}}
    assert sorted(os.listdir(tmp_path)) == ["config.json"]  # no temporary file left
