"""The sensors a maker can buy (ADC, HX711 load cell, pulse flow meter), each on the ESP32 API as
tests/unit/fake_machine.py fakes it, and the config's checks of their GPIOs."""

import sys
import time

import fake_machine as fm
import micropython

from dash import config, platform

_SAVED = {}


def _install():
    fm.reset()
    _SAVED["machine"] = sys.modules.get("machine")
    sys.modules["machine"] = fm


def _uninstall():
    if _SAVED.get("machine") is None:
        sys.modules.pop("machine", None)
    else:
        sys.modules["machine"] = _SAVED["machine"]
    fm.reset()


def _with_fakes(fn):
    _install()
    try:
        return fn()
    finally:
        _uninstall()


def _sensor(**kw):
    """A slot's `sensor` as config validates it (defaults filled), then opened."""
    base = {"raw_empty": 0, "raw_full": 1000, "capacity": 1000}
    base.update(kw)
    raw = {"slot_id": "s", "low": 100, "high": 800, "sensor": base}
    cfg, _, errors = config.validate(raw, None)
    assert errors == [], errors
    return platform.open_sensor(cfg["slots"][0]["sensor"])


def _heap_locked(fn, times=5):
    micropython.heap_lock()
    try:
        for _ in range(times):
            fn()
    finally:
        micropython.heap_unlock()


# -- ADC --------------------------------------------------------------------------------------


def test_adc_reads_microvolts_at_the_configured_attenuation():
    def go():
        fm.set_uv(34, 1234567)
        s = _sensor(kind="adc", pin=34, attenuation=6, samples=1)
        assert s._adc.attn == fm.ADC.ATTN_6DB
        assert s.read() == 1234000  # the port's calibrated reading has millivolt steps
        # Above the range's top it reads the top: the divider must keep the signal below it.
        fm.set_uv(34, 2000000)
        assert s.read() == 1750000
        assert _sensor(kind="adc", pin=35)._adc.attn == fm.ADC.ATTN_11DB  # the default
        for db, attn in ((0, 0), (2.5, 1), (11, 3)):
            assert _sensor(kind="adc", pin=36, attenuation=db)._adc.attn == attn

    _with_fakes(go)


def test_adc_averages_its_samples_in_integers():
    def go():
        fm.set_uv(34, 1000000, 1100000, 1200000, 1301000)
        s = _sensor(kind="adc", pin=34, samples=4)
        assert s.read() == (1000000 + 1100000 + 1200000 + 1301000) // 4
        assert _sensor(kind="adc", pin=33)._n == 8  # the default: averaged, not one read

    _with_fakes(go)


def test_adc_without_read_uv_falls_back_to_read_u16():
    def go():
        saved = fm.ADC
        fm.ADC = fm.ADCWithoutUv
        try:
            fm.set_uv(34, 1550000)
            s = _sensor(kind="adc", pin=34, samples=2)
            assert 32000 < s.read() < 33600  # half of the 11 dB range's 3.1 V, as 16 bits
        finally:
            fm.ADC = saved

    _with_fakes(go)


def test_an_adc2_pin_reads_nothing_while_wifi_is_on():
    # Config refuses ADC2 pins; were one opened anyway, the port raises while Wi-Fi holds ADC2,
    # and that is no reading (a sensor fault), not a crash and not a 0.
    def go():
        fm.set_uv(25, 1000000)
        s = platform.open_sensor({"kind": "adc", "pin": 25, "samples": 4})
        assert s.read() == 1000000
        fm.network.WLAN(fm.network.STA_IF).active(True)
        assert s.read() is None
        fm.network.WLAN(fm.network.STA_IF).active(False)
        assert s.read() == 1000000

    _with_fakes(go)


def test_adc_read_allocates_nothing():
    def go():
        fm.set_uv(34, 1000000, 1100000)
        s = _sensor(kind="adc", pin=34, samples=64)
        s.read()
        _heap_locked(s.read)

    _with_fakes(go)


# -- HX711 ------------------------------------------------------------------------------------


def _hx(a=(0,), b=(0,), period_ms=5, **kw):
    chip = fm.HX711(dout=4, sck=16, a=a, b=b, period_ms=period_ms)
    return chip, _sensor(kind="hx711", dout=4, sck=16, **kw)


def test_hx711_reads_24_bits_msb_first_and_sign_extends():
    def go():
        chip, s = _hx(a=(1234, -1234, 0x7FFFFE, -0x7FFFFF, 0))
        assert [s.read() for _ in range(5)] == [1234, -1234, 0x7FFFFE, -0x7FFFFF, 0]
        assert chip.used == 25 and chip.conversions == 5  # channel A, gain 128: 25 pulses

    _with_fakes(go)


