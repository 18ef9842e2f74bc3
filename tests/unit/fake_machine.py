"""A fake of the ESP32's `machine` module for the unix port, behaving like the real one where the
sensor adapters rely on it (MicroPython's ports/esp32 machine_pin.c and adc.c):

- `Pin`: GPIO 0 to 39 less 20, 24 and 28 to 31 ("invalid pin"); 34 to 39 input only ("pin can
  only be input") and without pull resistors; modes, pulls, levels; `irq(handler, trigger,
  wake)` as the ESP32 port takes it (no `hard`: its pin interrupts are all soft), fired by the
  edges a test makes with `pulse()` or a fake device makes.
- `disable_irq`/`enable_irq`: an edge while interrupts are off is held, one per pin (a GPIO's
  interrupt flag), and handled when they come back on.
- `ADC`: ADC1 (32 to 39) and ADC2 pins only, attenuation (0 dB by default, as on a board),
  `read_uv` (millivolt steps, as the port's calibration gives) and `read_u16`; an ADC2 pin
  raises OSError while Wi-Fi is active (`network.WLAN(STA_IF).active(True)`), as ADC2 does.
- `HX711`: the load-cell chip wired to two Pins, speaking its protocol: DOUT low when a
  conversion is ready; a bit out per SCK rising edge, MSB first; 25, 26 or 27 pulses in all set
  the next conversion's channel and gain; DOUT high from the 25th pulse until the next
  conversion; the longest SCK-high time measured with `time.ticks_us` (and, with
  `power_down=True`, the chip powering down past 60 us, as it does); unplugged (DOUT floats)
  or shorted low.

Install: `sys.modules["machine"] = fake_machine` (as test_platform does with its fakes);
`reset()` forgets every line, device, voltage and the Wi-Fi state. Nothing on the paths a
sensor's read() takes (levels, edges, bits) allocates, so heap_lock() tests hold through them.
"""

import errno
import time

_IN = 1
_OUT = 3
_PULL_DOWN = 1
_PULL_UP = 2
_RISING = 1
_FALLING = 2
_ABSENT = (20, 24, 28, 29, 30, 31)
_ADC2 = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27)
_MAX_HIGH_US = 60  # the HX711's limit for SCK high (datasheet: power-down after 60 us)


class _Line:
    """One GPIO: what drives it and what listens to it, whichever Pin objects are made for it."""

    def __init__(self, n):
        self.n = n
        self.mode = -1  # unconfigured, as after reset: an input
        self.pull = 0
        self.out = 0  # the level the pin drives as an output
        self.drive = -1  # the level something outside drives it to, -1: nothing does
        self.device = None  # a fake chip whose output this is (its dout_level())
        self.listener = None  # a fake chip's input: called with each level written
        self.handler = None
        self.trigger = 0
        self.pin = None
        self.held = False  # an edge came while interrupts were off
        self.uv = (0,)  # the ADC's input voltage, microvolts; read in turn
        self.uv_i = 0

    def level(self):
        if self.mode & 2:  # an output reads what it drives
            return self.out
        if self.device is not None:
            v = self.device.dout_level()
            if v >= 0:
                return v
        elif self.drive >= 0:
            return self.drive
        return 1 if self.pull == _PULL_UP else 0  # floating: the pull, or low

    def set_drive(self, v):
        old = self.level()
        self.drive = v
        new = self.level()
        if new != old:
            self.edge(_RISING if new else _FALLING)

    def edge(self, kind):
        global _held
        if self.handler is None or not self.trigger & kind:
            return
        if _irq[0]:
            self.handler(self.pin)
        elif not self.held:
            self.held = True
            _held += 1


_lines = [None] * 40
_irq = [1]  # interrupts on
_held = 0
_wifi = [False]


def line(n):
    """GPIO n's line (made on first use)."""
    ln = _lines[n]
    if ln is None:
        ln = _lines[n] = _Line(n)
    return ln


def reset():
    global _held
    for i in range(40):
        _lines[i] = None
    _irq[0] = 1
    _held = 0
    _wifi[0] = False


def disable_irq():
    state = _irq[0]
    _irq[0] = 0
    return state


def enable_irq(state):
    global _held
    _irq[0] = state
    if state and _held:
        _held = 0
        for i in range(40):
            ln = _lines[i]
            if ln is not None and ln.held:
                ln.held = False
                ln.handler(ln.pin)


def pulse(n, count=1):
    """`count` pulses (a rising then a falling edge) driven onto GPIO n from outside."""
    ln = line(n)
    ln.set_drive(0)  # from low, whatever the pull made of it: each pulse is one rising edge
    for _ in range(count):
        ln.set_drive(1)
        ln.set_drive(0)


def set_uv(n, *values):
    """The voltage on GPIO n, in microvolts; several are read in turn, round and round."""
    ln = line(n)
    ln.uv = values
    ln.uv_i = 0


class Pin:
    IN = _IN
    OUT = _OUT
    OPEN_DRAIN = 7
    PULL_UP = _PULL_UP
    PULL_DOWN = _PULL_DOWN
    IRQ_RISING = _RISING
    IRQ_FALLING = _FALLING

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        if not isinstance(id, int) or not 0 <= id <= 39 or id in _ABSENT:
            raise ValueError("invalid pin")
        self.id = id
        ln = self._line = line(id)
        if value is not None:
            ln.out = 1 if value else 0
        if mode != -1:
            if id >= 34 and mode & 2:
                raise ValueError("pin can only be input")
            ln.mode = mode
        if pull != -1 and id < 34:  # 34 to 39 have no resistors: the port ignores a pull
            ln.pull = 0 if pull is None else pull

    def value(self, x=None):
        ln = self._line
        if x is None:
            return ln.level()
        v = 1 if x else 0
        ln.out = v
        if ln.mode & 2 and ln.listener is not None:
            ln.listener(v)
        return None

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=_RISING | _FALLING, wake=None):
        ln = self._line
        ln.handler = handler
        ln.trigger = trigger if handler is not None else 0
        ln.pin = self
        return None


