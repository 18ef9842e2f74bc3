"""The periodic DRS calls that keep the device's picture of its registration right:
SubscriptionInfo (at boot, daily, after SubscriptionChanged, before an order on stale data)
and the check that follows a relayed DeviceDeregistered. The reports it sends are in
`daily` (DeviceStatus) and `reports` (SlotStatus, GetOrderInfo).

The application decides on uptime alone whether a call is due (nothing resident allocates
for that) and imports this module only to make it, dropping it afterwards.
"""

import json

from micropython import const

from dash import fsm, result
from dash.link import answer, call

_SUBSCRIPTION = const((b"GET", b"DrsSubscriptionInfoInput@1.0", b"DrsSubscriptionInfoResult@1.0"))


def verify_registration(app, sl=None):
    """After a relayed DeviceDeregistered: a refresh tells whether the registration is gone
    (invalid_grant, and `link.call` forgets every token) or the notice was an old one."""
    app.verify_reg = False
    app.tokens.access = None  # so the call refreshes first
    ans, fail = call(app, _SUBSCRIPTION, "/subscriptionInfo", b"", 2048)
    if fail:
        return None if fail[0] == result.REVOKED else (fail[0], fail[1], fail[3])
    app.log("registration-confirmed", note="the deregistration notice was not about this one")
    return None


def parse_subscriptions(body, slot_ids):
    """{slot: 1 subscribed, 0 not, -1 not listed} for our slots from a SubscriptionInfo
    answer (v1 booleans or v2 objects), or None when the answer is unusable. The answer lists
    every slot of the device model, so one it omits does not exist; an empty list says
    nothing at all."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    subs = obj.get("slotsSubscriptionStatus") if isinstance(obj, dict) else None
    if not isinstance(subs, dict) or not subs:
        return None
    out = {}
    for sid in slot_ids:
        v = subs.get(sid)
        if isinstance(v, dict):
            v = v.get("subscribed", False)
        out[sid] = -1 if v is None else 1 if v is True else 0
    return out


def fetch_subscriptions(app, sl=None):
    """SubscriptionInfo into the cache. None on success, else (outcome, reason, retry-after)."""
    ans, failed = answer(app, _SUBSCRIPTION, "/subscriptionInfo", b"", 2048)
    if failed:
        return failed
    subs = parse_subscriptions(ans[1], [sl.id for sl in app.slots])
    if subs is None:
        return result.TRANSIENT, "SubscriptionInfo answer not understood", None
    app.sub_at = app.up_s
    app.sub_dirty = False
    state = app.state
    old = state.get("sub") or {}
    new = {}
    for sl in app.slots:
        on = subs[sl.id]
        new[sl.id] = on
        if old.get(sl.id) != on:
            app.log("subscription", slot=sl.id, subscribed=on == 1, known=on >= 0)
        st = sl.fsm.state
        if on == 1 and sl.fsm.durable() == fsm.UNSUBSCRIBED:
            sl.reason = ""
            from dash.episode import rearm

            rearm(app, sl)
        elif on >= 0 and st == fsm.SUSPENDED and sl.rec.get("sk") == fsm.K_UNLISTED:
            from dash.episode import resume

            resume(app, sl, "listed by SubscriptionInfo again")
        elif on < 0 and st != fsm.SUSPENDED:
            from dash.episode import suspend

            why = "slot does not exist (not in SubscriptionInfo)"
            suspend(app, sl, fsm.K_UNLISTED, why)
    state["sub"] = new
    app.persist()
    return None
