"""Registration and what comes with it: the PKCE verifier the device keeps and its challenge,
the authorization-code exchange, deregistration, relayed DRS notifications. Rarely used, so
the application imports it on demand and drops it again.

The verifier never leaves the device except inside the authorization-code request to the
token endpoint; the maker's registration page only ever sees the challenge.
"""

import json
import os
from binascii import b2a_base64

from micropython import const

from dash import fsm, result
from dash.episode import resume, suspend

PKCE = "pkce.json"


def b64url(data):
    """base64url without padding (RFC 7636)."""
    return b2a_base64(data).strip().replace(b"+", b"-").replace(b"/", b"_").rstrip(b"=")


def verifier(store, new=False):
    """The device's code_verifier: 64 characters from 48 random bytes, kept on flash until a
    code exchange uses it."""
    rec = None if new else store.load(PKCE)
    v = rec.get("v") if rec else None
    if not isinstance(v, str) or not 43 <= len(v) <= 128:
        v = b64url(os.urandom(48)).decode()
        store.save(PKCE, {"v": v})
    return v


def challenge(v):
    """S256 code_challenge of a verifier."""
    import hashlib

    return b64url(hashlib.sha256(v.encode()).digest()).decode()


def forget_provisioned_token(root):
    """Rewrite secrets.json without its refresh_token (atomically), keeping the rest."""
    path = root + "/secrets.json"
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read(os.stat(path)[6]))  # its size: no 8 KB buffer for it
    except (OSError, ValueError):
        return
    if not isinstance(obj, dict) or "refresh_token" not in obj:
        return
    del obj["refresh_token"]
    from dash.store import replace

    replace(path, json.dumps(obj))


def exchange(tokens, https, url, code, redirect_uri, verifier):
    """Trade an authorization code for the device's first tokens (confidential client with
    its secret, or PKCE with the verifier). Returns (outcome, reason)."""
    from dash.lwa import grant, quote

    body = b"grant_type=authorization_code&code=" + quote(code)
    body += b"&redirect_uri=" + quote(redirect_uri) + b"&client_id=" + quote(tokens.client_id)
    if tokens.client_secret:
        body += b"&client_secret=" + quote(tokens.client_secret)
    else:
        body += b"&code_verifier=" + quote(verifier)
    outcome, reason = grant(tokens, https, url, body, True)
    if outcome == result.REVOKED:
        reason = "authorization code expired, already used or not for this device"
    return outcome, reason


def give_challenge(app):
    """The PKCE challenge for the maker's registration page (the verifier stays here)."""
    return {"code_challenge": challenge(verifier(app.store)), "code_challenge_method": "S256"}


def register(app, code):
    """Exchange an authorization code from the registration page for the device's tokens."""
    from dash.check import printable
    from dash.https import HttpError, error_name

    def refuse(why):
        app.log("register-failed", reason=why)
        return {"ok": False, "reason": why}

    tokens = app.tokens
    if tokens.registered:
        return refuse("already registered: deregister first")
    redirect = app.cfg["redirect_uri"]
    if not redirect:
        return refuse("config.json: 'redirect_uri' is needed to register")
    if not isinstance(code, str) or not 0 < len(code) <= 512 or not printable(code):
        return refuse("that is not an authorization code")
    try:
        # A refresh token left in secrets.json (its removal failed) would be taken at the
        # next boot as newly provisioned, and its refusal would cost the new registration.
        forget_provisioned_token(app.root)
    except (OSError, MemoryError):
        return refuse("flash: the old refresh token could not be removed from secrets.json")
    app.refingerprint()
    v = ""
    if not tokens.client_secret:
        if not app.store.exists(PKCE):
            return refuse("no PKCE challenge was given out: ask for the challenge first")
        v = verifier(app.store)
    try:
        outcome, reason = exchange(tokens, app.https, app.lwa_url, code, redirect, v)
    except HttpError as e:
        return refuse("network: " + error_name(e.args[0]))
    if outcome != result.OK:
        return refuse(reason)
    app.store.remove(PKCE)  # a verifier is good for one exchange
    app.log("registered", pkce=bool(v))
    app.sub_dirty = True
    app.creds_bad = False
    for sl in app.slots:
        # LwA has just accepted the client too: a refusal of its credentials is over.
        if sl.fsm.state == fsm.SUSPENDED and sl.rec.get("sk") in (fsm.K_REG, fsm.K_CREDS):
            resume(app, sl, "registered")
    app.persist()
    return {"ok": True, "reason": ""}


_DEREGISTER = const((b"DELETE", b"DrsDeregisterInput@2.0", b"DrsDeregisterResult@1.0"))


