"""The platform layer's ADC sensor (see `platform`): only a slot with an analog level sensor on
an ESP32 pin loads it.

The raw count is the pin's voltage in microvolts from `read_uv()`, which the ESP32 port
corrects with the chip's factory calibration (eFuse): a calibration made on one board carries
over to the next far better than raw counts would. On a port without it, `read_u16()` (0 to
65535). `samples` reads are averaged into one: the ESP32 ADC is noisy (tens of counts), and the
median after it is for spikes, not for noise.
"""


class AdcSensor:
    """An analog level sensor on an ADC1 pin (GPIO 32 to 39; config refuses any other).
    Allocates nothing once made: the read method is looked up here, the sum is a small int."""

    def __init__(self, cfg):
        import machine

        adc = machine.ADC(machine.Pin(cfg["pin"]))
        db = cfg.get("attenuation", 11)
        A = machine.ADC
        # The input range: 0 dB about 0.1-0.95 V, 2.5 dB to 1.25 V, 6 dB to 1.75 V, 11 dB to
        # 2.45 V (linear; it reads up to about 3.1 V). Anything above reads as the top.
        if db == 0:
            adc.atten(A.ATTN_0DB)
        elif db == 2.5:
            adc.atten(A.ATTN_2_5DB)
        elif db == 6:
            adc.atten(A.ATTN_6DB)
        else:
            adc.atten(A.ATTN_11DB)
        # A bound method, made once: calling it allocates nothing.
        self._read = adc.read_uv if hasattr(adc, "read_uv") else adc.read_u16
        self._n = cfg.get("samples", 1)
        self._adc = adc

    def read(self):
        """The mean of `samples` reads, or None when the ADC refuses (an ADC2 pin while Wi-Fi
        holds ADC2: the port raises OSError; config keeps such pins out, this is the backstop).
        64 reads of at most about 3.3 V in microvolts sum to 2.1e8: a small int."""
        n = self._n
        r = self._read
        total = 0
        try:
            for _ in range(n):
                total += r()
        except OSError:
            return None
        return total // n
