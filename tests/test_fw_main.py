"""firmware/main.py runs on both interpreters with only the firmware tree on its path."""

from fwrunner import FIRMWARE, FirmwareRunner


def test_main_boots(fw: FirmwareRunner) -> None:
    out = fw.run(FIRMWARE / "main.py")
    assert out.strip() == "gridedge firmware 0.1.0, protocol v1"
