"""One authorised DRS call: Wi-Fi up, an access token (refreshed when needed and once more
when DRS refuses it), the request. Loaded with `drs` by whatever makes a call (an order, a
periodic call, registration) and dropped with them when it is done, so the resident code is
only what sampling needs.
"""

from dash import drs, fsm, result
from dash.https import E_TIMEOUT, ERROR_NAMES, HttpError
from dash.platform import net_up


def call(app, kind, path, body=b"", max_body=1024):
    """((status, body, headers), None), or (None, (outcome, reason, maybe_sent,
    retry-after)) when no answer came."""
    if not net_up(*app.wifi):
        return None, (result.TRANSIENT, "network: no Wi-Fi", False, None)
    tokens = app.tokens
    for again in (False, True):
        try:
            if not tokens.valid():
                outcome, reason = tokens.renew(app.https, app.lwa_url)
                app.log("token-refresh", ok=outcome == result.OK, reason=reason)
                if outcome != result.OK:
                    _token_refused(app, outcome, reason)
                    return None, (outcome, reason, False, tokens.retry_after)
            ans = drs.call(app.https, app.drs_url, kind, path, tokens.access, body, max_body)
        except HttpError as e:
            code = e.args[0]
            reason = "network: " + ERROR_NAMES[code]
            return None, (result.TRANSIENT, reason, code >= E_TIMEOUT, None)
        if ans[0] in (400, 401, 403) and not again:
            app.log("auth-refused", path=path, status=ans[0], action="refresh token, retry once")
            tokens.invalidate()
            continue
        return ans, None


def answer(app, kind, path, body=b"", max_body=1024, ok=(200,)):
    """(answer, None) for a status in `ok`, else (None, (outcome, reason, Retry-After))."""
    ans, fail = call(app, kind, path, body, max_body)
    if fail:
        return None, (fail[0], fail[1], fail[3])
    st = ans[0]
    if st in ok:
        return ans, None
    return None, (drs.status_outcome(st), drs.status_reason(st), ans[2].get("retry-after"))


def _token_refused(app, outcome, reason):
    if outcome == result.REVOKED:
        from dash.provision import unregister

        unregister(app, reason)
    elif outcome == result.SUSPEND:
        from dash.episode import suspend

        app.creds_bad = True
        for sl in app.slots:
            if sl.fsm.state != fsm.SUSPENDED:
                suspend(app, sl, fsm.K_CREDS, reason)
