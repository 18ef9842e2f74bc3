"""Liveness on the unix port, with a fake of the ESP32's `machine` (reset cause, RTC memory, a
pin, the watchdog): the count of unclean restarts, safe mode, the watchdog fed only while the
main loop is healthy."""

import sys

from dash import liveness, platform
from dash.app import App


class _Obj:
    pass


def _machine(cause, pin_level=1):
    m = _Obj()
    m.PWRON_RESET, m.HARD_RESET, m.WDT_RESET, m.DEEPSLEEP_RESET, m.SOFT_RESET = 1, 2, 3, 4, 5
    m.cause = cause
    m.reset_cause = lambda: m.cause
    m.feeds = 0
    m.armed = []

    class RTC:
        mem = b""

        def memory(self, data=None):
            if data is None:
                return RTC.mem
            RTC.mem = bytes(data)

    class Pin:
        IN, PULL_UP = 1, 2

        def __init__(self, n, mode, pull):
            assert mode == Pin.IN and pull == Pin.PULL_UP  # a button to ground
            self.n = n

        def value(self):
            return pin_level

    class WDT:
        def __init__(self, timeout):
            m.armed.append(timeout)

        def feed(self):
            m.feeds += 1

    m.RTC, m.Pin, m.WDT = RTC, Pin, WDT
    return m


def _on_board(m, fn):
    saved = platform.ESP32
    platform.ESP32 = True
    sys.modules["machine"] = m
    try:
        return fn()
    finally:
        platform.ESP32 = saved
        sys.modules.pop("machine", None)


def _boot(m):
    return _on_board(m, lambda: liveness.check("/nonexistent", platform.RtcMem("")))


def test_three_unclean_restarts_in_a_row_mean_safe_mode_and_a_person_clears_them():
    m = _machine(3)  # the watchdog
    assert _boot(m) == ("watchdog", 1, "")
    m.cause = 2  # a panic
    assert _boot(m)[1:] == (2, "")
    m.cause = 3
    cause, n, why = _boot(m)
    assert n == 3 and "3 unclean restarts in a row, the last by watchdog" in why
    # A reset someone asked for (dashctl, the EN button, a power cycle) starts the count anew.
    for clean in (5, 1):
        m.cause = clean
        assert _boot(m)[1:] == (0, "")


def test_the_count_lives_beside_the_apps_warm_state_and_keeps_it():
    from dash.store import pack, unpack

    m = _machine(3)
    m.RTC.mem = pack({"ds": 1790000000, "at": "Atza|x"})[0]
    _boot(m)
    assert unpack(m.RTC.mem)[0] == {"ds": 1790000000, "at": "Atza|x", "cr": 1}
    m.cause = 5
    _boot(m)
    assert unpack(m.RTC.mem)[0] == {"ds": 1790000000, "at": "Atza|x"}


def test_the_safe_mode_pin_held_at_boot():
    import os

    from scratch import scratch

    d = scratch("/tmp/dash-unit-live", {"config.json": '{"safe_pin": 0, "slot_id": "a"}'})
    check = liveness.check
    rtc = platform.RtcMem("")
    assert (
        _on_board(_machine(1, pin_level=0), lambda: check(d, rtc))[2] == "pin 0 held low at boot"
    )
    assert _on_board(_machine(1, pin_level=1), lambda: check(d, rtc))[2] == ""
    with open(d + "/config.json", "w") as f:
        f.write("{broken")  # no pin to read: no safe mode from it (config says what is wrong)
    assert _on_board(_machine(1, pin_level=0), lambda: check(d, rtc))[2] == ""
    os.remove(d + "/config.json")


def test_main_in_safe_mode_runs_nothing_and_leaves_the_repl():
    from dash import app as mod
    from dash.store import pack

    m = _machine(3)
    m.RTC.mem = pack({"cr": 2})[0]  # two watchdog resets before this one
    mod.current = None
    _on_board(m, mod.main)  # it returns: running, it would loop for ever
    assert mod.current is None and m.armed == []  # no app, no watchdog: the REPL is free


