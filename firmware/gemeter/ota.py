"""Firmware updates over the command path: a bundle received in chunks, verified, unpacked
and staged for boot.py to switch in.

``update`` (``begin``) names the bundle: its version, size, sha256 and the trial's time.
``update-chunk`` (``chunk``) appends bytes at an offset to ota/bundle: a chunk already
held is answered again without a write, any other offset than the next is refused, and
every answer says ``have K of N``, so a sender that lost its place (or the meter, power)
resumes from there, and ``update`` with the same sha256 keeps what was received. The
last chunk checks the whole bundle's sha256 (a corrupted chunk fails it: the bundle is
dropped before anything is unpacked) and unpacks it into ota/new/, checking each file's
size and sha256 and name; only then does ota.json say ``staged`` and the meter restart
(boot.py does the rest). The bundle (tools/bundle.py) is, per file, a line
``name size sha256-hex`` and then the file's bytes: read in one 256-byte buffer, so an
update needs no more heap than a command does. Only main.py and compiled modules under
gemeter/ and lib/ can be in it: never boot.py, the key, the state or the config.
``status`` answers ``update-status``; ``confirm`` ends a trial once the new firmware has
sent frames, and ``give_up`` makes the next boot roll it back. Loaded only while an
update command runs (cmdrun.py). The state file's reading and writing are boot.py's, copied
here: boot.py never imports the firmware an update replaces, and importing boot.py from
here would compile its source in the meter's heap (a MemoryError in the 96-KB command
heap). tests/firmware/test_ota.py runs the two against each other.
"""

import binascii
import hashlib
import json
import os

from micropython import const

_STATE = "ota.json"
_MAX_BOOTS = const(3)  # _MAX_BOOTS
_BUF = const(256)
_MAX_FILES = const(64)
_MAX_FILE = const(131072)
_MAX_BUNDLE = const(1048576)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_./"


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _folders(path):
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        if folder and not _exists(folder):
            os.mkdir(folder)


def _load(root):
    for name in (_STATE, _STATE + ".tmp"):
        try:
            with open(root + name) as f:
                st = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if name != _STATE:  # the only copy: made the state file again (boot.load)
            os.rename(root + name, root + _STATE)
        return st if isinstance(st, dict) else None
    return None


def _save(root, st):
    with open(root + _STATE + ".tmp", "w") as f:
        f.write(json.dumps(st))
    try:
        os.rename(root + _STATE + ".tmp", root + _STATE)
    except OSError:
        _remove(root + _STATE)
        os.rename(root + _STATE + ".tmp", root + _STATE)


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return None


def _clear(path):
    """Remove a file, or a folder and everything in it."""
    try:
        if os.stat(path)[0] & 0x4000:
            for name in os.listdir(path):
                _clear(path + "/" + name)
            os.rmdir(path)
        else:
            os.remove(path)
    except OSError:
        pass


def _free(root):
    """Bytes free on the filesystem the device's files are on, if the port can tell."""
    try:
        s = os.statvfs(root or "/")
        return s[0] * s[4]  # f_bsize * f_bavail
    except (AttributeError, OSError):
        return None


def _have(st, have):
    return "have %d of %d" % (have, st["size"])


def begin(root, args, cid=b""):
    """(state, reason) of {"version", "size", "sha256", "trial_s"?}; ``cid``, the
    command's id, gets the update's outcome once it is known (``confirm``, ``told``)."""
    v, size, sha = args.get("version"), args.get("size"), args.get("sha256")
    trial = args.get("trial_s", 600)
    if not (isinstance(v, str) and 0 < len(v) <= 16 and isinstance(size, int)
            and 0 < size <= _MAX_BUNDLE and isinstance(sha, str) and len(sha) == 64
            and isinstance(trial, int) and 30 <= trial <= 86400):
        return "failed", "bad args"
    st = _load(root)
    if st is not None and st.get("st") in ("staged", "trial"):  # which one, by its sha256
        return "failed", "an update is %s (%s)" % (st["st"], st.get("sha256", "")[:16])
    have = _size(root + "ota/bundle")
    if st is not None and st.get("st") == "recv" and st.get("sha256") == sha \
            and st.get("size") == size and have is not None:
        return _finish(root, st) if have == size else ("done", _have(st, have))
    _clear(root + "ota")
    free = _free(root)
    if free is not None and free < 2 * size + 8192:  # the bundle, and its files unpacked
        return "failed", "flash has %d bytes free, needs %d" % (free, 2 * size + 8192)
    if not _exists(root + "ota"):
        os.mkdir(root + "ota")
    open(root + "ota/bundle", "wb").close()
    st = {"st": "recv", "v": v, "size": size, "sha256": sha, "trial_s": trial,
          "id": binascii.hexlify(cid).decode()}
    _save(root, st)
    return "done", _have(st, 0)


