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


NO_WIFI = "no Wi-Fi"
NO_CLOCK = "clock not set (NTP)"
_JOIN_MS = const(20000)  # the longest a join may take
_JOIN_BACKOFF_S = const(10)  # the first wait after a failed join; doubled up to ten minutes
_NTP_S = const(2)  # the longest an NTP exchange may take
_DAY_MS = const(86400000)
# Failed joins in a row; ticks when the next join may start; ticks of the last NTP sync, and
# whether there was one (ticks alone cannot tell: they wrap).
net_state: list = [0, 0, 0, 0]  # (tests start it afresh)


def net_down(ssid, password, timeout_ms=_JOIN_MS):
    """Why requests cannot go out ("" when they can): joins Wi-Fi within `timeout_ms`, backing
    off with jitter after a failed join (so a dead access point costs the callers nothing),
    and sets the RTC from NTP, within _NTP_S, at the first chance and then daily (clocks
    drift). A board whose clock was never set makes no request: a certificate's dates, and
    every date DRS is told, would be wrong.

    The unix port has the host's network and clock: nothing to do there."""
    if not ESP32:
        return ""
    import network

    net = net_state
    now = time.ticks_ms()
    try:
        wlan = network.WLAN(network.STA_IF)
        if not wlan.isconnected():
            if not ssid:
                return NO_WIFI
            if net[0] and time.ticks_diff(net[1], now) > 0:
                return NO_WIFI  # backing off
            wlan.active(True)
            wlan.connect(ssid, password)
            while not wlan.isconnected():
                if time.ticks_diff(time.ticks_ms(), now) > timeout_ms:
                    wlan.disconnect()  # a later call starts a clean attempt
                    raise OSError(0)
                time.sleep_ms(200)
    except OSError:
        # Not joined in time, or the driver refused ("Wifi Internal Error", the radio busy):
        # never a stop; a later call tries again, after a jittered wait.
        import random

        span = min(_JOIN_BACKOFF_S << min(net[0], 6), 600) * 1000
        net[0] += 1
        net[1] = time.ticks_add(time.ticks_ms(), span // 2 + random.getrandbits(20) % (span // 2))
        return NO_WIFI
    net[0] = 0
    if not net[3] or time.ticks_diff(now, net[2]) >= _DAY_MS:
        try:
            import ntptime

            ntptime.timeout = _NTP_S
            ntptime.settime()  # UTC
            net[2], net[3] = now, 1
        except Exception:  # noqa: BLE001 - an hour later; until then the clock we have
            if net[3]:
                net[2] = time.ticks_add(now, 3600000 - _DAY_MS)
    return "" if Clock().wall() else NO_CLOCK


def watchdog(timeout_ms):
    """machine.WDT armed (or, called again, set anew) for `timeout_ms`; None on a port that
    has none (the unix port)."""
    try:
        import machine

        return machine.WDT(timeout=timeout_ms)
    except (ImportError, AttributeError):
        return None


HARD = "panic"


def reset_cause():
    """(why the board last started, as a word; True when it may not have been clean: a
    watchdog, or a panic, which the ESP32 port reports as it reports machine.reset(). A
    brown-out it reports as a power-on.)"""
    try:
        import machine

        c = machine.reset_cause()
        if c == machine.WDT_RESET:
            return "watchdog", True
        if c == machine.HARD_RESET:
            return HARD, True  # a panic, or machine.reset(): see `liveness.reset`
        if c == machine.PWRON_RESET:
            return "power on", False
        if c == machine.SOFT_RESET:
            return "reset", False
        if c == machine.DEEPSLEEP_RESET:
            return "deep sleep", False
    except (ImportError, AttributeError):
        pass
    return "unknown", False


def hold_interrupt():
    """Ctrl-C from the console is a plain byte until `release_interrupt`."""
    import micropython

    micropython.kbd_intr(-1)


def release_interrupt():
    """Ctrl-C interrupts again; and KeyboardInterrupt now when console input came while it was
    held: the firmware reads none of its own, so that was mpremote's (or a person's) Ctrl-C,
    and the REPL then takes the rest of it (mpremote's request for the raw REPL)."""
    import select
    import sys

    import micropython

    micropython.kbd_intr(3)
    p = select.poll()
    p.register(sys.stdin, select.POLLIN)
    if p.poll(0):
        raise KeyboardInterrupt


def pin_low(n):
    """True when GPIO `n` (pulled up) is held low: a button to ground pressed."""
    try:
        import machine

        return machine.Pin(n, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0
    except (ImportError, AttributeError, ValueError):
        return False


def unique_id():
    """The board's own id (an ESP32's MAC address, in hex), or "" where there is none."""
    if not ESP32:
        return ""
    from binascii import hexlify

    import machine

    return hexlify(machine.unique_id()).decode()


def open_sensor(cfg):
    """The slot's sensor from its validated `sensor` config: an object whose `read()` gives a
    raw count, or None when there is no sane reading; it allocates nothing once made. Each
    hardware kind is its own module, loaded only on a board that has one."""
    kind = cfg["kind"]
    if kind == "adc":
        from dash.adc import AdcSensor

        return AdcSensor(cfg)
    if kind == "hx711":
        from dash.hx711 import HX711Sensor

        return HX711Sensor(cfg)
    if kind == "pulse":
        from dash.flow import PulseSensor

        return PulseSensor(cfg)
    return FileSensor(cfg["path"])
