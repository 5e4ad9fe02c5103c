"""CPython stand-in for MicroPython's ``usocket`` as umqtt.simple uses it (tests only).

MicroPython sockets are streams with read(n)/write(buf); CPython's have recv/sendall.
"""

import socket as _socket

getaddrinfo = _socket.getaddrinfo
AF_INET = _socket.AF_INET
SOCK_STREAM = _socket.SOCK_STREAM


class socket(_socket.socket):
    def __init__(self, family=_socket.AF_INET, type=_socket.SOCK_STREAM, proto=0):
        super().__init__(family, type, proto)

    def read(self, n):
        data = b""
        while len(data) < n:
            try:
                chunk = self.recv(n - len(data))
            except BlockingIOError:  # MicroPython: a non-blocking read with nothing is None
                if data:
                    raise
                return None
            if not chunk:
                return data
            data += chunk
        return data

    def write(self, buf, n=None):
        data = bytes(buf if n is None else buf[:n])
        self.sendall(data)
        return len(data)
