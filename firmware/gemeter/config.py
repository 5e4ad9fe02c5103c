"""Device configuration: one schema, defaults from the board file, atomic persistence.

The configuration lives in /config.json on the board. ``load`` never fails: a missing
file gives the defaults; a broken file (bad JSON, wrong types, out-of-range values) gives
the defaults for every bad key, and every problem is reported (key and what is expected)
so the console and the log can say so - a typo must not brick a meter in the field.
``save`` writes a temporary file and renames it over the old one, so a power cut leaves
either the old or the new file, never half of one.

Secrets (Wi-Fi and MQTT passwords) are stored here but never printed: ``show`` masks them.
The device key is not in this file (see keystore.py).
"""

import json
import os

# key: (type, default, minimum or choices, maximum, secret, help)
SCHEMA = {
    "device_id": (str, "", 1, 32, False, "device id, 1-32 of A-Z a-z 0-9 . _ -"),
    "link": (str, "serial", ("serial", "mqtt"), None, False, "link to the gateway"),
    "sample_interval_ms": (int, 1000, 1, 60000, False, "time between IC readings, ms"),
    "report_interval_s": (int, 10, 1, 3600, False, "reporting period (one frame), s"),
    "ring_size": (int, 64, 1, 1024, False, "frames kept in RAM while the link is down"),
    "checkpoint_s": (int, 900, 60, 86400, False, "energy counters saved to flash every ... s"),
    "serial_baud": (int, 115200, 1200, 921600, False, "serial link baud rate"),
    "wifi_ssid": (str, "", 0, 32, False, "Wi-Fi network name"),
    "wifi_password": (str, "", 0, 64, True, "Wi-Fi password"),
    "mqtt_host": (str, "", 0, 64, False, "gateway's MQTT broker host"),
    "mqtt_port": (int, 1883, 1, 65535, False, "gateway's MQTT broker port"),
    "mqtt_tls": (str, "auto", ("auto", "on", "off"), None, False, "TLS: auto = if /ca.der is there"),
    "mqtt_user": (str, "", 0, 64, False, "MQTT user name"),
    "mqtt_password": (str, "", 0, 64, True, "MQTT password"),
    "mqtt_keepalive_s": (int, 60, 10, 600, False, "MQTT keepalive, s"),
    "pzem_addresses": (str, "", 0, 64, False, "PZEM Modbus addresses, comma separated"),
    "ntp_host": (str, "pool.ntp.org", 0, 64, False, "time server (Wi-Fi boards)"),
    "ade_map": (str, "", ("", "ab", "ba"), None, False,
                "ADE7953 inputs in channel order (empty: as the board file says)"),
    "ade_invert_a": (bool, False, None, None, False,
                     "ADE7953 input A's CT is clamped the wrong way round"),
    "ade_invert_b": (bool, False, None, None, False,
                     "ADE7953 input B's CT is clamped the wrong way round"),
    "ade_phcal_a": (int, 0, -383, 383, False, "ADE7953 PHCALA phase calibration, LSB"),
    "ade_phcal_b": (int, 0, -383, 383, False, "ADE7953 PHCALB phase calibration, LSB"),
}
ID_PUNCT = "._-"


def _check(key, value):
    """Returns (value, None) or (None, problem)."""
    kind, _default, lo, hi, _secret, help_text = SCHEMA[key]
    if kind is bool:
        if value is True or value is False:
            return value, None
        return None, "%s must be true or false" % key
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "%s must be a whole number (%s)" % (key, help_text)
        if not lo <= value <= hi:
            return None, "%s must be %d..%d (%s)" % (key, lo, hi, help_text)
        return value, None
    if not isinstance(value, str):
        return None, "%s must be text (%s)" % (key, help_text)
    if isinstance(lo, tuple):
        if value not in lo:
            return None, "%s must be one of %s" % (key, ", ".join(lo))
        return value, None
    if not lo <= len(value) <= hi:
        return None, "%s must be %d..%d characters (%s)" % (key, lo, hi, help_text)
    if key == "device_id":
        for c in value:
            if ord(c) > 127 or not (c.isalpha() or c.isdigit() or c in ID_PUNCT):
                return None, "device_id may only hold A-Z a-z 0-9 . _ -"
    if key == "pzem_addresses" and value:
        for part in value.split(","):
            try:
                a = int(part)
            except ValueError:
                return None, "pzem_addresses must be numbers 1..247, comma separated"
            if not 1 <= a <= 247:
                return None, "pzem_addresses must be numbers 1..247, comma separated"
    return value, None


