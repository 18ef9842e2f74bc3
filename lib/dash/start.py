"""Start-up: loading the config and restoring state.json. Run once at boot and dropped again,
so none of it is resident.
"""

from micropython import const

from dash import fsm
from dash.app import BACKOFF_STATES, STATE, Slot

_BOOT_ONLY = const(
    (
        "region",
        "drs_url",
        "lwa_url",
        "ca_file",
        "http_timeout_s",
        "token_margin_s",
        "slots",
        "mqtt",  # the link keeps what it needs
        "safe_pin",  # for `liveness`, which reads it itself
    )
)


def boot(app, cfg, sec, errors, urls, off=()):
    """Start from the checked config (`errors`: idle instead) and the persisted state.
    Returns False when idling. `off`: what is wrong with the cloud link's config, or why it
    could not start; it is said, and the device orders without it."""
    from dash.platform import net_down, open_sensor

    if off:
        _off(app, off)
    # (secrets.json may be what is wrong: then there is no Wi-Fi to join)
    app.wifi = (sec.get("wifi_ssid", ""), sec.get("wifi_password", ""))
    from dash.store import unpack

    app.warm = unpack(app.rtc.read())[0] or {}  # (an idle device's too: `main` keeps it)
    if errors:
        for e in errors:
            app.log("config-error", message=e)
        app.reason = "config"
        app.log("suspended", reason="config", hint="fix the files above, then reset")
        if app.link is not None:
            net_down(*app.wifi)  # the link reports it, and a command may fix it
        return False
    drs_url, lwa_url = urls
    app.reason = ""
    from dash.https import HttpError, Https
    from dash.signal import Signal
    from dash.store import Store
    from dash.tokens import TOKENS, Tokens

    # Kept: what runs after boot reads. The URLs (parsed already), the trust store's file, the
    # transport's and the tokens' settings are used here only: their strings need not stay.
    app.cfg = {k: cfg[k] for k in cfg if k not in _BOOT_ONLY}
    app.drs_url = drs_url
    app.lwa_url = lwa_url
    # Join the network first: on a board that sets the clock, which the token and the
    # back-off deadlines on flash are kept against.
    net_down(*app.wifi)
    app.store = Store(app.root)
    app.https = Https(app._path(cfg["ca_file"]), cfg["http_timeout_s"])
    if app.link is not None:
        app.https.pause = app.link.pause  # one TLS session at a time
    # Back-offs and log stamps count from when an answer came, not from when the step began.
    app.https.done = app.tick
    try:
        app.https.context()
    except HttpError:  # nothing could ever be verified: a config error like any other
        why = "config.json: 'ca_file': %s cannot be read, or holds no certificate"
        return boot(app, cfg, sec, [why % cfg["ca_file"]], urls)
    except MemoryError:
        pass  # the first request tries again
    app.tokens = Tokens(app.store, sec, app.clock, cfg["token_margin_s"], app.warm, app.keep)
    if app.tokens.lost:
        # Said, or a maker cannot tell why LwA later refuses the registration.
        why = "damaged: the refresh token LwA rotated last is lost; the one of secrets.json"
        app.log("state-reset", file=TOKENS, reason=why + " is used (LwA may refuse it)")
    slots = []  # the app's only once all of them could be made
    for sc in cfg["slots"]:  # each Slot keeps what it needs of its part
        s = sc["sensor"]
        if s["kind"] == "file":
            s["path"] = app._path(s["path"])
        signal = Signal(
            s["raw_empty"],
            s["raw_full"],
            s["capacity"],
            s["margin"],
            s["raw_max"],
            s["stuck_samples"],
            s["max_drop"],
            s["median"],
            s["ema_shift"],
        )
        machine = fsm.Machine(sc["low"], sc["high"], sc["confirm_samples"], sc["warmup_samples"])
        try:
            sensor = open_sensor(s)
        except Exception as e:  # noqa: BLE001 - a pin without an ADC, a board without any
            why = "config.json: slot '%s': its sensor cannot be opened on this board (%s %s)"
            return boot(app, cfg, sec, [why % (sc["slot_id"], type(e).__name__, e)], urls)
        slots.append(Slot(sc, sensor, signal, machine))
    app.slots = slots
    app.refingerprint()
    restore(app)
    now = app.clock.wall()
    if now:  # (when DeviceStatus is due, `App._duty` works out)
        for sl in app.slots:
            rw = sl.rec.get("rw", 0)
            sl.report_up = rw - now if 0 < rw <= now else 0  # ahead of the clock: unknown
    if not app.tokens.registered:
        app.log("unregistered", hint="register the device to let it order")
    return True


