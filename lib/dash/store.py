"""Atomic, checksummed JSON records on flash (littlefs on ESP32, the unix port's directory).

Each record is one file: its JSON, a newline, `#`, a checksum in hex, a space and the record's
sequence number (one more at each write of it). The checksum is the CRC-32 of the JSON, carried
on over the sequence number's digits, so neither can change unnoticed. A write goes to
`<name>.tmp`, is closed (durable on littlefs), then renamed over the record (one atomic
littlefs commit), so a power cut leaves the old record or the new one, never a mix. A whole
`.tmp` left by a cut before the rename is the new one, and `load` takes it, but only when its
sequence number says it is newer than the record: a stale one (a copy, a failed rename long
ago) is removed. A record that is missing, truncated or fails its checksum reads as None; the
caller picks a safe default. (Records written before sequence numbers end at the checksum and
count as number 0.)
A record identical to the last one written or read is not written again. A record is written
an item at a time, never built whole in memory (a 2 KB token would otherwise be copied three
times over while saving it).

`pack`/`unpack` are the same encoding for the RTC memory (`platform.RtcMem`).
"""

import json
import os
from binascii import crc32

from micropython import const

from dash.check import printable

_MAX = const(8192)  # no record of ours is larger; anything bigger is not ours
_TAIL = const(b"\n#%08x %d\n")  # after the JSON: the checksum, the sequence number


def _pieces(obj):
    """The JSON of a dict, one top-level item at a time (as json.dumps would write it). A long
    string that needs no escaping (a token) goes out as it is: saving it takes no copy of it,
    so saving a rotated refresh token needs no memory beyond what holds it."""
    sep = "{"
    for k, v in obj.items():
        yield sep
        yield json.dumps(k)
        yield ": "
        if isinstance(v, str) and len(v) > 64 and printable(v) and '"' not in v and "\\" not in v:
            yield '"'
            yield v
            yield '"'
        else:
            yield json.dumps(v)
        sep = ", "
    yield "{}" if sep == "{" else "}"


def _tail(crc, seq):
    return _TAIL % (crc32(b"%d" % seq, crc), seq)


def pack(obj):
    """(record bytes, CRC of the JSON) of a dict (number 0: the RTC memory keeps one)."""
    body = json.dumps(obj).encode()
    crc = crc32(body)
    return body + _tail(crc, 0), crc


def unpack(raw):
    """(dict, CRC of the JSON, sequence number) from record bytes, or (None, 0, 0) when
    truncated, corrupt or not ours."""
    cut = raw.rfind(b"\n#")
    if cut < 0:
        return None, 0, 0
    body = raw[:cut]
    crc = crc32(body)
    try:
        tail = raw[cut + 2 :].split()
        seq = int(tail[1]) if len(tail) > 1 else 0
        if int(tail[0], 16) != (crc32(b"%d" % seq, crc) if len(tail) > 1 else crc):
            return None, 0, 0
        obj = json.loads(body)
    except (ValueError, IndexError):
        return None, 0, 0
    return (obj, crc, seq) if isinstance(obj, dict) else (None, 0, 0)


def _read(path):
    """(dict, CRC, sequence number) of the record at `path`, or (None, 0, 0)."""
    try:
        size = os.stat(path)[6]
        if size > _MAX:
            return None, 0, 0  # not ours
        with open(path, "rb") as f:
            raw = f.read(size)  # no buffer bigger than the record
    except OSError:
        return None, 0, 0
    return unpack(raw)


def replace(path, text):
    """A plain file (config.json, secrets.json) replaced atomically: written to `.tmp`, closed,
    renamed over it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


class Store:
    def __init__(self, root="."):
        self.root = root
        self.writes = 0  # flash writes since boot, for tests and benchmarks
        self.bytes = 0
        self._crc = {}  # name: CRC of the JSON last written or read (unchanged: not written)
        self._seq = {}  # name: its sequence number

    def _path(self, name):
        return self.root + "/" + name

    def load(self, name):
        """The record as a dict, or None when it is missing or corrupt. A whole `.tmp` newer
        than the record (its sequence number) is a write the power cut between its close and
        its rename (a rotated refresh token LwA already holds, say): it is taken, and renamed
        into place now. Any other `.tmp` is removed."""
        path = self._path(name)
        tmp = path + ".tmp"
        obj, crc, seq = _read(path)
        t_obj, t_crc, t_seq = _read(tmp)
        try:
            if t_obj is not None and (obj is None or t_seq > seq):
                obj, crc, seq = t_obj, t_crc, t_seq
                os.rename(tmp, path)
            elif self.exists(name + ".tmp"):
                os.remove(tmp)
        except OSError:
            pass
        if obj is not None:
            self._crc[name] = crc
            self._seq[name] = seq
        return obj

    def save(self, name, obj):
        """Write atomically unless unchanged. Returns True when it wrote."""
        crc = 0
        for piece in _pieces(obj):  # a first pass for the checksum: is it the same record?
            crc = crc32(piece, crc)
        if self._crc.get(name) == crc:
            return False
        path = self._path(name)
        tmp = path + ".tmp"
        seq = self._seq.get(name, 0) + 1
        self._seq[name] = seq  # a .tmp that stays is newer than the record, older than the next
        n = 0
        with open(tmp, "wb") as f:
            for piece in _pieces(obj):
                n += f.write(piece)
            n += f.write(_tail(crc, seq))
        try:
            os.rename(tmp, path)
        except OSError:
            # The whole .tmp stays and `load` would take it: the next save of any record,
            # even the one on flash now, must write and rename again.
            self._crc.pop(name, None)
            raise
        self._crc[name] = crc
        self.writes += 1
        self.bytes += n
        return True

    def remove(self, name):
        self._crc.pop(name, None)
        self._seq.pop(name, None)
        for p in (self._path(name), self._path(name) + ".tmp"):
            try:
                os.remove(p)
            except OSError:
                pass

    def exists(self, name):
        try:
            os.stat(self._path(name))
            return True
        except OSError:
            return False
