"""Commands from the maker's cloud, one MQTT message each on `<prefix>/<id>/cmd/<kind>`.
Loaded by the cloud link when one comes, dropped again after the link's turn.

Each payload is a JSON object with an "id" (1 to 64 visible characters) and the command's
arguments; a relayed DRS notification is the notification itself, as Amazon's SNS delivers it
(the envelope, or the JSON of its "Message"), and its notificationId is its id. Every command
ends in one `command` event saying what became of it. One that is unknown, malformed,
retained (a command must not lie on the broker for whoever connects next), repeated (an id
taken lately), too big, or about another device changes nothing.

Nothing is taken on trust: a notification goes where `bench.relay` sends one
(`provision.relay`), and only DRS's own answers change a slot. The commands that call DRS or
LwA (register, deregister, test-order) run in the next step, as every network call does.
"""

import json

from micropython import const

from dash import fsm
from dash.app import OPEN, describe
from dash.check import printable

# Settings a command may change (the rest need a person at the device: a config push).
_TIMING = const(
    (
        "sample_s",
        "inprogress_backoff_s",
        "retry_base_s",
        "retry_cap_s",
        "subscription_check_s",
        "order_check_s",
        "order_checks_max",
        "slot_status_min_s",
        "http_timeout_s",
        "token_margin_s",
    )
)
_THRESHOLDS = const(("low", "high", "confirm_samples", "warmup_samples", "report_delta"))
_DEFERRED = const(("register", "deregister", "test-order"))


def take(app, link, topic, payload, retained, size):
    """One message from the command topic (memoryviews into the link's inbox)."""
    t = bytes(topic) if topic is not None else b""
    pre = link.base + b"cmd/"
    kind = t[len(pre) :].decode() if t.startswith(pre) and printable(t) else "?"
    cid = None
    why = None
    if payload is None:
        why = "too big: %d bytes, at most %d" % (size, len(link.client.inbox))
    elif retained:
        why = "retained: a command must not be kept on the broker"
    else:
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            why = "not a JSON object"
        elif kind == "relay":
            return _relay(app, link, obj)
        else:
            cid = obj.get("id")
            if not isinstance(cid, str) or not 0 < len(cid) <= 64 or not printable(cid):
                cid = None
                why = "'id' must be text of 1 to 64 visible characters"
            elif link.seen(cid):
                why = "repeated: a command with this id was taken already"
            else:
                why = _command(app, link, kind, obj, cid)
    if why is not None:
        app.log("command", cmd=kind, id=cid, ok=False, reason=why)


def _command(app, link, kind, obj, cid):
    """Act on one command; None when it was taken (its event said), else why not."""
    if kind == "config":
        return _config(app, obj, cid, link)
    if kind == "state":
        link.dirty = True
        link.remember(cid)
        app.log("command", cmd=kind, id=cid, ok=True)
        return None
    if not app.running:
        return "the device is idle: config.json has errors (see config-error)"
    if kind == "challenge":
        link.remember(cid)
        out = app.provision("give_challenge")
        app.log("command", cmd=kind, id=cid, ok=True, **out)
        return None
    if kind not in _DEFERRED:
        return "unknown command"
    arg = obj.get("code") if kind == "register" else obj.get("slot")  # `provision` checks them
    if kind == "test-order" and not any(sl.id == arg for sl in app.slots):
        return "'slot' must name one of this device's slots"
    if app.pending is not None:
        return "busy: another command waits for the next step; send it again later"
    link.remember(cid)
    app.pending = (kind, arg, cid)
    return None


def run(app):
    """The command waiting for this step (`App.step`): its network call, and its event."""
    kind, arg, cid = app.pending
    app.pending = None
    try:
        if kind == "register":
            out = app.provision("register", arg)
        elif kind == "deregister":
            out = app.provision("deregister")
        else:
            out = app.provision("test_order", arg)
    except Exception as e:  # noqa: BLE001 - the flash, a bug: said, as every outcome is
        out = {"ok": False, "reason": describe(e)}
    app.log("command", cmd=kind, id=cid, **out)


def _relay(app, link, obj):
    """A DRS notification relayed from SNS: the envelope or its Message."""
    msg = obj
    nid = obj.get("MessageId")
    if obj.get("Type") == "Notification" and isinstance(obj.get("Message"), str):
        try:
            msg = json.loads(obj["Message"])
        except ValueError:
            msg = None
    info = msg.get("notificationInfo") if isinstance(msg, dict) else None
    if isinstance(info, dict) and isinstance(info.get("notificationId"), str):
        nid = info["notificationId"]
    if not isinstance(nid, str) or not 0 < len(nid) <= 128 or not printable(nid):
        nid = None
    why = None
    dev = msg.get("deviceInfo") if isinstance(msg, dict) else None
    ident = dev.get("deviceIdentifier") if isinstance(dev, dict) else None
    serial = ident.get("serialNumber") if isinstance(ident, dict) else None
    if not isinstance(info, dict):
        why = "not a DRS notification"
    elif nid is None:
        why = "no notificationId: a repeat could not be told from a new one"
    elif serial is not None and serial != link.device_id:
        why = "for another device"
    elif link.seen(nid):
        why = "repeated: this notification was taken already"
    elif not app.running:
        why = "the device is idle: config.json has errors (see config-error)"
    if why is not None:
        app.log("command", cmd="relay", id=nid, ok=False, reason=why)
        return
    link.remember(nid)
    out = app.provision("relay", msg)
    app.log("command", cmd="relay", id=nid, **out)


