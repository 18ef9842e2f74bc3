"""A slot's depletion episode taken out of the normal flow: suspended (needs a human or
DRS), resumed, its order cancelled, re-armed. Called from the network phases and start-up,
loaded with them and dropped after; sampling never needs it.
"""

from dash import fsm


def suspend(app, sl, kind, reason):
    rec = sl.rec
    if sl.fsm.state != fsm.SUSPENDED:
        rec["sp"] = sl.fsm.durable()  # what it was doing, for when it resumes
    sl.reason = reason
    rec["sk"] = kind
    app.log("suspended", slot=sl.id, reason=reason)
    app.transition(sl, fsm.E_SUSPEND)


def unsuspend(rec):
    """The state a suspended slot resumes: ORDERED when its episode's order was placed (only
    a refill or a cancellation may lead to another), else MONITOR."""
    for k in ("sk", "sr", "sf"):
        rec.pop(k, None)
    sp = rec.pop("sp", fsm.MONITOR)
    if sp == fsm.ORDERED:  # with an id or without (an ORDER_INPROGRESS taken as ours)
        if not rec.get("ox"):
            rec["ox"] = 1  # one check of what became of it while suspended, checks used up or not
        return fsm.ORDERED
    if sp == fsm.ORDERING:
        # The attempt may have left: DRS's ORDER_INPROGRESS is then ours. (RETRY's `unc` says
        # already whether its request may have been acted on; INPROGRESS is somebody else's
        # order, and taken as ours it would hold the slot in ORDERED when it is cancelled.)
        rec["unc"] = 1
    return fsm.MONITOR


def resume(app, sl, why):
    """Out of suspension: waiting for the refill again when the episode's order was placed,
    else starting the episode over, remembering an open order."""
    st = unsuspend(sl.rec)
    sl.reason = ""
    app.log("resumed", slot=sl.id, reason=why)
    if st == fsm.ORDERED:
        sl.check_at = app.up_s  # what became of the order while suspended
        app.transition(sl, fsm.E_PLACED)
    else:
        app.transition(sl, fsm.E_REARM)


def cancelled(app, sl, source):
    """The episode's order is cancelled: re-arm, so the customer is not left without."""
    app.log("order-cancelled", slot=sl.id, event_instance_id=sl.rec.get("ev"), source=source)
    app._close(sl)  # the open order was ours and is gone: a new one is not a duplicate
    rearm(app, sl)


def rearm(app, sl):
    """Back to monitoring, also from warm-up or a fault (where it goes once they end)."""
    m = sl.fsm
    if m.state == fsm.WARMUP or m.state == fsm.FAULT:
        m.resume = fsm.MONITOR
        app.persist()
    else:
        app.transition(sl, fsm.E_REARM)