class _Adc:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    # Full scale per attenuation, microvolts: what the ESP32 ADC reads at most.
    FULL_UV = (950000, 1250000, 1750000, 3100000)

    def __init__(self, pin, *, atten=0):
        n = pin.id if isinstance(pin, Pin) else pin
        if not (32 <= n <= 39 or n in _ADC2):
            raise ValueError("invalid pin for ADC")
        self.n = n
        self._line = line(n)
        self.attn = atten

    def atten(self, a):
        self.attn = a

    def _mv(self):
        if self.n < 32 and _wifi[0]:
            raise OSError(errno.ETIMEDOUT)  # adc2_get_raw: ESP_ERR_TIMEOUT, Wi-Fi holds ADC2
        ln = self._line
        v = ln.uv[ln.uv_i]
        ln.uv_i = (ln.uv_i + 1) % len(ln.uv)
        full = self.FULL_UV[self.attn]
        return (v if v < full else full) // 1000

    def read_u16(self):
        raw = self._mv() * 4095 // (self.FULL_UV[self.attn] // 1000)  # 12 bits, as read
        return raw << 4 | raw >> 8  # scaled to 16 bits the way the port does


ADCWithoutUv = _Adc  # a port without `read_uv` (older than the calibrated reading)


class ADC(_Adc):
    def read_uv(self):
        return self._mv() * 1000


class _WLAN:
    def __init__(self, _if=0):
        pass

    def active(self, on=None):
        if on is None:
            return _wifi[0]
        _wifi[0] = bool(on)
        return None


class _Network:
    STA_IF = 0
    WLAN = _WLAN


network = _Network()  # enough of `network` to switch Wi-Fi on and off


class HX711:
    """The chip on GPIOs `dout` and `sck`. `a`: channel A's inputs in counts at gain 128 (at 64
    a conversion gives half), `b`: channel B's at gain 32; each conversion takes the next, the
    last one repeating. A conversion is ready `period_ms` after the last one was read."""

    def __init__(self, dout, sck, a=(0,), b=(0,), period_ms=10, power_down=False):
        self.a = a
        self.b = b
        self.ia = 0
        self.ib = 0
        self.period_ms = period_ms
        self.power_down = power_down
        self.connected = True  # False: unplugged, DOUT floats
        self.shorted = False  # True: DOUT held low
        self.setting = 25  # the pulses that chose this conversion: 25 A128, 26 B32, 27 A64
        self.used = 0  # the setting of the last conversion read
        self.conversions = 0
        self.pulses = 0  # in the transfer going on
        self.data = 0
        self.bit = 1
        self.ready_at = time.ticks_ms()
        self.high_at = 0
        self.max_high_us = 0
        self.unmasked = 0  # SCK pulses made while interrupts were on
        self.powered_down = 0
        ln = line(dout)
        ln.device = self
        line(sck).listener = self.sck

    def _settle(self):
        """A transfer is over once it had its 25 to 27 pulses and the next conversion is ready:
        its pulses chose that one. With fewer the chip waits for the rest, however long the
        host took (a busy test machine may pause the process between two pulses)."""
        if self.pulses >= 25 and time.ticks_diff(time.ticks_ms(), self.ready_at) >= 0:
            if 25 <= self.pulses <= 27:
                self.setting = self.pulses
            self.pulses = 0

    def dout_level(self):
        if not self.connected:
            return -1
        if self.shorted:
            return 0
        self._settle()
        if self.pulses:
            return self.bit
        return 0 if time.ticks_diff(time.ticks_ms(), self.ready_at) >= 0 else 1

    def _convert(self):
        s = self.setting
        if s == 26:
            v = self.b[self.ib]
            self.ib = min(self.ib + 1, len(self.b) - 1)
        else:
            v = self.a[self.ia]
            self.ia = min(self.ia + 1, len(self.a) - 1)
            if s == 27:
                v //= 2
        self.used = s
        self.conversions += 1
        if v > 0x7FFFFF:
            v = 0x7FFFFF
        elif v < -0x800000:
            v = -0x800000
        return v & 0xFFFFFF

    def sck(self, v):
        if v:
            self.high_at = time.ticks_us()
            if _irq[0]:
                self.unmasked += 1
            if not self.connected:
                return
            self._settle()
            if self.pulses == 0:
                if self.shorted or time.ticks_diff(time.ticks_ms(), self.ready_at) < 0:
                    return  # nothing ready: the pulse is lost on the chip
                self.data = self._convert()
                self.ready_at = time.ticks_add(time.ticks_ms(), self.period_ms)
            self.pulses += 1
            p = self.pulses
            self.bit = (self.data >> (24 - p)) & 1 if p <= 24 else 1
            if p >= 25:
                # DOUT stays high a conversion's time after the transfer: on a chip the 25
                # pulses take microseconds, here Python's time, which may be longer than
                # `period_ms` (the driver checks DOUT is high right after them).
                self.ready_at = time.ticks_add(time.ticks_ms(), self.period_ms)
            return
        high = time.ticks_diff(time.ticks_us(), self.high_at)
        if high > self.max_high_us:
            self.max_high_us = high
        if self.power_down and high > _MAX_HIGH_US:
            # Powered down, and up again with SCK low: reset to channel A at 128, the transfer
            # lost, the first conversion after settling.
            self.powered_down += 1
            self.pulses = 0
            self.setting = 25
            self.ready_at = time.ticks_add(time.ticks_ms(), 4 * self.period_ms)
