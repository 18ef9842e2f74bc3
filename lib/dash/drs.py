"""DRS v1 requests exactly as documented, and Replenish's answer: what the device needs
resident to order. The periodic calls' parsers live in `duties`. Pure apart from `call`."""

import json

from micropython import const

from dash import result
from dash.check import printable, valid_slot

_MAX_ANSWER = const(1024)  # eventInstanceId <= 255 chars plus a short detailCode
_PFX = const(b"com.amazon.dash.replenishment.")
PLACED = ("STANDARD_ORDER_PLACED", "TEST_ORDER_PLACED")
_IN_PROGRESS = const("ORDER_INPROGRESS")

# (method, x-amzn-type-version, x-amzn-accept-type) of a call; the others are in `duties`.
REPLENISH = (b"POST", b"DrsReplenishInput@1.0", b"DrsReplenishResult@1.0")


def call(https, base, kind, path, token, body=b"", max_body=_MAX_ANSWER):
    """One DRS request. Returns (status, body, kept headers) from the transport."""
    host, port, prefix = base
    head = (
        b"Authorization: Bearer ",
        token,
        b"\r\nx-amzn-accept-type: ",
        _PFX,
        kind[2],
        b"\r\nx-amzn-type-version: ",
        _PFX,
        kind[1],
        b"\r\nContent-Type: application/json\r\n" if body else b"\r\n",
    )
    return https.request(kind[0], host, port, prefix + path, head, body, max_body)


def replenish_path(slot_id):
    if not valid_slot(slot_id):
        # Never let an odd slot id shape the URL; config validation should have caught it.
        raise ValueError("slot id")
    return "/replenish/" + slot_id


def classify(status, body):
    """(outcome, eventInstanceId or None, detailCode or None, reason) of a Replenish answer."""
    if 200 <= status < 300:  # an order is only ever taken from a body that names it
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            return result.UNKNOWN, None, None, "answer is not a JSON object"
        eid = obj.get("eventInstanceId")
        code = obj.get("detailCode")
        if not isinstance(code, str) or len(code) > 64:
            return result.UNKNOWN, None, None, "answer has no detailCode"
        good = isinstance(eid, str) and 0 < len(eid) <= 255 and printable(eid)
        if code == _IN_PROGRESS:
            # Nothing was placed: the long back-off, with an id or without (never the short
            # retries of an answer not understood, which would hammer DRS).
            return result.INPROGRESS, eid if good else None, code, ""
        if not good:
            return result.UNKNOWN, None, code, "answer has no valid eventInstanceId"
        if code in PLACED:
            return result.OK, eid, code, ""
        return result.UNKNOWN, eid, code, "unknown detailCode"
    return status_outcome(status), None, None, status_reason(status)


def status_outcome(status):
    """Outcome of any DRS status code other than a Replenish 2xx."""
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
