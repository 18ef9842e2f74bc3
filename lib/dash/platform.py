"""The thin platform layer, with `adc`: the only modules that know whether they run on an
ESP32 or the unix port. Clock, RTC memory, sensor adapters and network bring-up live here,
the ADC sensor in `adc` (loaded only for a slot that has one); nothing else imports
`machine` or `network`."""

import sys
import time

from micropython import const

ESP32 = sys.platform == "esp32"
# Ports whose epoch is 2000 report gmtime(0) in 2000; DRS wants Unix time.
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0
_MIN_WALL = const(1704067200)  # 2024-01-01: earlier means the RTC was never set


class Clock:
    """Real time. Tests and the simulator inject an object with the same five methods."""

    ticks_ms = staticmethod(time.ticks_ms)
    ticks_diff = staticmethod(time.ticks_diff)
    ticks_add = staticmethod(time.ticks_add)
    sleep_ms = staticmethod(time.sleep_ms)

    def wall(self):
        """Unix seconds, or 0 while the wall clock is unknown (before NTP on a board)."""
        t = int(time.time()) + _EPOCH
        return t if t >= _MIN_WALL else 0


class RtcMem:
    """Memory that survives a reset but not a power cut: what is worth keeping across a reboot
    but not worth a flash write (ESP32: RTC slow memory, 2 KB). The unix port has none; there
    a file stands in for it, and the simulator deletes that file to cut the power."""

    def __init__(self, path):
        self.path = path
        self.size = 2048  # the ESP32 port's limit, kept on the unix port too

    def read(self):
        if ESP32:
            import machine

            return machine.RTC().memory()
        try:
            with open(self.path, "rb") as f:
                return f.read(self.size)
        except OSError:
            return b""

    def write(self, data):
        """False when `data` does not fit."""
        if len(data) > self.size:
            return False
        if ESP32:
            import machine

            machine.RTC().memory(data)
        else:
            with open(self.path, "wb") as f:
                f.write(data)
        return True


class FileSensor:
    """Reads an integer from a file: the unix port's stand-in for a sensor, which a test or a
    person sets from outside the process. Returns None when unreadable."""

    def __init__(self, path):
        self.path = path

    def read(self):
        try:
            with open(self.path) as f:
                return int(f.read(16))
        except (OSError, ValueError):
            return None


def net_up(ssid, password, timeout_ms=20000):
    """Joins Wi-Fi and, once, sets the RTC from NTP. True when requests can go out.

    The unix port has the host's network and clock, so there it is always True."""
    if not ESP32:
        return True
    import network

    try:
        wlan = network.WLAN(network.STA_IF)
        if not wlan.isconnected():
            if not ssid:
                return False
            wlan.active(True)
            wlan.connect(ssid, password)
            t0 = time.ticks_ms()
            while not wlan.isconnected():
                if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                    wlan.disconnect()  # a later call starts a clean attempt
                    return False
                time.sleep_ms(200)
    except OSError:
        # The driver refused ("Wifi Internal Error", the radio busy): at boot that must not
        # stop the firmware; a later call tries again.
        return False
    if Clock().wall() == 0:
        try:
            import ntptime

            ntptime.settime()  # UTC; tokens then survive reboots with an absolute expiry
        except Exception:  # noqa: BLE001 - no time yet only costs a refresh after reboot
            pass
    return True


def unique_id():
    """The board's own id (an ESP32's MAC address, in hex), or "" where there is none."""
    if not ESP32:
        return ""
    from binascii import hexlify

    import machine

    return hexlify(machine.unique_id()).decode()


def open_sensor(cfg):
    if cfg["kind"] == "adc":
        from dash.adc import AdcSensor  # its own module: only a board with one loads it

        return AdcSensor(cfg["pin"])
    return FileSensor(cfg["path"])
