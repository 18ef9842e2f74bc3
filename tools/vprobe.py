"""The simulated device (tools/vdevice.py) with a look at the heap as each HTTPS request starts,
for tools/bench32.py's `heap_at_replenish32`. Runs under `micropython` as vdevice does, and
takes the same commands; before each request leaves it collects the heap and prints

    @request {"path": ..., "alloc": bytes, "modules": [dash modules loaded]}

followed by micropython.qstr_info()'s line. Nothing in lib/ is touched: Https.request is
wrapped at run time. Not for the heap minimums: the wrapper and the probe weigh a little.
"""

import gc
import sys

import micropython

from dash import https

_request = https.Https.request


def _looked(self, method, host, port, path, *args, **kw):
    gc.collect()
    alloc = gc.mem_alloc()
    mods = [m[5:] for m in sys.modules if m.startswith("dash.")]
    sys.stdout.write('@request {"path": "%s", "alloc": %d, "modules": ' % (path, alloc))
    sys.stdout.write(str(mods).replace("'", '"'))
    sys.stdout.write("}\n")
    micropython.qstr_info()
    return _request(self, method, host, port, path, *args, **kw)


https.Https.request = _looked

import vdevice  # noqa: E402  # the harness, compiled, from MICROPYPATH

vdevice.main()
