"""Installer console on the serial port: configure, calibrate and test a meter on site.

Entered by pressing Enter within a few seconds of boot (before the watchdog starts), or
from the REPL with ``import gemeter.console as c; c.run()``. One command per line; every
bad input gets one line starting with "error:" that says what is expected. Secrets (Wi-Fi
and MQTT passwords, the device key) are never printed: typed characters of a secret are
echoed as "*", ``show`` masks them, and keys appear only as fingerprints.
"""

import sys
import time

from gemeter.config import SCHEMA, Config
from gemeter.drivers import DriverError
from gemeter.keystore import KeyStore

SECRET_PREFIXES = ("set wifi_password ", "set mqtt_password ", "key set ")
HELP = (
    "help                          this list",
    "show                          all settings (secrets masked) and problems",
    "get KEY / set KEY VALUE       read / change a setting (then: save)",
    '                              VALUE: rest of line; "..." keeps spaces, "" is empty',
    "read                          one live reading per channel",
    "scan [FIRST LAST]             PZEM-004T addresses answering (default 1..247, ~15 s)",
    "calibrate voltage|current|power CHANNEL REFERENCE   gain from a reference meter",
    "pzem-address N                give the single PZEM on the bus address N",
    "reset-energy CHANNEL          zero a channel's energy counter",
    "key generate | key set HEX | key fingerprint        the device key",
    "wifi test / link test         check the network / the link to the gateway",
    "save / reboot / factory-reset / exit",
)
CAL_KINDS = {"voltage": "volts", "current": "amps", "power": "watts"}


def _fmt_milli(v, unit, decimals=3):
    sign = "-" if v < 0 else ""
    v = -v if v < 0 else v
    whole, frac = divmod(v, 1000)
    frac_text = ("%03d" % frac)[:decimals]
    return "%s%d.%s %s" % (sign, whole, frac_text, unit) if decimals else "%s%d %s" % (sign, whole, unit)


