"""Installer console on the serial port: configure, calibrate and test a meter on site.

Entered by pressing Enter within a few seconds of boot (before the watchdog starts), or
from the REPL with ``import gemeter.console as c; c.run()``. One command per line; every
bad input gets one line starting with "error:" that says what is expected.

Nothing typed here can stop the meter or fill its heap. Input is read as bytes (noise on
the line that is not UTF-8 is an error line, not a UnicodeError) into one buffer of
LINE_MAX bytes made once, in time linear in the line's length; a longer line is dropped up
to its end with one error line. Commands are found in a table: a typed word never becomes
an attribute name (MicroPython interns names, and one of 254+ characters raises
RuntimeError). Any exception in a command becomes one "error:" line and the console goes
on. Words are separated by spaces and tabs only, the same for every reader below.

Secrets (Wi-Fi and MQTT passwords, the device key) are never printed. Masking follows the
parsed command, not its spelling: once the words typed so far are a command that sets a
secret (``set`` with a password key, ``key set``; in any case, after any spaces or tabs),
the rest of the line echoes as "*". ``show`` masks them, and keys appear only as
fingerprints. The gateway's CA certificate (DER) reaches /ca.der in hex chunks with ``ca
begin``, ``ca add HEX``, ``ca end``, which ``gridedge provision --ca-file`` types.
"""

import sys
import time

from micropython import const

from gemeter.config import SCHEMA, Config, atomic_write
from gemeter.drivers import DriverError
from gemeter.keystore import KeyStore

LINE_MAX = const(512)  # bytes of one command line; a 64-character password fits quoted
CA_MAX = const(4096)  # bytes of a CA certificate (DER)
CA_CHUNK = const(200)  # bytes per 'ca add' line that provision sends (400 hex digits)
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
    "ca begin | ca add HEX | ca end | ca fingerprint | ca remove   the gateway's CA (/ca.der)",
    "wifi test / link test         check the network / the link to the gateway",
    "save / reboot / factory-reset / exit",
)
CAL_KINDS = {"voltage": "volts", "current": "amps", "power": "watts"}
# Commands whose rest of line is a secret after these second words (lower case).
SECRET_AFTER = {
    "set": tuple(k for k in SCHEMA if SCHEMA[k][4]),  # wifi_password, mqtt_password
    "key": ("set",),
}
_SPACE = " \t"


def _fmt_milli(v, unit, decimals=3):
    sign = "-" if v < 0 else ""
    v = -v if v < 0 else v
    whole, frac = divmod(v, 1000)
    frac_text = ("%03d" % frac)[:decimals]
    return "%s%d.%s %s" % (sign, whole, frac_text, unit) if decimals else "%s%d %s" % (sign, whole, unit)


def read_now(src):
    """One reading per channel of a source (sources.py), in channel order; valid until the
    driver's next read (drivers reuse them)."""
    readings = src.driver.read()
    if src.kind == "pzem004t":
        return [readings]
    return [readings[k] for k in src.order]  # the chip input behind each channel


def _reset_energy(src, index):
    if src.kind == "pzem004t":
        from gemeter.drivers.pzem004t_setup import PZEM004TSetup

        PZEM004TSetup.of(src.driver).reset_energy()  # the module's own register
        src.last_energy = None  # no delta across the reset
    else:
        src.driver.energy_mwh[src.order[index]] = 0


