"""The status a maker sees (`App.status`, `bench.status()`): per slot and for the device, no
secret. Loaded on request and dropped again."""

from dash import fsm


def status(app):
    """What the device would show a maker: per slot and for the device. No secret."""
    slots = []
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
                "reason": sl.reason,
                "subscribed": None if sub is None or sub < 0 else sub == 1,
            }
        )
    ok = bool(app.cfg)
    out = {
        "registered": ok and app.tokens.registered,
        "slots": slots,
        "token_expires_s": _expires_in_s(app.tokens) if ok else -1,
        "device_status_sent": app.warm.get("ds", 0),
        "handshakes": app.https.handshakes if ok else 0,
        "flash_writes": app.store.writes if ok else 0,
        "flash_bytes": app.store.bytes if ok else 0,
    }
    if len(slots) == 1:
        out.update(slots[0])  # a one-slot device shows its slot at the top level
    elif not slots:
        out.update(state="suspended", reason=app.reason, orders_placed=0)
    return out


def _expires_in_s(tokens):
    """Seconds the access token has left, or -1."""
    return -1 if tokens.access is None else tokens.left_ms() // 1000
