"""gridedge meter firmware entry point (MicroPython runs /main.py after boot).

Offers the installer console for a few seconds after boot (press Enter), then runs the
meter application until power-off. The console runs before the hardware watchdog starts.
A missing device key or board file sends the device to the console instead of looping.
"""

FIRMWARE_VERSION = "0.1.0"


def main():
    from gemeter import console

    print("gridedge firmware %s" % FIRMWARE_VERSION)
    if console.boot_window():
        console.run()
    from gemeter.app import App

    try:
        app = App()
    except (OSError, ValueError, RuntimeError) as e:
        print("gridedge: cannot start: %s" % e)
        console.run()
        return
    app.run()


main()