def parse_value(key, text):
    """Parse console text for key; returns (value, None) or (None, problem)."""
    if key not in SCHEMA:
        return None, "unknown key %s (try: show)" % key
    kind = SCHEMA[key][0]
    if kind is int:
        try:
            return _check(key, int(text))
        except ValueError:
            return None, "%s must be a whole number" % key
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "on", "yes"):
            return True, None
        if low in ("0", "false", "off", "no"):
            return False, None
        return None, "%s must be on or off" % key
    return _check(key, text)


class Config:
    """Validated settings with board defaults; ``problems`` lists what load rejected."""

    def __init__(self, path="/config.json", defaults=None):
        self.path = path
        self.values = {}
        for key in SCHEMA:
            self.values[key] = SCHEMA[key][1]
        for key, value in (defaults or {}).items():
            if key in SCHEMA:
                checked, problem = _check(key, value)
                if problem is None:
                    self.values[key] = checked
        self.calibration = {}  # channel index (str) -> {"volts": ..., "date": ...}
        self.problems = []

    def load(self):
        """Read the file; keeps defaults for anything missing or bad (see problems)."""
        self.problems = []
        try:
            with open(self.path) as f:
                data = json.loads(f.read())
        except OSError:
            return self  # no file yet: defaults
        except ValueError:
            self.problems.append("%s is not valid JSON: using defaults" % self.path)
            return self
        if not isinstance(data, dict):
            self.problems.append("%s does not hold an object: using defaults" % self.path)
            return self
        for key in data:
            if key == "calibration":
                if isinstance(data[key], dict):
                    self.calibration = data[key]
                else:
                    self.problems.append("calibration must be an object: ignored")
                continue
            if key not in SCHEMA:
                self.problems.append("unknown key %s: ignored" % key)
                continue
            value, problem = _check(key, data[key])
            if problem is None:
                self.values[key] = value
            else:
                self.problems.append(problem + ": using the default")
        return self

    def save(self):
        data = dict(self.values)
        data["calibration"] = self.calibration
        atomic_write(self.path, json.dumps(data))

    def get(self, key):
        """A setting's value; "calibration" gives the calibration entries."""
        return self.calibration if key == "calibration" else self.values[key]

    def set(self, key, text):
        """Set from console text; returns None or the problem."""
        value, problem = parse_value(key, text)
        if problem is None:
            self.values[key] = value
        return problem

    def shown(self, key):
        """The value as the console may print it: secrets are masked."""
        value = self.values[key]
        if SCHEMA[key][4]:
            return "(set)" if value else "(not set)"
        if value is True or value is False:
            return "on" if value else "off"
        return str(value)


def atomic_write(path, data):
    """Write text or bytes to path via a temporary file and a rename (atomic on LittleFS and
    POSIX)."""
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    try:
        os.rename(tmp, path)
    except OSError:  # some VFS refuse to rename over an existing file
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)


def read_device(paths):
    """The meter's start (gemeter/start.py): (board description, settings, key) from the
    files under ``paths``, as plain data (the settings: the values and "calibration"; a
    device without an id gets one from its unique id). The caller unloads the modules
    that read them."""
    from gemeter import board as boardmod
    from gemeter.keystore import KeyStore

    desc = boardmod.load(paths.board)
    cfg = Config(paths.config).load()
    settings = cfg.values
    settings["calibration"] = cfg.calibration
    if not settings["device_id"]:
        import binascii

        import machine

        settings["device_id"] = "gm-" + str(binascii.hexlify(machine.unique_id()), "ascii")[-8:]
    return desc, settings, KeyStore(paths.key).load()
