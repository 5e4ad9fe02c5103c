# Drive a firmware update's steps on a device folder: gemeter/ota.py and boot.py as a board
# runs them, with an optional power cut.
# stdin: {"root": folder ("" ends in "/"), "steps": [[op, args], ...], "cut": n}
#   op: begin | chunk | status | confirm | give_up | boot; a chunk's "data" is hex.
#   cut: 0, or the number of the filesystem change (a rename, remove, mkdir, rmdir, an
#   open for writing or a write) before which the process prints CUT and stops, for the
#   test to kill -9 it there, as a power cut would.
# stdout: one JSON line: [result of each step], and "changes": how many changes were made.
import binascii
import json
import os
import sys
import time

import boot
from gemeter import ota

req = json.loads(sys.stdin.read())
count = [0]


def change():
    count[0] += 1
    if count[0] == req["cut"]:
        print("CUT %d" % count[0])
        time.sleep(120)  # the test kills the process here


class Fs:
    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        fn = getattr(self.real, name)
        if name not in ("rename", "remove", "mkdir", "rmdir"):
            return fn

        def changed(*args):
            change()
            return fn(*args)

        return changed


class File:
    def __init__(self, f):
        self.f = f

    def write(self, data):
        change()
        return self.f.write(data)

    def readinto(self, buf):
        return self.f.readinto(buf)

    def readline(self, *args):
        return self.f.readline(*args)

    def read(self, *args):
        return self.f.read(*args)

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def opened(path, mode="r"):
    if "w" in mode or "a" in mode:
        change()
        return File(open(path, mode))
    return open(path, mode)


for module in (boot, ota):
    module.os = Fs(os)
    module.open = opened

root = req["root"]
out = []
for op, args in req["steps"]:
    if op == "chunk":
        args = {"at": args["at"], "data": binascii.unhexlify(args["data"])}
    if op == "boot":
        out.append(boot.boot(root))
    elif op == "begin":
        out.append(list(ota.begin(root, args)))
    elif op == "chunk":
        out.append(list(ota.chunk(root, args)))
    elif op == "status":
        out.append(list(ota.status(root)))
    elif op == "confirm":
        out.append(ota.confirm(root))
    elif op == "give_up":
        out.append(ota.give_up(root, args))
print(json.dumps({"results": out, "changes": count[0]}))
