"""The device's Login with Amazon tokens as held between calls: restored at boot, and asked
on every DRS call whether the access token is still good. Bookkeeping only; the requests that
get new tokens, and what is done with their answers, are in `lwa` (loaded when needed).

The flash record holds the refresh token alone; the access token and its absolute expiry
(when the wall clock is known) live in RTC memory, which keeps them across a reboot.
"""

from binascii import crc32

from micropython import const

from dash.check import octets

TOKENS = "tokens.json"
TOKEN_MAX = const(2048)  # LwA's access and refresh tokens are at most 2 KB each
ANSWER_MAX = const(2 * TOKEN_MAX + 256)  # the largest token answer: two tokens, and around them
_PIECE = const(TOKEN_MAX + 256)  # one token made at its size, and a few small objects


def room():
    """What a token request sets aside before it is sent (`lwa.grant`): room for the refresh
    token made at its size from the answer (which the transport's buffer holds), in a list
    that holds it alone (it is given back by emptying the list). Made before the request's
    code is loaded: a big block first, while the heap still has it. None when it has not."""
    try:
        return [bytearray(_PIECE)]
    except MemoryError:
        return None


def mark(token):
    """A token's checksum, kept in its place where all that matters is which token it was:
    the provisioned refresh token a record descends from, the one an access token belongs to."""
    return crc32(octets(token))  # no copy of a 2 KB token


def fresh(now, expiry, margin):
    """True while a token expiring at `expiry` is good for `margin` more (same unit)."""
    return expiry - now > margin


class Tokens:
    """Restored from flash and RTC memory; `lwa` refreshes and persists them."""

    def __init__(self, store, secrets, clock, margin_s, warm, keep):
        self.store = store
        self.warm = warm  # the app's RTC-memory record, written with `keep()`
        self.keep = keep
        self.clock = clock
        self.margin_s = margin_s
        self.client_id = secrets["client_id"]
        self.client_secret = secrets.get("client_secret", "")
        self.refreshes = 0
        self.retry_after = None  # the last refused answer's Retry-After, if it had one
        self.access = None
        self.unsaved = False  # a rotated refresh token is not on flash yet (see `save`)
        self.exp_wall = 0
        self.exp_ticks = 0
        self.life_s = 0  # the access token's lifetime as LwA gave it; 0 = not known
        self.seed = mark(secrets["refresh_token"])
        rec = store.load(TOKENS)
        self.lost = rec is None and store.exists(TOKENS)  # there, but damaged
        self.refresh = secrets["refresh_token"]
        if rec and rec.get("seed") == self.seed and isinstance(rec.get("rt"), str):
            # A rotated token descends from the provisioned one; a new provisioning wins.
            self.refresh = rec["rt"]
        at = warm.get("at")
        if isinstance(at, str) and warm.get("rs") == mark(self.refresh):
            exp, now = warm.get("exp", 0), clock.wall()
            if isinstance(exp, int) and now and fresh(now, exp, margin_s):
                self.access = at
                self.exp_wall = exp

    def valid(self):
        # A token LwA gives for less than twice the margin keeps half its life: else it is
        # never good, and every call refreshes twice.
        m, life = self.margin_s, self.life_s
        if 0 < life < 2 * m:
            m = life // 2
        return self.access is not None and fresh(0, self.left_ms(), m * 1000)

    def left_ms(self):
        """What the access token has left: by the wall clock when it and the absolute expiry
        are known (they survive a reboot), else by the ticks counted since the refresh."""
        now = self.clock.wall()
        if self.exp_wall and now:
            return (self.exp_wall - now) * 1000
        return self.clock.ticks_diff(self.exp_ticks, self.clock.ticks_ms())

    def save(self):
        """The refresh token to flash (nothing is written when it is already there). False
        when the write failed: `unsaved` then stays set, each step tries again, and no refresh
        sends the token before it is on flash."""
        try:
            self.store.save(TOKENS, {"seed": self.seed, "rt": self.refresh})
        except (OSError, MemoryError):
            self.unsaved = True
            return False
        self.unsaved = False
        return True

    @property
    def registered(self):
        return bool(self.refresh)