def _off(app, off):
    from dash.app import describe

    for e in off:
        if isinstance(e, ValueError):  # a file it names, a board without an id
            e = e.args[0]
        elif isinstance(e, Exception):  # no memory for it, say
            e = "config.json: 'mqtt': the link cannot start (%s)" % describe(e)
        app.log("config-error", message=e)
    app.log("mqtt-off", reason="see the config-error above; the device orders without")


def restore(app):
    st = app.store.load(STATE)
    corrupt = st is None and app.store.exists(STATE)
    if corrupt:
        app.log("state-reset", reason="state file corrupt; starting from defaults")
    if st is None or not isinstance(st.get("slots"), dict):
        st = {"slots": {}}
    if not isinstance(st.get("sub"), dict):
        st.pop("sub", None)
    old = st["slots"]
    st["slots"] = {}  # slots no longer configured are forgotten
    # DeviceStatus's last-sent time lives in RTC memory: a daily flash write for it would be
    # the only one of an idle day. After a power cut it is unknown, so the next goes out at
    # boot. (Older firmware kept it in state.json.)
    ds = st.pop("ds", 0)
    if not isinstance(app.warm.get("ds"), int):
        app.warm["ds"] = ds if isinstance(ds, int) else 0
    app.state = st
    for sl in app.slots:
        rec = old.get(sl.id)
        if rec is not None and not _sane(rec):
            # Its checksum is good, yet it is not what this firmware writes (a hand edit,
            # another version): starting over beats a crash at every boot. An order may be
            # open: if DRS says one is, it is taken as ours.
            app.log("state-reset", slot=sl.id, reason="slot record not understood")
            rec = {"unc": 1}
        elif rec is None:
            # Without a record we cannot know whether an order is open; if DRS says one
            # is, take it as ours.
            rec = {"unc": 1} if corrupt else {}
        st["slots"][sl.id] = rec
        sl.rec = rec
        _restore_slot(app, sl)


def _sane(rec):
    """A slot record as `App.persist` writes it: the order's id and code and a suspension's
    reason are text (or None), everything else a whole number, never negative."""
    if not isinstance(rec, dict):
        return False
    for k, v in rec.items():
        if k in ("ev", "dc", "sr"):
            if v is not None and not isinstance(v, str):
                return False
        elif not isinstance(v, int) or v < 0:
            return False
    return True


def _restore_slot(app, sl):
    rec = sl.rec
    st = rec.get("st", fsm.MONITOR)
    if not isinstance(st, int) or not 0 <= st < fsm.N_STATES:
        st = fsm.MONITOR
    if st == fsm.SUSPENDED:
        kind = rec.get("sk")
        if kind == fsm.K_REG:
            human = app.tokens.registered  # registered again (new secrets, or a code)
        elif kind == fsm.K_UNLISTED:
            human = False  # the next SubscriptionInfo decides
        else:
            human = rec.get("sf") != app._fingerprint  # config or secrets changed
        if human:
            app.log("resumed", slot=sl.id, reason="provisioning changed since suspension")
            from dash.episode import unsuspend

            st = unsuspend(rec)
        else:
            sl.reason = rec.get("sr", "")
            app.creds_bad = app.creds_bad or kind == fsm.K_CREDS
            app.log("suspended", slot=sl.id, reason=sl.reason)
    if rec.get("fl"):
        # The last request may have left before the power went: an open order may be ours.
        rec["unc"] = 1
        rec["fl"] = 0
        if st == fsm.ORDERING:
            # A failed attempt like any other, so it backs off: a board that browns out in
            # every request (Wi-Fi and TLS draw the most) must not send one per boot.
            att = rec.get("att", 0)
            rec["dr"] = app.backoff_s(att)
            rec["dw"] = 0
            rec["att"] = att + 1
            st = fsm.RETRY
            why = "the power went during the request"
            app.log("order-failed", slot=sl.id, reason=why, retry_in_s=rec["dr"], attempt=att + 1)
    if st in BACKOFF_STATES:
        left = rec.get("dr", 0)
        now, dw = app.clock.wall(), rec.get("dw", 0)
        if now and dw:
            left = dw - now
        sl.deadline = max(0, min(left, rec.get("dr", left)))
    if st == fsm.ORDERED:
        sl.check_at = min(600, app.cfg["order_check_s"])
    sl.fsm.restore(st)
    app.log(
        "boot",
        slot=sl.id,
        state=fsm.name(st),
        event_instance_id=rec.get("ev"),
        backoff_s=app._left(sl),
    )
