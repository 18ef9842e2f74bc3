"""DRS v1 Replenish: the request exactly as documented, and what its answer means. Pure apart
from the one transport call."""

import json

from micropython import const

from dash import result
from dash.config import printable, valid_slot

_MAX_ANSWER = const(1024)  # eventInstanceId <= 255 chars plus a short detailCode
_HEADERS = (
    b"x-amzn-accept-type: com.amazon.dash.replenishment.DrsReplenishResult@1.0\r\n"
    b"x-amzn-type-version: com.amazon.dash.replenishment.DrsReplenishInput@1.0\r\n"
)
PLACED = ("STANDARD_ORDER_PLACED", "TEST_ORDER_PLACED")
IN_PROGRESS = "ORDER_INPROGRESS"


def classify(status, body):
    """(outcome, eventInstanceId or None, detailCode or None, reason) of a Replenish answer."""
    if status == 200:
        try:
            obj = json.loads(body)
        except ValueError:
            return result.UNKNOWN, None, None, "answer is not JSON"
        if not isinstance(obj, dict):
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
    if status in (400, 401, 403):
        return result.AUTH, None, None, "DRS answered %d" % status
    if status == 404:
        return result.SUSPEND, None, None, "slot does not exist (404)"
    if 300 <= status < 400:
        return result.TRANSIENT, None, None, "redirect refused (%d)" % status
    return result.TRANSIENT, None, None, "DRS answered %d" % status


def replenish(https, base, slot_id, access_token):
    """POST /replenish/{slotId}. Returns (status, body, kept headers) from the transport."""
    if not valid_slot(slot_id):
        # Never let an odd slot id shape the URL; config validation should have caught it.
        raise ValueError("slot id")
    host, port, prefix = base
    return https.request(
        b"POST",
        host,
        port,
        (prefix + "/replenish/" + slot_id).encode(),
        b"Authorization: Bearer " + access_token.encode() + b"\r\n" + _HEADERS,
        b"",
        _MAX_ANSWER,
    )
