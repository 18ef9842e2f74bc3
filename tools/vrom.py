"""Starts the simulated device (tools/vdevice.py) with the device code and the harness both in a
ROMFS image, for `make bench`: VDEVICE_ROMFS names the image.

On a board the image is memory-mapped flash. Here it must sit in the heap; how much is passed
on to the harness, which reports it at boot, and the bench subtracts it. The harness goes into
the image too, so that the heap figure weighs the firmware, not the test harness standing in
for main.py.
"""

import gc
import os
import sys

import vfs

gc.collect()
_before = gc.mem_alloc()
_path = os.getenv("VDEVICE_ROMFS")
_img = bytearray(os.stat(_path)[6])
with open(_path, "rb") as _f:
    _f.readinto(_img)
vfs.mount(vfs.VfsRom(_img), "/rom")
sys.path.insert(0, "/rom")
gc.collect()
_heap = gc.mem_alloc() - _before

import vdevice  # noqa: E402  # from the image

vdevice.main(_heap)
