"""Commands down to a meter: their key, a strict reader for their CBOR, and the checks before one runs.

A command is a COSE_Mac0 message like an uplink frame (docs/protocol.md section 8), MACed
with the *downlink* key: HKDF-SHA256 (RFC 5869, empty salt) of the device key with the
info ``DOWN_LABEL``, so a frame the meter sent can never pass as a command to it, nor a
command as a frame. ``Commands.open`` takes the received bytes and either returns the
command or raises ``CommandError`` with one reason: ``malformed`` (anything that is not
exactly the expected structure: the reader below accepts definite-length integers,
strings, arrays, maps, tag 17 and true/false/null, at most ``MAX_COMMAND`` bytes and three
levels deep, and checks every length against the bytes present), ``bad_mac``,
``wrong_device`` (the key id or the payload's device id is another meter's), ``replayed``
(its counter is not above the last one accepted: a replay or a reordering),
``duplicate`` (a command id done recently, sent again: its result is due, not a second
run; ``result`` has what the caller noted of it) and ``expired`` (the meter's synchronised clock is past the command's expiry). The
counter must be persisted by the caller before the command runs. Pure logic: no I/O, runs
under MicroPython and CPython.
"""

from micropython import const

from gemeter import auth
from gemeter.frame import head

MAX_COMMAND = const(512)  # bytes of one command message (a firmware chunk is sent apart)
DOWN_LABEL = b"gridedge/v1 down"
_DEPTH = const(3)
_RECENT = const(8)  # command ids remembered for idempotency

# Command payload keys.
_C_DEVICE = const(1)
_C_COUNTER = const(2)
_C_EXPIRES = const(3)  # unix ms
_C_ID = const(4)  # 1..16 bytes, chosen by the sender, carried back by the result
_C_OP = const(5)
_C_ARGS = const(6)
_C_SENT = const(7)  # the gateway's clock when it sealed the command (unix ms), optional


class CommandError(ValueError):
    """``args[0]`` is the reason (see the module docstring); ``args[1]``, when the command
    was authentic, its id."""


def derive(key, label):
    """HKDF-SHA256 with an empty salt (HashLen zero bytes), 32 bytes of output."""
    prk = auth.HMACSHA256(bytes(32)).digest(bytes(key))
    return auth.HMACSHA256(prk).digest(label, b"\x01")


class _Reader:
    def __init__(self, data):
        self.b = data
        self.i = 0

    def _arg(self, info):
        if info < 24:
            return info
        if info > 27:  # 28-30 reserved, 31 indefinite length: not in a command
            raise CommandError("malformed")
        size = 1 << (info - 24)
        i = self.i
        if i + size > len(self.b):
            raise CommandError("malformed")
        n = 0
        for k in range(size):
            n = (n << 8) | self.b[i + k]
        self.i = i + size
        return n

    def item(self, depth=0):
        if self.i >= len(self.b) or depth > _DEPTH:
            raise CommandError("malformed")
        ib = self.b[self.i]
        self.i += 1
        major, info = ib >> 5, ib & 0x1F
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            raise CommandError("malformed")  # floats and other simple values
        n = self._arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major in (2, 3):
            i = self.i
            if n > len(self.b) - i:
                raise CommandError("malformed")
            self.i = i + n
            raw = bytes(self.b[i:i + n])
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeError:
                raise CommandError("malformed")
        if major == 4:
            if n > len(self.b) - self.i:  # every item is at least one byte
                raise CommandError("malformed")
            return [self.item(depth + 1) for _ in range(n)]
        if major == 5:
            if 2 * n > len(self.b) - self.i:
                raise CommandError("malformed")
            out = {}
            for _ in range(n):
                k = self.item(depth + 1)
                if not isinstance(k, (int, str)) or isinstance(k, bool) or k in out:
                    raise CommandError("malformed")
                out[k] = self.item(depth + 1)
            return out
        if n != 17:  # major 6: only COSE_Mac0's tag
            raise CommandError("malformed")
        return ("tag17", self.item(depth + 1))


def loads(data):
    """One CBOR item of the command subset, and nothing after it."""
    r = _Reader(data)
    v = r.item()
    if r.i != len(data):
        raise CommandError("malformed")
    return v


class Commands:
    """The commands of one device: ``Commands(device_id, key, counter).open(msg, now_ms)``."""

    def __init__(self, device_id, key, counter=0):
        self.device_id = device_id
        self._kid = device_id.encode("utf-8")
        self._mac = auth.HMACSHA256(derive(key, DOWN_LABEL))
        self.counter = counter  # the last accepted: persisted by the caller
        self.recent = []  # [id, state, reason] of the last _RECENT commands accepted

    def open(self, msg, now_ms=None):
        """Verify one received command; a dict with ``id``, ``counter``, ``expires``,
        ``op`` and ``args``, or CommandError(reason)."""
        if len(msg) > MAX_COMMAND:
            raise CommandError("malformed")
        top = loads(msg)
        if not (isinstance(top, tuple) and isinstance(top[1], list) and len(top[1]) == 4):
            raise CommandError("malformed")
        protected, unprotected, payload, tag = top[1]
        if not (isinstance(protected, bytes) and unprotected == {}
                and isinstance(payload, bytes) and isinstance(tag, bytes)):
            raise CommandError("malformed")
        hdr = loads(protected)
        if not isinstance(hdr, dict) or hdr.get(1) != 4 or len(hdr) != 2:
            raise CommandError("malformed")
        if hdr.get(4) != self._kid:
            raise CommandError("wrong_device")
        length = bytearray()
        head(length, 2, len(protected))
        structure = b"\x84\x64MAC0" + bytes(length) + protected + b"\x40"
        length = bytearray()
        head(length, 2, len(payload))
        expected = self._mac.digest(structure, length, payload)[:8]
        if not auth.equal(expected, tag):
            raise CommandError("bad_mac")
        body = loads(payload)
        if not isinstance(body, dict):
            raise CommandError("malformed")
        cid, counter, expires = body.get(_C_ID), body.get(_C_COUNTER), body.get(_C_EXPIRES)
        op, args, sent = body.get(_C_OP), body.get(_C_ARGS, {}), body.get(_C_SENT)
        if not (isinstance(cid, bytes) and 1 <= len(cid) <= 16 and _uint(counter)
                and _uint(expires) and isinstance(op, str) and isinstance(args, dict)
                and (sent is None or _uint(sent))):
            raise CommandError("malformed")
        if body.get(_C_DEVICE) != self.device_id:
            raise CommandError("wrong_device")
        # Authentic from here: a refusal carries the command's id, for its result.
        if self.result(cid) is not None:
            raise CommandError("duplicate", cid)
        if counter <= self.counter:
            raise CommandError("replayed", cid)
        if now_ms is not None and now_ms > expires:
            raise CommandError("expired", cid)
        self.counter = counter
        self.recent.append([cid, None, None])  # its result, once known: result()
        if len(self.recent) > _RECENT:
            self.recent.pop(0)
        return {"id": cid, "counter": counter, "expires": expires, "op": op, "args": args,
                "sent": sent}

    def result(self, cid):
        """The [id, state, reason] kept for a recent command id (state None until the
        caller sets it), or None."""
        for r in self.recent:
            if r[0] == cid:
                return r
        return None


def _uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0

