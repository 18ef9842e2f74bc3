"""DRS v1 calls: each request exactly as documented, and what each answer means.

Pure apart from the one transport call in `call`; the parsers take bytes and return small
values, so they are tested without a network.
"""

import json

from micropython import const

from dash import result
from dash.config import printable, valid_slot

_MAX_ANSWER = const(1024)  # eventInstanceId <= 255 chars plus a short detailCode
_PFX = b"com.amazon.dash.replenishment."
PLACED = ("STANDARD_ORDER_PLACED", "TEST_ORDER_PLACED")
IN_PROGRESS = "ORDER_INPROGRESS"

# (path, x-amzn-type-version, x-amzn-accept-type) per call.
REPLENISH = (b"POST", b"DrsReplenishInput@1.0", b"DrsReplenishResult@1.0")
SLOT_STATUS = (b"POST", b"DrsSlotStatusInput@1.0", b"DrsSlotStatusResult@1.0")
DEVICE_STATUS = (b"POST", b"DrsDeviceStatusInput@1.0", b"DrsDeviceStatusResult@1.0")
SUBSCRIPTION = (b"GET", b"DrsSubscriptionInfoInput@1.0", b"DrsSubscriptionInfoResult@1.0")
ORDER_INFO = (b"GET", b"DrsOrderInfoInput@1.0", b"DrsOrderInfoResult@1.0")
DEREGISTER = (b"DELETE", b"DrsDeregisterInput@2.0", b"DrsDeregisterResult@1.0")

# What GetOrderInfo tells about an order.
O_OPEN = const(0)  # pending, processing, shipped, or a status Amazon has not documented
O_DONE = const(1)  # delivered: nothing more to learn
O_CANCELLED = const(2)
_DONE = ("delivered", "closed", "completed", "complete")
_CANCELLED = ("cancelled", "canceled")


def call(https, base, kind, path, token, body=b"", max_body=_MAX_ANSWER):
    """One DRS request. Returns (status, body, kept headers) from the transport."""
    host, port, prefix = base
    head = b"Authorization: Bearer " + token.encode() + b"\r\n"
    head += b"x-amzn-accept-type: " + _PFX + kind[2] + b"\r\n"
    head += b"x-amzn-type-version: " + _PFX + kind[1] + b"\r\n"
    if body:
        head += b"Content-Type: application/json\r\n"
    return https.request(kind[0], host, port, (prefix + path).encode(), head, body, max_body)


def replenish_path(slot_id):
    if not valid_slot(slot_id):
        # Never let an odd slot id shape the URL; config validation should have caught it.
        raise ValueError("slot id")
    return "/replenish/" + slot_id


def classify(status, body):
    """(outcome, eventInstanceId or None, detailCode or None, reason) of a Replenish answer."""
    if status == 200:
        obj = _object(body)
        if obj is None:
            return result.UNKNOWN, None, None, "answer is not a JSON object"
        eid = obj.get("eventInstanceId")
        code = obj.get("detailCode")
        if not isinstance(code, str) or len(code) > 64:
            return result.UNKNOWN, None, None, "answer has no detailCode"
        if not isinstance(eid, str) or not 0 < len(eid) <= 255 or not printable(eid):
            return result.UNKNOWN, None, code, "answer has no valid eventInstanceId"
        if code in PLACED:
            return result.OK, eid, code, ""
        if code == IN_PROGRESS:
            return result.INPROGRESS, eid, code, ""
        return result.UNKNOWN, eid, code, "unknown detailCode"
    return status_outcome(status), None, None, status_reason(status)


def status_outcome(status):
    """Outcome of any DRS status code other than a Replenish 200."""
    if 200 <= status < 300:
        return result.OK
    if status in (400, 401, 403):
        return result.AUTH
    if status == 404:
        return result.SUSPEND
    return result.TRANSIENT


def status_reason(status):
    if status == 404:
        return "slot does not exist (404)"
    if 300 <= status < 400:
        return "redirect refused (%d)" % status
    return "DRS answered %d" % status


def _object(body):
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_subscriptions(body, slot_ids):
    """{slot: 1 subscribed, 0 not, -1 unknown to DRS} for our slots from a SubscriptionInfo
    answer (v1 booleans or v2 objects), or None when the answer is unusable. The answer lists
    every slot of the device model, so one it omits does not exist."""
    obj = _object(body)
    subs = obj.get("slotsSubscriptionStatus") if obj else None
    if not isinstance(subs, dict):
        return None
    out = {}
    for sid in slot_ids:
        v = subs.get(sid)
        if isinstance(v, dict):
            v = v.get("subscribed", False)
        out[sid] = -1 if v is None else 1 if v is True else 0
    return out


def parse_order_status(body, eid):
    """O_OPEN, O_DONE or O_CANCELLED from a GetOrderInfo answer about `eid`; None if unusable.

    Amazon lists only some statuses; anything else means the order is still open."""
    obj = _object(body)
    data = obj.get("orderInfoData") if obj else None
    if not isinstance(data, dict) or data.get("instanceId", eid) != eid:
        return None
    items = data.get("orderItems")
    if not isinstance(items, list) or not items:
        return O_OPEN
    cancelled = done = 0
    for item in items:
        st = item.get("status") if isinstance(item, dict) else None
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


def iso8601(t):
    """Unix seconds as 'YYYY-MM-DDTHH:MM:SSZ' (integer civil-from-days, no time module)."""
    days, s = divmod(t, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)


def device_status_body(now):
    return b'{"mostRecentlyActiveDate": "%s"}' % iso8601(now).encode()


def slot_status_body(remaining, original, on_hand, last_use, expected):
    return (
        b'{"expectedReplenishmentDate": "%s", "remainingQuantityInUnit": %d, '
        b'"originalQuantityInUnit": %d, "totalQuantityOnHand": %d, "lastUseDate": "%s"}'
        % (iso8601(expected).encode(), remaining, original, on_hand, iso8601(last_use).encode())
    )
