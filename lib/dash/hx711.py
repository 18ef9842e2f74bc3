"""The platform layer's HX711 load-cell sensor (see `platform`): only a slot with one loads it.

The HX711 is a 24-bit ADC for a load cell's bridge, read over two GPIOs by bit-banging. DOUT
goes low when a conversion is ready (10 a second, or 80 with its RATE pin high); then each
pulse on SCK shifts one bit out, MSB first, 24 in all, in two's complement; 1 to 3 more pulses
choose the channel and gain of the next conversion (25 in all: A at 128, 26: B at 32, 27: A at
64). SCK high for over 60 us powers the chip down, so the pulses run with interrupts off (a
Wi-Fi interrupt could stretch one) and nothing in between but the bit's own work.

Tare is calibration: `raw_empty` is the count with the empty container on the cell, `raw_full`
with a full one, and `signal` maps between them (docs/configuration.md).
"""

import time

from micropython import const

# Ready every 100 ms at 10 SPS, and within 400 ms of power-up (the chip settling): longer
# without DOUT going low, and nothing is there.
_READY_MS = const(500)
_SIGN = const(0x800000)
_WRAP = const(0x1000000)
_TOP = const(0x7FFFFF)  # an input beyond the range reads as one of the two rails


class HX711Sensor:
    """An HX711 on GPIOs `dout` and `sck`. `read()` gives the mean of `samples` conversions, or
    None: nothing ready in time (unplugged, unpowered), a rail (overload, a broken wire), or a
    DOUT that is no HX711's. Never a 0 that nothing measured. Allocates nothing once made."""

    def __init__(self, cfg):
        import machine

        P = machine.Pin
        n = cfg["dout"]
        # Pulled up: an unplugged HX711 leaves DOUT floating, and a floating input can read
        # low, which looks ready. GPIO 34 to 39 have no pull resistor: one must be fitted.
        self._dout = P(n, P.IN, P.PULL_UP if n < 34 else -1)
        self._sck = P(cfg["sck"], P.OUT, value=0)  # low from the start: high powers it down
        gain = cfg.get("gain", 128)
        self._extra = 1 if gain == 128 else 3 if gain == 64 else 2
        self._n = cfg.get("samples", 1)
        self._irq_off = machine.disable_irq
        self._irq_on = machine.enable_irq
        # The first conversion after power-up is channel A at 128, whatever the config asks:
        # that one is read and dropped, and the pulses after it ask for the right one.
        self._stale = gain != 128

    def _one(self):
        """One conversion, sign-extended; or None."""
        dout = self._dout
        t0 = time.ticks_ms()
        while dout.value():
            if time.ticks_diff(time.ticks_ms(), t0) > _READY_MS:
                return None
            time.sleep_ms(1)
        sck = self._sck
        v = 0
        state = self._irq_off()
        for _ in range(24):
            sck.value(1)
            sck.value(0)
            v = (v << 1) | dout.value()  # shifted out on the rising edge, held until the next
        for _ in range(self._extra):
            sck.value(1)
            sck.value(0)
        self._irq_on(state)
        # From the 25th pulse on, the chip holds DOUT high until its next conversion: low now,
        # the line is no HX711's (a floating input, a short), and the 24 bits were not data.
        if not dout.value():
            return None
        if v == _TOP or v == _SIGN:
            return None
        return v - _WRAP if v & _SIGN else v

    def read(self):
        if self._stale:
            if self._one() is None:
                return None
            self._stale = False
        n = self._n
        total = 0  # 64 x 2**23 at most: a small int
        for _ in range(n):
            v = self._one()
            if v is None:
                return None
            total += v
        return total // n
