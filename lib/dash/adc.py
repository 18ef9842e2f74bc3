"""The platform layer's ADC sensor (see `platform`): only a slot with an analog level sensor on
an ESP32 pin loads it."""


class AdcSensor:
    """An analog level sensor on an ESP32 ADC pin, 16-bit scaled. Allocates nothing."""

    def __init__(self, pin):
        import machine

        self._adc = machine.ADC(machine.Pin(pin))
        self._adc.atten(machine.ADC.ATTN_11DB)

    def read(self):
        return self._adc.read_u16()