class Console:
    """Command interpreter; ``handle(line)`` returns the output lines."""

    def __init__(self, paths=None):
        from gemeter.start import Paths

        self.paths = paths or Paths()
        self.cfg = Config(self.paths.config).load()
        self.keys = KeyStore(self.paths.key)
        self.dirty = False  # settings or calibration changed since the last save
        self.unsaved = []  # ... which (named once each), for exit's message
        self.stored = []  # what a command wrote at once this session (key, CA)
        self.eof = False  # run() ended because its input closed
        self._hw = None  # (board description, sources), built on first use
        self._ca = None  # a CA certificate being received (ca begin .. ca end)

    # -- hardware on demand ---------------------------------------------------
    def _hardware(self):
        if self._hw is None:
            from gemeter import board as boardmod
            from gemeter.start import build_sources, buses
            from gemeter.state_load import load

            desc = boardmod.load(self.paths.board)
            state = load(self.paths.state)
            sources = build_sources(buses(desc), self.cfg, state)[0]
            self._hw = (desc, sources)
        return self._hw

    def _source_of(self, channel):
        for src in self._hardware()[1]:
            if channel in src.channels:
                return src
        return None

    # -- dispatch -------------------------------------------------------------
    def handle(self, line):
        """The output lines for one command line. A command's own errors are answered
        here; run() turns any other exception into one error line."""
        words = split_words(line)
        if not words:
            return []
        cmd = words[0].lower()
        fn = COMMANDS.get(cmd)
        if fn is None:
            return ["error: unknown command '%s' (try: help)" % _clip(cmd)]
        if cmd == "set":  # the value is the rest of the line, not words
            pair = set_args(line)
            words = ["set"] + (list(pair) if pair else words[1:2])
        try:
            return fn(self, words[1:])
        except DriverError as e:
            return ["error: %s (%s)" % (e, e.kind)]
        except (OSError, ValueError) as e:
            return [failure(e, secret_command(words))]

    def cmd_help(self, args):
        return list(HELP)

    def _changed(self, name):
        self.dirty = True
        if name not in self.unsaved:
            self.unsaved.append(name)
        self._hw = None  # the next read or calibrate builds the ICs with the new settings

    def _stored(self, name):
        if name not in self.stored:
            self.stored.append(name)

    def cmd_show(self, args):
        out = ["%s = %s  (%s)" % (k, self.cfg.shown(k), _range(k)) for k in sorted(SCHEMA)]
        for ch in sorted(self.cfg.calibration):
            c = self.cfg.calibration[ch]
            out.append("calibration ch%s: %s" % (ch, ", ".join(
                "%s=%s" % (k, c[k]) for k in sorted(c))))
        fp = self.keys.fingerprint()
        out.append("key: %s" % ("fingerprint " + fp if fp else "none (key generate)"))
        out.append(self._ca_line())
        out.append(_heap_line())
        out += ["problem: " + p for p in self.cfg.problems]
        from gemeter.state_load import load

        state = load(self.paths.state)  # reads only; a lost counter shows here
        if state.problem:
            out.append("problem: " + state.problem)
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
        self._changed(key)
        return ["%s = %s (not saved yet: save)" % (key, self.cfg.shown(key))]

    def cmd_save(self, args):
        self.cfg.save()
        self.dirty = False
        self.unsaved = []
        return ["saved %s" % self.paths.config]

    def cmd_read(self, args):
        out = []
        for src in self._hardware()[1]:
            try:
                readings = read_now(src)
            except DriverError as e:
                out += ["ch%d: error %s (%s)" % (ch, e.kind, e) for ch in src.channels]
                continue
            for ch, r in zip(src.channels, readings):
                out.append("ch%d %s: %s %s %s pf %s %s" % (
                    ch, src.kind, _fmt_milli(r.voltage_mv, "V", 1),
                    _fmt_milli(r.current_ma, "A"), _fmt_milli(r.power_mw, "W", 1),
                    _fmt_milli(r.pf_milli, "", 3).strip(), _fmt_milli(r.frequency_mhz, "Hz", 2)))
        return out or ["no channels on this board"]

    def cmd_scan(self, args):
        from gemeter import board as boardmod
        from gemeter.drivers.pzem004t_setup import scan

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
        raw = src.driver.raw_counts(src.order[src.channels.index(ch)])
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
        self._changed("calibration ch%d" % ch)
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
                from gemeter.drivers.pzem004t_setup import PZEM004TSetup

                PZEM004TSetup.of(src.driver).set_address(n)
                src.driver.address = n  # the console's own driver follows
                return ["PZEM now answers at address %d (set pzem_addresses, then save)" % n]
        return ["error: no PZEM-004T on this board"]

    def cmd_reset_energy(self, args):
        ch = _one_int(args)
        if ch is None:
            return ["error: usage: reset-energy CHANNEL"]
        src = self._source_of(ch)
        if src is None:
            return ["error: no channel %d on this board" % ch]
        _reset_energy(src, src.channels.index(ch))
        if src.kind == "ade7953":  # its total lives in the device state: clear it there too
            from gemeter.state_load import load

            state = load(self.paths.state)
            state.energy_mwh[str(ch)] = 0
            state.save()
        return ["ch%d energy counter reset" % ch]

    def cmd_key(self, args):
        sub = args[0].lower() if args else ""
        if sub == "generate" and len(args) == 1:
            fp = self.keys.generate()
            self._stored("key")
            return ["new key, fingerprint %s (stored; register it at the gateway)" % fp]
        if sub == "set" and len(args) == 2:
            fp, problem = self.keys.set_hex(args[1])
            if problem:
                return ["error: " + problem]
            self._stored("key")
            return ["key stored, fingerprint %s" % fp]
        if sub == "fingerprint" and len(args) == 1:
            fp = self.keys.fingerprint()
            return ["fingerprint %s" % fp if fp else "error: no key yet (key generate)"]
        return ["error: usage: key generate | key set HEX | key fingerprint"]

    def cmd_ca(self, args):
        sub = args[0].lower() if args else ""
        if sub == "begin" and len(args) == 1:
            self._ca = bytearray()
            return ["ca: send the certificate (DER) as hex: ca add HEX (repeat), then ca end"]
        if sub == "add" and len(args) == 2:
            if self._ca is None:
                return ["error: ca begin first"]
            if len(args[1]) % 2 or len(self._ca) + len(args[1]) // 2 > CA_MAX:
                self._ca = None
                return ["error: an even number of hex digits, at most %d bytes in all: "
                        "start again with ca begin" % CA_MAX]
            import binascii

            try:
                self._ca.extend(binascii.unhexlify(args[1]))
            except ValueError:
                self._ca = None
                return ["error: ca add takes hex digits 0-9 a-f: start again with ca begin"]
            return ["ca: %d bytes" % len(self._ca)]
        if sub == "end" and len(args) == 1:
            der, self._ca = self._ca, None
            if not der:
                return ["error: nothing received (ca begin, ca add HEX ..., ca end)"]
            der = bytes(der)
            if not _is_der_sequence(der):
                return ["error: not a certificate in DER form (openssl x509 -outform der)"]
            atomic_write(self.paths.ca, der)
            self._stored("CA")
            return ["ca stored, %d bytes, sha256 %s" % (len(der), _sha256_prefix(der))]
        if sub == "fingerprint" and len(args) == 1:
            return [self._ca_line()]
        if sub == "remove" and len(args) == 1:
            import os

            try:
                os.remove(self.paths.ca)
            except OSError:
                return ["ca: none"]
            self._stored("CA removal")
            return ["ca removed (mqtt_tls auto now means plaintext)"]
        return ["error: usage: ca begin | ca add HEX | ca end | ca fingerprint | ca remove"]

    def _ca_line(self):
        try:
            with open(self.paths.ca, "rb") as f:
                der = f.read(CA_MAX + 1)
        except OSError:
            return "ca: none"
        return "ca: %d bytes, sha256 %s" % (len(der), _sha256_prefix(der))

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

        from gemeter.state import State

        state = State(self.paths.state)
        for path in (self.paths.config, self.paths.key, state.legacy) + state.copies:
            try:
                os.remove(path)
            except OSError:
                pass
        self.cfg = Config(self.paths.config)
        self.dirty = False
        self.unsaved = []
        self._hw = None
        return ["factory reset done: defaults, no key (key generate), counters cleared"]