def chunk(root, args):
    """(state, reason) of {"at": offset, "data": bytes}."""
    st = _load(root)
    have = _size(root + "ota/bundle")
    if st is None or st.get("st") != "recv" or have is None:
        return "failed", "no update is being received"
    at, data = args.get("at"), args.get("data")
    if not (isinstance(at, int) and isinstance(data, bytes) and data):
        return "failed", "bad args"
    if at + len(data) <= have:  # held already: sent again
        return "done", _have(st, have)
    if at != have or have + len(data) > st["size"]:
        return "failed", _have(st, have)
    with open(root + "ota/bundle", "ab") as f:
        f.write(data)
    have += len(data)
    if have < st["size"]:
        return "done", _have(st, have)
    return _finish(root, st)


def _finish(root, st):
    """The whole bundle is here: check it, unpack it, stage it."""
    bundle = root + "ota/bundle"
    buf = bytearray(_BUF)
    h = hashlib.sha256()
    with open(bundle, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
    if binascii.hexlify(h.digest()).decode() != st["sha256"]:
        open(bundle, "wb").close()  # nothing was unpacked: it is received again
        return "failed", "bundle sha256 mismatch"
    problem = _unpack(root, buf)
    if problem is not None:  # a bundle signed as it is, but not one this meter can take
        _clear(root + "ota")
        _save(root, {"st": "none", "why": problem})
        return "failed", problem
    st["st"] = "staged"
    _save(root, st)
    _remove(bundle)
    return "done", "staged %s; restarting" % st["v"]


def _name_ok(name):
    if name != "main.py" and not ((name.startswith("gemeter/") or name.startswith("lib/"))
                                  and name.endswith(".mpy")):
        return False
    return ".." not in name and "//" not in name and all(c in _NAME_CHARS for c in name)


def _unpack(root, buf):
    """Each file of the bundle into ota/new/, checked; ota/files lists them. None, or
    what is wrong."""
    _clear(root + "ota/new")
    count = 0
    with open(root + "ota/bundle", "rb") as f, open(root + "ota/files", "w") as listing:
        while True:
            line = f.readline(160)
            if not line:
                return None if count else "empty bundle"
            try:
                name, size, sha = line.decode().split()
                size = int(size)
            except (ValueError, UnicodeError):
                return "bad bundle entry"
            count += 1
            if not _name_ok(name) or not 0 <= size <= _MAX_FILE or count > _MAX_FILES:
                return "bad bundle entry " + name[:40]
            dst = root + "ota/new/" + name
            if _exists(dst):  # named twice (ota/new/ starts empty)
                return "bad bundle entry " + name[:40] + " twice"
            _folders(dst)
            h = hashlib.sha256()
            with open(dst, "wb") as out:
                left = size
                while left:
                    n = f.readinto(memoryview(buf)[:min(left, _BUF)])
                    if not n:
                        return "bundle ends inside " + name
                    h.update(memoryview(buf)[:n])
                    out.write(memoryview(buf)[:n])
                    left -= n
            if binascii.hexlify(h.digest()).decode() != sha:
                return "sha256 mismatch: " + name
            listing.write("%s %d\n" % (name, 1 if _exists(root + name) else 0))


def status(root):
    """(state, reason) of ``update-status``: what the last update came to."""
    st = _load(root)
    s = st.get("st") if st is not None else None
    if s == "recv":
        return "done", "receiving %s: %s" % (st["v"], _have(st, _size(root + "ota/bundle") or 0))
    if s == "staged":
        return "done", "staged " + st["v"]
    if s == "trial":
        return "done", "trial of %s, boot %d" % (st["v"], st.get("boots", 0))
    if s == "ok":
        return "done", "running " + st["v"]
    if s == "back":
        return "done", "rolled back from %s: %s" % (st["v"], st.get("why", "")[:60])
    if s == "none" and st.get("why"):
        return "done", "no update: " + st["why"][:60]
    return "done", "no update"


def _outcome(st, state, reason):
    try:
        cid = binascii.unhexlify(st.get("id", ""))
    except ValueError:
        cid = b""
    return (cid, state, reason) if 0 < len(cid) <= 16 else None


def confirm(root):
    """The new firmware has sent its first frames: the trial is over, the old files go.
    The result for the ``update`` command that sent it: (id, "done", "running V")."""
    st = _load(root)
    if st is None or st.get("st") != "trial":
        return None
    st["st"] = "ok"
    st.pop("boots", None)
    _save(root, st)
    _clear(root + "ota")
    return _outcome(st, "done", "running " + st["v"])


def told(root):
    """After a rollback, once: (id, "failed", "rolled back from V: WHY") for the
    ``update`` command, and ota.json notes it was said."""
    st = _load(root)
    if st is None or st.get("st") != "back" or st.get("told"):
        return None
    st["told"] = True
    _save(root, st)
    return _outcome(st, "failed", "rolled back from %s: %s" % (st.get("v"),
                                                              st.get("why", "")[:48]))


def give_up(root, why):
    """Make the next boot roll the trial back, saying why."""
    st = _load(root)
    if st is not None and st.get("st") == "trial":
        st["boots"] = _MAX_BOOTS
        st["why"] = why
        _save(root, st)
