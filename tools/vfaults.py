"""Fault points for tools/faults.py: the operations of the firmware where a power cut matters,
numbered as they happen. Runs under `micropython`, imported by tools/vdevice.py before the
App is built, and only when VDEVICE_FAULTS is set (so `make bench` weighs none of it).

Nothing in lib/ is touched: the wrappers are put in at run time.
- Flash, in the device's directory (relative paths): `open` for writing (builtins.open), each
  `write` through the file it returned, its `close`; `os.rename` and `os.remove` (`os` is a
  stand-in module in sys.modules, so every later `import os` gets it). dash.store,
  dash.provision and dash.platform.RtcMem (rtc.bin) write that way.
- The network, in dash.https: `send` and `recv` are module attributes the transport looks up
  at call time, and `Https.request` a class attribute. The points of one request: "net-out"
  before its first byte leaves (its first send: the TLS handshake goes with it), "net-sent"
  when it was sent whole (its first recv), "net-got" after the first byte of the answer came,
  "net-done" after the answer was read whole (request returned).

Each point has a running number N and a name: the operation and the file, or host/path.
VDEVICE_FAULTS=count prints "@point N MS NAME" for each (MS: the device's clock, in ms) and
"@answer MS NAME OUTCOME" when a request ends (a status, or the exception's name);
VDEVICE_FAULTS=kill:N prints "@kill N NAME" at point N and then waits for the host to kill
the process (SIGKILL: the unix port may have no os.kill). The wrappers build no string unless
they print one.
"""

import builtins
import os
import sys
import time

_mode = os.getenv("VDEVICE_FAULTS") or ""
_count = _mode == "count"
_kill = int(_mode[5:]) if _mode.startswith("kill:") else 0
_n = 0
_clock = None  # the App's clock, once it is built


def _ms():
    return _clock.ticks_ms() if _clock is not None else -1


def _point(op, name, extra=""):
    global _n
    _n += 1
    if _count:
        print("@point %d %d %s %s%s" % (_n, _ms(), op, name, extra))
    elif _n == _kill:
        print("@kill %d %s %s%s" % (_n, op, name, extra))
        while True:  # the host cuts the power now
            time.sleep(1)


def _ours(path):
    return isinstance(path, str) and not path.startswith("/")


def _short(path):
    return path[2:] if path.startswith("./") else path


# -- flash ----------------------------------------------------------------------------------

_open = builtins.open


class _File:
    """A file open for writing, each write and the close a point first."""

    def __init__(self, f, name):
        self.f = f
        self.name = name
        self.k = 0

    def write(self, data):
        self.k += 1
        _point("write", self.name, " #%d" % self.k if _count or _n + 1 == _kill else "")
        return self.f.write(data)

    def close(self):
        if self.f is not None:
            _point("close", self.name)
            self.f.close()
            self.f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def _wrapped_open(path, mode="r", *args, **kw):
    if _ours(path) and ("w" in mode or "a" in mode or "+" in mode):
        name = _short(path)
        _point("open", name)
        return _File(_open(path, mode, *args, **kw), name)
    return _open(path, mode, *args, **kw)


builtins.open = _wrapped_open


class _Os:
    """The os module with rename and remove as points (its own attributes cannot be set)."""


_real_os = os
_os = _Os()
for _k in dir(os):
    if not _k.startswith("__"):
        setattr(_os, _k, getattr(os, _k))


def _rename(a, b):
    if _ours(a):
        _point("rename", _short(a), " " + _short(b))
    return _real_os.rename(a, b)


def _remove(path):
    if _ours(path):
        _point("remove", _short(path))
    return _real_os.remove(path)


_os.rename = _rename
_os.remove = _remove
sys.modules["os"] = _os
for _m in list(sys.modules.values()):  # modules loaded already (none of the device's, as a rule)
    if _m is not _os and getattr(_m, "os", None) is os:
        try:
            _m.os = _os
        except (AttributeError, TypeError):
            pass


# -- the network ----------------------------------------------------------------------------

import dash.https as _https  # noqa: E402  (after os: it would keep the real one otherwise)

_send = _https.send
_recv = _https.recv
_request = _https.Https.request
_phase = 0  # of the request under way: 0 none, 1 begun, 2 bytes out, 3 sent whole, 4 answering
_target = ""


def _str(x):
    return x if isinstance(x, str) else str(x, "utf-8")


def _send_point(s, data, limits):
    global _phase
    if _phase == 1:
        _phase = 2
        _point("net-out", _target)
    return _send(s, data, limits)


def _recv_point(s, mv, limits):
    global _phase
    if _phase == 2:
        _phase = 3
        _point("net-sent", _target)
    got = _recv(s, mv, limits)
    if got and _phase == 3:
        _phase = 4
        _point("net-got", _target)
    return got


def _request_points(self, method, host, port, path, *args, **kw):
    global _phase, _target
    p = _str(path)
    if p.startswith("/getOrderInfo/"):
        p = "/getOrderInfo/"  # the event id differs from run to run; the name must not
    _target = _str(host) + p
    _phase = 1
    try:
        ans = _request(self, method, host, port, path, *args, **kw)
    except BaseException as e:
        _phase = 0
        if _count:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else ""
            print("@answer %d %s %s%s" % (_ms(), _target, type(e).__name__, code))
        raise
    _phase = 0
    if _count:
        print("@answer %d %s %d" % (_ms(), _target, ans[0]))
    _point("net-done", _target)
    return ans


_https.send = _send_point
_https.recv = _recv_point
_https.Https.request = _request_points


# -- the clock, for the stamps ----------------------------------------------------------------

import dash.app as _app  # noqa: E402

_init = _app.App.__init__


def _app_init(self, *args, **kw):
    global _clock
    _init(self, *args, **kw)
    _clock = self.clock


_app.App.__init__ = _app_init
