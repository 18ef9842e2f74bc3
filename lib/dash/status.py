"""The status a maker sees (`App.status`, `bench.status()`): per slot and for the device, no
secret. Loaded on request and dropped again."""

import gc

from dash import fsm
from dash.app import VERSION


def status(app):
    """What the device would show a maker: per slot and for the device. No secret."""
    slots = []
    now = app.clock.wall()
    for sl in app.slots:
        rec = sl.rec
        sub = app.state.get("sub", {}).get(sl.id)
        slots.append(
            {
                "slot": sl.id,
                "state": fsm.name(sl.fsm.state),
                "level": sl.level,
                "orders_placed": sl.orders,
                "event_instance_id": rec.get("ev"),
                "detail_code": rec.get("dc"),
                "test_order": bool(rec.get("test")),
                "backoff_s": app._left(sl),
                # When the back-off ends, in Unix seconds (0: none, or the clock is not set).
                "backoff_end": now + app._left(sl) if now and sl.deadline >= 0 else 0,
                "reason": sl.reason,
                "subscribed": None if sub is None or sub < 0 else sub == 1,
            }
        )
    ok = app.running  # (a boot that stopped half-way set some of it)
    out = {
        "fw": VERSION,
        "up_s": app.up_s,
        "at": now,
        "heap_free": gc.mem_free(),
        "registered": ok and app.tokens.registered,
        "slots": slots,
        "token_expires_s": _expires_in_s(app.tokens) if ok else -1,
        "device_status_sent": app.warm.get("ds", 0),
        "handshakes": app.https.handshakes if ok else 0,
        "flash_writes": app.store.writes if ok else 0,
        "flash_bytes": app.store.bytes if ok else 0,
    }
    link = app.link
    if link is not None:
        out["mqtt"] = {
            "device_id": link.device_id,
            "connected": link.up,
            "published": link.published,
            "queued": len(link.q),
            "dropped": link.dropped,
            "commands": link.commands,
            "connects": link.connects,
            "reconnects": link.reconnects,
            "failures": link.failures,
            "longest_turn_ms": link.longest_ms,
        }
    if len(slots) == 1:
        out.update(slots[0])  # a one-slot device shows its slot at the top level
    elif not slots:
        out.update(state="suspended", reason=app.reason, orders_placed=0)
    return out


def _expires_in_s(tokens):
    """Seconds the access token has left, or -1."""
    return -1 if tokens.access is None else tokens.left_ms() // 1000
