"""Login with Amazon requests: the token refresh (and the code exchange registration makes),
their answers, and what a refusal means for the device. Loaded only for a request, before the
code of the DRS call that needs the token, and dropped again: the held tokens are `tokens`.

The refresh token may rotate: a new one is persisted (atomically) before the access token is
used, so a power cut can never leave the device holding only a token the server has already
retired. A refresh that does not rotate it writes nothing to flash. The answer is read for its
few members without building the rest (`members`), and each token is made once at its size.
"""

import gc
import json

from micropython import const

from dash import fsm, result
from dash.check import octets, printable, unreserved
from dash.https import HttpError, error_name
from dash.tokens import ANSWER_MAX, TOKEN_MAX, mark, room


def quote(s):
    """application/x-www-form-urlencoded value (tokens carry '|')."""
    out = bytearray()
    for c in octets(s):
        if unreserved(c):
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


_WS = const(b" \t\r\n")
_NAMES = const(("access_token", "refresh_token", "expires_in", "token_type", "error"))


def _skip(b, i):
    """The first non-blank at or after i."""
    while i < len(b) and b[i] in _WS:
        i += 1
    return i


def _string_end(b, i):
    """Just past the string that opens at b[i] (a quote); -1 when it does not close."""
    i += 1
    while i < len(b):
        c = b[i]
        if c == 34:
            return i + 1
        i += 2 if c == 92 else 1
    return -1


def _value_end(b, i):
    """Just past the value that starts at b[i]: a string, an object or an array (nested ones
    too, strings in them skipped whole), or a bare word (number, true, false, null)."""
    n = len(b)
    if i >= n:
        return -1
    c = b[i]
    if c == 34:
        return _string_end(b, i)
    if c == 123 or c == 91:  # { [
        depth = 0
        while i < n:
            c = b[i]
            if c == 34:
                i = _string_end(b, i)
                if i < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    while i < n and b[i] not in b",}]" and b[i] not in _WS:
        i += 1
    return i


def value(b, span):
    """The JSON value at `span` of `b` (as `members` found it). A string without escapes (every
    token) is made once, at its own size; json.loads would grow it while reading it, to twice
    that. MemoryError when there is no room for it."""
    i, j = span
    if b[i] == 34:
        k = i + 1
        while k < j - 1 and b[k] != 92:
            k += 1
        if k == j - 1:
            return str(b[i + 1 : j - 1], "utf-8")
    return json.loads(bytes(b[i:j]))


def members(body):
    """{name: (start, end)} of the top-level members of the JSON object `body` that a token
    answer is read for (`_NAMES`): where each value is, none of them made (`value` makes one).
    None when the body is not one JSON object."""
    b = octets(body)
    n = len(b)
    out: dict = {}
    i = _skip(b, 0)
    if i >= n or b[i] != 123:
        return None
    i = _skip(b, i + 1)
    if i < n and b[i] == 125:
        return out if _skip(b, i + 1) == n else None
    while True:
        if i >= n or b[i] != 34:
            return None
        j = _string_end(b, i)
        if j < 0:
            return None
        # A name longer than any in _NAMES is not made at all.
        name = str(b[i + 1 : j - 1], "utf-8") if j - i < 20 else ""
        i = _skip(b, j)
        if i >= n or b[i] != 58:  # :
            return None
        i = _skip(b, i + 1)
        j = _value_end(b, i)
        if j <= i:
            return None
        if name in _NAMES:
            out[name] = (i, j)
        i = _skip(b, j)
        if i < n and b[i] == 44:  # ,
            i = _skip(b, i + 1)
        elif i < n and b[i] == 125:  # }
            return out if _skip(b, i + 1) == n else None
        else:
            return None


def parse_answer(status, body, keep=None):
    """(outcome, access_token, refresh_token or None, expires_in_s, reason). `keep`: a list
    holding the room `grant` set aside for the refresh token; it is emptied, and the heap
    collected, just before that token is made, so that nothing smaller takes the room first.
    The access token is made last: when there is no room left for it, the answer is OK
    without one (None) and its refresh token is kept."""
    b = octets(body) if body else b""
    try:
        spans = members(b) if b else {}
        got = {}
        for k in _NAMES[2:]:  # the small members first
            if spans and k in spans:
                got[k] = value(b, spans[k])
        if keep:
            keep.clear()
            gc.collect()
        rt = value(b, spans["refresh_token"]) if spans and "refresh_token" in spans else None
    except (ValueError, UnicodeError):  # a value we read is not JSON (or not UTF-8)
        spans, got, rt = None, {}, None
    if status == 200:
        if spans is None:
            return result.TRANSIENT, None, None, 0, "token answer is not JSON"
        exp = got.get("expires_in", 3600)
        tt = got.get("token_type", "bearer")
        if rt is not None and (not isinstance(rt, str) or not 0 < len(rt) <= TOKEN_MAX):
            return result.TRANSIENT, None, None, 0, "token answer has a bad refresh_token"
        if not isinstance(tt, str) or tt.lower() != "bearer":
            return result.TRANSIENT, None, None, 0, "token answer is not a bearer token"
        if not isinstance(exp, int) or isinstance(exp, bool) or exp < 1:
            exp = 3600
        at = short = None
        if "access_token" in spans:
            try:
                at = value(b, spans["access_token"])
            except MemoryError:
                short = True
            except (ValueError, UnicodeError):
                pass
        if short:  # a good refresh token is kept all the same
            return result.OK, None, rt, 0, "low memory: no room for the access token"
        if not isinstance(at, str) or not 0 < len(at) <= TOKEN_MAX or not printable(at):
            return result.TRANSIENT, None, None, 0, "token answer has no usable access_token"
        return result.OK, at, rt, min(exp, 86400), ""
    err = got.get("error") if got else None
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