def _config(app, obj, cid, link):
    """New thresholds and timing: checked with config.json's own rules against the whole
    file, written to it atomically, applied at once (a device idle for a bad config starts)."""
    from dash import config
    from dash.store import replace

    ch = obj.get("set")
    if not isinstance(ch, dict) or not ch:
        return "'set' must be an object of the settings to change"
    path = app.root + "/" + config.CONFIG
    errors: list = []
    raw = config.read(path, errors)
    if raw is None:
        return errors[0]
    one = "slots" not in raw  # a one-slot device keeps the slot's keys at the top level
    touched = []  # the slots whose thresholds change
    for k, v in ch.items():
        if k == "slots" and isinstance(v, dict):
            for sid, sv in v.items():
                if not isinstance(sv, dict):
                    return "'set.slots.%s' must be an object" % sid
                dst = raw if one and raw.get("slot_id") == sid else None
                for s in [] if one else raw["slots"]:
                    if isinstance(s, dict) and s.get("slot_id") == sid:
                        dst = s
                if dst is None:
                    return "no slot %s" % sid
                for sk in sv:
                    if sk not in _THRESHOLDS:
                        return "'%s' of a slot cannot be set by a command" % sk
                    dst[sk] = sv[sk]
                touched.append(sid)
        elif k in _TIMING:
            raw[k] = v
        elif one and k in _THRESHOLDS:
            raw[k] = v
            touched.append(raw.get("slot_id"))
        else:
            return "'%s' cannot be set by a command" % k
    saved = None if app.running else _saved(app)  # read once, however many slots changed
    for sid in touched:
        st = _open(app, sid, saved)
        if st is not None:
            # New thresholds now could make the level a refill and close the episode while
            # its order is out: the same depletion would be ordered again.
            why = "slot %s has an order open (%s): its thresholds may change once it ends"
            return why % (sid, fsm.name(st))
    cfg, _, errors = config.validate(raw, None)
    if errors:
        app.log("command", cmd="config", id=cid, ok=False, reason="invalid", errors=errors[:4])
        return None
    text = json.dumps(raw)
    if len(text) > config.MAX_FILE:
        return "config.json would be larger than %d bytes" % config.MAX_FILE
    try:
        replace(path, text)
    except OSError as e:
        return "flash: %s" % e
    link.remember(cid)
    if app.running:
        _apply(app, cfg)
    else:
        try:
            ok = app.boot()
        except Exception as e:  # noqa: BLE001 - no memory to start, say
            ok = False
            app.log("error", reason=describe(e))
        if not ok:
            return "written, but the device still cannot start (see config-error)"
    app.log("command", cmd="config", id=cid, ok=True, changed=sorted(ch))
    return None


def _saved(app):
    """The slots' records in state.json ({} when there are none): an idle device resumes
    from there."""
    from dash.app import STATE
    from dash.store import Store

    slots = (Store(app.root).load(STATE) or {}).get("slots")
    return slots if isinstance(slots, dict) else {}


def _open(app, sid, saved):
    """The state of slot `sid` when an order of its episode may be open, else None: from the
    running slot, or from `saved` (`_saved`) while the device is idle."""
    if saved is None:
        rec = st = None
        for sl in app.slots:
            if sl.id == sid:
                rec, st = sl.rec, sl.fsm.durable()
    else:
        rec = saved.get(sid)
        st = rec.get("st") if isinstance(rec, dict) else None
    if st == fsm.SUSPENDED and isinstance(rec, dict):
        st = rec.get("sp")
    return st if st in OPEN else None


def _apply(app, cfg):
    for k in _TIMING:
        if k in app.cfg:
            app.cfg[k] = cfg[k]
    app.https.timeout_s = cfg["http_timeout_s"]
    app.tokens.margin_s = cfg["token_margin_s"]
    for sc in cfg["slots"]:
        for sl in app.slots:
            if sl.id == sc["slot_id"]:
                m = sl.fsm
                m.low = sc["low"]
                m.high = sc["high"]
                m.confirm = sc["confirm_samples"]
                m.warmup = sc["warmup_samples"]
                sl.delta = sc["report_delta"]