def set_args(line):
    """(KEY, VALUE) of 'set KEY VALUE', or None without a value. VALUE is the rest of the
    line: inner spaces kept, outer ones dropped. In double quotes it keeps outer spaces,
    may be empty (to clear a password), and takes \\" and \\\\ for " and \\."""
    parts = split_words(line, 2)
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


def split_words(line, limit=0):
    """The words of line, separated by spaces and tabs (only these: the echo mask reads
    words the same way). With a limit, at most that many words and then the rest of the
    line, without its outer spaces."""
    words = []
    i, n = 0, len(line)
    while i < n:
        if line[i] in _SPACE:
            i += 1
            continue
        if limit and len(words) == limit:
            while line[n - 1] in _SPACE:
                n -= 1
            words.append(line[i:n])
            break
        j = i
        while j < n and line[j] not in _SPACE:
            j += 1
        words.append(line[i:j])
        i = j
    return words


def secret_command(words):
    """True if these words (from the start of a line) set a secret: the rest is hidden."""
    return len(words) >= 2 and words[1].lower() in SECRET_AFTER.get(words[0].lower(), ())


def failure(e, secret):
    """The one error line for an exception; in a secret command, without its message."""
    if isinstance(e, MemoryError):
        import gc

        gc.collect()
        return "error: out of memory in this command; nothing else was affected"
    if secret:
        return "error: %s (details not shown: the line holds a secret)" % type(e).__name__
    return "error: %s" % _clip("%s" % (e,) if isinstance(e, (OSError, ValueError)) else
                               "%s: %s" % (type(e).__name__, e), 120)


