"""A slot's depletion episode taken out of the normal flow: suspended (needs a human or
DRS), resumed, its order cancelled, re-armed. Called from the network phases and start-up,
loaded with them and dropped after; sampling never needs it.
"""

from dash import fsm

_OPEN_STATES = (fsm.ORDERING, fsm.ORDERED, fsm.INPROGRESS, fsm.RETRY)


def suspend(app, sl, kind, reason):
    rec = sl.rec
    if sl.fsm.state != fsm.SUSPENDED:
        rec["sp"] = sl.fsm.durable()  # what it was doing, for when it resumes
    sl.reason = reason
    rec["sk"] = kind
    app.log("suspended", slot=sl.id, reason=reason)
    app.transition(sl, fsm.E_SUSPEND)


def unsuspend(rec):
    for k in ("sk", "sr", "sf"):
        rec.pop(k, None)
    if rec.pop("sp", fsm.MONITOR) in _OPEN_STATES:
        # An order of this episode may still be open: DRS's ORDER_INPROGRESS is ours.
        rec["unc"] = 1
    return fsm.MONITOR


def resume(app, sl, why):
    """Out of suspension: the slot starts its episode over, remembering an open order."""
    unsuspend(sl.rec)
    sl.reason = ""
    app.log("resumed", slot=sl.id, reason=why)
    app.transition(sl, fsm.E_REARM)


def cancelled(app, sl, source):
    """The episode's order is cancelled: re-arm, so the customer is not left without."""
    rec = sl.rec
    app.log("order-cancelled", slot=sl.id, event_instance_id=rec.get("ev"), source=source)
    rec["unc"] = 0  # the open order was ours and is gone: a new one is not a duplicate
    rec.pop("oc", None)
    rec.pop("od", None)
    sl.check_at = -1
    rearm(app, sl)


def rearm(app, sl):
    """Back to monitoring, also from warm-up or a fault (where it goes once they end)."""
    m = sl.fsm
    if m.state == fsm.WARMUP or m.state == fsm.FAULT:
        m.resume = fsm.MONITOR
        app.persist()
    else:
        app.transition(sl, fsm.E_REARM)
