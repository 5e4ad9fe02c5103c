"""The relays' state as every frame carries it (key 10), for start.py and relay.py.

A module of its own, small: the start loads it to encode the state it drove the relays to,
and the names of a module stay in the heap once loaded (interned), so relay.py, whose
code runs only for commands, is not loaded for this.
"""
def encoded(relays):
    """The frames' key 10: {name: 1 closed | 0 open}, in deterministic CBOR (shorter names
    first, then bytewise), as bytes the frame builder appends as they are. Integers, not
    true/false: a gateway's strict reader takes no simple values in frames, and one that
    does not know key 10 then ignores it instead of rejecting the frame."""
    from gemeter.frame import head

    buf = bytearray(b"\x0a")
    head(buf, 5, len(relays))
    for name in sorted(relays, key=lambda n: (len(n), n)):
        head(buf, 3, len(name))
        buf.extend(name.encode())
        buf.append(1 if relays[name][2] else 0)
    return bytes(buf)

