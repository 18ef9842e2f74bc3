"""Login with Amazon requests: the token refresh (and the code exchange registration makes),
their answers, and what a refusal means for the device. Loaded only for a request, before the
code of the DRS call that needs the token, and dropped again: the held tokens are `tokens`.

The refresh token may rotate: a new one is persisted (atomically) before the access token is
used, so a power cut can never leave the device holding only a token the server has already
retired. A refresh that does not rotate it writes nothing to flash.
"""

import json

from micropython import const

from dash import fsm, result
from dash.check import octets, printable, unreserved
from dash.https import ERROR_NAMES, HttpError
from dash.tokens import TOKENS, mark

_MAX_ANSWER = const(6144)  # access + refresh token are at most 2 KB each
_PIECE_MIN = const(640)
_FRAME = const(1024)  # an answer's head and the JSON around its tokens


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


def refresh(app):
    """Refresh the access token now, log it, and act on a refusal (a revoked registration,
    rejected client credentials). None, or why not: (outcome, reason, False, Retry-After)."""
    tokens = app.tokens
    try:
        form = refresh_body(tokens.refresh, tokens.client_id, tokens.client_secret)
        outcome, reason = grant(tokens, app.https, app.lwa_url, form, False)
    except HttpError as e:
        return result.TRANSIENT, "network: " + ERROR_NAMES[e.args[0]], False, None
    app.log("token-refresh", ok=outcome == result.OK, reason=reason)
    if outcome == result.OK:
        return None
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


def grant(tokens, https, url, form, need_refresh):
    """One token request (a refresh, or a code exchange): (outcome, reason). On success the
    tokens are taken, a rotated refresh token persisted before anything uses it."""
    host, port, path = url
    # Room to parse the answer's tokens and save the refresh token (three token-sized
    # pieces), taken before the request leaves and given back once the answer is in: after
    # LwA has answered, a rotated refresh token must not be lost for want of memory. The
    # new tokens are about as long as the current ones. Without that room, nothing is sent.
    # The answer itself (both tokens, the JSON around them, the head) goes where the
    # transport reads it; when it would not fit in the transport's buffer, into one
    # reserved here.
    piece = max(_PIECE_MIN, len(tokens.refresh), len(tokens.access or "")) + 64
    answer = 2 * piece + _FRAME
    try:
        spare = [bytearray(piece), bytearray(piece), bytearray(piece)]
        spill = bytearray(answer) if answer > len(https.buf) else None
    except MemoryError:
        tokens.retry_after = None
        return result.TRANSIENT, "low memory: token refresh postponed"
    status, body, hdrs = https.request(
        b"POST",
        host,
        port,
        path,
        (b"Content-Type: application/x-www-form-urlencoded\r\n",),
        form,
        _MAX_ANSWER,
        spill,
    )
    del spare, spill  # free for the parse below (the GC collects when it runs short)
    outcome, at, rt, exp, reason = parse_answer(status, body)
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
    if rt:
        tokens.refresh = rt
    # Persist before use: a rotated refresh token lost now would strand the device. Not
    # rotated: the record is unchanged and the store writes nothing.
    tokens.store.save(TOKENS, {"seed": tokens.seed, "rt": tokens.refresh})
    tokens.access = at
    _keep_access(tokens, at if now else None)
    return result.OK, ""


def _keep_access(tokens, at):
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


def wipe(tokens):
    """Forget every token (the caller also clears the provisioned one in secrets.json)."""
    tokens.access = None
    tokens.refresh = ""
    tokens.seed = mark("")
    tokens.store.remove(TOKENS)
    _keep_access(tokens, None)
