"""firmware/gemeter/ring.py: the frames waiting for the link, bounded, oldest dropped first and
counted. Under CPython and MicroPython (``fw``), with stand-ins for drivers and the frame
builder.
"""

from __future__ import annotations

import random

from tests.support.fwrunner import FirmwareRunner


def test_ring_drops_the_oldest_and_counts_it(fw: FirmwareRunner) -> None:
    """A random sequence of pushes and pops against a model (a list bounded to the size)."""
    rng = random.Random(7)
    ops = [rng.choice(["push", "push", "pop", "peek"]) for _ in range(400)]
    out = fw.run_code("""
from gemeter.ring import FrameRing
req = json.loads(sys.stdin.read())
r = FrameRing(5)
seen = []
for i, op in enumerate(req["ops"]):
    if op == "push":
        r.push(i)
        seen.append(len(r))
    elif op == "pop":
        seen.append(r.pop())
    else:
        seen.append(r.peek())
try:
    FrameRing(0)
    zero = "accepted"
except ValueError:
    zero = "refused"
print(json.dumps({"seen": seen, "dropped": r.dropped, "len": len(r), "zero": zero}))
""", {"ops": ops})
    model: list[int] = []
    seen: list[int | None] = []
    dropped = 0
    for i, op in enumerate(ops):
        if op == "push":
            if len(model) == 5:
                model.pop(0)
                dropped += 1
            model.append(i)
            seen.append(len(model))
        elif op == "pop":
            seen.append(model.pop(0) if model else None)
        else:
            seen.append(model[0] if model else None)
    assert out["seen"] == seen and out["dropped"] == dropped > 0 and out["len"] == len(model)
    assert out["zero"] == "refused"
