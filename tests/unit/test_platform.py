"""The platform layer's ESP32 paths, with fakes of the parts that cannot exist here: the ADC
pin, the RTC memory and the Wi-Fi radio (only these are faked; everything else is the real
module)."""

import sys

from dash import platform


class _Obj:
    pass


def _fake_machine(values):
    m = _Obj()
    m.calls = []

    class ADC:
        ATTN_11DB = 3

        def __init__(self, pin):
            m.calls.append(("adc", pin.n))

        def atten(self, a):
            m.calls.append(("atten", a))

        def read_u16(self):
            return values.pop(0)

    class Pin:
        def __init__(self, n):
            self.n = n

    class RTC:
        mem = b""  # one RTC memory per board, whichever RTC object reads it

        def memory(self, data=None):
            if data is None:
                return RTC.mem
            if len(data) > 2048:
                raise ValueError("buffer too long")
            RTC.mem = bytes(data)

    m.ADC = ADC
    m.Pin = Pin
    m.RTC = RTC
    return m


def _fake_network(connect_after):
    net = _Obj()
    net.STA_IF = 0
    log = []
    net.log = log

    class WLAN:
        polls = 0
        up = False

        def __init__(self, _):
            pass

        def isconnected(self):
            if WLAN.up:
                WLAN.polls += 1
                return connect_after is not None and WLAN.polls > connect_after
            return False

        def active(self, on):
            log.append(("active", on))

        def connect(self, ssid, pw):
            log.append(("connect", ssid))
            WLAN.up = True

        def disconnect(self):
            log.append(("disconnect",))
            WLAN.up = False

    net.WLAN = WLAN
    return net


def _reset_net():
    platform.net_state[:] = [0, 0, 0, 0]


def _with(mods, fn):
    saved = platform.ESP32
    platform.ESP32 = True
    for k, v in mods.items():
        sys.modules[k] = v
    try:
        return fn()
    finally:
        platform.ESP32 = saved
        for k in mods:
            sys.modules.pop(k, None)


def test_adc_sensor_reads_the_configured_pin_at_full_range():
    m = _fake_machine([1234, 65535])
    s = _with({"machine": m}, lambda: platform.open_sensor({"kind": "adc", "pin": 34}))
    assert m.calls == [("adc", 34), ("atten", 3)]
    assert s.read() == 1234 and s.read() == 65535


def test_rtc_memory_on_esp32_holds_up_to_2_kb():
    def go():
        rtc = platform.RtcMem("unused on a board")
        assert rtc.read() == b""
        assert rtc.write(b"abc") and platform.RtcMem("").read() == b"abc"
        assert not rtc.write(b"x" * 2049) and rtc.read() == b"abc"

    _with({"machine": _fake_machine([])}, go)


def test_rtc_memory_on_the_unix_port_is_a_file_and_keep_drops_what_does_not_fit():
    import os

    from dash.app import App
    from dash.store import unpack

    path = "/tmp/dash-unit-rtc.bin"
    try:
        os.remove(path)
    except OSError:
        pass
    rtc = platform.RtcMem(path)
    assert rtc.read() == b""
    app = App("/tmp", rtc=rtc)
    app.warm.update(ds=1790000000, at="Atza|" + "a" * 400)
    app.keep()
    assert unpack(rtc.read())[0] == app.warm
    app.warm["at"] = "Atza|" + "a" * 2100  # larger than RTC memory: the token is not kept
    app.keep()
    assert unpack(rtc.read())[0] == {"ds": 1790000000} == app.warm
    os.remove(path)


def test_unix_port_needs_no_network_bring_up():
    assert platform.net_down("", "") == ""


def test_wifi_join_then_clock_set_once():
    net = _fake_network(connect_after=2)
    ntp = _Obj()
    ntp.n = 0

    def settime():
        ntp.n += 1

    ntp.settime = settime
    wall = platform.Clock.wall
    platform.Clock.wall = lambda self: 0  # RTC unset, as after a cold boot
    try:
        down = _with({"network": net, "ntptime": ntp}, lambda: platform.net_down("home", "pw"))
    finally:
        platform.Clock.wall = wall
    # NTP ran within its deadline; the clock is still unset (this fake sets nothing): no
    # request may go out, as a certificate's dates could not be checked.
    assert down == platform.NO_CLOCK and ntp.timeout == 2
    assert ("connect", "home") in net.log and ntp.n == 1


def test_wifi_that_never_joins_gives_up_and_resets():
    net = _fake_network(connect_after=None)
    down = _with({"network": net}, lambda: platform.net_down("home", "pw", timeout_ms=0))
    assert down == platform.NO_WIFI
    assert net.log[-1] == ("disconnect",)
    # Backing off: the next calls cost nothing, until the jittered wait (5 to 10 s) is over.
    n = len(net.log)
    assert _with({"network": net}, lambda: platform.net_down("home", "pw", 0)) == "no Wi-Fi"
    assert len(net.log) == n
    _reset_net()


def test_no_ssid_means_no_network_rather_than_a_hang():
    net = _fake_network(connect_after=0)
    assert _with({"network": net}, lambda: platform.net_down("", "")) == platform.NO_WIFI
    assert net.log == []


def test_a_wifi_driver_error_is_no_network_not_a_stop():
    net = _fake_network(connect_after=0)

    def refuse(self, ssid, pw):
        raise OSError("Wifi Internal Error")

    net.WLAN.connect = refuse
    assert _with({"network": net}, lambda: platform.net_down("home", "pw")) == "no Wi-Fi"
    _reset_net()


def test_the_clock_is_set_again_daily_and_an_ntp_failure_is_retried_within_the_hour():
    _reset_net()
    net = _fake_network(connect_after=0)
    ntp = _Obj()
    ntp.n = 0
    ntp.fail = False

    def settime():
        ntp.n += 1
        if ntp.fail:
            raise OSError(110)

    ntp.settime = settime
    mods = {"network": net, "ntptime": ntp}
    assert _with(mods, lambda: platform.net_down("home", "pw")) == ""  # the host's clock is set
    assert _with(mods, lambda: platform.net_down("home", "pw")) == "" and ntp.n == 1
    import time

    st = platform.net_state
    st[2] = time.ticks_add(time.ticks_ms(), -86400000)  # a day later
    ntp.fail = True
    assert _with(mods, lambda: platform.net_down("home", "pw")) == "" and ntp.n == 2
    # Failed: the clock it has is kept, and it is asked again in an hour, not at every call.
    assert _with(mods, lambda: platform.net_down("home", "pw")) == "" and ntp.n == 2
    left = 86400000 - time.ticks_diff(time.ticks_ms(), st[2])
    assert 3590000 < left <= 3600000
    _reset_net()