class Console:
    """Command interpreter; ``handle(line)`` returns the output lines."""

    def __init__(self, paths=None):
        from gemeter.app import Paths

        self.paths = paths or Paths()
        self.cfg = Config(self.paths.config).load()
        self.keys = KeyStore(self.paths.key)
        self.dirty = False
        self.eof = False  # run() ended because its input closed
        self._hw = None  # (board description, sources), built on first use

    # -- hardware on demand ---------------------------------------------------
    def _hardware(self):
        if self._hw is None:
            from gemeter import board as boardmod
            from gemeter.app import build_sources
            from gemeter.state import State

            desc = boardmod.load(self.paths.board)
            state = State(self.paths.state).load()
            sources = build_sources(desc, self.cfg, state)[0]
            self._hw = (desc, sources)
        return self._hw

    def _source_of(self, channel):
        for src in self._hardware()[1]:
            if channel in src.channels:
                return src
        return None

    # -- dispatch -------------------------------------------------------------
    def handle(self, line):
        words = line.split()
        if not words:
            return []
        cmd = words[0].lower()
        fn = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if fn is None:
            return ["error: unknown command '%s' (try: help)" % cmd]
        if cmd == "set":  # the value is the rest of the line, not words
            pair = set_args(line)
            words = ["set"] + (list(pair) if pair else words[1:2])
        try:
            return fn(words[1:])
        except DriverError as e:
            return ["error: %s (%s)" % (e, e.kind)]
        except (OSError, ValueError) as e:
            return ["error: %s" % e]

    def cmd_help(self, args):
        return list(HELP)

    def cmd_show(self, args):
        out = ["%s = %s" % (k, self.cfg.shown(k)) for k in sorted(SCHEMA)]
        for ch in sorted(self.cfg.calibration):
            c = self.cfg.calibration[ch]
            out.append("calibration ch%s: %s" % (ch, ", ".join(
                "%s=%s" % (k, c[k]) for k in sorted(c))))
        fp = self.keys.fingerprint()
        out.append("key: %s" % ("fingerprint " + fp if fp else "none (key generate)"))
        out += ["problem: " + p for p in self.cfg.problems]
        if self.dirty:
            out.append("(unsaved changes: save)")
        return out

    def cmd_get(self, args):
        if len(args) != 1:
            return ["error: usage: get KEY"]
        if args[0] not in SCHEMA:
            return ["error: unknown key %s (try: show)" % args[0]]
        return ["%s = %s" % (args[0], self.cfg.shown(args[0]))]

    def cmd_set(self, args):
        if len(args) != 2:
            return ['error: usage: set KEY VALUE (set KEY "" for an empty value)']
        key = args[0]
        problem = self.cfg.set(key, args[1])
        if problem:
            return ["error: " + problem]
        self.dirty = True
        return ["%s = %s (not saved yet: save)" % (key, self.cfg.shown(key))]

    def cmd_save(self, args):
        self.cfg.save()
        self.dirty = False
        return ["saved %s" % self.paths.config]

    def cmd_read(self, args):
        out = []
        for src in self._hardware()[1]:
            try:
                readings = src.read_now()
            except DriverError as e:
                out += ["ch%d: error %s (%s)" % (ch, e.kind, e) for ch in src.channels]
                continue
            for ch, r in zip(src.channels, readings):
                out.append("ch%d %s: %s %s %s pf %s %s" % (
                    ch, src.kind, _fmt_milli(r[0], "V", 1), _fmt_milli(r[1], "A"),
                    _fmt_milli(r[2], "W", 1), _fmt_milli(r[5], "", 3).strip(),
                    _fmt_milli(r[6], "Hz", 2)))
        return out or ["no channels on this board"]

    def cmd_scan(self, args):
        from gemeter import board as boardmod
        from gemeter.drivers.pzem004t import scan

        usage = "error: usage: scan [FIRST LAST] (addresses 1..247)"
        if len(args) not in (0, 2):
            return [usage]
        try:
            first, last = (int(args[0]), int(args[1])) if args else (1, 247)
        except ValueError:
            return [usage]
        if not 1 <= first <= last <= 247:
            return [usage]
        desc = self._hardware()[0]
        out = []
        for m in desc["meters"]:
            if m["type"] == "pzem004t":
                found = scan(boardmod.uart(desc, m["uart"]), range(first, last + 1))
                out.append("PZEM on %s: %s" % (
                    m["uart"], ", ".join(str(a) for a in found) if found else "none answering"))
        return out or ["no PZEM bus on this board"]

    def cmd_calibrate(self, args):
        usage = "error: usage: calibrate voltage|current|power CHANNEL REFERENCE_VALUE"
        if len(args) != 3 or args[0] not in CAL_KINDS:
            return [usage]
        try:
            ch = int(args[1])
            ref = float(args[2])
        except ValueError:
            return [usage]
        if ref <= 0:
            return ["error: the reference value must be positive (a load must be connected)"]
        src = self._source_of(ch)
        if src is None:
            return ["error: no channel %d on this board" % ch]
        if src.kind != "ade7953":
            return ["error: channel %d is a PZEM-004T: factory calibrated, nothing to set" % ch]
        raw = src.raw_counts(src.channels.index(ch))
        counts = raw[("volts", "amps", "watts").index(CAL_KINDS[args[0]])]
        if counts == 0:
            return ["error: the chip reads 0 counts on channel %d: is it connected?" % ch]
        entry = dict(self.cfg.calibration.get(str(ch), {}))
        per_unit = abs(counts) / ref
        if CAL_KINDS[args[0]] == "watts" and entry.get("watts"):
            entry["wh"] = entry.get("wh", 23688.0) * per_unit / entry["watts"]
        entry[CAL_KINDS[args[0]]] = per_unit
        entry["date"] = _today()
        self.cfg.calibration[str(ch)] = entry
        self.dirty = True
        return ["ch%d %s: %.1f counts per unit (reference %s), not saved yet: save" % (
            ch, args[0], per_unit, args[2])]

    def cmd_pzem_address(self, args):
        n = _one_int(args)
        if n is None:
            return ["error: usage: pzem-address N (1..247, one PZEM alone on the bus)"]
        if not 1 <= n <= 247:
            return ["error: PZEM address must be 1..247"]
        for src in self._hardware()[1]:
            if src.kind == "pzem004t":
                src.driver.set_address(n)
                return ["PZEM now answers at address %d (set pzem_addresses, then save)" % n]
        return ["error: no PZEM-004T on this board"]

    def cmd_reset_energy(self, args):
        ch = _one_int(args)
        if ch is None:
            return ["error: usage: reset-energy CHANNEL"]
        src = self._source_of(ch)
        if src is None:
            return ["error: no channel %d on this board" % ch]
        src.reset_energy(src.channels.index(ch))
        if src.kind == "ade7953":  # its total lives in the device state: clear it there too
            from gemeter.state import State

            state = State(self.paths.state).load()
            state.energy_mwh[str(ch)] = 0
            state.save()
        return ["ch%d energy counter reset" % ch]

    def cmd_key(self, args):
        if args[:1] == ["generate"] and len(args) == 1:
            return ["new key, fingerprint %s (register it at the gateway)" % self.keys.generate()]
        if args[:1] == ["set"] and len(args) == 2:
            fp, problem = self.keys.set_hex(args[1])
            return ["error: " + problem] if problem else ["key stored, fingerprint %s" % fp]
        if args == ["fingerprint"]:
            fp = self.keys.fingerprint()
            return ["fingerprint %s" % fp if fp else "error: no key yet (key generate)"]
        return ["error: usage: key generate | key set HEX | key fingerprint"]

    def cmd_wifi(self, args):
        if args != ["test"]:
            return ["error: usage: wifi test"]
        try:
            import network
        except ImportError:
            return ["error: this board has no Wi-Fi"]
        if not self.cfg.get("wifi_ssid"):
            return ["error: set wifi_ssid (and wifi_password) first"]
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        wlan.connect(self.cfg.get("wifi_ssid"), self.cfg.get("wifi_password"))
        for _ in range(100):
            if wlan.isconnected():
                return ["wifi: connected, address %s" % wlan.ifconfig()[0]]
            time.sleep_ms(100)
        return ["error: wifi: no connection to %s within 10 s" % self.cfg.get("wifi_ssid")]

    def cmd_link(self, args):
        if args != ["test"]:
            return ["error: usage: link test"]
        if self.cfg.get("link") == "serial":
            return ["serial link at %d baud: frames are written blind; check the gateway's "
                    "status for this device" % self.cfg.get("serial_baud")]
        from gemeter.link_mqtt import MQTTLink

        return [MQTTLink(self.cfg, ca_path=self.paths.ca).test()]

    def cmd_reboot(self, args):
        import machine

        machine.reset()
        return []

    def cmd_factory_reset(self, args):
        if args != ["confirm"]:
            return ["error: this erases settings, calibration, key and counters: "
                    "type 'factory-reset confirm'"]
        import os

        for path in (self.paths.config, self.paths.key, self.paths.state):
            try:
                os.remove(path)
            except OSError:
                pass
        self.cfg = Config(self.paths.config)
        self.dirty = False
        return ["factory reset done: defaults, no key (key generate), counters cleared"]


