"""Starts the replenishment firmware. Any failure stops here, at the REPL, never in a reboot
loop: fix the cause with mpremote, then reset."""

import sys

if "lib" not in sys.path:
    sys.path.append("lib")  # the unix port; on ESP32 /lib is already on the path

try:
    from dash import app

    app.main()
except KeyboardInterrupt:
    print("dash: stopped by Ctrl-C")
except Exception as e:  # noqa: BLE001 - the last line of defence must catch everything
    sys.print_exception(e)
    print("dash: stopped by an error; the device stays at the REPL")
