"""Running the commands a meter received: open each (command.py), save its counter, act.

Loaded by the app only while its link holds commands, and unloaded after, so the code
that runs them is never in the meter's heap between commands. The counter is saved
before a command acts: a replay after a power cut is still refused. ``read`` is done by
the frame that carries its result (the app sends it at once); ``relay`` switches the
board's relay (relay.py); ``time`` sets the clock to the gateway's, sealed in the command;
``reboot`` restarts the board once its result is sent; ``set`` answers
``failed``/``unsupported`` for now.
"""

from gemeter.command import CommandError, Commands


def run(app):
    """The results of the commands in ``app.link.inbox``, as the CBOR array that is key 9
    of the next frame: [[id, state, reason?], ...]; None if there are none."""
    cmds = Commands(app.device_id, app.key, app.state.cmd)
    cmds.recent = app.cmd_recent
    results = []
    inbox = app.link.inbox
    while inbox:
        try:
            c = cmds.open(inbox.pop(0), app.clock.unix_ms())
        except CommandError as e:
            app.commands_refused += 1
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
            offset = app.clock.set(c["sent"])
            results.append((c["id"], "done", "set" if offset is None else
                            "offset %d ms" % offset))
        elif c["op"] == "reboot":
            app.reboot_at = app.uptime_ms  # once this result is sent (app.py)
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