def test_hx711_gain_and_channel_set_the_pulses_for_the_next_conversion():
    def go():
        chip, s = _hx(a=(1000,), b=(300,), gain=64)
        # The first conversion after power-up is A at 128: read and dropped; from then on 27
        # pulses ask for A at 64, which halves the input's counts.
        assert s.read() == 500 and chip.used == 27 and chip.conversions == 2
        assert s.read() == 500 and chip.conversions == 3
        fm.reset()
        chip, s = _hx(a=(1000,), b=(300,), gain=32)
        assert s.read() == 300 and chip.used == 26  # channel B (its gain is always 32)
        fm.reset()
        chip, s = _hx(a=(1000,), b=(300,))
        assert s.read() == 1000 and chip.conversions == 1  # 128: nothing to drop

    _with_fakes(go)


def test_hx711_at_a_rail_is_no_reading():
    def go():
        chip, s = _hx(a=(0x7FFFFF, -0x800000, 9000000, 42))
        assert [s.read() for _ in range(4)] == [None, None, None, 42]

    _with_fakes(go)


def test_hx711_unplugged_or_shorted_is_none_never_zero():
    def go():
        chip, s = _hx(a=(0,))
        assert s.read() == 0  # a real 0, measured
        chip.connected = False  # DOUT floats; the pull-up keeps it high: never ready
        t0 = time.ticks_ms()
        assert s.read() is None
        waited = time.ticks_diff(time.ticks_ms(), t0)
        assert 450 <= waited < 1500, waited  # bounded: the HX711 is ready every 100 ms
        chip.connected = True
        chip.shorted = True  # DOUT low for good: "ready", and 24 zeros, but no HX711
        assert s.read() is None
        chip.shorted = False
        assert s.read() == 0

    _with_fakes(go)


def test_hx711_on_an_input_only_pin_without_pull_up_still_never_reads_zero():
    # GPIO 34 to 39 have no pull resistor: unplugged, DOUT floats (low, at worst), looks ready,
    # and 24 zero bits come in; DOUT still low after the 25th pulse tells it apart.
    def go():
        chip = fm.HX711(dout=35, sck=16, a=(77,), period_ms=5)
        s = _sensor(kind="hx711", dout=35, sck=16)
        assert s.read() == 77
        chip.connected = False
        assert s.read() is None

    _with_fakes(go)


def test_hx711_clocks_with_interrupts_off_and_short_high_pulses():
    def go():
        for _ in range(5):  # a host may preempt the process once; the code never holds SCK
            fm.reset()
            chip = fm.HX711(dout=4, sck=16, a=(5000,), period_ms=5, power_down=True)
            s = _sensor(kind="hx711", dout=4, sck=16, samples=4)
            v = s.read()
            assert chip.unmasked == 0  # every pulse with interrupts off
            if chip.max_high_us < 60 and chip.powered_down == 0:
                assert v == 5000
                return
        raise AssertionError("SCK stayed high %d us" % chip.max_high_us)

    _with_fakes(go)


def test_hx711_averages_samples():
    def go():
        chip, s = _hx(a=(100, 200, 300, 401, -1000), samples=4)
        assert s.read() == (100 + 200 + 300 + 401) // 4 and chip.conversions == 4

    _with_fakes(go)


def test_hx711_read_allocates_nothing():
    def go():
        chip, s = _hx(a=(-5000, 5000), samples=2, gain=64)
        s.read()
        _heap_locked(s.read, 3)
        assert chip.conversions == 9  # one dropped: the gain set

    _with_fakes(go)


# -- pulse flow meter ---------------------------------------------------------------------


def test_pulse_counts_rising_edges_with_the_configured_pull():
    def go():
        s = _sensor(kind="pulse", pin=4, raw_empty=4500, raw_full=0)
        ln = fm.line(4)
        assert ln.pull == fm.Pin.PULL_UP and ln.trigger == fm.Pin.IRQ_RISING
        assert s.read() == 0
        fm.pulse(4, 7)
        assert s.read() == 7
        fm.pulse(4, 3)
        assert s.read() == 10
        _sensor(kind="pulse", pin=13, pull="down")
        assert fm.line(13).pull == fm.Pin.PULL_DOWN
        _sensor(kind="pulse", pin=35, pull="none")
        assert fm.line(35).pull == 0

    _with_fakes(go)


