"""The meter's figures, for tests, benchmarks and a run with a cycle limit (App.stats).

In a module of its own, loaded only when asked: the names and code of a report read once
at the end of a run need not sit in a running meter's heap. ``heap_live_*`` are the live
heap after each report's collection (first; min and max after two warm-up reports),
``heap_free_min`` the least free heap seen there, ``busy_us_*`` the time each loop
iteration took, ``commands_*`` what the command path refused and dropped.
"""


def stats(app):
    cycles = max(1, app.sampler.cycles)
    return {
        "cycles": app.sampler.cycles,
        "frames": app.seq,
        "boot": app.boot,
        "dropped": app.ring.dropped,
        "unsent": len(app.ring),  # still in the ring when the run ended
        "heap_live_first": app.heap_live[0],
        "heap_live_min": app.heap_live[1],
        "heap_live_max": app.heap_live[2],
        "heap_free_min": app.heap_free_min,
        "busy_us_mean": app.busy_us[0] // cycles,
        "busy_us_max": app.busy_us[1],
        "state_writes": app.state.writes,
        "link_sent": app.link.sent if app.link else 0,
        "link_connects": getattr(app.link, "connects", 0),
        "link_failures": getattr(app.link, "failures", 0),
        "link_error": repr(getattr(app.link, "last_error", None)),
        "commands_refused": app.ctl[1],
        "commands_dropped": getattr(app.link, "dropped_commands", 0),
    }
