"""What keeps an unattended device alive: the reset cause, the count of unclean restarts in a
row (in RTC memory, with the app's other warm state: a power cut clears it, as it should), and
safe mode, which skips the application when it keeps crashing the board or when a person holds
the safe-mode pin at boot. Loaded once at start, then dropped.

The watchdog itself is the platform's (`platform.watchdog`); `app.main()` arms it and feeds it
(`App.feed`)."""

from micropython import const

from dash import platform
from dash.store import pack, unpack

_UNCLEAN_MAX = const(3)  # unclean restarts in a row that mean safe mode
CLEAN_S = const(300)  # a run this long clears the count
WDT_MS = const(600000)  # longer than the longest bounded step (docs/embedding.md)


def _safe_pin(root):
    """config.json's `safe_pin`, read on its own: the rest of the config may be what is
    broken. -1 when there is none (or no readable config)."""
    import json

    try:
        with open(root + "/config.json") as f:
            pin = json.loads(f.read(6144)).get("safe_pin", -1)
    except Exception:  # noqa: BLE001 - no config, or a broken one: `config` says why later
        return -1
    return pin if isinstance(pin, int) and 0 <= pin < 40 else -1


def reset(root="."):
    """Reset the board as a person asks for it (dashctl does this): marked in RTC memory first,
    so that the next start does not count it as a crash. The ESP32 port reports
    `machine.reset()` as HARD_RESET, as it does a panic: only the mark tells them apart."""
    import machine

    rtc = platform.RtcMem(root + "/rtc.bin")
    warm = unpack(rtc.read())[0] or {}
    warm["rq"] = 1
    rtc.write(pack(warm)[0])
    machine.reset()


def check(root, rtc):
    """At start: (why the board started, unclean restarts in a row, why safe mode or "").
    Counts this start in RTC memory when it was unclean, and forgets the count otherwise."""
    cause, unclean = platform.reset_cause()
    warm = unpack(rtc.read())[0] or {}
    asked = warm.pop("rq", None) is not None
    if asked and unclean and cause == platform.HARD:
        cause, unclean = "reset", False  # asked for (`reset`), not a panic
    n = warm.get("cr", 0)
    n = (n if isinstance(n, int) else 0) + 1 if unclean else 0
    if asked or n != warm.get("cr", 0):
        if n:
            warm["cr"] = n
        else:
            warm.pop("cr", None)
        rtc.write(pack(warm)[0])
    why = ""
    if n >= _UNCLEAN_MAX:
        why = "%d unclean restarts in a row, the last by %s" % (n, cause)
    else:
        pin = _safe_pin(root)
        if pin >= 0 and platform.pin_low(pin):
            why = "pin %d held low at boot" % pin
    return cause, n, why
