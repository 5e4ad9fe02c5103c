"""Strict decoding of the CBOR subset protocol v1 uses: where the gateway parses untrusted bytes.

A general decoder is the wrong tool at this boundary. cbor2 builds anything CBOR can say
(decimal fractions that raise ``decimal.Overflow``, bignums, shared references whose
expansion it formats into its error messages, ...), raises a dozen exception types, and
its C extension leaks memory on every failed decode (agronholm/cbor2#257). Protocol v1
(docs/protocol.md section 1) uses only unsigned and negative integers up to 64 bits,
definite-length byte and text strings, arrays and maps, and tag 17 as the outermost item
of a frame. ``loads`` accepts exactly that and rejects everything else - every other tag,
floats and simple values, indefinite lengths, reserved heads, duplicate map keys - as
``ProtocolError(MALFORMED)`` at the byte where it appears, before anything is built; a
length that runs past the end is ``TRUNCATED`` before any allocation, and nesting is
bounded. Error details name an offset and a kind, never the input. Pure Python and
stateless: nothing is cached, so no input can grow memory.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import ProtocolError, Reason

MAX_DEPTH = 8  # a reading is 4 deep (map, channels, channel map, [mean, min, max])


def _malformed(pos: int, what: str) -> ProtocolError:
    return ProtocolError(Reason.MALFORMED, f"CBOR at byte {pos}: {what}")


def _truncated(pos: int) -> ProtocolError:
    return ProtocolError(Reason.TRUNCATED, f"CBOR ends inside the item at byte {pos}")


def head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after the head) of the item at ``pos``."""
    if pos >= len(data):
        raise _truncated(pos)
    ib = data[pos]
    ai = ib & 0x1F
    if ai < 24:
        return ib >> 5, ai, pos + 1
    if ai > 27:  # 28-30 are reserved; 31 is an indefinite length or "break"
        what = "indefinite length" if ai == 31 else f"reserved head 0x{ib:02x}"
        raise _malformed(pos, f"{what} is not used by the protocol")
    n = 1 << (ai - 24)
    end = pos + 1 + n
    if end > len(data):
        raise _truncated(pos)
    return ib >> 5, int.from_bytes(data[pos + 1:end], "big"), end


def _item(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    ib = data[pos] if pos < len(data) else -1
    if 0 <= ib < 0x18:  # the most common item: a small unsigned integer, in its head
        return ib, pos + 1
    if 0x18 <= ib < 0x1C:  # the next most common: an unsigned integer of 1, 2, 4, 8 bytes
        end = pos + 1 + _WIDTH[ib - 0x18]
        if end > len(data):
            raise _truncated(pos)
        return int.from_bytes(data[pos + 1:end], "big"), end
    start = pos
    major, arg, pos = head(data, pos)
    if major == 1:
        return -1 - arg, pos
    if major == 2 or major == 3:
        end = pos + arg
        if end > len(data):
            raise _truncated(start)
        if major == 2:
            return data[pos:end], end
        try:
            return data[pos:end].decode("utf-8"), end
        except UnicodeDecodeError:
            raise _malformed(start, "text string is not UTF-8") from None
    if major == 4 or major == 5:
        if depth <= 0:
            raise _malformed(start, f"nested deeper than {MAX_DEPTH}")
        # Every item takes at least one byte: a count beyond what is left cannot be honest,
        # and is refused before any list is grown from it.
        if arg * (major - 3) > len(data) - pos:
            raise _truncated(start)
        depth -= 1
        size = len(data)
        if major == 4:
            items: list[Any] = [None] * arg
            for i in range(arg):
                ib = data[pos] if pos < size else -1
                if 0 <= ib < 0x18:  # inline, as at the top: most items are small integers
                    items[i] = ib
                    pos += 1
                else:
                    items[i], pos = _item(data, pos, depth)
            return items, pos
        out: dict[Any, Any] = {}
        for _ in range(arg):
            kpos = pos
            ib = data[pos] if pos < size else -1
            if 0 <= ib < 0x18:  # inline: every key of protocol v1 is an integer below 24
                key: Any = ib
                pos += 1
            else:
                key, pos = _item(data, pos, depth)
                if type(key) is not int and type(key) is not str:
                    raise _malformed(kpos, "map key is not an integer or text")
            if key in out:
                raise _malformed(kpos, "duplicate map key")
            ib = data[pos] if pos < size else -1
            if 0 <= ib < 0x18:
                out[key] = ib
                pos += 1
            else:
                out[key], pos = _item(data, pos, depth)
        return out, pos
    if major == 6:
        raise _malformed(start, f"tag {arg} is not used by the protocol")
    raise _malformed(start, "floats and simple values are not used by the protocol")


_WIDTH = (1, 2, 4, 8)


def loads(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The one data item in ``data`` (and nothing after it), or ``ProtocolError``."""
    value, end = _item(data, 0, max_depth)
    if end != len(data):
        raise _malformed(end, f"{len(data) - end} bytes after the item")
    return value