def refresh(app, reserve=None):
    """Refresh the access token now, log it, and act on a refusal (a revoked registration,
    rejected client credentials). None, or why not: (outcome, reason, False, Retry-After).
    `reserve`: what `tokens.room()` set aside for it, if the caller made it already."""
    tokens = app.tokens
    if tokens.unsaved and not tokens.save():
        # LwA may already have retired the token on flash: this one must be there first.
        return result.TRANSIENT, "the refresh token is not on flash yet", False, None
    try:
        form = refresh_body(tokens.refresh, tokens.client_id, tokens.client_secret)
        outcome, reason = grant(tokens, app.https, app.lwa_url, form, False, reserve)
    except HttpError as e:
        return result.TRANSIENT, "network: " + error_name(e.args[0]), False, None
    ok = outcome == result.OK and tokens.access is not None
    app.log("token-refresh", ok=ok, reason=reason)
    if ok:
        return None
    if outcome == result.OK:  # the refresh token taken, no room for the access token
        return result.TRANSIENT, reason, False, None
    if outcome == result.REVOKED:
        from dash.provision import unregister

        unregister(app, reason)
    elif outcome == result.SUSPEND:
        from dash.episode import suspend

        app.creds_bad = True
        for sl in app.slots:
            if sl.fsm.state != fsm.SUSPENDED:
                suspend(app, sl, fsm.K_CREDS, reason)
    return outcome, reason, False, tokens.retry_after


def grant(tokens, https, url, form, need_refresh, reserve=None):
    """One token request (a refresh, or a code exchange): (outcome, reason). On success the
    tokens are taken, a rotated refresh token persisted before anything uses it; without room
    for the access token (the reason says so), `tokens.access` is None. `reserve`: what
    `tokens.room()` set aside, made by the caller before this module was loaded; else made
    here."""
    host, port, path = url
    # Room for one token made at its size, set aside before the request leaves: after LwA has
    # answered, a rotated refresh token must not be lost for want of memory, and LwA may
    # answer with tokens longer than the ones it replaces. Without that room, nothing is sent.
    # The answer itself, up to the largest taken, is read into the transport's buffer, and
    # one bigger is refused. The refresh token is made first, in the room given back; the
    # access token after it, as room allows (`parse_answer`): without it, the refresh token is
    # kept and the next refresh gets another.
    keep = reserve or room()
    if keep is None:
        tokens.retry_after = None
        return result.TRANSIENT, "low memory: token refresh postponed"
    status, body, hdrs = https.request(
        b"POST",
        host,
        port,
        path,
        (b"Content-Type: application/x-www-form-urlencoded\r\n",),
        form,
        ANSWER_MAX,
    )
    del reserve
    outcome, at, rt, exp, reason = parse_answer(status, body, keep)
    del body
    tokens.retry_after = hdrs.get("retry-after")
    if outcome != result.OK:
        return outcome, reason
    if need_refresh and not rt:
        return result.TRANSIENT, "token answer has no refresh_token"
    tokens.refreshes += 1
    clock = tokens.clock
    now = clock.wall()
    tokens.exp_ticks = clock.ticks_add(clock.ticks_ms(), exp * 1000)
    tokens.exp_wall = now + exp if now else 0
    tokens.life_s = exp
    if rt:
        tokens.refresh = rt
    # Persist before use: a rotated refresh token lost now would strand the device. Not
    # rotated: the record is unchanged and the store writes nothing. When the write fails
    # (flash full, worn, no memory), the token is the only good one there is: it is kept,
    # written by a later step, and sent to LwA by no refresh before that (see `refresh`).
    saved = tokens.save()
    tokens.access = at
    keep_access(tokens, at if now else None)
    if saved:
        return result.OK, reason  # "" or, with no access token, why not
    return result.OK, "the new refresh token is not on flash yet"


def keep_access(tokens, at):
    """The access token to RTC memory, with the refresh token it came from (by checksum)."""
    warm = tokens.warm
    if at:
        warm["at"] = at
        warm["exp"] = tokens.exp_wall
        warm["rs"] = mark(tokens.refresh)
    else:
        for k in ("at", "exp", "rs"):
            warm.pop(k, None)
    tokens.keep()
