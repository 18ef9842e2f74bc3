# Freezes the firmware into a custom ESP32 build: its bytecode then runs from flash and costs
# no heap. From a MicroPython v1.29 checkout, with ESP-IDF set up as its ports/esp32/README.md
# describes:
#
#   cd ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/this/repo/firmware/manifest.py
#   make BOARD=ESP32_GENERIC PORT=/dev/ttyUSB0 deploy
#
# boot.py, main.py and the device's files (config.json, secrets.json, ca.pem) stay on the
# filesystem: `tools/dashctl.py deploy` and `provision` put them there.

# The port's own frozen modules (umqtt, ntptime, requests, ...), as in the official firmware.
include("$(PORT_DIR)/boards/manifest.py")

# Our package, found relative to this file.
package("dash", base_path="../lib")
