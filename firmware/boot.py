"""gridedge boot (MicroPython runs /boot.py before /main.py): switches in a staged firmware
update, counts the new firmware's trial boots, and puts the previous files back if it fails.

An update (gemeter/ota.py) leaves the new files, each verified against its sha256, in
ota/new/, their list in ota/files (a line "name 1" where the board had the file, "name 0"
where the update adds it) and ota.json saying ``staged``. At the next boot each listed
file is moved to ota/old/ and its new copy into place, with renames only; ota.json then
says ``trial``. A power cut anywhere in the switch leaves ota.json saying ``staged``, and
the next boot goes on from where it stopped: a step already done is skipped (a new copy
no longer in ota/new/ is in place). Each boot of a trial is counted. The new firmware ends
its trial once it has sent its first frames (cmdrun.due, ota.confirm). A trial that
reaches ``MAX_BOOTS`` boots without that is rolled back: main.py raised (the trial's
watchdog, started here, resets a board whose main.py ended in the REPL), hung or reset
itself, or the firmware gave up because nothing went out within the trial's time. Rolling
back puts each file's previous copy back and removes the files the update added, again
step by step and redone after a power cut; ota.json then says ``back``, and why, for the
``update-status`` command. This file is never part of an update: it stays what
``gridedge flash`` installed, so a broken update cannot break what takes it back. It
imports nothing of the firmware; gemeter/ota.py has its own copy of the state file's
reading and writing.
"""

import sys

# The board's own folders come off the path while boot.py imports: a file there (an
# update's lib/json.mpy, micropython-lib's lib/os/) would shadow the built-in module, and
# boot.py would fail before it could take a broken update back.
_PATH = sys.path[:]
sys.path[:] = [p for p in _PATH if p not in ("", "/", "lib", "/lib")]
try:
    import json
    import os
finally:
    sys.path[:] = _PATH

STATE = "ota.json"
MAX_BOOTS = 3  # trial boots before a rollback
TRIAL_WDT_MS = 30000  # the trial's watchdog (an RP2040's can wait at most 8388 ms)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def folders(path):
    """Make the folders a file at path goes in (``mkdir -p`` of its parent)."""
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        if folder and not exists(folder):
            os.mkdir(folder)


def move(src, dst):
    try:
        os.rename(src, dst)
    except OSError:  # some VFS refuse to rename over an existing file
        remove(dst)
        os.rename(src, dst)


def load(root=""):
    """The update's state (a dict), or None. A state file lost between ``save``'s remove
    and rename is read from its complete temporary copy, which becomes the state file
    again (the next save would overwrite the only copy)."""
    for name in (STATE, STATE + ".tmp"):
        try:
            with open(root + name) as f:
                st = json.loads(f.read())
        except (OSError, ValueError):
            continue
        if name != STATE:
            os.rename(root + name, root + STATE)
        return st if isinstance(st, dict) else None
    return None


def save(root, st):
    """Write the state atomically: a temporary file, then a rename."""
    with open(root + STATE + ".tmp", "w") as f:
        f.write(json.dumps(st))
    move(root + STATE + ".tmp", root + STATE)


def listed(root):
    """[(name, had), ...]: the staged update's files (ota/files)."""
    out = []
    with open(root + "ota/files") as f:
        while True:
            line = f.readline()
            if not line:
                return out
            name, had = line.split()
            out.append((name, had == "1"))


def switch(root, st):
    """Put the staged files in place, the previous ones in ota/old/; then the trial."""
    for name, had in listed(root):
        new = root + "ota/new/" + name
        if exists(new):  # not moved yet
            if had and exists(root + name) and not exists(root + "ota/old/" + name):
                folders(root + "ota/old/" + name)
                os.rename(root + name, root + "ota/old/" + name)
            folders(root + name)
            move(new, root + name)
    st["st"] = "trial"
    st["boots"] = 0
    save(root, st)


def rollback(root, st, why):
    """Put the previous files back; remove those the update added."""
    for name, had in listed(root):
        if not had:
            remove(root + name)
        elif exists(root + "ota/old/" + name):  # not put back yet
            move(root + "ota/old/" + name, root + name)
    st["st"] = "back"
    st["why"] = why
    st.pop("boots", None)
    save(root, st)


def boot(root=""):
    """What the update's state says to do at this boot; the state after it (or None)."""
    st = load(root)
    if st is None:
        return None
    if st.get("st") == "staged":
        try:
            switch(root, st)
        except OSError as e:  # a failing flash: the files half switched go back
            rollback(root, st, "switch failed: error %s" % (e.args[0] if e.args else ""))
            return "back"
    if st.get("st") != "trial":
        return st.get("st")
    st["boots"] = st.get("boots", 0) + 1
    if st["boots"] > MAX_BOOTS:
        rollback(root, st, st.get("why") or "did not start in %d boots" % MAX_BOOTS)
        return "back"
    save(root, st)
    _watchdog()
    return "trial"


def _watchdog():
    # A main.py that raises leaves a board in its REPL, where nothing resets it: during a
    # trial the watchdog does, and the next boot counts. The app feeds this one instead of
    # starting its own. The unix port (the virtual board) has none.
    if sys.platform in ("linux", "darwin"):
        return
    path = sys.path[:]
    sys.path[:] = []  # the built-in machine, not a file of the same name
    try:
        import machine
    finally:
        sys.path[:] = path

    # Left where the app finds it (gemeter/app.py TRIAL_WDT) and feeds it: a watchdog
    # once started cannot be set up again, and asking (ESP32) raises.
    sys.modules["gridedge_trial_wdt"] = machine.WDT(
        timeout=8388 if sys.platform == "rp2" else TRIAL_WDT_MS)


if __name__ == "__main__":
    try:
        boot()
    except Exception as e:  # noqa: BLE001 - main.py must run, whatever happened here
        print("gridedge boot: %r" % (e,))