def test_pulse_read_is_atomic_and_gives_interrupts_back():
    def go():
        s = _sensor(kind="pulse", pin=4, raw_empty=4500, raw_full=0)
        state = fm.disable_irq()
        fm.pulse(4, 3)  # while interrupts are off the GPIO keeps one edge, as a board does
        assert s.read() == 0  # and read() leaves them off, as it found them
        fm.enable_irq(state)
        assert s.read() == 1
        fm.pulse(4, 2)
        assert s.read() == 3  # read() gave them back on

    _with_fakes(go)


def test_pulse_counting_and_read_allocate_nothing():
    def go():
        s = _sensor(kind="pulse", pin=4, raw_empty=4500, raw_full=0)
        fm.pulse(4, 1)
        s.read()
        _heap_locked(lambda: fm.pulse(4, 10))  # the handler, at each edge
        _heap_locked(s.read)
        assert s.read() == 51

    _with_fakes(go)


# -- config -----------------------------------------------------------------------------------


def _errors(**sensor):
    base = {"raw_empty": 0, "raw_full": 1000, "capacity": 1000}
    base.update(sensor)
    raw = {"slot_id": "s", "low": 100, "high": 800, "sensor": base}
    return config.validate(raw, None)[2]


def _one(errors, *words):
    assert len(errors) == 1, errors
    for w in words:
        assert w in errors[0], (w, errors)


def test_adc_pins_must_be_adc1():
    _one(_errors(kind="adc", pin=25), "'sensor.pin' GPIO 25", "ADC2", "while Wi-Fi is on", "32")
    # The pin the old example had: ADC2 and a strapping pin, both said.
    _one(_errors(kind="adc", pin=0), "ADC2", "strapping")
    _one(_errors(kind="adc", pin=23), "GPIO 23 has no ADC")
    _one(_errors(kind="adc"), "'sensor.pin' is missing")  # no silent default of 0
    for pin in range(32, 40):
        assert _errors(kind="adc", pin=pin) == [], pin
    assert _errors(kind="file") == []  # the file sensor has no pin


def test_pins_a_board_cannot_give_are_config_errors_that_say_why():
    _one(_errors(kind="pulse", pin=7), "config.json: 'sensor.pin' GPIO 7", "flash")
    _one(_errors(kind="pulse", pin=20), "does not exist")
    _one(_errors(kind="pulse", pin=40), "'sensor.pin' must be a whole number from 0 to 39")
    _one(_errors(kind="pulse", pin=1), "serial console")
    for pin in (2, 5, 12, 15):
        _one(_errors(kind="pulse", pin=pin), "strapping pin", "boot mode")
    _one(_errors(kind="hx711", dout=4, sck=34), "'sensor.sck' GPIO 34 is input only")
    _one(_errors(kind="hx711", dout=5, sck=16), "'sensor.dout' GPIO 5 is a strapping pin")
    _one(_errors(kind="hx711", dout=4, sck=4), "'sensor.sck' GPIO 4 is used by 'sensor.dout'")
    _one(_errors(kind="pulse", pin=36), "no pull resistor")  # the default pull is up
    assert _errors(kind="pulse", pin=36, pull="none") == []
    assert _errors(kind="hx711", dout=34, sck=16) == []  # an input-only pin is a fine input
    errors = _errors(kind="hx711", dout=4)
    _one(errors, "'sensor.sck' is missing")


def test_each_kind_has_its_own_keys_and_defaults():
    _one(_errors(kind="adc", pin=34, gain=64), "'sensor.gain' does not apply to kind adc")
    _one(_errors(kind="file", pin=34), "'sensor.pin' does not apply to kind file")
    _one(_errors(kind="hx711", dout=4, sck=16, gain=100), "'sensor.gain' must be 128 or 64")
    _one(_errors(kind="adc", pin=34, attenuation=3), "must be 0, 2.5, 6 or 11 (dB)")
    _one(_errors(kind="adc", pin=34, attenuation=True), "must be 0, 2.5, 6 or 11 (dB)")
    _one(_errors(kind="adc", pin=34, samples=65), "'sensor.samples' must be a whole number")
    _one(_errors(kind="pulse", pin=4, pull="left"), "must be up, down or none")
    # An HX711 counts below 0 (the saturation check would take that for a rail), and a meter
    # repeats its count while nothing flows (no stuck sensor).
    _one(_errors(kind="hx711", dout=4, sck=16, raw_max=100), "'sensor.raw_max' must be 0")
    _one(_errors(kind="pulse", pin=4, stuck_samples=5), "'sensor.stuck_samples' must be 0")
    raw = {"slot_id": "s", "low": 1, "high": 8, "sensor": {"kind": "hx711", "dout": 4, "sck": 16}}
    raw["sensor"].update(raw_empty=0, raw_full=10, capacity=10)
    s = config.validate(raw, None)[0]["slots"][0]["sensor"]
    assert s["gain"] == 128 and s["samples"] == 1 and "pull" not in s
    raw["sensor"] = {"kind": "adc", "pin": 34, "raw_empty": 0, "raw_full": 10, "capacity": 10}
    s = config.validate(raw, None)[0]["slots"][0]["sensor"]
    assert s["attenuation"] == 11 and s["samples"] == 8 and "gain" not in s


