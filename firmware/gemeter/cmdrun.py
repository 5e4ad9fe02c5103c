"""Running the commands a meter received: open each (command.py), save its counter, act.

Loaded by the app only while its link holds commands, and unloaded after, so the code
that runs them is never in the meter's heap between commands. The counter is saved
before a command acts: a replay after a power cut is still refused. ``read`` is done by
the frame that carries its result (the app sends it at once); ``relay`` switches the
board's relay (relay.py); ``time`` sets the clock to the gateway's, sealed in the command;
``reboot`` restarts the board once its result is sent (``due``, at a report, as the end
of a timed relay switch); ``set`` changes one setting in
the config file with the console's checks (it applies at the next start; the device id,
which its key is bound to, is not changed remotely, and a secret is never echoed);
``factory-reset``, which must name the device again, puts every setting and the
calibration back to the defaults except the device id and the link's, keeps the key, and
restarts; ``update``, ``update-chunk`` and ``update-status`` receive a firmware bundle
and stage it (ota.py), and a new firmware's trial ends in ``due``.
"""

from gemeter.command import CommandError, Commands


def run(app):
    """The results of the commands in ``app.link.inbox``, as the CBOR array that is key 9
    of the next frame: [[id, state, reason?], ...]; None if there are none. A command id
    seen recently is not run again: its result is sent again (the first may have been
    lost on the line), or ``refused duplicate`` while it is not known yet."""
    ctl = app.ctl  # [recent [id, state, reason], refused, reboot at, relay due, ...]
    from gemeter.keystore import KeyStore

    key = KeyStore(_root(app) + "key.bin").load()  # the key file, as start.Paths has it
    inbox = app.link.inbox
    if key is None:  # gone since the start: nothing can be verified, nothing runs
        ctl[1] += len(inbox)
        inbox[:] = []
        return None
    cmds = Commands(app.builder.device_id, key, app.state.cmd)
    cmds.recent = ctl[0]
    framed = hasattr(app.link, "rx")  # the serial link: its inbox holds COBS bodies
    results = []
    while inbox:
        try:
            msg = inbox.pop(0)
            if framed:  # the serial link's COBS body: the CRC is checked here
                from gemeter.unframe import decode

                msg = decode(msg)
            c = cmds.open(msg, app.clock.unix_ms())
        except CommandError as e:
            if len(e.args) > 1:  # authentic, not run: say why, or what it did before
                done = e.args[0] == "duplicate" and cmds.result(e.args[1])
                if done and done[1] is not None:
                    results.append(tuple(done))
                    continue
                results.append((e.args[1], "refused", e.args[0]))
            ctl[1] += 1
            continue
        except ValueError:  # FramingError: damaged on the line
            ctl[1] += 1
            continue
        app.state.cmd = c["counter"]
        app.state.save()
        res = _act(app, c, key)
        if c["op"] == "key-rotate" and res[1] == "done":
            key = KeyStore(_root(app) + "key.bin").load() or key  # opens the ones after
            cmds = Commands(app.builder.device_id, key, app.state.cmd)
            cmds.recent = ctl[0]
        cmds.result(c["id"])[1:] = res[1:]
        results.append(res)
    if ctl[5] is not None:  # a trial: here too, as commands may keep a report from coming
        res = _trial(app)
        if res is not None:
            results.append(res)
    return _encode(results) if results else None


def _act(app, c, key):
    """(id, state, reason) of one opened command, after it acted (``key``: the device
    key it was opened with)."""
    op = c["op"]
    if op == "read":
        return c["id"], "done", None
    if op == "relay":
        return (c["id"],) + _relay(app, c["args"])
    if op == "time" and c["sent"] is not None:
        offset = _set_clock(app.clock, c["sent"])
        return c["id"], "done", "set" if offset is None else "offset %d ms" % offset
    if op == "set":
        return (c["id"],) + _set(app, c["args"])
    if op == "reboot":
        app.ctl[2] = app.uptime_ms  # the board restarts once this result is sent (due)
        return c["id"], "done", None
    if op == "factory-reset":
        return (c["id"],) + _factory(app, c["args"])
    if op == "key-rotate":
        return (c["id"],) + _rekey(app, c, key)
    if op in ("update", "update-chunk", "update-status"):
        return (c["id"],) + _update(app, op, c["args"], c["id"])
    return c["id"], "failed", "unsupported"


