"""CRC-32 (IEEE 802.3) in software, for ports built without binascii.crc32.

MICROPY_PY_BINASCII_CRC32 is opt-in and off on some ports; framing.py imports this module
only there, so a board that has the built-in never holds this table or code.
"""

# CRC-32 (IEEE, reflected, poly 0xEDB88320) with a 16-entry nibble table: 64 bytes of
# table instead of 1 KiB, used where the port is built without binascii.crc32 (it is an
# opt-in, MICROPY_PY_BINASCII_CRC32, off on some ports).
_NIBBLE = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158,
    0x5005713C, 0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4,
    0xA00AE278, 0xBDBDF21C,
)


def crc32_soft(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        crc = (crc >> 4) ^ _NIBBLE[crc & 0x0F]
        crc = (crc >> 4) ^ _NIBBLE[crc & 0x0F]
    return crc ^ 0xFFFFFFFF
