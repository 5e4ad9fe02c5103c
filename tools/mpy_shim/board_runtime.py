# What a board's MicroPython runtime does at power-on, for the unix port: run boot.py, then
# main.py, from the working directory (the device's flash folder), each if it is there.
# The virtual device (tools/vdevice.py), the fleet's flashed meters (tools/sim_fleet.py)
# and the update tests start a board with it; the folder must be on the module path ("").
# main.py raising ends the process: a board would sit in its REPL until the watchdog that
# boot.py starts during an update's trial resets it.
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
