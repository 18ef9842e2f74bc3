"""Bring-up commands for the REPL (what `mpremote exec` runs on a board), one JSON line each.

    >>> from dash import bench
    >>> bench.status()              # each slot's state, level, last order; no secret
    >>> bench.challenge()           # PKCE challenge for the maker's registration page
    >>> bench.register("ANabc...")  # authorization code -> tokens, kept only on the device
    >>> bench.deregister()          # DELETE /registration, then forget every token
    >>> bench.relay('{"notificationInfo": ...}')  # a DRS notification, by hand
    >>> bench.test_order("slot-a")  # order now: only with "test_device": true in config.json
    >>> bench.factory_reset()       # forget state, tokens and secrets; keep code and config
    >>> bench.raw(10)               # each slot's raw sensor count, live, to calibrate it

Each but `raw` works on the firmware as it runs, stopped (mpremote stops it when it enters the raw
REPL, without a soft reset: `mpremote resume exec`): the live application `main` started,
with its levels and counters. When none runs, each builds one from the files on flash. Either
way it does one thing and persists it; `dashctl` then resets the board so that the firmware
starts again from flash, as after any reset.
"""

import json

from micropython import const


def _app():
    from dash import app as mod

    live = mod.current
    if live is not None and live.running:
        return live
    app = mod.App(".")
    return app if app.boot() else None


def _run(fn):
    app = _app()
    out = fn(app) if app else {"ok": False, "reason": "config: see the config-error lines"}
    print(json.dumps(out))
    return out


def status():
    """The running firmware's status, as it is (its live levels and counters); or, when none
    runs, the one the files on flash boot into; with the config's errors, when it has some."""
    from dash import app as mod

    live = mod.current
    if live is not None and live.running:
        out = live.status()
        out["firmware"] = "running"
    else:
        app = mod.App(".")
        if not app.boot():
            from dash import config

            out = {"ok": False, "state": "suspended", "reason": "config"}
            out["config_errors"] = config.load(".")[2]
        else:
            # This app has only just booted: show what the firmware was doing (its persisted
            # state), not the warm-up every boot starts with.
            from dash import fsm

            out = app.status()
            for i, sl in enumerate(app.slots):
                one = out["slots"][i]
                if sl.fsm.state == fsm.WARMUP:
                    one["state"] = fsm.name(sl.fsm.durable())
                if len(app.slots) == 1:
                    out["state"] = one["state"]
        out["firmware"] = "not running"
    print(json.dumps(out))
    return out


def challenge():
    return _run(lambda app: app.provision("give_challenge"))


def register(code):
    return _run(lambda app: app.provision("register", code))


def deregister():
    return _run(lambda app: app.provision("deregister"))


def relay(text):
    def go(app):
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        out = app.provision("relay", msg)
        if app.verify_reg:
            # This app lives for one command: ask LwA now whether the registration is gone.
            from dash import duties

            duties.verify_registration(app)
            out["registered"] = app.tokens.registered
        return out

    return _run(go)


def test_order(slot_id=None):
    return _run(lambda app: app.provision("test_order", slot_id))


# What a factory reset forgets: every secret and everything learned; not the code, the
# maker's config.json or the trust store.
_WIPE = const(("state.json", "tokens.json", "pkce.json", "secrets.json"))


def factory_reset():
    import os

    gone = []
    for name in _WIPE:
        for path in (name, name + ".tmp"):
            try:
                os.remove(path)
                gone.append(path)
            except OSError:
                pass
    from dash.platform import RtcMem

    RtcMem("rtc.bin").write(b"")  # the access token kept across reboots goes too
    out = {"ok": True, "removed": gone}
    print(json.dumps(out))
    return out


def raw(seconds=10, slot_id=None, every_ms=500, root="."):
    """Each slot's raw sensor count (or only `slot_id`'s), read every `every_ms` for `seconds`:
    one JSON line per reading, with the level the calibration makes of it when the config has
    one. What a maker reads off to set `raw_empty` and `raw_full` with the real container.

    The sensors are opened afresh from config.json, as the firmware opens them (the firmware is
    stopped meanwhile): a config still without `raw_empty`/`raw_full` will do. A pulse sensor
    counts from 0 again here. A first line lists the config's errors about sensors, if any."""
    import time

    from dash import config
    from dash.platform import open_sensor
    from dash.signal import Signal, fault_name

    errors: list = []
    obj = config.read(root + "/" + config.CONFIG, errors)
    cfg: dict = {}
    if obj is not None:
        cfg, _, more = config.validate(obj, None)
        errors += [e for e in more if "sensor" in e]
    if errors:
        print(json.dumps({"config_errors": errors}))
    slots = []
    for i, sc in enumerate(cfg.get("slots", ())):
        sid = sc.get("slot_id") or "slots[%d]" % i
        if slot_id is not None and sid != slot_id:
            continue
        s = sc.get("sensor") or {}
        try:
            if s.get("kind") == "file" and not s["path"].startswith("/"):
                s["path"] = root + "/" + s["path"]  # under the root, as the firmware has it
            sensor = open_sensor(s)
        except Exception as e:  # noqa: BLE001 - said, and the other slots still read
            why = "%s %s" % (type(e).__name__, e)
            print(json.dumps({"slot": sid, "error": "its sensor cannot be opened: " + why}))
            continue
        sig = None
        cal = "raw_empty" in s and "raw_full" in s and "capacity" in s
        if cal and s["raw_empty"] != s["raw_full"]:
            g = s.get  # (a key with a bad value is missing: said in config_errors)
            sig = Signal(
                s["raw_empty"],
                s["raw_full"],
                s["capacity"],
                g("margin", 0),
                g("raw_max", 0),
                g("stuck_samples", 0),
                g("max_drop", 0),
                g("median", 5),
                g("ema_shift", 0),
            )
        slots.append((sid, sensor, sig))
    if not slots:
        why = "no slot " + slot_id if slot_id is not None else "no sensor to read"
        print(json.dumps({"ok": False, "reason": why}))
        return
    t0 = time.ticks_ms()
    while True:
        ms = time.ticks_diff(time.ticks_ms(), t0)
        if ms >= seconds * 1000:
            break
        for sid, sensor, sig in slots:
            r = sensor.read()
            out = {"ms": ms, "slot": sid, "raw": r}
            if r is None:
                out["fault"] = "unreadable"
            elif sig is not None:
                level = sig.feed(r)
                if level < 0:
                    out["fault"] = fault_name(level)
                else:
                    out["level"] = level
            print(json.dumps(out))
        time.sleep_ms(every_ms)
