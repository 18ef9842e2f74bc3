"""One authorised DRS call: Wi-Fi up, an access token (see `App.authorise`; refreshed once
more when DRS refuses it), the request. Loaded with `drs` by whatever makes a call (an order, a
periodic call, registration) and dropped with them when it is done, so the resident code is
only what sampling needs.
"""

from dash import drs, result
from dash.https import HttpError, error_name
from dash.platform import net_down


def call(app, kind, path, body=b"", max_body=1024, rec=None):
    """((status, body, headers), None), or (None, (outcome, reason, maybe_sent,
    retry-after)) when no answer came. `maybe_sent`: the request left whole, so the server may
    have acted on it. `rec`: an order's slot record, marked `unc` when an attempt was refused
    after it left (a server may act and still say no) before the retry."""
    down = net_down(*app.wifi)
    if down:
        return None, (result.TRANSIENT, "network: " + down, False, None)
    tokens = app.tokens
    for again in (False, True):
        fail = app.authorise()  # done already, as a rule, before this module was loaded
        if fail:
            return None, fail
        try:
            ans = drs.call(app.https, app.drs_url, kind, path, tokens.access, body, max_body)
        except HttpError as e:
            reason = "network: " + error_name(e.args[0])
            return None, (result.TRANSIENT, reason, app.https.sent, None)
        if ans[0] in (400, 401, 403) and not again:
            if rec is not None:
                rec["unc"] = 1
            app.log("auth-refused", path=path, status=ans[0], action="refresh token, retry once")
            tokens.access = None  # refreshed when the loop comes round
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
