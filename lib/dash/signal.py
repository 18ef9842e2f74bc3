"""Signal path from raw sensor counts to remaining quantity: pure integer maths, no I/O.

feed() checks each raw reading for plausibility, takes a running median (spikes vanish, steps
stay steps), calibrates to remaining quantity, optionally smooths with an integer EMA, and
flags a sudden drop as a fault. It allocates nothing after construction.
"""

from array import array

from micropython import const

from dash.check import word

# Fault codes returned by feed() (negative, so a level is always >= 0).
F_RANGE = const(-1)  # outside the calibrated range
F_SATURATED = const(-2)  # at the converter's rail
F_STUCK = const(-3)  # the same raw count too many times in a row
F_JUMP = const(-4)  # dropped faster than anything can be consumed

# Their names, from F_RANGE on: one string, not a tuple of them (each a heap object).
_FAULTS = const("out_of_range saturated stuck jump")


def fault_name(level):
    """A fault code's name, for the log."""
    return word(_FAULTS, -level - 1) if F_JUMP <= level < 0 else "unreadable"


class Signal:
    def __init__(
        self,
        raw_empty,
        raw_full,
        capacity,
        margin=0,
        raw_max=0,
        stuck=0,
        max_drop=0,
        median=5,
        ema_shift=0,
    ):
        self.raw_empty = raw_empty
        span = raw_full - raw_empty  # negative when the sensor counts down as it fills
        # Keep (reading - empty) * capacity below 2**30, a board's small-int limit, so the
        # calibration never makes a big int: drop low bits of the reading if it must.
        shift = 0
        while (abs(span) + (abs(span) >> 3) + margin) * capacity >> shift >= 1 << 29:
            shift += 1
        self.shift = shift
        self.span = span >> shift or 1
        self.capacity = capacity
        lo, hi = min(raw_empty, raw_full), max(raw_empty, raw_full)
        self.raw_lo = lo - margin
        self.raw_hi = hi + margin
        self.raw_max = raw_max  # converter full scale; 0 = unknown, no saturation check
        self.stuck = stuck  # 0 = off (a quiet digital sensor legitimately repeats itself)
        self.max_drop = max_drop  # 0 = off
        self.ema_shift = ema_shift  # 0 = off; k smooths over about 2**k readings
        n = median if median > 0 else 1
        self._win = array("i", [0] * n)
        self._tmp = array("i", [0] * n)
        self._n = 0
        self._i = 0
        self._last_raw = self.raw_lo - 1  # no reading that gets to the stuck check is this
        self._same = 0
        self._ema = 0
        self._ref = -1  # last sane level, the reference for the drop check

    def _median(self):
        n = self._n
        t = self._tmp
        w = self._win
        for i in range(n):
            v = w[i]
            j = i
            while j > 0 and t[j - 1] > v:
                t[j] = t[j - 1]
                j -= 1
            t[j] = v
        return t[n >> 1]

    def feed(self, raw):
        """One raw reading in; remaining quantity (>= 0) or a negative fault code out."""
        if self.raw_max and (raw <= 0 or raw >= self.raw_max):
            return F_SATURATED
        if raw < self.raw_lo or raw > self.raw_hi:
            return F_RANGE
        if self.stuck:
            # `_same` counts the reading itself: the `stuck`th identical one in a row is stuck.
            if raw == self._last_raw:
                self._same += 1
                if self._same >= self.stuck:
                    return F_STUCK
            else:
                self._same = 1
            self._last_raw = raw
        w = self._win
        w[self._i] = raw
        self._i = (self._i + 1) % len(w)
        n = self._n  # readings in the window before this one
        if n < len(w):
            self._n = n + 1
        level = ((self._median() - self.raw_empty) >> self.shift) * self.capacity // self.span
        if level < 0:
            level = 0
        elif level > self.capacity:
            level = self.capacity
        ref = self._ref
        if self.max_drop and ref >= 0 and ref - level > self.max_drop:
            # Stay faulted until the reading comes back near the reference (the container
            # was put back) or above it (a refill).
            return F_JUMP
        self._ref = level
        sh = self.ema_shift
        if sh:
            e = self._ema
            # Fixed point with `sh` fraction bits keeps the EMA in small ints. Until the window
            # is full the median may be one unfiltered reading (a half-written file, an ADC
            # at power-up): till then the EMA is the median itself, and averages from there.
            e = e + level - (e >> sh) if n == len(w) else level << sh
            self._ema = e
            level = e >> sh
        return level
