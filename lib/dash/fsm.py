"""Threshold state machine of one slot: pure logic, table-driven, no allocation per step.

The machine only decides. The application feeds it one event per sample or per order result
and acts on the state it lands in (ORDERING means: place the order now).
"""

from micropython import const

from dash.check import word

# States (small ints; persisted as they are, so never renumber).
WARMUP = const(0)  # after boot, filter settling; resumes the persisted state when done
MONITOR = const(1)  # level above the low threshold (or not yet confirmed low)
CONFIRM = const(2)  # low, counting consecutive low samples
ORDERING = const(3)  # an order must be placed (or its answer is outstanding)
ORDERED = const(4)  # order placed, waiting for the refill
INPROGRESS = const(5)  # DRS said ORDER_INPROGRESS: long back-off before asking again
RETRY = const(6)  # transient failure: exponential back-off before asking again
FAULT = const(7)  # sensor fault: nothing is decided on readings until they are sane
SUSPENDED = const(8)  # needs a human: unknown slot, revoked registration, bad credentials
UNSUBSCRIBED = const(9)  # low, but the customer has no subscription for this slot
N_STATES = const(10)

# Their names, in order: one string, not a tuple of strings (each a heap object); see `name`.
_NAMES = const(
    "warmup monitor confirm ordering ordered inprogress retry fault suspended unsubscribed"
)

# Events. Those only the samples raise are private: no name in the module's dict.
_E_LOW = const(0)  # sane reading at or below the low threshold
_E_MID = const(1)  # sane reading between the thresholds
_E_HIGH = const(2)  # sane reading at or above the high threshold (a refill)
_E_FAULT = const(3)  # implausible reading
_E_WARM = const(4)  # warm-up over
_E_CONFIRMED = const(5)  # enough consecutive low readings
E_TIMER = const(6)  # the back-off deadline has passed
E_PLACED = const(7)  # an order exists for this episode (placed, or ours in progress)
E_INPROGRESS = const(8)  # somebody else's order is open
E_RETRY = const(9)  # transient failure
E_SUSPEND = const(10)  # permanent failure
E_REARM = const(11)  # the episode's order is gone (cancelled), or a human fixed things
E_UNSUB = const(12)  # the slot has no subscription: no order may be placed for it
N_EVENTS = const(13)

# Why a slot is suspended (persisted), and so what may resume it.
K_SLOT = const(1)  # DRS answered 404 for the slot: the config must change
K_CREDS = const(2)  # LwA refused the client credentials: the secrets must change
K_REG = const(3)  # no registration: a new one resumes the slot
K_UNLISTED = const(4)  # SubscriptionInfo does not list the slot: resumes when it does

# One row per state, one column per event: the number of the state the event leads to, "."
# to stay, "r" to go back to the state before warm-up or the fault. Columns: L LOW, M MID,
# H HIGH, F FAULT, W WARM, C CONFIRMED, T TIMER, P PLACED, I INPROGRESS, R RETRY, S SUSPEND,
# A REARM, U UNSUB. Bytes, not bytes((...)) of the names: that tuple of 130 numbers would stay
# in the heap (1 KB) as the module's constant.
_STAY = const(46)  # "."
_BACK = const(114)  # "r"
_DIGIT = const(48)  # "0"
#         LMHFWCTPIRSAU
_TABLE = (
    const(
        b"....r.....8.."  # 0 WARMUP
        b"2..7......8.."  # 1 MONITOR
        b".117.3....8.."  # 2 CONFIRM
        b"..1....4568.9"  # 3 ORDERING
        b"..17......81."  # 4 ORDERED
        b"..17..3...8.."  # 5 INPROGRESS
        b"..17..3...8.."  # 6 RETRY
        b"rrr.......8.."  # 7 FAULT
        b".......4...1."  # 8 SUSPENDED
        b"..17......81."
    )  # 9 UNSUBSCRIBED
)


def name(state):
    """A state's name, for logs and status. It allocates the name (unless the text is
    interned already); with no memory even for that, the number itself."""
    try:
        return word(_NAMES, state)
    except MemoryError:
        return state


class Machine:
    """One slot's machine. `state` and `resume` are what must survive a reboot."""

    def __init__(self, low, high, confirm, warmup):
        self.low = low
        self.high = high
        self.confirm = confirm
        self.warmup = warmup
        self.state = WARMUP
        self.resume = MONITOR
        self._count = 0

    def restore(self, state):
        """Start from a persisted state: warm up first, then carry on where we were."""
        if state == SUSPENDED:
            self.state = SUSPENDED
            return
        if state not in (ORDERING, ORDERED, INPROGRESS, RETRY, UNSUBSCRIBED):
            state = MONITOR
        self.resume = state
        self.state = WARMUP
        self._count = 0

    def durable(self):
        """The state worth persisting: what a reboot should come back to."""
        s = self.state
        if s == WARMUP or s == FAULT:
            s = self.resume
        return MONITOR if s == CONFIRM else s

    def classify(self, level):
        """Event for a sane reading; hysteresis lives in the gap between low and high."""
        if level <= self.low:
            return _E_LOW
        if level >= self.high:
            return _E_HIGH
        return _E_MID

    def sample(self, level):
        """Feed one filtered reading (negative = sensor fault). Returns the new state."""
        if level < 0:
            return self.event(_E_FAULT)
        ev = self.classify(level)
        s = self.state
        if s == WARMUP:
            self._count += 1
            if self._count < self.warmup:
                return s
            s = self.event(_E_WARM)
        elif s == FAULT:
            s = self.event(ev)
        # The reading that ends warm-up or a fault is also the resumed state's first one.
        if ev == _E_LOW and (s == MONITOR or s == CONFIRM):
            self.event(_E_LOW)
            self._count += 1
            if self._count >= self.confirm:
                return self.event(_E_CONFIRMED)
            return self.state
        if s == ORDERED or s == INPROGRESS or s == RETRY:
            # An order may be out: a refill is confirmed over as many readings in a row as a
            # low is, two at least, whatever the filter (a load cell is bumped when a door
            # shuts, and one glitch taken for a refill would re-arm the slot).
            if ev != _E_HIGH:
                self._count = 0
                return s
            self._count += 1
            if self._count < self.confirm or self._count < 2:
                return s
        return self.event(ev)

    def event(self, ev):
        """Apply one event through the table. Returns the new state."""
        s = self.state
        nxt = _TABLE[s * N_EVENTS + ev]
        if nxt == _STAY:
            return s
        if nxt == _BACK:
            nxt = self.resume
            self.resume = MONITOR
        else:
            nxt -= _DIGIT
            if nxt == FAULT:
                # Remember what to go back to; an unconfirmed low starts over.
                self.resume = MONITOR if s == CONFIRM else s
        self.state = nxt
        if nxt != CONFIRM:
            self._count = 0
        return nxt
