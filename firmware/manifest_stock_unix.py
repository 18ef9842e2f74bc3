# The unix-port counterpart of stock ESP32 firmware, for `make bench`'s `.mpy` figures on the
# 32-bit unix port (tools/mpybuild.py, variant unix32): the port's own frozen set, and
# umqtt.simple, which stock ESP32 firmware freezes (its boards/manifest.py) and the cloud link
# imports. The device code is not frozen: it is deployed as .mpy files, as on a stock board.
# ruff: noqa: F821 - include(), require() are provided by MicroPython's build.

include("$(PORT_DIR)/variants/standard/manifest.py")
require("umqtt.simple")
