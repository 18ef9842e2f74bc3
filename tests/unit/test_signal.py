from dash.signal import F_JUMP, F_RANGE, F_SATURATED, F_STUCK, Signal, fault_name


def test_calibrates_to_quantity():
    s = Signal(raw_empty=1000, raw_full=3000, capacity=500, median=1)
    assert s.feed(1000) == 0
    assert s.feed(2000) == 250
    assert s.feed(3000) == 500


def test_inverted_sensor():
    s = Signal(raw_empty=3000, raw_full=1000, capacity=100, median=1)
    assert s.feed(3000) == 0
    assert s.feed(1000) == 100


def test_median_removes_a_spike():
    s = Signal(0, 1000, 1000, median=5)
    out = [s.feed(r) for r in (500, 500, 500, 0, 500, 500)]
    assert 0 not in out[3:], out


def test_out_of_range_and_saturated():
    s = Signal(100, 900, 1000, margin=50, raw_max=4095)
    assert s.feed(40) == F_RANGE
    assert s.feed(960) == F_RANGE
    s = Signal(0, 4095, 1000, margin=10, raw_max=4095)
    assert s.feed(4095) == F_SATURATED
    assert s.feed(0) == F_SATURATED


def test_stuck():
    s = Signal(0, 1000, 1000, stuck=4, median=1)
    out = [s.feed(500) for _ in range(6)]
    assert out == [500, 500, 500, F_STUCK, F_STUCK, F_STUCK], out
    assert s.feed(501) == 501


def test_stuck_samples_identical_readings_are_the_fault_not_one_more():
    # README: `stuck_samples` identical raw counts in a row is a stuck sensor. The fault came
    # one reading late, so a sensor stuck low could confirm and order on the 5th with 5.
    s = Signal(0, 1000, 1000, stuck=5, median=1)
    for r in range(900, 930):
        s.feed(r)
    out = [s.feed(100) for _ in range(5)]
    assert out == [100, 100, 100, 100, F_STUCK], out
    s = Signal(0, 1000, 1000, stuck=2, median=1)  # the very first reading counts, 0 too
    assert [s.feed(0), s.feed(0)] == [0, F_STUCK]


def test_sudden_drop_is_a_fault_until_it_comes_back():
    s = Signal(0, 1000, 1000, max_drop=100, median=1)
    assert s.feed(800) == 800
    assert s.feed(750) == 750
    assert s.feed(100) == F_JUMP
    assert s.feed(100) == F_JUMP
    assert s.feed(740) == 740
    assert s.feed(1000) == 1000  # rising is a refill, never a fault


def test_a_refill_ends_a_drop_fault():
    s = Signal(0, 1000, 1000, max_drop=100, median=1)
    assert s.feed(600) == 600
    assert s.feed(50) == F_JUMP
    assert s.feed(1000) == 1000
    assert s.feed(990) == 990


def test_ema_smooths():
    s = Signal(0, 1000, 1000, median=1, ema_shift=2)
    s.feed(800)
    assert 600 < s.feed(400) < 800


def test_ema_is_not_seeded_by_a_reading_the_median_rejects():
    # A first reading of 9 (a half-written "900", an ADC at power-up), then full: the EMA used
    # to start from the 9 and climb for dozens of samples, reading low while the tank was full.
    s = Signal(0, 1000, 1000, median=5, ema_shift=4)
    out = [s.feed(r) for r in [9] + [900] * 30]
    assert out[5:] == [900] * 26, out  # from the warm-up's end (5 samples) on
    s = Signal(0, 1000, 1000, median=3, ema_shift=4)  # a spike while the window fills, too
    out = [s.feed(r) for r in (900, 9, 900, 900, 900)]
    assert out[2:] == [900] * 3, out


def test_ema_settles_on_a_steady_level():
    s = Signal(0, 1000, 1000, median=5, ema_shift=4)
    assert [s.feed(500) for _ in range(6)] == [500] * 6
    out = [s.feed(100) for _ in range(200)]
    assert all(out[i] >= out[i + 1] for i in range(199)), out  # falls, never overshoots
    assert 100 < out[5] < 500 and out[-1] == 100, out


def test_feed_allocates_nothing():
    import micropython

    s = Signal(0, 4000, 1000, margin=100, raw_max=4095, stuck=10, max_drop=300, ema_shift=2)
    s.feed(2000)
    micropython.heap_lock()
    try:
        for r in (2000, 2010, 1990, 5000, 0, 2000, 100, 2000):
            s.feed(r)
    finally:
        micropython.heap_unlock()


def test_large_capacity_keeps_small_ints():
    # A 16-bit ADC and a capacity of a million units: the product must stay below 2**30
    # (a board's small-int limit) so that sampling never allocates a big int.
    s = Signal(0, 65535, 1000000, median=1)
    assert s.shift > 0
    assert (65535 >> s.shift) * 1000000 < 1 << 30
    level = s.feed(32768)
    assert abs(level - 500000) <= 5000, level
    assert Signal(0, 65535, 1000000, median=1).feed(65535) == 1000000
    assert Signal(60000, 4000, 100, median=1).shift == 0  # small products: exact, as before


def test_each_fault_has_its_name_in_the_log():
    names = [fault_name(c) for c in (F_RANGE, F_SATURATED, F_STUCK, F_JUMP)]
    assert names == ["out_of_range", "saturated", "stuck", "jump"], names
    assert fault_name(-5) == "unreadable"  # no reading at all (the app's code for it)
