"""Placing one slot's order: registration and subscription first, the intent on flash,
Replenish, and what each answer means for the slot's state machine. Loaded by the
application when a slot decides to order, and dropped again.
"""

from dash import fsm, result
from dash.app import describe, drop, lib


def order(app, sl):
    rec = sl.rec
    try:
        outcome, eid, code, reason, retry_after = _replenish(app, sl)
    except Exception as e:  # noqa: BLE001 - a bug or MemoryError must not stop the device
        rec["unc"] = 1
        outcome, eid, code, reason, retry_after = (
            result.TRANSIENT,
            None,
            None,
            describe(e),
            None,
        )
    rec["fl"] = 0
    if sl.fsm.state != fsm.ORDERING:
        app.persist()  # the registration or the credentials went away: suspended
        return
    try:
        _take(app, sl, outcome, eid, code, reason, retry_after)
    except Exception as e:  # noqa: BLE001 - a bug or MemoryError while taking the answer in
        # The answer may have been an order. Left in ORDERING, the next step would ask again
        # at once and take DRS's ORDER_INPROGRESS for somebody else's order: back off, and
        # take that answer as ours.
        rec["unc"] = 1
        if sl.fsm.state == fsm.ORDERING:
            _take(app, sl, result.TRANSIENT, None, None, describe(e), None)
        else:
            app.persist()


def _take(app, sl, outcome, eid, code, reason, retry_after):
    """Act on one attempt's outcome: the slot's next state, its record, the log."""
    rec = sl.rec
    cfg = app.cfg
    if outcome == result.OK or (outcome == result.INPROGRESS and rec.get("unc")):
        test = code == "TEST_ORDER_PLACED"
        rec["ev"] = eid
        rec["dc"] = code
        rec["ot"] = app.clock.wall()
        rec["att"] = 0
        rec["unc"] = 0  # this episode's order is known now
        rec["test"] = 1 if test else 0
        for k in ("oc", "od", "ox"):
            rec.pop(k, None)
        sl.deadline = -1
        sl.check_at = app.up_s + cfg["order_check_s"]
        if outcome == result.OK:
            sl.orders += 1
            app.log("order-placed", slot=sl.id, event_instance_id=eid, detail_code=code, test=test)
        else:
            app.log(
                "order-recovered",
                slot=sl.id,
                event_instance_id=eid,
                detail_code=code,
                note="an earlier request of this episode may have placed it",
            )
        app.transition(sl, fsm.E_PLACED)
    elif outcome == result.INPROGRESS:
        backoff = cfg["inprogress_backoff_s"]
        backoff += app.rand() % (backoff // 10 + 1)
        sl.deadline = app.up_s + backoff
        rec["att"] = 0
        app.log("order-inprogress", slot=sl.id, event_instance_id=eid, backoff_s=backoff)
        app.transition(sl, fsm.E_INPROGRESS)
    elif outcome == result.UNSUBSCRIBED:
        sl.reason = "no subscription for this slot"
        app.log("slot-unsubscribed", slot=sl.id, action="no order until subscribed")
        app.transition(sl, fsm.E_UNSUB)
    elif outcome == result.SUSPEND:
        from dash.episode import suspend

        suspend(app, sl, fsm.K_SLOT, reason)
    else:
        if outcome == result.UNKNOWN:
            rec["unc"] = 1
        att = rec.get("att", 0)
        delay = app.backoff_s(att, retry_after)
        rec["att"] = att + 1
        sl.deadline = app.up_s + delay
        app.log(
            "order-failed",
            slot=sl.id,
            reason=reason,
            detail_code=code,
            retry_in_s=delay,
            attempt=att + 1,
        )
        app.transition(sl, fsm.E_RETRY)


def _replenish(app, sl):
    """(outcome, eventInstanceId, detailCode, reason, Retry-After) of one order attempt:
    registration and an up-to-date subscription first, the intent on flash, Replenish."""
    from dash import drs
    from dash.link import call

    rec = sl.rec
    if not app.tokens.registered:
        from dash.episode import suspend

        suspend(app, sl, fsm.K_REG, "not registered: register the device to let it order")
        return result.SUSPEND, None, None, "", None
    subs = app.state.get("sub")
    if app.subscriptions_stale() or not subs or sl.id not in subs:
        # Never order on a subscription the customer may have just changed; and never ask
        # for it while its calls back off (a failure, or DRS's Retry-After).
        wait = app.duty_at - app.up_s
        if wait > 0:
            return result.TRANSIENT, None, None, "SubscriptionInfo backing off", b"%d" % wait
        failed = lib("duties").fetch_subscriptions(app)
        drop("duties")
        if failed:
            app._duty_done(0, None, failed)  # its back-off holds device-wide, as a periodic one's
            return result.TRANSIENT, None, None, failed[1], failed[2]
        subs = app.state["sub"]
        if sl.fsm.state != fsm.ORDERING:
            return result.SUSPEND, None, None, "", None  # the answer did not list it
    if subs.get(sl.id) != 1:
        return result.UNSUBSCRIBED, None, None, "", None
    fail = app.authorise()  # no token (no network, LwA refusing): nothing will leave
    if fail:
        return fail[0], None, None, fail[1], fail[3]
    rec["fl"] = 1
    if not app.persist():  # the intent is on flash before anything leaves the device
        return result.TRANSIENT, None, None, "the intent could not be written to flash", None
    app.log("order-request", slot=sl.id, attempt=rec.get("att", 0))
    ans, fail = call(app, drs.REPLENISH, drs.replenish_path(sl.id), rec=rec)
    if fail:
        if fail[2]:
            rec["unc"] = 1  # the request may have been acted on
        return fail[0], None, None, fail[1], fail[3]
    status, body, hdrs = ans
    outcome, eid, dc, reason = drs.classify(status, body)
    if status >= 500:
        rec["unc"] = 1
    return outcome, eid, dc, reason, hdrs.get("retry-after")