def _encode(results):
    from gemeter.frame import head

    buf = bytearray()
    head(buf, 4, len(results))
    for cid, state, reason in results:
        head(buf, 4, 2 if reason is None else 3)
        head(buf, 2, len(cid))
        buf.extend(cid)
        for text in (state, reason):
            if text is not None:
                head(buf, 3, len(text))
                buf.extend(text.encode())
    return bytes(buf)


def due(app):
    """Restart once a reboot's result has left the ring (the app asks as soon as the ring
    is empty; at a report, 10 s after the command even if the link is down); end the
    timed relay switches whose time has come (at a report); end a new firmware's trial
    once its first frames have gone out, or give it up when its time has passed without
    (boot.py then rolls it back). The results it has for the report's frame (an update's
    outcome), encoded, or None."""
    ctl = app.ctl
    # Not while a restart is due: the result would not leave before it (the trial goes on
    # after the restart).
    res = _trial(app) if ctl[5] is not None and ctl[2] is None else None
    if ctl[2] is not None and (app.ring.peek() is None or app.uptime_ms - ctl[2] > 10000):
        import machine

        app.state.checkpoint(app.energy(), app.checkpoint_s, force=True)
        machine.reset()
    if ctl[3] is not None:
        import time

        if time.ticks_diff(time.ticks_ms(), ctl[3]) >= 0:
            from gemeter import relay

            relay.tick(app)
    return None if res is None else _encode([res])


def _update(app, op, args, cid):
    """(state, reason) of update, update-chunk, update-status (ota.py); the restart
    into a bundle once it is staged. ``cid``: the command's id (an ``update``'s gets the
    update's outcome as a second result, after the restart: _trial)."""
    from gemeter import ota

    root = _root(app)
    if op == "update-status":
        return ota.status(root)
    try:
        res = ota.begin(root, args, cid) if op == "update" else ota.chunk(root, args)
    except OSError as e:  # a full or failing flash: this command fails, the meter goes on
        return "failed", "flash error %s" % (e.args[0] if e.args else "")
    if res[1].startswith("staged"):
        app.ctl[2] = app.uptime_ms  # boot.py switches it in
    return res


_CONFIRM_FRAMES = 3  # frames a new firmware sends before its trial ends


def _trial(app):
    """A trial ended (the ``update`` command's second result: ``done running V``), or a
    rollback before this start told once (``failed rolled back from V: WHY``); None."""
    from gemeter import ota

    ctl = app.ctl
    try:
        if ctl[5] < 0:  # rolled back before this start (start.py): say so, once
            ctl[5] = None
            return ota.told(_root(app))
        if app.seq >= _CONFIRM_FRAMES and app.ring.peek() is None:
            ctl[5] = None
            return ota.confirm(_root(app))
        if app.uptime_ms > ctl[5] * 1000:
            ota.give_up(_root(app), "no frame sent in %d s" % ctl[5])
            ctl[2] = app.uptime_ms - 20000  # restart now: boot.py rolls it back
    except OSError:  # a failing flash: the meter goes on (boot.py counts the trial)
        ctl[5] = None
    return None


def _root(app):
    # The device's folder (start.Paths): where its state copies are ("" on a board).
    return app.state.copies[0][:-len("state.a.json")]


def _set_clock(clock, unix_ms):
    """Set the RTC to a time the gateway vouched for; on the unix port the host keeps the
    clock. The offset it corrected, ms (None if the clock was not known before)."""
    import sys
    import time

    from gemeter.timesync import EPOCH_OFFSET_S

    now = clock.unix_ms()
    if sys.platform != "linux":
        import machine

        t = time.gmtime(unix_ms // 1000 - EPOCH_OFFSET_S)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5],
                                unix_ms % 1000 * 1000))
    clock.synced = True
    clock.syncs += 1
    return None if now is None else unix_ms - now


