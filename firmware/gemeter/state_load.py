"""Reading the device state at the start: the newest readable copy, and what was lost.

The format and the writing half are in state.py. ``load`` takes the newest readable copy.
A boot's own save goes into the older copy, so while both copies are readable they differ by at most one boot number. When one is lost
(unreadable, or missing after two saves) it may have held the next boot number, already
used for frames, so that number is skipped; the save that follows then writes both
copies, so that they agree again before the first frame (a power cut in between leaves
the newer copy in front, and no frame was sent). Only when no copy is readable although
one exists is the counter lost: it restarts at ``time.time() & 0x3FFFFFFF`` (high on a
board whose clock is set, small on one without; the gateway reports the jump). ``problem``
says what was lost (the console's ``show`` prints it). /state.json, the single file of
earlier firmware, is read when neither copy exists; the first save writes both copies and
removes it.

A meter reads its state once, at the start (gemeter/start.py), and the console reads it
for ``show``: this module is unloaded with them, so the loop carries only the writer.
"""

import json
import time

from micropython import const

from gemeter.state import State, check

_MAX_BYTES = const(1024)  # of one copy: a longer file is not a copy


def load(path="state"):
    """The State under path (see state.py's Paths): counters from the newest readable
    copy; ``problem`` says what was lost."""
    return _fill(State(path))


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read(path):
    """(n, boot, energy, cmd) of one copy, None if there is no such file, False if
    unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
    except OSError:
        return None
    try:
        line, mark, end = data.split(b"\n")
        if end or len(data) > _MAX_BYTES or mark != check(line):
            return False
        rec = json.loads(line)
        n, boot, energy = rec["n"], rec["boot"], _energy(rec["energy_mwh"])
        cmd = rec.get("cmd", 0)  # copies written before commands have none
        relay = _relay(rec.get("relay", {}))
        if _count(n) and _count(boot) and boot <= 0xFFFFFFFF and energy is not None \
                and _count(cmd) and relay is not None:
            return n, boot, energy, cmd, relay
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    return False


def _relay(d):
    # name -> [on, back]: booleans, back also None (no timed switch pending)
    out = {}
    for k, v in d.items():
        if not (isinstance(v, list) and len(v) == 2 and v[0] in (True, False)
                and v[1] in (True, False, None)):
            return None
        out[str(k)] = v
    return out


def _energy(d):
    out = {}
    for k, v in d.items():
        if not isinstance(v, int) or isinstance(v, bool):
            return None
        out[str(k)] = v
    return out


def _fill(st):
    # The counters of st from its copies (see the module docstring).
    got = [_read(p) for p in st.copies]
    good = [i for i in (0, 1) if got[i]]
    if good:
        new = max(good, key=lambda i: got[i][0])
        st.n, boot, st.energy_mwh, _cmd, st.relay = got[new]
        st.next = 1 - new
        st.boot = max(got[i][1] for i in good)
        # A replayed command must stay refused whichever copy survived: the highest.
        st.cmd = max(got[i][3] for i in good)
        other = got[1 - new]
        if other is False or (other is None and st.n > 1):
            # the lost copy may have been the newer one, with the next boot number
            st.boot = (st.boot + 1) & 0xFFFFFFFF
            st.both = True
            st.problem = "%s %s: counters from %s, boot numbers go on above %d" % (
                st.copies[1 - new], "unreadable" if other is False else "missing",
                st.copies[new], st.boot)
    elif got[0] is None and got[1] is None:
        _load_legacy(st)
    else:
        _restart(st, "%s unreadable" % " and ".join(
            p for p, g in zip(st.copies, got) if g is not None))
    return st


def _load_legacy(st):
    try:
        with open(st.legacy) as f:
            data = json.loads(f.read())
        st.boot = int(data.get("boot", 0))
        st.energy_mwh = {str(k): int(v) for k, v in data.get("energy_mwh", {}).items()}
        st.both = True
    except OSError:
        pass  # first boot
    except (ValueError, TypeError, AttributeError):
        _restart(st, "%s unreadable" % st.legacy)


def _restart(st, why):
    # No readable copy: the counter restarts above anything plausible, so that
    # identities stay unique where the clock is set; the gateway reports the jump.
    st.boot = int(time.time()) & 0x3FFFFFFF
    st.problem = why + ": boot counter restarted at %d" % st.boot
    st.both = True

