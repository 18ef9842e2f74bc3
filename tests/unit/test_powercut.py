"""Power cuts during a Store write, on a real littlefs2 (vfs.VfsLfs2) over a RAM block device
that stops accepting writes after k block writes, for every k until the write completes."""

import vfs

from dash.store import Store

_BS = 256
_N = 64
MNT = "/_lfs"


class CuttableRam:
    def __init__(self):
        self.data = bytearray(_BS * _N)
        self.budget = -1  # writes left before the power goes; -1 = unlimited

    def readblocks(self, n, buf, off=0):
        # No slicing: littlefs may call this with the heap locked.
        base = n * _BS + off
        d = self.data
        for i in range(len(buf)):
            buf[i] = d[base + i]

    def writeblocks(self, n, buf, off=None):
        if self.budget == 0:
            raise OSError(5)  # EIO: the power is gone
        if self.budget > 0:
            self.budget -= 1
        base = n * _BS + (off or 0)
        d = self.data
        for i in range(len(buf)):
            d[base + i] = buf[i]

    def ioctl(self, op, arg):
        if op == 4:
            return _N
        if op == 5:
            return _BS
        if op == 6:
            return 0
        return None


def _mount(bd):
    try:
        vfs.umount(MNT)
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(bd), MNT)


def test_every_cut_leaves_old_or_new_state():
    bd = CuttableRam()
    vfs.VfsLfs2.mkfs(bd)
    _mount(bd)
    old = {"st": 4, "ev": "amzn1.old" + "x" * 200, "att": 0}
    new = {"st": 5, "ev": "amzn1.new" + "y" * 200, "att": 1, "dr": 21600}
    Store(MNT).save("state.json", old)
    image = bytes(bd.data)
    outcomes = {"old": 0, "new": 0}
    k = 0
    while True:
        bd = CuttableRam()
        bd.data[:] = image
        _mount(bd)
        bd.budget = k
        done = False
        try:
            Store(MNT).save("state.json", new)
            done = True
        except OSError:
            pass
        # The reboot: what the flash holds now, in a device of its own. The powered-off one
        # stays dead: a file object of the cut write, finalised by a later collection, must
        # not write into the flash the next boot reads (nothing runs after a real power cut).
        after = CuttableRam()
        after.data[:] = bd.data
        bd.budget = 0
        _mount(after)
        got = Store(MNT).load("state.json")
        assert got in (old, new), (k, got)
        outcomes["old" if got == old else "new"] += 1
        if done:
            break
        k += 1
    vfs.umount(MNT)
    print("  power cuts: %d left the old record, %d the new" % (outcomes["old"], outcomes["new"]))
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
