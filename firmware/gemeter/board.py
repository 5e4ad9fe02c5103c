"""Board description (boards/*.json, copied to /board.json) and the bus objects it names.

A board file names its UARTs, SPI buses and pins, the metering ICs it carries and on which
bus, its default link to the gateway and its mpy-cross architecture. This module is the
only place that turns those names into ``machine`` objects; drivers receive the objects.
"""

import json

import machine

REQUIRED = ("name", "mpy_arch", "link", "meters")


class BoardError(ValueError):
    pass


def load(path="/board.json"):
    try:
        with open(path) as f:
            board = json.loads(f.read())
    except OSError:
        raise BoardError("no board file %s (flash one from boards/)" % path)
    except ValueError:
        raise BoardError("board file %s is not valid JSON" % path)
    for key in REQUIRED:
        if key not in board:
            raise BoardError("board file %s lacks %s" % (path, key))
    return board


def _pin(n):
    return machine.Pin(n)


def uart(board, name, baudrate=None):
    """machine.UART for the board's UART called name (e.g. "pzem", "gateway")."""
    spec = board.get("uart", {}).get(name)
    if spec is None:
        raise BoardError("board %s has no UART %s" % (board["name"], name))
    kw = {"baudrate": baudrate or spec.get("baudrate", 9600), "timeout": 0}
    if "tx" in spec:
        kw["tx"] = _pin(spec["tx"])
    if "rx" in spec:
        kw["rx"] = _pin(spec["rx"])
    if "rxbuf" in spec:  # what arrives while the loop sleeps (boards/README.md)
        kw["rxbuf"] = spec["rxbuf"]
    return machine.UART(spec["id"], **kw)


def spi(board, name):
    spec = board.get("spi", {}).get(name)
    if spec is None:
        raise BoardError("board %s has no SPI bus %s" % (board["name"], name))
    kw = {
        "baudrate": spec.get("baudrate", 1000000),
        "polarity": spec.get("polarity", 1),
        "phase": spec.get("phase", 1),
    }
    for line in ("sck", "mosi", "miso"):
        if line in spec:
            kw[line] = _pin(spec[line])
    return machine.SPI(spec["id"], **kw)


def pin(board, name, value=None):
    """An output pin from the board's pin map (None if the board does not wire it)."""
    n = board.get("pins", {}).get(name)
    if n is None:
        return None
    p = machine.Pin(n, machine.Pin.OUT)
    if value is not None:
        p.value(value)
    return p
