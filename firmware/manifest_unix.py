# The unix-port counterpart of manifest.py: freezes `dash` into MicroPython's unix port, so that
# `make bench` can weigh the frozen firmware on a build whose memory layout is the ESP32's (the
# 32-bit unix port). tools/mpybuild.py builds it (variant unix32-frozen):
#
#   MPY_DIR=/path/to/micropython python3 tools/mpybuild.py unix32-frozen
#
# It differs from manifest.py only where the ports differ:
# - manifest.py includes $(PORT_DIR)/boards/manifest.py, which only the esp32 port has. The unix
#   port's own frozen set is its variant's manifest (asyncio, ssl, and `requests` through
#   mip-cmdline), the one a plain unix build freezes; that keeps the frozen `requests` the naive
#   baseline uses.
# - umqtt.simple is frozen into stock ESP32 firmware by boards/manifest.py, not into the unix
#   port: required here, so that the cloud link's client costs no heap, as on a board. The rest
#   of the ESP32's frozen set (umqtt.robust, ntptime, dht, neopixel, ...) is not imported by the
#   firmware on the unix port, and frozen code costs no heap until it is imported.
# `dash` itself is frozen exactly as manifest.py freezes it (same package, same options).
# ruff: noqa: F821 - include(), require(), package() are provided by MicroPython's build.

include("manifest_stock_unix.py")  # the port's own frozen set, and umqtt.simple

package("dash", base_path="../lib")
