"""gemeter: the gridedge meter firmware (MicroPython): protocol, drivers, sampler, links.

Why the name: it is the package's folder on every board (/gemeter), a prefix of every
module's qualified name, and a string kept in RAM (a qstr) and in each compiled .mpy, so
it is short; "ge" for gridedge, "meter" for what runs it, and distinct from anything a
MicroPython port or micropython-lib ships (a generic "meter" or "firmware" could shadow
or be shadowed). Its modules are named for their layer, as on the gateway: framing.py
here and gateway/framing.py there are the two ends of the serial link's framing.
"""


def unload(names):
    """Forget modules of this package, e.g. ``unload(("console",))``: their heap is freed
    once nothing refers to anything they made. A meter builds itself with modules it then
    unloads (gemeter/start.py), and main.py unloads the console before the meter runs."""
    import sys

    package = sys.modules["gemeter"]
    for name in names:
        sys.modules.pop("gemeter." + name, None)
        try:
            delattr(package, name)
        except (AttributeError, KeyError):  # MicroPython: KeyError for a missing one
            pass
