"""Where the heap goes: what each firmware module takes when it is imported, as .mpy files or
from a ROMFS image. Runs under `micropython`, for `make bench`:

    micropython vheap.py SOURCE RESIDENT PHASES

SOURCE is a directory holding dash/*.mpy, or a ROMFS image (*.romfs, loaded into the heap and
mounted as a board would map it); RESIDENT and PHASES are comma-separated module names. The
modules stock ESP32 firmware has frozen in (umqtt.simple), which cost no heap there, are
imported first and kept, each measured; then the resident modules, in that order, kept too;
each phase module is then imported on its own, measured with what it imports, and dropped, as
the firmware does. The qstr pools are grown beforehand, so that a module's figure is its own
objects, not a pool it happened to fill. Prints one JSON object of bytes:
{"frozen": {name: n}, "resident": {name: n}, "phases": {name: n}}.
"""

import gc
import json
import sys

FROZEN = ("umqtt.simple",)


def _import(name):
    gc.collect()
    before = gc.mem_alloc()
    __import__(name if "." in name else "dash." + name)
    gc.collect()
    return gc.mem_alloc() - before


def main():
    source, resident, phases = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
    if source.endswith(".romfs"):
        import os

        import vfs

        img = bytearray(os.stat(source)[6])
        with open(source, "rb") as f:
            f.readinto(img)
        vfs.mount(vfs.VfsRom(img), "/rom")
        source = "/rom"
    sys.path.insert(0, source)
    # What the firmware itself imports from MicroPython, so it is in nobody's figure.
    import binascii  # noqa: F401
    import socket  # noqa: F401

    import tls  # noqa: F401

    for i in range(1400):
        exec("_q%d = 0" % i, {})
    out = {"frozen": {}, "resident": {}, "phases": {}}
    for name in FROZEN:
        out["frozen"][name] = _import(name)
    for name in resident:
        out["resident"][name] = _import(name)
    from dash.app import drop  # resident by now

    for name in phases:
        had = set(sys.modules)
        out["phases"][name] = _import(name)
        for mod in set(sys.modules) - had:
            if mod.startswith("dash."):
                drop(mod[5:])  # as the firmware drops a phase
    print(json.dumps(out))


main()
