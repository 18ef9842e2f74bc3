"""What the bench's stand-in for main.py (tools/vdevice.py) weighs beyond main.py itself, for
tools/bench32.py to subtract from its heap figures. Runs under `micropython` with MICROPYPATH as
the bench's device has it (the compiled harness, the device code or .frozen, micropython-lib):

    micropython vharness.py main PATH/main.py   heap main.py holds as it calls app.main()
    micropython vharness.py harness             heap vdevice holds as it makes the App
    micropython vharness.py names MODULES       names the harness (vdevice, vbench) interns
                                                that the firmware's MODULES do not

`main` and `harness` print {"held": bytes}. `names` imports every module of the firmware
(MODULES, comma-separated, as in tools/vheap.py) and then the harness, and prints the qstr pools
after each (micropython.qstr_info()), for the bench to read the difference from.

The firmware (dash.app, what both main.py and vdevice import first) is imported before anything
is measured: it weighs the same under either, and what is left is what each holds on top of it.
"""

import gc
import sys

import micropython

from dash import app

if "lib" not in sys.path:  # main.py would add it on the unix port; a board has /lib already
    sys.path.append("lib")


class _Entered(BaseException):  # main.py catches Exception: this goes through it
    pass


_held = []


def _enter(*args, **kw):
    # Where the firmware would start: what the caller holds is all that is still referenced.
    gc.collect()
    _held.append(gc.mem_alloc())
    raise _Entered


def _measure(run):
    gc.collect()
    base = gc.mem_alloc()
    try:
        run()
    except _Entered:
        pass
    print('{"held": %d}' % (_held[0] - base))


def _main_py():
    # As a board runs main.py: compiled from its source, run in a module namespace of its own.
    # The source text is dropped before main.py runs, as the board's file reader drops it.
    with open(sys.argv[2]) as f:
        code = compile(f.read(), "main.py", "exec")
    exec(code, {"__name__": "__main__"})


def _harness():
    import vdevice  # `-m vdevice`: the harness compiled, imported from MICROPYPATH

    vdevice.main()


def _names():
    micropython.qstr_info()
    for name in sys.argv[2].split(","):
        __import__("dash." + name)
    import umqtt.simple  # noqa: F401  # the firmware's, frozen in stock ESP32 firmware

    micropython.qstr_info()
    import vbench  # noqa: F401
    import vdevice  # noqa: F401

    micropython.qstr_info()


mode = sys.argv[1]
if mode == "main":
    app.main = _enter
    _measure(_main_py)
elif mode == "harness":
    app.App = _enter  # vdevice takes App from dash.app when it is imported: after this
    _measure(_harness)
else:
    _names()
