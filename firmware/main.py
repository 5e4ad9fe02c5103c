"""gridedge meter firmware entry point (MicroPython runs /main.py after boot).

Offers the installer console for a few seconds after boot (press Enter), then runs the
meter application until power-off. The console runs before the hardware watchdog starts.
A missing device key or board file sends the device to the console instead of looping;
leaving that console tries to start again, so a fix made there (key generate, save, exit)
starts the meter without a reset.
"""

FIRMWARE_VERSION = "0.1.0"


def main():
    from gemeter import console

    print("gridedge firmware %s" % FIRMWARE_VERSION)
    if console.boot_window():
        console.run()
    from gemeter.app import App

    while True:  # leaving the console tries again: the installer may have fixed it there
        try:
            app = App()
            break
        except (OSError, ValueError, RuntimeError) as e:
            print("gridedge: cannot start: %s" % e)
            if console.run().eof:
                return
    app.run()


main()