def deregister(app):
    """Tell DRS the registration ends, then forget every token whatever DRS said."""
    confirmed, why = False, "not registered"
    if app.tokens.registered:
        from dash.link import call

        ans, fail = call(app, _DEREGISTER, "/registration")
        confirmed = ans is not None and 200 <= ans[0] < 300
        why = fail[1] if fail else "" if confirmed else "HTTP %d" % ans[0]
    unregister(app, "deregistered on request")
    return {"ok": True, "drs_confirmed": confirmed, "reason": why}


def unregister(app, reason):
    """No registration any more: no token stays on flash and no slot orders."""
    from dash.lwa import keep_access
    from dash.tokens import TOKENS, mark

    tokens = app.tokens
    tokens.access = None
    tokens.refresh = ""
    tokens.unsaved = False  # nothing left to write
    tokens.seed = mark("")
    tokens.store.remove(TOKENS)
    keep_access(tokens, None)  # and from RTC memory
    try:
        forget_provisioned_token(app.root)
    except (OSError, MemoryError) as e:  # `register` tries again before it trades
        why = "low memory" if isinstance(e, MemoryError) else "flash: %s" % e
        app.log("persist-postponed", reason=why, file="secrets.json")
    app.refingerprint()
    app.state.pop("sub", None)
    app.log("unregistered", reason=reason)
    for sl in app.slots:
        if sl.fsm.state != fsm.SUSPENDED:
            suspend(app, sl, fsm.K_REG, reason)
    app.persist()


def relay(app, msg):
    """A DRS notification relayed by the maker's cloud (SNS -> MQTT -> here)."""
    info = msg.get("notificationInfo") if isinstance(msg, dict) else None
    kind = info.get("notificationType") if isinstance(info, dict) else None
    if not isinstance(kind, str):
        app.log("relay-ignored", reason="not a DRS notification")
        return {"ok": False, "reason": "not a DRS notification"}
    kind = kind.replace("Notification", "")
    app.log("relay", type=kind)
    matched = 0
    if kind == "SubscriptionChanged":
        app.sub_dirty = True
    elif kind == "DeviceDeregistered":
        # Notifications arrive late and out of order: LwA says whether it is still true, when
        # the device-wide back-off allows (each one checked is one token refresh).
        app.verify_reg = app.tokens.registered
    elif kind == "OrderCancelled":
        matched = _order_cancelled(app, msg.get("orderInfo"))
    return {"ok": True, "reason": "", "matched": matched}


def _order_cancelled(app, order):
    """Nothing is taken on trust: a slot waiting for the order a notification names asks
    GetOrderInfo about it now, within `order_checks_max`, and only DRS's answer re-arms it."""
    eid = order.get("instanceId") if isinstance(order, dict) else None
    if not isinstance(eid, str):
        return 0
    matched = 0
    most = app.cfg["order_checks_max"]  # 0: no periodic checks; a relayed one still gets one
    for sl in app.slots:
        rec = sl.rec
        if sl.fsm.durable() != fsm.ORDERED or eid != rec.get("ev") or rec.get("od"):
            continue  # not its order; or delivered, and a delivered order is not cancelled
        if rec.get("oc", 0) < most:
            sl.check_at = app.up_s
            if not rec.get("ox"):
                rec["ox"] = 1  # if this check is the last periodic one, one more after it
        elif not rec.get("ox"):
            # Checks used up (an order open for weeks, an id DRS did not know once): one more,
            # once per order, an interval from now (DRS may show the cancellation a little
            # after the notification).
            rec["ox"] = 1
            sl.check_at = app.up_s + app.cfg["order_check_s"]
        else:
            continue
        matched += 1
    if matched:
        app.persist()
    return matched


def test_order(app, slot_id):
    """Order for one slot now, whatever its level: only for a test registration, where DRS
    answers TEST_ORDER_PLACED and nothing ships."""
    if not app.cfg["test_device"]:
        return {
            "ok": False,
            "reason": "config.json: 'test_device' is false; this would be a real order",
        }
    sl = None
    for s in app.slots:
        if s.id == slot_id or slot_id is None:
            sl = s
            break
    if sl is None:
        return {"ok": False, "reason": "no slot %s" % slot_id}
    if sl.fsm.state == fsm.SUSPENDED:
        return {"ok": False, "reason": "slot suspended: " + sl.reason}
    from dash.app import OPEN

    st = sl.fsm.durable()
    if st in OPEN:
        # Its own order (or one it may have placed, or somebody else's) is open: a test order
        # now would be taken for it, or turn it into somebody else's.
        why = "slot %s has an order open (%s): wait for its delivery or cancellation"
        return {"ok": False, "reason": why % (sl.id, fsm.name(st))}
    app.log("test-order", slot=sl.id)
    sl.fsm.state = fsm.ORDERING
    app.order(sl)
    rec = sl.rec
    return {
        "ok": sl.fsm.state == fsm.ORDERED,
        "slot": sl.id,
        "state": fsm.name(sl.fsm.state),
        "event_instance_id": rec.get("ev"),
        "detail_code": rec.get("dc"),
    }
