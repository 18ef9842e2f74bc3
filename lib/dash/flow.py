"""The platform layer's pulse-counting flow meter (see `platform`): only a slot with one loads
it. For water filters and coffee machines: a Hall-effect flow meter (YF-S201 and its kin) gives
one pulse per few millilitres, and a `Pin` interrupt counts the rising edges.

The raw count is the number of pulses since boot. It grows as the consumable is used, so a
slot calibrates it backwards: `raw_full` 0 (a fresh cartridge), `raw_empty` the pulses the
cartridge lasts (its litres times the meter's pulses per litre).

The count lives in RAM only: writing it to flash at every pulse would wear the flash out. A
reset or a power cut therefore starts it again at 0, which reads as a fresh cartridge: what
was used before the reset is forgotten (docs/configuration.md says what that means for a
maker). On the ESP32 port a pin interrupt is always a soft one: the handler runs from the
scheduler between two bytecodes, and while the interpreter is inside one long C call (a TLS
handshake's arithmetic) no more edges than the scheduler's queue holds are kept.
"""

from array import array


class PulseSensor:
    """Counts rising edges on GPIO `pin`, with the pull resistor of `pull`. Allocates nothing
    once made, neither in `read()` nor in the interrupt handler."""

    def __init__(self, cfg):
        import machine

        P = machine.Pin
        n = cfg["pin"]
        pull = cfg.get("pull", "up")
        if pull == "up":
            pin = P(n, P.IN, P.PULL_UP)
        elif pull == "down":
            pin = P(n, P.IN, P.PULL_DOWN)
        else:
            # None switches both resistors off on the ESP32 port (-1 would leave them as they
            # are); the stubs know pull as an int only.
            pin = P(n, P.IN, None)  # type: ignore[arg-type]
        count = array("i", [0])  # one preallocated int: the handler stores into it

        def tick(_pin):
            count[0] += 1  # a small int into the array: no allocation

        # The handler is made once, here, and kept: nothing is made per edge.
        self._tick = tick
        self._count = count
        self._irq_off = machine.disable_irq
        self._irq_on = machine.enable_irq
        pin.irq(handler=tick, trigger=P.IRQ_RISING)
        self._pin = pin

    def read(self):
        """The pulses counted so far. Read with interrupts off: one word, read whole even on a
        port whose handler runs in the interrupt itself."""
        state = self._irq_off()
        n = self._count[0]
        self._irq_on(state)
        return n
