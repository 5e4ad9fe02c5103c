# A board's start, on the unix port: boot.py, then main.py, from the working directory (the
# device's flash), as MicroPython's runtime runs them on a board. main.py raising ends the
# process (a board would sit in its REPL until the watchdog boot.py started resets it).
import os


def run(name):
    try:
        os.stat(name)
    except OSError:
        return
    with open(name) as f:
        code = f.read()
    exec(code, {"__name__": "__main__"})


run("boot.py")
run("main.py")
