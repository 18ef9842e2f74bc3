"""Measurements inside the simulated device, for `make bench` and the allocation test. Runs
under `micropython`, imported by tools/vdevice.py only when one of its commands is used, so
the harness weighs as little as it can in the heap figures."""

from dash import fsm


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
        i += 1


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
            app.tokens.invalidate()  # before every step: the one that orders must refresh
        warm = app.tokens.valid()
        was = [sl.fsm.state for sl in app.slots]
        hs, wr, by = app.https.handshakes, app.store.writes, app.store.bytes
        clock.t = clock.due
        t0 = time.ticks_us()
        clock.due += app.step()
        us = time.ticks_diff(time.ticks_us(), t0)
        for i, sl in enumerate(app.slots):
            if sl.fsm.state in done and was[i] not in done:
                return {
                    "state": fsm.NAMES[sl.fsm.state],
                    "ms": us / 1000,
                    "handshakes": app.https.handshakes - hs,
                    "writes": app.store.writes - wr,
                    "bytes": app.store.bytes - by,
                    "token_was_valid": warm,
                }
    return {"state": "none"}


def meminfo():
    import gc

    import micropython

    gc.collect()
    free = gc.mem_free()
    # mem_info() prints "... max free sz: N" in blocks; a block is free/total blocks apart.
    micropython.mem_info()
    return {"free": free, "alloc": gc.mem_alloc()}
