"""gridedge meter firmware package (MicroPython): protocol, drivers, sampler, transports."""
