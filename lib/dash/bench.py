"""Bring-up commands for the REPL (what `mpremote exec` runs on a board), one JSON line each.

    >>> from dash import bench
    >>> bench.status()              # each slot's state, level, last order; no secret
    >>> bench.challenge()           # PKCE challenge for the maker's registration page
    >>> bench.register("ANabc...")  # authorization code -> tokens, kept only on the device
    >>> bench.deregister()          # DELETE /registration, then forget every token
    >>> bench.relay('{"notificationInfo": ...}')  # a DRS notification, by hand
    >>> bench.test_order("slot-a")  # order now: only with "test_device": true in config.json
    >>> bench.factory_reset()       # forget state, tokens and secrets; keep code and config

Each works on the firmware as it runs, stopped (mpremote stops it when it enters the raw
REPL, without a soft reset: `mpremote resume exec`): the live application `main` started,
with its levels and counters. When none runs, each builds one from the files on flash. Either
way it does one thing and persists it; `dashctl` then resets the board so that the firmware
starts again from flash, as after any reset.
"""

import json


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
_WIPE = ("state.json", "tokens.json", "pkce.json", "secrets.json")


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