def _range(key):
    """What a setting accepts, for show: 1..60000, serial|mqtt, on|off, 0..32 chars."""
    kind, _default, lo, hi = SCHEMA[key][:4]
    if kind is bool:
        return "on|off"
    if isinstance(lo, tuple):
        return "|".join(c or '""' for c in lo)
    return "%d..%d%s" % (lo, hi, " chars" if kind is str else "")


def _clip(text, n=24):
    return text if len(text) <= n else text[:n] + "..."


def _is_der_sequence(der):
    """A DER SEQUENCE whose length covers exactly these bytes (an X.509 certificate is one;
    provision checks the certificate itself before it sends it)."""
    if len(der) < 4 or der[0] != 0x30:
        return False
    n = der[1]
    if n < 0x80:
        return 2 + n == len(der)
    k = n & 0x7F
    if not 1 <= k <= 3 or len(der) < 2 + k:
        return False
    n = 0
    for b in der[2 : 2 + k]:
        n = (n << 8) | b
    return 2 + k + n == len(der)


def _sha256_prefix(data):
    """First 16 hex digits of SHA-256, as `sha256sum` or `openssl x509 -fingerprint
    -sha256` of the DER file start."""
    import binascii
    import hashlib

    return str(binascii.hexlify(hashlib.sha256(data).digest()[:8]), "ascii")


def _heap_line():
    """The live and free heap after a collection: what the meter has left to run on."""
    import gc

    gc.collect()
    return "heap: %d bytes live, %d free (after a collection)" % (gc.mem_alloc(), gc.mem_free())


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


TOO_LONG = object()  # LineReader.read(): the line exceeded LINE_MAX and was dropped
NOT_TEXT = object()  # LineReader.read(): the line was not UTF-8


class LineReader:
    """Reads lines from a byte stream (a text stream also works) into one buffer made
    once, echoing them, with backspace; see the module docstring for the echo mask.

    Per byte the work is constant: the mask is decided once, when the second word of the
    line is complete (again after a backspace), from the buffer without copying it."""

    def __init__(self, stream_in, stream_out, size=LINE_MAX):
        self.stream_in = stream_in
        self.stream_out = stream_out
        self.buf = bytearray(size)

    def read(self):
        """One line as str; None at the end of input; TOO_LONG or NOT_TEXT."""
        buf, size, out = self.buf, len(self.buf), self.stream_out
        n = 0
        over = False  # past LINE_MAX: the rest of the line is read and dropped, no echo
        secret = False
        decided = False  # the first two words are complete: secret is final
        while True:
            c = self.stream_in.read(1)
            if not c:
                if over:
                    return TOO_LONG
                return None if n == 0 else self._text(n)
            if isinstance(c, str):  # a text stream: its UTF-8 bytes
                c = c.encode()
            for b in c:
                if b == 10 or b == 13:  # \n or \r ends the line
                    out.write("\n")
                    return TOO_LONG if over else self._text(n)
                if over:
                    continue
                if b == 8 or b == 127:  # backspace / DEL: remove the last character
                    if n:
                        n -= 1
                        while n and buf[n] & 0xC0 == 0x80:  # UTF-8 continuation bytes
                            n -= 1
                        out.write("\b \b")
                        secret, decided = _mask(buf, n)
                    continue
                if b < 32 and b != 9:  # other control characters: ignored
                    continue
                if n == size:
                    over = True
                    continue
                if not decided and b != 32 and b != 9 and n and buf[n - 1] in (32, 9):
                    secret, decided = _mask(buf, n)  # a word starts: are two complete?
                buf[n] = b
                n += 1
                if b < 0x80:
                    out.write("*" if secret else chr(b))
                elif b < 0xC0:  # a UTF-8 continuation byte: echo a character once whole
                    start = _char_start(buf, n)
                    if start >= 0:
                        out.write("*" if secret else self._echo(start, n))

    def _text(self, n):
        try:
            return str(self.buf[:n], "utf-8")
        except UnicodeError:
            return NOT_TEXT

    def _echo(self, start, end):
        try:
            return str(self.buf[start:end], "utf-8")
        except UnicodeError:
            return "?"  # the line will be refused as NOT_TEXT


