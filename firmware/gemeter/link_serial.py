"""Serial link to the gateway: COBS + CRC-32 frames on a UART or the USB CDC port.

The link has no acknowledgements (the gateway de-duplicates and reports gaps), so a frame
counts as sent once written. It opens with one 0x00 so that a gateway which saw a partial
frame before (a reboot mid-write) is in step for the first real one.
"""

from gemeter import framing


class SerialLink:
    def __init__(self, port):
        self.port = port  # a machine.UART, or a stream with write() (USB CDC: sys.stdout.buffer)
        self.sent = 0
        self._out = bytearray()  # one encoded frame; keeps the size of the largest
        self.port.write(b"\x00")

    def service(self, ring):
        """Send everything waiting in the ring."""
        while len(ring):
            self.port.write(framing.encode_into(self._out, ring.peek()))
            ring.pop()
            self.sent += 1
        return True

    @property
    def up(self):
        return True
