"""Serial link to the gateway: COBS + CRC-32 frames on a UART, both ways, or up the USB CDC port.

Up: the link has no acknowledgements (the gateway de-duplicates and reports gaps), so a
frame counts as sent once written. It opens with one 0x00 so that a gateway which saw a
partial frame before (a reboot mid-write) is in step for the first real one.

Down (commands, docs/protocol.md section 8): on a UART, when bytes have arrived, each
service call hands them to unframe.take, which splits them at the 0x00 delimiters into
``inbox`` (bounded: see unframe.py; what does not fit is counted in ``dropped_commands``
and the gateway sends it again). That code is loaded only when bytes come down, and
unloaded with the command code once the commands ran: a meter that gets none keeps only
this module's few lines in its heap. On the USB CDC port the link is up only: a 0x03
byte in a command would reach MicroPython's REPL as Ctrl-C (KeyboardInterrupt), and
switching that off (micropython.kbd_intr(-1)) would lock out mpremote and ``gridedge
flash``.
"""

from gemeter import framing


class SerialLink:
    def __init__(self, port):
        self.port = port  # a machine.UART, or a stream with write() (USB CDC: sys.stdout.buffer)
        self.sent = 0
        self.inbox = []  # COBS bodies: cmdrun decodes them (unframe.py)
        self.dropped_commands = 0
        # unframe.take's: the body being received, and whether it is skipped; None on
        # USB CDC (no any(): the link is up only, see the docstring).
        self.rx = [None, False] if hasattr(port, "any") else None
        self._out = bytearray()  # one encoded frame; keeps the size of the largest
        self.port.write(b"\x00")

    def service(self, ring):
        """Take in what came down, then send everything waiting in the ring."""
        if self.rx is not None and self.port.any():
            from gemeter import unframe

            unframe.take(self)
        while len(ring):
            self.port.write(framing.encode_into(self._out, ring.peek()))
            ring.pop()
            self.sent += 1
        return True

    @property
    def up(self):
        return True