def _char_start(buf, n):
    """Where the multi-byte character ending at buf[n - 1] starts, if its lead byte says
    it is complete there; else -1."""
    start = n - 1
    while start > 0 and n - start < 4 and buf[start] & 0xC0 == 0x80:
        start -= 1
    lead = buf[start]
    need = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 0
    return start if n - start == need else -1


def _mask(buf, n):
    """(secret, decided) for a line whose first n bytes are typed: decided once the first
    two words are complete; secret if they are a secret-setting command."""
    words = []
    i = 0
    while i < n and len(words) < 2:
        b = buf[i]
        if b == 32 or b == 9:
            i += 1
            continue
        j = i
        while j < n and buf[j] != 32 and buf[j] != 9:
            j += 1
        if j == n:  # the word may still grow
            return False, False
        words.append((i, j))
        i = j
    if len(words) < 2:
        return False, False
    (a, b), (c, d) = words
    for cmd in SECRET_AFTER:
        if _is_word(buf, a, b, cmd):
            for word in SECRET_AFTER[cmd]:
                if _is_word(buf, c, d, word):
                    return True, True
    return False, True


def _is_word(buf, start, end, word):
    """buf[start:end] equals the lower-case ASCII word, ignoring case, without a copy."""
    if end - start != len(word):
        return False
    for k in range(end - start):
        b = buf[start + k]
        if 65 <= b <= 90:
            b += 32
        if b != ord(word[k]):
            return False
    return True


def _bytes_in(stream):
    """Read a board's console as bytes: sys.stdin decodes UTF-8 and raises UnicodeError
    (ending the program) for a noise byte; its .buffer does not."""
    return getattr(stream, "buffer", stream)


def boot_window(seconds=3, stream_in=None):
    """Offer the console for a few seconds; True if the installer pressed Enter."""
    import select

    stream_in = stream_in or sys.stdin
    print("press Enter within %d s for the installer console" % seconds)
    poll = select.poll()
    poll.register(stream_in, select.POLLIN)
    if poll.poll(seconds * 1000):
        return bool(_bytes_in(stream_in).read(1))  # b'' is end of input (no terminal)
    return False


def run(paths=None, stream_in=None, stream_out=None):
    """The console until 'exit' or the end of input; returns the Console (``eof`` says
    which). Nothing typed ends it otherwise: see the module docstring."""
    stream_out = stream_out or sys.stdout
    reader = LineReader(_bytes_in(stream_in or sys.stdin), stream_out)
    con = Console(paths)
    for p in con.cfg.problems:
        stream_out.write("problem: %s\n" % p)
    stream_out.write("gridedge console (help for commands, exit to leave)\n")
    while True:
        stream_out.write("gridedge> ")
        line = reader.read()
        if line is TOO_LONG:
            out = ["error: line longer than %d bytes: ignored, nothing was done" % LINE_MAX]
        elif line is NOT_TEXT:
            out = ["error: the line is not UTF-8 text: ignored, nothing was done"]
        elif line is None or _leaves(line):
            if con.dirty:
                stream_out.write("unsaved changes discarded: %s\n" % ", ".join(con.unsaved))
            if con.stored:  # written when typed: exit does not undo them
                stream_out.write("kept (stored when typed): %s\n" % ", ".join(con.stored))
            con.eof = line is None  # input closed (never on a board's serial port)
            return con
        else:
            try:
                out = con.handle(line)
            except Exception as e:  # noqa: BLE001 - one command's failure is one line
                out = [failure(e, secret_command(split_words(line, 2)))]
        for text in out:
            stream_out.write(text + "\n")


def _leaves(line):
    words = split_words(line)
    return len(words) == 1 and words[0].lower() in ("exit", "quit")


# The commands, by the word that starts them (lower case). A table, not getattr: a typed
# word is only ever a dict key, never turned into a name.
COMMANDS = {
    "help": Console.cmd_help,
    "show": Console.cmd_show,
    "get": Console.cmd_get,
    "set": Console.cmd_set,
    "save": Console.cmd_save,
    "read": Console.cmd_read,
    "scan": Console.cmd_scan,
    "calibrate": Console.cmd_calibrate,
    "pzem-address": Console.cmd_pzem_address,
    "reset-energy": Console.cmd_reset_energy,
    "key": Console.cmd_key,
    "ca": Console.cmd_ca,
    "wifi": Console.cmd_wifi,
    "link": Console.cmd_link,
    "reboot": Console.cmd_reboot,
    "factory-reset": Console.cmd_factory_reset,
}
