"""CPython alias of MicroPython's ustruct (tests only)."""

from struct import *  # noqa: F403