def _set(app, args):
    """(state, reason) of {"key": name, "value": text or number}: one key of the config
    file changed, the rest of the file as it is."""
    import json

    from gemeter import config

    key, value = args.get("key"), args.get("value")
    if key not in config.SCHEMA or key == "device_id":
        return "failed", "not a setting to change remotely"
    if isinstance(value, str):
        value, problem = config.parse_value(key, value)
    else:
        value, problem = config._check(key, value)
    if problem is not None:
        return "failed", problem[:64]
    try:
        with open(_root(app) + "config.json") as f:
            data = json.loads(f.read())
    except OSError:
        data = {}
    except ValueError:
        return "failed", "config file unreadable"
    data[key] = value
    config.atomic_write(_root(app) + "config.json", json.dumps(data))
    return "done", "applies at the next start"


# What a remote factory reset keeps: who the meter is and how it reaches the gateway (the
# key file is not touched). Erasing those, as the console's factory-reset does with the
# installer beside the board, would leave it unreachable until someone came.
_KEEP = ("device_id", "link", "serial_baud", "wifi_ssid", "wifi_password", "mqtt_host",
         "mqtt_port", "mqtt_tls", "mqtt_user", "mqtt_password", "mqtt_keepalive_s")


def _factory(app, args):
    """(state, reason) of {"confirm": this device's id}: every other setting and the
    calibration back to the defaults, then a restart (after the result is sent)."""
    import json

    from gemeter import config

    if args != {"confirm": app.builder.device_id}:
        return "failed", "confirm must name this device"
    try:
        with open(_root(app) + "config.json") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        data = {"device_id": app.builder.device_id}
    config.atomic_write(_root(app) + "config.json", json.dumps(
        {k: v for k, v in data.items() if k in _KEEP}))
    app.ctl[2] = app.uptime_ms
    return "done", "defaults; key and link kept; restarting"


def _rekey(app, c, key):
    """(state, reason) of {"key": the new key, 64 hex digits, wrapped}: stored, then every
    frame from the next one on (this command's result included) is MACed with it. The
    wrap (gateway/command.py) is XOR with HMAC-SHA256(HKDF(key, "gridedge/v1 wrap"),
    "rekey" || counter, 8 bytes big-endian): the command's counter makes it one-time."""
    import binascii
    import struct

    from gemeter import auth, frame
    from gemeter.command import derive
    from gemeter.keystore import KeyStore, fingerprint

    try:
        wrapped = binascii.unhexlify(c["args"].get("key", ""))
    except (ValueError, TypeError):
        wrapped = b""
    if len(wrapped) != 32:
        return "failed", "bad args"
    pad = auth.HMACSHA256(derive(key, b"gridedge/v1 wrap")).digest(
        b"rekey", struct.pack(">Q", c["counter"]))
    new = bytes(a ^ b for a, b in zip(wrapped, pad))
    try:
        KeyStore(_root(app) + "key.bin").save(new)
    except OSError:  # a full or failing flash: the old key stays, and says so
        return "failed", "cannot store the key"
    app.builder = app.sampler.builder = frame.FrameBuilder(app.builder.device_id, new)
    return "done", "key " + fingerprint(new)


def _relay(app, args):
    """(state, reason) of {"state": "on"|"off", "seconds"?, "name"?}."""
    if app.relays is None:
        return "failed", "no relay"
    name = args.get("name") or next(iter(app.relays))
    seconds = args.get("seconds")
    if name not in app.relays or args.get("state") not in ("on", "off") or not (
            seconds is None or (isinstance(seconds, int) and 0 < seconds <= 604800)):
        return "failed", "bad args"
    from gemeter import relay

    relay.switch(app, name, args["state"] == "on", seconds)
    return "done", None