def test_two_slots_cannot_share_a_gpio():
    sensor = {"kind": "adc", "pin": 34, "raw_empty": 0, "raw_full": 10, "capacity": 10}
    slots = [
        {"slot_id": "a", "low": 1, "high": 8, "sensor": sensor},
        {"slot_id": "b", "low": 1, "high": 8, "sensor": dict(sensor)},
    ]
    errors = config.validate({"slots": slots}, None)[2]
    _one(errors, "'slots[1].sensor.pin' GPIO 34 is used by 'slots[0].sensor.pin' already")


# -- calibration from the bench ----------------------------------------------------------


def test_bench_raw_prints_each_slots_raw_count_and_the_level_once_calibrated():
    import json
    import os

    from dash import bench

    d = "/tmp/dash-unit-raw-%d" % time.ticks_us()  # its own: test runs may overlap
    os.mkdir(d)
    hx = {"kind": "hx711", "dout": 4, "sck": 16, "capacity": 1000}  # not calibrated yet
    adc = {"kind": "adc", "pin": 34, "raw_empty": 100000, "raw_full": 2100000, "capacity": 100}
    slots = [
        {"slot_id": "beans", "low": 100, "high": 800, "sensor": hx},
        {"slot_id": "milk", "low": 10, "high": 80, "sensor": dict(adc, median=1)},
    ]
    with open(d + "/config.json", "w") as f:
        f.write(json.dumps({"slots": slots}))
    out = []

    def go():
        fm.HX711(dout=4, sck=16, a=(-81234,), period_ms=5)
        fm.set_uv(34, 1100000)
        bench.print = lambda line: out.append(json.loads(line))
        try:
            bench.raw(0.25, every_ms=100, root=d)
        finally:
            del bench.print

    _with_fakes(go)
    os.remove(d + "/config.json")
    os.rmdir(d)
    errs = out[0]["config_errors"]
    assert any("'slots[0].sensor.raw_empty' is missing" in e for e in errs), errs
    beans = [r for r in out[1:] if r["slot"] == "beans"]
    milk = [r for r in out[1:] if r["slot"] == "milk"]
    assert len(beans) == len(milk) >= 2, out
    assert all(r["raw"] == -81234 and "level" not in r for r in beans), beans
    assert all(r["raw"] == 1100000 and r["level"] == 50 for r in milk), milk


# -- measured by `make bench` (tools/bench.py): no test_ prefix -----------------------------


def alloc_per_step(steps=200):
    """Bytes the sampling step's sensor part (read, then the signal's feed) leaves allocated
    per step, for each sensor kind, with the fakes in the loop."""
    import gc

    from dash.signal import Signal

    out = {}
    _install()
    try:
        kinds = (
            ("adc", {"pin": 34}),
            ("hx711", {"dout": 4, "sck": 16, "samples": 2}),
            ("pulse", {"pin": 13, "raw_empty": 4500, "raw_full": 0}),
        )
        for kind, extra in kinds:
            fm.reset()
            fm.set_uv(34, 1000000, 1010000)
            fm.HX711(dout=4, sck=16, a=(300, 310), period_ms=5)
            s = _sensor(kind=kind, **extra)
            sig = Signal(0, 5000000, 1000, median=5, ema_shift=2)
            fm.pulse(13, 1)  # a first step: what the fakes make once (a GPIO line) is not it
            sig.feed(s.read())
            gc.collect()
            gc.disable()
            before = gc.mem_alloc()
            for _ in range(steps):
                fm.pulse(13, 1)
                sig.feed(s.read())
            out[kind] = (gc.mem_alloc() - before) // steps
            gc.enable()
    finally:
        _uninstall()
    return out
