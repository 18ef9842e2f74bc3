"""Login with Amazon tokens: expiry arithmetic, the refresh request and its answer.

The refresh token may rotate: a new one is persisted (atomically) before the access token is
used, so a power cut can never leave the device holding only a token the server has already
retired. The flash record holds the refresh token alone, so a refresh that does not rotate it
writes nothing; the access token and its absolute expiry (when the wall clock is known) go to
RTC memory, which keeps them across a reboot.
"""

import json
from binascii import crc32

from micropython import const

from dash import result
from dash.check import printable

TOKENS = "tokens.json"
_MAX_ANSWER = const(6144)  # access + refresh token are at most 2 KB each
_PIECE_MIN = const(640)
_UNRESERVED = b"-._~"


def quote(s):
    """application/x-www-form-urlencoded value (tokens carry '|')."""
    out = bytearray()
    for c in s.encode() if isinstance(s, str) else s:
        if 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in _UNRESERVED:
            out.append(c)
        else:
            out += b"%%%02X" % c
    return bytes(out)


def refresh_body(refresh_token, client_id, client_secret):
    b = b"grant_type=refresh_token&refresh_token=" + quote(refresh_token)
    b += b"&client_id=" + quote(client_id)
    if client_secret:
        b += b"&client_secret=" + quote(client_secret)
    return b


def parse_answer(status, body):
    """(outcome, access_token, refresh_token or None, expires_in_s, reason)."""
    try:
        obj = json.loads(body) if body else {}
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        obj = None
    if status == 200:
        if obj is None:
            return result.TRANSIENT, None, None, 0, "token answer is not JSON"
        at = obj.get("access_token")
        rt = obj.get("refresh_token")
        exp = obj.get("expires_in", 3600)
        tt = obj.get("token_type", "bearer")
        if not isinstance(at, str) or not 0 < len(at) <= 2048 or not printable(at):
            return result.TRANSIENT, None, None, 0, "token answer has no usable access_token"
        if rt is not None and (not isinstance(rt, str) or not 0 < len(rt) <= 2048):
            return result.TRANSIENT, None, None, 0, "token answer has a bad refresh_token"
        if not isinstance(tt, str) or tt.lower() != "bearer":
            return result.TRANSIENT, None, None, 0, "token answer is not a bearer token"
        if not isinstance(exp, int) or isinstance(exp, bool) or exp < 1:
            exp = 3600
        return result.OK, at, rt, min(exp, 86400), ""
    err = obj.get("error") if obj else None
    if err == "invalid_grant":
        return result.REVOKED, None, None, 0, "registration revoked (invalid_grant)"
    if err in ("invalid_client", "unauthorized_client"):
        return result.SUSPEND, None, None, 0, "client credentials rejected (%s)" % err
    if status == 401:
        return result.SUSPEND, None, None, 0, "client credentials rejected (401)"
    if status == 429 or status >= 500:
        return result.TRANSIENT, None, None, 0, "token endpoint answered %d" % status
    return (
        result.TRANSIENT,
        None,
        None,
        0,
        "token endpoint answered %d %s"
        % (
            status,
            err if isinstance(err, str) and len(err) < 40 else "",
        ),
    )


def seed_of(refresh_token):
    """Which provisioned refresh token a persisted record descends from (not the token)."""
    return crc32(refresh_token.encode())


def fresh(now, expiry, margin):
    """True while a token expiring at `expiry` is good for `margin` more (same unit)."""
    return expiry - now > margin


class Tokens:
    """The device's tokens: restored from flash, refreshed on demand, persisted."""

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
        self._exp_wall = 0
        self._exp_ticks = 0
        seed = seed_of(secrets["refresh_token"])
        rec = store.load(TOKENS)
        self.refresh = secrets["refresh_token"]
        self._seed = seed
        if rec and rec.get("seed") == seed and isinstance(rec.get("rt"), str):
            # A rotated token descends from the provisioned one; a new provisioning wins.
            self.refresh = rec["rt"]
        at = warm.get("at")
        if isinstance(at, str) and warm.get("rs") == crc32(self.refresh.encode()):
            exp, now = warm.get("exp", 0), clock.wall()
            if isinstance(exp, int) and now and fresh(now, exp, margin_s):
                self.access = at
                self._exp_wall = exp

    def valid(self):
        if self.access is None:
            return False
        now = self.clock.wall()
        if self._exp_wall and now:
            return fresh(now, self._exp_wall, self.margin_s)
        return fresh(
            0, self.clock.ticks_diff(self._exp_ticks, self.clock.ticks_ms()), self.margin_s * 1000
        )

    def expires_in_s(self):
        """Seconds the access token has left (for status reports), or -1."""
        if self.access is None:
            return -1
        now = self.clock.wall()
        if self._exp_wall and now:
            return self._exp_wall - now
        return self.clock.ticks_diff(self._exp_ticks, self.clock.ticks_ms()) // 1000

    def invalidate(self):
        self.access = None

    @property
    def registered(self):
        return bool(self.refresh)

    def renew(self, https, url):
        """Refresh now. Returns (outcome, reason)."""
        body = refresh_body(self.refresh, self.client_id, self.client_secret)
        return self.grant(https, url, body, False)

    def grant(self, https, url, form, need_refresh):
        host, port, path = url
        # Room to parse the answer's tokens and save the refresh token (three token-sized
        # pieces), taken before the request leaves and given back once the answer is in: after
        # LwA has answered, a rotated refresh token must not be lost for want of memory. The
        # new tokens are about as long as the current ones. Without that room, nothing is sent.
        piece = max(_PIECE_MIN, len(self.refresh), len(self.access or "")) + 64
        try:
            spare = [bytearray(piece), bytearray(piece), bytearray(piece)]
        except MemoryError:
            self.retry_after = None
            return result.TRANSIENT, "low memory: token refresh postponed"
        status, body, hdrs = https.request(
            b"POST",
            host,
            port,
            path.encode(),
            b"Content-Type: application/x-www-form-urlencoded\r\n",
            form,
            _MAX_ANSWER,
        )
        del spare  # free for the parse below (the GC collects when it runs short)
        outcome, at, rt, exp, reason = parse_answer(status, body)
        del body
        self.retry_after = hdrs.get("retry-after")
        if outcome != result.OK:
            return outcome, reason
        if need_refresh and not rt:
            return result.TRANSIENT, "token answer has no refresh_token"
        self.refreshes += 1
        now = self.clock.wall()
        self._exp_ticks = self.clock.ticks_add(self.clock.ticks_ms(), exp * 1000)
        self._exp_wall = now + exp if now else 0
        if rt:
            self.refresh = rt
        # Persist before use: a rotated refresh token lost now would strand the device. Not
        # rotated: the record is unchanged and the store writes nothing.
        self.store.save(TOKENS, {"seed": self._seed, "rt": self.refresh})
        self.access = at
        self._keep_access(at if now else None)
        return result.OK, ""

    def _keep_access(self, at):
        """The access token to RTC memory, with the refresh token it came from (by checksum)."""
        warm = self.warm
        if at:
            warm["at"] = at
            warm["exp"] = self._exp_wall
            warm["rs"] = crc32(self.refresh.encode())
        else:
            for k in ("at", "exp", "rs"):
                warm.pop(k, None)
        self.keep()

    def wipe(self):
        """Forget every token (the caller also clears the provisioned one in secrets.json)."""
        self.access = None
        self.refresh = ""
        self._seed = seed_of("")
        self.store.remove(TOKENS)
        self._keep_access(None)
