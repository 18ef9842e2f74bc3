"""A device on the unix port with a virtual clock, driven line by line over stdin.

Runs under `micropython` (not CPython) with the working directory as the device's flash and
MICROPYPATH pointing at the repo's lib/. The firmware is the real one; only time is virtual,
so tests and `make sim` can live through weeks in seconds. Commands, one per line:
  run MS     advance virtual time by MS milliseconds, stepping the app whenever it is due,
             and giving the cloud link its turn (Link.service) after each step
  status     print the app's status
  challenge  print the PKCE challenge for the registration page
  register CODE    exchange an authorization code for tokens
  deregister       end the registration and forget every token
  relay JSON       hand the app a DRS notification relayed by the maker's cloud
  link-wait MS [N] the cloud link's turns, for up to MS real milliseconds, until N (1)
                   more messages have come on the command topic
  cycle [cold]     step until an order is placed; the real time, TLS handshakes and flash
                   writes of the step that placed it ("cold": the access token expired first)
  meminfo    the heap after a collection: free bytes and the largest free block
  wdt        the fake watchdog's feeds and the longest real time between two (VDEVICE_WDT)
  hog KB     keep KB of heap taken, in small pieces (as the maker's own code would): less
             room for the firmware from here on
  steady N   N steps with each sensor holding its reading: bytes left allocated, then the
             same N steps under micropython.heap_lock() (any allocation fails them)
  exit
Answers start with '@'; everything else on stdout is the firmware's own log.
Environment: VDEVICE_WALL = Unix seconds at start (0 = wall clock unknown); VDEVICE_LIVE
set: real time passes inside each step (see VirtualClock); VDEVICE_WDT set: a fake watchdog
that measures the longest real time between feeds (`wdt` says it); VDEVICE_FAULTS set: the fault
points of tools/faults.py (tools/vfaults.py, loaded only then). From a ROMFS
image (device code and this harness), it is started by tools/vrom.py.
"""

import json
import os
import sys
import time

from dash.app import App

_MASK = 0x3FFFFFFF
_HALF = 0x20000000


class VirtualClock:
    """What the app asks of dash.platform.Clock (its sleep is main()'s, which this harness
    replaces); ticks wrap like a board's. `live`: real time passes inside a step too (a
    request that takes 4 s takes 4 s of the device's time), as on a board."""

    def __init__(self, wall0, live=False):
        self.t = 0
        self.due = 0  # when the app's next step is due
        self.wall0 = wall0
        self.live = live
        self.t0 = None  # real ticks when the step under way began (live)

    def ticks_ms(self):
        t = self.t
        if self.t0 is not None:
            t += time.ticks_diff(time.ticks_ms(), self.t0)
        return t & _MASK

    def ticks_diff(self, a, b):
        return ((a - b + _HALF) & _MASK) - _HALF

    def ticks_add(self, a, d):
        return (a + d) & _MASK

    def wall(self):
        return self.wall0 + self.ticks_ms() // 1000 if self.wall0 else 0


def _answer(tag, obj):
    # Streamed: no string the size of the whole answer on the heap.
    sys.stdout.write(tag)
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")


def main(romfs_heap=0):
    """romfs_heap: the heap the ROMFS image takes (tools/vrom.py), for the bench to subtract."""
    if os.getenv("VDEVICE_FAULTS"):  # before the App is built; never loaded otherwise
        import vfaults  # noqa: F401
    wall = os.getenv("VDEVICE_WALL")
    clock = VirtualClock(int(wall) if wall is not None else 1790000000, os.getenv("VDEVICE_LIVE"))
    app = App(".", clock)
    if os.getenv("VDEVICE_WDT"):  # a watchdog that keeps the longest real time between feeds
        import vbench

        app.wdt = vbench.GapWatchdog()
    ok = app.boot()
    print("@boot " + json.dumps({"ok": ok, "romfs_heap": romfs_heap}))
    clock.due = 0
    hog = []
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            end = clock.t + int(cmd[1])
            while clock.due <= end:
                clock.t = clock.due
                if clock.live:
                    clock.t0 = time.ticks_ms()
                # A device idle for a bad config steps nothing; its cloud link still works. One
                # that had no memory to boot tries again, as main() does.
                wait = app.step() if app.running else 60000
                app.feed()  # as main() does after a step (its sleeps are virtual here)
                if not app.running and not app.reason:
                    app.boot()
                if clock.t0 is not None:  # the step's real time, then the sleep after it
                    clock.t += time.ticks_diff(time.ticks_ms(), clock.t0)
                    clock.t0 = None
                    clock.due = clock.t
                clock.due += wait
                if app.link is not None:  # the cloud link's turn (real I/O, no waiting)
                    app.link.service()
            clock.t = max(clock.t, end)
            _answer("@done ", app.status())
        elif cmd[0] == "status":
            _answer("@status ", app.status())
        elif cmd[0] == "exit":
            break
        else:
            # Everything a cold-boot order cycle does not need is in `vbench`, loaded on first
            # use: the heap figures of `make bench` weigh the firmware, not the test commands.
            import vbench

            vbench.command(app, clock, ok, cmd, line, hog)


if __name__ == "__main__":
    main()
