"""The board's relay outputs: switched by commands, timed switches restored on their own.

The board file names each relay's GPIO and the level that closes it (``relays``:
``{"load": {"pin": 25, "on": 1}}``). The meter keeps, per relay, a list ``[pin number,
level, on, back, due]`` in ``app.relays`` and the earliest ``due`` in ``app.ctl[3]``; this
module is loaded only to act on them (at start, for a command, when a timed switch ends)
and unloaded after, so its code is not in the meter's heap between. ``switch`` with
``seconds`` is temporary: when ``due`` (ticks) has passed, ``tick`` puts the relay back to
``back``, the state before the first of the temporary switches. The state kept across a
reboot is ``saved_state``: per relay ``[on, back]``; at start, start.py drives the relays
from it (a pending temporary switch ended at once: fail-safe). Their state as every frame
carries it (key 10, relaystate.py) is made again whenever a relay changes.
"""

import time

import machine

from gemeter.relaystate import encoded

_PIN, _LEVEL, _ON, _BACK, _DUE = 0, 1, 2, 3, 4


def _drive(r, on):
    # The pin by its number: the meter holds no Pin object between switches (heap).
    machine.Pin(r[_PIN], machine.Pin.OUT, value=r[_LEVEL] if on else 1 - r[_LEVEL])
    r[_ON] = on


def switch(app, name, on, seconds=None):
    r = app.relays[name]
    if r[_DUE] is None:
        r[_BACK] = r[_ON]  # a second temporary switch goes back to the first one's state
    _drive(r, on)
    r[_DUE] = time.ticks_add(time.ticks_ms(), seconds * 1000) if seconds else None
    if not seconds:
        r[_BACK] = None
    _plan(app)


def tick(app):
    """End the temporary switches whose time has come."""
    now = time.ticks_ms()
    for r in app.relays.values():
        if r[_DUE] is not None and time.ticks_diff(now, r[_DUE]) >= 0:
            _drive(r, r[_BACK])
            r[_BACK] = r[_DUE] = None
    _plan(app)


def _plan(app):
    dues = [r[_DUE] for r in app.relays.values() if r[_DUE] is not None]
    app.ctl[3] = min(dues, key=lambda d: time.ticks_diff(d, dues[0])) if dues else None
    app.ctl[4] = encoded(app.relays)  # relaystate.py
    app.state.relay = saved_state(app)
    app.state.save()


def saved_state(app):
    return {n: [r[_ON], r[_BACK] if r[_DUE] is not None else None]
            for n, r in app.relays.items()}