def test_main_arms_the_watchdog_at_start_and_gives_a_person_at_the_repl_a_day():
    from dash import app as mod

    def interrupted(self):
        raise KeyboardInterrupt  # Ctrl-C, as mpremote sends it

    m = _machine(5)
    boot, App.boot = App.boot, interrupted
    try:
        _on_board(m, mod.main)
        raise AssertionError("Ctrl-C must reach main.py")
    except KeyboardInterrupt:
        pass
    finally:
        App.boot = boot
    assert m.armed == [liveness.WDT_MS, 86400000] and mod.current is not None


def test_the_watchdog_is_fed_while_steps_succeed_and_starves_when_they_keep_failing():
    m = _machine(1)
    app = App("/tmp")
    app.wdt = m.WDT(1000)
    app.tick()
    assert m.feeds == 1
    app.sick = 4
    app.feed()
    assert m.feeds == 2
    app.sick = 5  # five steps in a row raised: the board is reset, and counts it
    app.feed()
    app.tick()
    assert m.feeds == 2


class _Reset(Exception):
    """The fake board's watchdog reset it."""


def _run_main(step, minutes, m=None):
    """app.main() on a fake board for `minutes` of virtual time: a clock whose sleeps pass
    time, a WDT that resets the board when `timeout` passes without a feed. The steps are
    `step` (the app booted). Returns the virtual ms at which the watchdog reset the board;
    None when it did not; "safe" when main() went to safe mode instead."""
    from dash import app as mod

    now = [0]
    m = m or _machine(5)

    class WDT:
        def __init__(self, timeout):
            self.timeout, self.fed = timeout, now[0]

        def feed(self):
            self.fed = now[0]

    wdts = []
    m.WDT = lambda timeout: wdts.append(WDT(timeout)) or wdts[-1]

    class Clock:
        def ticks_ms(self):
            return now[0]

        def ticks_diff(self, a, b):
            return a - b

        def ticks_add(self, a, b):
            return a + b

        def wall(self):
            return 1790000000 + now[0] // 1000

        def sleep_ms(self, ms):
            for _ in range(ms // 1000):
                now[0] += 1000
                if now[0] - wdts[0].fed > wdts[0].timeout:
                    raise _Reset(now[0])
            if now[0] > minutes * 60000:
                raise KeyboardInterrupt

    def boot(self):
        self.running = True
        return True

    saved = platform.Clock, App.boot, App.step
    platform.Clock, App.boot, App.step = Clock, boot, step
    try:
        _on_board(m, mod.main)
        return "safe"
    except _Reset as e:
        return e.args[0]
    except KeyboardInterrupt:
        return None
    finally:
        platform.Clock, App.boot, App.step = saved


def test_a_fake_board_whose_steps_keep_failing_is_reset_by_its_watchdog():
    def healthy(self):
        return 60000

    def broken(self):
        raise ValueError("a bug that comes back at every step")

    assert _run_main(healthy, 120) is None  # two hours of sampling: never reset
    at = _run_main(broken, 120)
    # Five failing steps a minute apart, then no feed for the watchdog's timeout.
    assert at is not None and liveness.WDT_MS < at <= 5 * 60000 + liveness.WDT_MS + 2000, at


def test_a_crash_loop_ends_in_safe_mode_though_its_failing_steps_pass_time():
    def broken(self):
        self.tick()  # uptime moves on, as a step's network calls move it
        raise ValueError("a bug that comes back at every step")

    m = _machine(1)  # powered on
    ends = []
    for _ in range(5):
        ends.append(_run_main(broken, 120, m))
        if ends[-1] == "safe":
            break
        m.cause = 3  # the watchdog reset the board
    assert ends[-1] == "safe" and len(ends) == 4, ends  # three resets, then safe mode


def test_a_reset_dashctl_asks_for_is_no_crash_and_a_bare_hard_reset_is_one():
    m = _machine(2)  # HARD_RESET: a panic, or a plain machine.reset()
    assert _boot(m)[:2] == ("panic", 1)
    m.reset = lambda: None  # (this fake board stays up)
    for _ in range(3):  # deploy, provision, status: each resets the board
        _on_board(m, lambda: liveness.reset("/nonexistent"))
        assert _boot(m) == ("reset", 0, "")
