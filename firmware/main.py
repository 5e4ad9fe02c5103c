"""gridedge meter firmware entry point (MicroPython runs /main.py after boot).

Today this reports the firmware and protocol version and exits; the sampler, transports,
watchdog and installer console are wired in here by the firmware issue. It imports only
the gemeter package, so the same file runs on a board and under the unix port in tests.
"""

from gemeter import frame

FIRMWARE_VERSION = "0.1.0"


def main():
    print("gridedge firmware %s, protocol v%d" % (FIRMWARE_VERSION, frame.VERSION))


main()
