"""The simulated device's commands beyond run/status/exit (tools/vdevice.py), and its
measurements for `make bench` and the allocation test. Runs under `micropython`, imported by
vdevice only when one of these commands is used, so the harness weighs as little as it can in
the heap figures."""

import json

from dash import fsm


def command(app, clock, ok, cmd, line, hog):
    """One command line (split into `cmd`); prints its '@' answer."""
    name = cmd[0]
    if name == "challenge" and ok:
        out = app.provision("give_challenge")
    elif name == "register" and ok and len(cmd) == 2:
        out = app.provision("register", cmd[1])
    elif name == "deregister" and ok:
        out = app.provision("deregister")
    elif name == "relay" and ok:
        try:
            msg = json.loads(line[len("relay") :])
        except ValueError:
            msg = None
        out = app.provision("relay", msg)
    elif name == "link-wait" and app.link is not None:
        out = link_wait(app, int(cmd[1]), int(cmd[2]) if len(cmd) > 2 else 1)
    elif name == "steady" and ok and len(cmd) == 2:
        out = steady(app, clock, int(cmd[1]))
    elif name == "cycle" and ok:
        out = cycle(app, clock, cmd[-1] == "cold")
    elif name == "meminfo":
        out = meminfo()
    elif name == "wdt" and app.wdt is not None:
        out = {"feeds": app.wdt.feeds, "max_gap_ms": app.wdt.max_gap}
    elif name == "hog" and len(cmd) == 2:
        import gc

        hog.extend(bytearray(480) for _ in range(int(cmd[1]) * 2))
        gc.collect()
        out = {"free": gc.mem_free()}
    else:
        name, out = "error", {"unknown": name}
    print("@%s %s" % (name, json.dumps(out)))


class GapWatchdog:
    """machine.WDT as the firmware uses it, on the unix port: it resets nothing, and keeps
    the longest real time between two feeds (from when it was armed)."""

    def __init__(self):
        import time

        self._ticks = time.ticks_ms
        self._diff = time.ticks_diff
        self.last = time.ticks_ms()
        self.feeds = 0
        self.max_gap = 0

    def feed(self):
        now = self._ticks()
        self.max_gap = max(self.max_gap, self._diff(now, self.last))
        self.last = now
        self.feeds += 1


class _Held:
    """Replays one reading without touching a file: the allocation-free stand-in for an ADC
    (the unix port's file sensor must open a file, which allocates)."""

    def __init__(self, value):
        self.value = value

    def read(self):
        return self.value


def _steps(app, clock, n):
    i = 0
    while i < n:  # no range object: the loop itself must not allocate
        clock.t = clock.due
        clock.due += app.step()
        if app.link is not None:
            app.link.service()
        i += 1


def link_wait(app, ms, n):
    """Real time passes here (virtual time does not): what the broker sends arrives."""
    import time

    link = app.link
    want = link.commands + n
    t0 = time.ticks_ms()
    while link.commands < want and time.ticks_diff(time.ticks_ms(), t0) < ms:
        if app.link is not None:
            app.link.service()
        time.sleep_ms(5)
    return {"commands": link.commands, "arrived": link.commands >= want}


def steady(app, clock, n):
    import gc

    import micropython

    saved = [sl.sensor for sl in app.slots]
    for sl in app.slots:
        sl.sensor = _Held(sl.sensor.read())
    # Bytes left allocated on the heap (garbage the GC must later find). Python frames too big
    # for the C stack are heap-allocated and freed on return; mem_total counts those too.
    gc.collect()
    gc.disable()
    before, total = gc.mem_alloc(), micropython.mem_total()
    _steps(app, clock, n)
    alloc, total = gc.mem_alloc() - before, micropython.mem_total() - total
    gc.enable()
    locked = True
    micropython.heap_lock()
    try:
        _steps(app, clock, n)
    except MemoryError:
        locked = False
    finally:
        micropython.heap_unlock()
    for i, sl in enumerate(app.slots):
        sl.sensor = saved[i]
    return {"steps": n, "alloc_bytes": alloc, "frame_bytes": total, "heap_locked_ok": locked}


def cycle(app, clock, cold):
    import time

    done = (fsm.ORDERED, fsm.INPROGRESS, fsm.RETRY, fsm.SUSPENDED, fsm.UNSUBSCRIBED)
    for _ in range(200):
        if cold:
            app.tokens.access = None  # before every step: the one that orders must refresh
        warm = app.tokens.valid()
        was = [sl.fsm.state for sl in app.slots]
        hs, wr, by = app.https.handshakes, app.store.writes, app.store.bytes
        clock.t = clock.due
        t0 = time.ticks_us()
        clock.due += app.step()
        us = time.ticks_diff(time.ticks_us(), t0)
        t0 = time.ticks_us()
        if app.link is not None:  # the cloud link's turn, if there is one
            app.link.service()
        link_us = time.ticks_diff(time.ticks_us(), t0)
        for i, sl in enumerate(app.slots):
            if sl.fsm.state in done and was[i] not in done:
                return {
                    "state": fsm.name(sl.fsm.state),
                    "ms": us / 1000,
                    "link_ms": link_us / 1000,
                    "handshakes": app.https.handshakes - hs,
                    "writes": app.store.writes - wr,
                    "bytes": app.store.bytes - by,
                    "token_was_valid": warm,
                }
    return {"state": "none"}


def meminfo():
    import gc
    import sys

    import micropython

    gc.collect()
    free = gc.mem_free()
    # mem_info() prints "... max free sz: N" in blocks; a block is free/total blocks apart.
    micropython.mem_info()
    micropython.qstr_info()  # "qstr pool: ... n_qstr=N, ... n_total_bytes=N"
    mods = sorted(m[5:] for m in sys.modules if m.startswith("dash."))
    return {"free": free, "alloc": gc.mem_alloc(), "modules": mods}
