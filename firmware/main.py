"""gridedge meter firmware entry point (MicroPython runs /main.py after boot).

Offers the installer console for a few seconds after boot (press Enter), then runs the
meter application until power-off. The console runs before the hardware watchdog starts.
A missing device key or board file sends the device to the console instead of looping;
leaving that console tries to start again, so a fix made there (key generate, save, exit)
starts the meter without a reset. Nothing typed at the console keeps the meter from
starting: a fault in the console itself is printed and the meter starts all the same.
Every firmware module the console loaded (itself, and what its commands used) is unloaded
before the meter runs: the meter loads what it needs into a heap the console left in
one piece, not into the gaps between what the console's session left behind.
"""

FIRMWARE_VERSION = "0.1.0"


def console(window):
    """The boot window's console (window) or the console itself. True if the installer
    left it with exit; False if none ran, its input ended, or it failed. KeyboardInterrupt
    (Ctrl-C) still ends the program: mpremote and `gridedge flash` take a board over so."""
    import gc
    import sys

    before = [name for name in sys.modules if name.startswith("gemeter")]
    threshold = gc.threshold()
    gc.threshold(1024)  # as App's start: garbage freed early leaves fewer holes behind
    try:
        from gemeter import console as con

        if window and not con.boot_window():
            return False
        return not con.run().eof  # the Console is dropped here, with the module below
    except Exception as e:  # noqa: BLE001 - the console must never stop the meter
        print("gridedge: console failed: %r" % (e,))
        return False
    finally:
        unload_console(before)
        gc.threshold(threshold)


def unload_console(keep):
    """Forget the gemeter modules loaded since keep (a list of module names) was taken."""
    import sys

    from gemeter import unload

    unload([name[8:] for name in sys.modules if name.startswith("gemeter.") and name not in keep])


def main():
    print("gridedge firmware %s" % FIRMWARE_VERSION)
    console(True)
    from gemeter.app import App

    while True:  # leaving the console tries again: the installer may have fixed it there
        try:
            app = App()
            break
        except (OSError, ValueError, RuntimeError) as e:
            print("gridedge: cannot start: %s" % e)
            if not console(False):
                return
    app.run()


main()
