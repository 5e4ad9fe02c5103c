"""A bounded ring of frames waiting for the link: oldest dropped first, every drop counted.

Frames are immutable bytes; the ring holds references in a list made once. ``peek`` and
``pop`` let a transport remove a frame only after it was delivered (a QoS 1 PUBACK), so a
frame is never lost between the two.
"""


class FrameRing:
    def __init__(self, size):
        if size < 1:
            raise ValueError("ring size must be at least 1")
        self._slots = [None] * size
        self._head = 0  # oldest
        self._len = 0
        self.dropped = 0

    def __len__(self):
        return self._len

    def push(self, item):
        size = len(self._slots)
        if self._len == size:  # full: the oldest frame makes room
            self._slots[self._head] = None
            self._head = (self._head + 1) % size
            self._len -= 1
            self.dropped += 1
        self._slots[(self._head + self._len) % size] = item
        self._len += 1

    def peek(self):
        return self._slots[self._head] if self._len else None

    def pop(self):
        if not self._len:
            return None
        item = self._slots[self._head]
        self._slots[self._head] = None
        self._head = (self._head + 1) % len(self._slots)
        self._len -= 1
        return item
