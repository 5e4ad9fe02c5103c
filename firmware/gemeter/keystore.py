"""The device key: 32 random bytes in /key.bin, never printed, shown only as a fingerprint.

``generate`` takes bytes from os.urandom (the hardware RNG on ESP32 and RP2040); ``set_hex``
accepts a key made by the gateway's registry. The file is written atomically. Nothing in
the firmware prints the key; the console shows its ``fingerprint`` instead (here, with the
console's and the start's code: the meter's loop never needs it).
"""

import os


KEY_LEN = 32


def _write(path, key):
    # config.py's atomic_write, imported only to write: the command code reads the key
    # for every command, and config's 4 KB of code would be loaded with it each time.
    from gemeter.config import atomic_write

    atomic_write(path, key)


def fingerprint(key):
    """Short public fingerprint of a key (first 8 bytes of SHA-256, hex) for logs and UIs."""
    import binascii
    import hashlib

    digest = hashlib.sha256(b"gridedge-key:" + bytes(key)).digest()
    return str(binascii.hexlify(digest[:8]), "ascii")


class KeyStore:
    def __init__(self, path="/key.bin"):
        self.path = path

    def load(self):
        """The key, or None if there is none (the device then refuses to send frames).
        A key file lost between the two steps of atomic_write's fallback (a filesystem
        that cannot rename over a file: remove, then rename) is taken from its complete
        temporary copy: a power cut there must not lock the meter out."""
        for path in (self.path, self.path + ".tmp"):
            try:
                with open(path, "rb") as f:
                    key = f.read()
            except OSError:
                continue
            if len(key) == KEY_LEN:
                return key
        return None

    def save(self, key):
        """Store a key (32 bytes) atomically: the rotated one a command brought."""
        if len(key) != KEY_LEN:
            raise ValueError("a key is %d bytes" % KEY_LEN)
        _write(self.path, bytes(key))

    def generate(self):
        key = os.urandom(KEY_LEN)
        _write(self.path, key)
        return fingerprint(key)

    def set_hex(self, text):
        """Store a key given as 64 hex digits; returns (fingerprint, None) or (None, problem)."""
        text = text.strip()
        if len(text) != 2 * KEY_LEN:
            return None, "key must be %d hex digits" % (2 * KEY_LEN)
        try:
            import binascii

            key = binascii.unhexlify(text)
        except ValueError:
            return None, "key must be hex digits 0-9 a-f"
        _write(self.path, key)
        return fingerprint(key), None

    def fingerprint(self):
        key = self.load()
        return None if key is None else fingerprint(key)
