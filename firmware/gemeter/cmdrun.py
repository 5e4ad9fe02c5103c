"""Running the commands a meter received: open each (command.py), save its counter, act.

Loaded by the app only while its link holds commands, and unloaded after, so the code
that runs them is never in the meter's heap between commands. The counter is saved
before a command acts: a replay after a power cut is still refused. ``read`` is done by
the frame that carries its result (the app sends it at once); ``relay`` switches the
board's relay (relay.py); ``time`` sets the clock to the gateway's, sealed in the command;
``reboot`` restarts the board once its result is sent (``due``, at a report, as the end
of a timed relay switch); ``set`` changes one setting in
the config file with the console's checks (it applies at the next start; the device id,
which its key is bound to, is not changed remotely, and a secret is never echoed).
"""

from gemeter.command import CommandError, Commands


def run(app):
    """The results of the commands in ``app.link.inbox``, as the CBOR array that is key 9
    of the next frame: [[id, state, reason?], ...]; None if there are none."""
    ctl = app.ctl  # [recent ids, refused, reboot at, relay due]
    from gemeter.keystore import KeyStore

    key = KeyStore(_root(app) + "key.bin").load()  # the key file, as start.Paths has it
    inbox = app.link.inbox
    if key is None:  # gone since the start: nothing can be verified, nothing runs
        ctl[1] += len(inbox)
        inbox[:] = []
        return None
    cmds = Commands(app.builder.device_id, key, app.state.cmd)
    cmds.recent = ctl[0]
    results = []
    while inbox:
        try:
            c = cmds.open(inbox.pop(0), app.clock.unix_ms())
        except CommandError as e:
            ctl[1] += 1
            if len(e.args) > 1:  # authentic, not run: say why
                results.append((e.args[1], "refused", e.args[0]))
            continue
        app.state.cmd = c["counter"]
        app.state.save()
        if c["op"] == "read":
            results.append((c["id"], "done", None))
        elif c["op"] == "relay":
            results.append((c["id"],) + _relay(app, c["args"]))
        elif c["op"] == "time" and c["sent"] is not None:
            offset = _set_clock(app.clock, c["sent"])
            results.append((c["id"], "done", "set" if offset is None else
                            "offset %d ms" % offset))
        elif c["op"] == "set":
            results.append((c["id"],) + _set(app, c["args"]))
        elif c["op"] == "reboot":
            ctl[2] = app.uptime_ms  # the board restarts once this result is sent (due)
            results.append((c["id"], "done", None))
        else:
            results.append((c["id"], "failed", "unsupported"))
    return _encode(results) if results else None


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
    """At a report: restart once a reboot's result has left the ring (or 10 s after it);
    end the timed relay switches whose time has come."""
    ctl = app.ctl
    if ctl[2] is not None and (app.ring.peek() is None or app.uptime_ms - ctl[2] > 10000):
        import machine

        app.state.checkpoint(app.energy(), app.checkpoint_s, force=True)
        machine.reset()
    if ctl[3] is not None:
        import time

        if time.ticks_diff(time.ticks_ms(), ctl[3]) >= 0:
            from gemeter import relay

            relay.tick(app)


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
