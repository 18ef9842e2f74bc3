"""The reports the device sends DRS about a slot: SlotStatus as contents are used (with an
estimate of when the slot will need replenishing), and GetOrderInfo while an order is open.
Pure parsers and body builders, and the calls that use them. DeviceStatus is in `daily`.

Imported by the application when one is due, and dropped again afterwards.
"""

import json

from micropython import const

from dash import result
from dash.check import valid_slot
from dash.daily import ACCEPTED, iso8601
from dash.link import answer

_SLOT_STATUS = const((b"POST", b"DrsSlotStatusInput@1.0", b"DrsSlotStatusResult@1.0"))
_ORDER_INFO = const((b"GET", b"DrsOrderInfoInput@1.0", b"DrsOrderInfoResult@1.0"))

# What GetOrderInfo tells about an order.
O_OPEN = const(0)  # pending, processing, shipped, or a status Amazon has not documented
O_DONE = const(1)  # delivered: nothing more to learn
O_CANCELLED = const(2)
_DONE = const(("delivered", "closed", "completed", "complete"))
_CANCELLED = const(("cancelled", "canceled"))

_DAY = const(86400)
_FAR = const(365 * 86400)  # the latest expected replenishment date we ever report
_RATE_FRAC = const(16)  # consumption rate per day is kept with 4 fraction bits


def parse_order_status(body, eid, slot):
    """O_OPEN, O_DONE or O_CANCELLED from a GetOrderInfo answer about `eid` for `slot`; None if
    unusable (an item of another slot too).

    Amazon lists only some statuses; anything else means the order is still open."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    data = obj.get("orderInfoData") if isinstance(obj, dict) else None
    if not isinstance(data, dict) or data.get("instanceId", eid) != eid:
        return None
    items = data.get("orderItems")
    if not isinstance(items, list) or not items:
        return O_OPEN
    cancelled = done = 0
    for item in items:
        if not isinstance(item, dict) or item.get("slotId", slot) != slot:
            return None
        st = item.get("status")
        st = st.lower() if isinstance(st, str) else ""
        if st in _CANCELLED:
            cancelled += 1
        elif st in _DONE:
            done += 1
    if cancelled == len(items):
        return O_CANCELLED
    if cancelled + done == len(items):
        return O_DONE
    return O_OPEN


def order_info_path(eid):
    """The GetOrderInfo path, or None when the id could not go into a URL unescaped."""
    return "/getOrderInfo/" + eid if valid_slot(eid, 255) else None


def order_info(app, sl):
    rec = sl.rec
    eid = rec["ev"]
    most = app.cfg["order_checks_max"]
    path = order_info_path(eid)
    if path is not None:
        ans, failed = answer(app, _ORDER_INFO, path, b"", 2048, ok=(200, 400, 404))
        if failed:
            return failed
    extra = rec.get("ox") == 1 and rec.get("oc", 0) >= most
    if extra:
        rec["ox"] = 2  # the one check past order_checks_max a relayed cancellation gets: made
    if path is None:
        rec["oc"] = most
        app.persist()
        return None
    status, body, _ = ans
    sl.check_at = app.up_s + app.cfg["order_check_s"]
    if status != 200:
        # DRS does not know the id (an ORDER_INPROGRESS answer's, say): no more periodic
        # checks; `od` stays for "delivered", so a relayed cancellation is still checked.
        rec["oc"] = most
        app.log("order-info", slot=sl.id, event_instance_id=eid, status="unknown")
        app.persist()
        return None
    o = parse_order_status(body, eid, sl.id)
    if o is None:
        rec["oc"] = rec.get("oc", 0) + 1  # counted too: no id is asked about for ever
        if extra and rec["oc"] < most + 3:
            rec["ox"] = 1  # a junk answer is no answer: the extra check is tried again
        app.persist()
        return result.TRANSIENT, "GetOrderInfo answer not understood", None
    if o == O_CANCELLED:
        from dash.episode import cancelled

        cancelled(app, sl, "GetOrderInfo")
    elif o == O_DONE:
        rec["od"] = 1
        app.log("order-delivered", slot=sl.id, event_instance_id=eid)
        app.persist()
    else:
        rec["oc"] = rec.get("oc", 0) + 1
        app.log("order-info", slot=sl.id, event_instance_id=eid, status="open")
        app.persist()
    return None


def slot_status_body(remaining, original, on_hand, last_use, expected):
    return (
        b'{"expectedReplenishmentDate": "%s", "remainingQuantityInUnit": %d, '
        b'"originalQuantityInUnit": %d, "totalQuantityOnHand": %d, "lastUseDate": "%s"}'
        % (iso8601(expected).encode(), remaining, original, on_hand, iso8601(last_use).encode())
    )


def estimate(rate, used, dt, level, low, now):
    """(new rate, expected replenishment date): the consumption rate in units per day with
    `_RATE_FRAC` fraction bits, an EMA over about four reports, and when `level` reaches `low`
    at that rate (no later than a year ahead)."""
    if used > 0 and dt > 0:
        sample = used * _DAY * _RATE_FRAC // dt
        rate = sample if rate <= 0 else rate + (sample - rate) // 4
    if level <= low:
        return rate, now
    if rate > 0:
        return rate, now + min((level - low) * _DAY * _RATE_FRAC // rate, _FAR)
    return rate, now + _FAR


def slot_status(app, sl):
    now = app.clock.wall()
    if not now:
        sl.report_up = app.up_s  # no dates without a clock: not due again for a while
        return None
    rec = sl.rec
    level = sl.level
    rate, expected = estimate(
        rec.get("rate", 0),
        rec.get("rl", level) - level,
        now - rec.get("rw", now),
        level,
        sl.fsm.low,
        now,
    )
    up = app.up_s
    last_use = now - (up - sl.used_up) if sl.used_up >= 0 else rec.get("lu") or now
    body = slot_status_body(level, sl.signal.capacity, level, last_use, expected)
    ans, failed = answer(app, _SLOT_STATUS, "/slotStatus/" + sl.id, body, ok=ACCEPTED)
    if failed:
        return failed
    rec["rl"] = level
    rec["rw"] = now
    rec["rate"] = rate
    rec["lu"] = last_use
    sl.report_up = up
    app.log(
        "slot-status",
        slot=sl.id,
        remaining=level,
        per_day=rate // _RATE_FRAC,
        expected=iso8601(expected),
    )
    app.persist()
    return None
