"""Read a SQLite write-ahead log as SQLite will, and count the commits it would silently drop.

SQLite replays a WAL frame by frame and stops at the first frame whose salts differ from
the header's or whose cumulative checksum fails (sqlite.org/fileformat2.html, "The WAL
File Format"). Everything after that point is discarded without a word: one flipped byte
in the WAL of the gateway's store dropped 120 of 200 committed records and rolled back the
de-duplication marks. Each frame header stores the checksum the writer computed, so a
frame can be checked on its own against its predecessor's stored checksum: ``inspect``
finds the commit frames that were written intact in the current WAL generation but lie
beyond SQLite's replay point. Those are lost transactions; a torn tail (a transaction cut
off by a power cut, never acknowledged) is not. Pure logic over bytes: the store decides
what to do about it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = 32
FRAME_HEADER = 24
MAGIC_LE, MAGIC_BE = 0x377F0682, 0x377F0683  # the low bit: checksum words are big-endian


@dataclass(frozen=True, slots=True)
class WalReport:
    frames: int  # whole frames in the file
    replayed: int  # frames SQLite will apply (up to and including its last valid commit)
    lost_commits: int  # intact commit frames of this generation that SQLite will drop
    header_ok: bool

    @property
    def damaged(self) -> bool:
        return self.lost_commits > 0


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def inspect(wal: bytes) -> WalReport:
    """What SQLite will make of this WAL, and what it will lose."""
    if len(wal) < HEADER:
        return WalReport(0, 0, 0, header_ok=len(wal) == 0)
    magic, _version, page_size, _ckpt, salt1, salt2, c0, c1 = struct.unpack(">8I", wal[:HEADER])
    if magic not in (MAGIC_LE, MAGIC_BE) or page_size < 512 or page_size & (page_size - 1):
        return WalReport(0, 0, 0, header_ok=False)
    big = bool(magic & 1)
    header_ok = _checksum(wal[:24], 0, 0, big) == (c0, c1)
    size = FRAME_HEADER + page_size
    frames = (len(wal) - HEADER) // size
    replayed = 0
    broken = not header_ok  # SQLite ignores every frame of a WAL whose header fails
    lost = 0
    seed = (c0, c1)
    for i in range(frames):
        at = HEADER + i * size
        head = wal[at:at + FRAME_HEADER]
        _page, commit, f_salt1, f_salt2, f0, f1 = struct.unpack(">6I", head)
        ours = (f_salt1, f_salt2) == (salt1, salt2)
        intact = ours and _checksum(head[:8] + wal[at + FRAME_HEADER:at + size],
                                    *seed, big) == (f0, f1)
        seed = (f0, f1)  # the next frame was computed from what this one stores
        if not broken and intact:
            if commit:
                replayed = i + 1
            continue
        broken = True
        if intact and commit:
            lost += 1
    return WalReport(frames, replayed, lost, header_ok)