def set_args(line):
    """(KEY, VALUE) of 'set KEY VALUE', or None without a value. VALUE is the rest of the
    line: inner spaces kept, outer ones dropped. In double quotes it keeps outer spaces,
    may be empty (to clear a password), and takes \\" and \\\\ for " and \\."""
    parts = line.strip().split(None, 2)
    if len(parts) < 3:
        return None
    value = parts[2]
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        out = []
        i, inner = 0, value[1:-1]
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner) and inner[i + 1] in '"\\':
                i += 1
            out.append(inner[i])
            i += 1
        value = "".join(out)
    return parts[1], value


def _one_int(args):
    """The single whole-number argument, or None when there is not exactly one."""
    if len(args) != 1:
        return None
    try:
        return int(args[0])
    except ValueError:
        return None


def _today():
    from gemeter.timesync import Clock

    ms = Clock().unix_ms()
    if ms is None:
        return "unknown (clock not set)"
    t = time.gmtime(ms // 1000 - _epoch_offset())
    return "%04d-%02d-%02d" % (t[0], t[1], t[2])


def _epoch_offset():
    from gemeter.timesync import EPOCH_OFFSET_S

    return EPOCH_OFFSET_S


def read_line(stream_in, stream_out):
    """Read one line, echoing it, with the rest of a secret shown as '*'. None at EOF."""
    buf = ""
    while True:
        c = stream_in.read(1)
        if not c:
            return None if not buf else buf
        if c in "\r\n":
            stream_out.write("\n")
            return buf
        if c in "\x08\x7f":
            if buf:
                buf = buf[:-1]
                stream_out.write("\b \b")
            continue
        secret = False
        for p in SECRET_PREFIXES:  # the command is typed: what follows it is the secret
            if buf.startswith(p):
                secret = True
        buf += c
        stream_out.write("*" if secret else c)


def boot_window(seconds=3, stream_in=None):
    """Offer the console for a few seconds; True if the installer pressed Enter."""
    import select

    stream_in = stream_in or sys.stdin
    print("press Enter within %d s for the installer console" % seconds)
    poll = select.poll()
    poll.register(stream_in, select.POLLIN)
    if poll.poll(seconds * 1000):
        return bool(stream_in.read(1))  # '' is end of input (no terminal), not a key
    return False


def run(paths=None, stream_in=None, stream_out=None):
    stream_in = stream_in or sys.stdin
    stream_out = stream_out or sys.stdout
    con = Console(paths)
    for p in con.cfg.problems:
        stream_out.write("problem: %s\n" % p)
    stream_out.write("gridedge console (help for commands, exit to leave)\n")
    while True:
        stream_out.write("gridedge> ")
        line = read_line(stream_in, stream_out)
        if line is None or line.strip() in ("exit", "quit"):
            if con.dirty:
                stream_out.write("unsaved changes discarded\n")
            con.eof = line is None  # input closed (never on a board's serial port)
            return con
        for out in con.handle(line):
            stream_out.write(out + "\n")

