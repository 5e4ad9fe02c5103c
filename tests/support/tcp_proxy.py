"""A TCP proxy that can freeze its connections: a half-open link for uplink tests.

``freeze()`` stops forwarding on every connection open at that moment, in both
directions, without closing anything - what a NAT box that forgot the flow or a dead
mobile link looks like to both ends. Connections made afterwards work normally.
"""

from __future__ import annotations

import select
import socket
import threading

from tests.support.brokers import free_port


class FreezableProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.connections = 0
        self._frozen: set[int] = set()
        self._live: list[tuple[int, socket.socket, socket.socket]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.connections += 1
                n = self.connections
                self._live.append((n, client, upstream))
            threading.Thread(target=self._pump, args=(n, client, upstream),
                             daemon=True).start()

    def _pump(self, n: int, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        while not self._stop.is_set():
            if n in self._frozen:
                self._stop.wait(0.05)
                continue
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for s in ready:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    a.close()
                    b.close()
                    return
                peer[s].sendall(data)

    def freeze(self) -> None:
        with self._lock:
            self._frozen |= {n for n, _, _ in self._live}

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        with self._lock:
            for _, a, b in self._live:
                a.close()
                b.close()
