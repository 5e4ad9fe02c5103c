"""gridedge host tools: flashing, provisioning, MicroPython dependency fetcher, emulators."""
