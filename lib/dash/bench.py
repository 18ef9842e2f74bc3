"""Bring-up commands for the REPL (what `mpremote exec` runs on a board), one JSON line each.

    >>> from dash import bench
    >>> bench.status()              # each slot's state, level, last order; no secret
    >>> bench.challenge()           # PKCE challenge for the maker's registration page
    >>> bench.register("ANabc...")  # authorization code -> tokens, kept only on the device
    >>> bench.deregister()          # DELETE /registration, then forget every token
    >>> bench.relay('{"notificationInfo": ...}')  # a DRS notification, by hand

Each builds the application from the files on flash, does one thing and persists it; stop
the running firmware first (mpremote does, by entering the raw REPL).
"""

import json


def _app():
    from dash.app import App

    app = App(".")
    return app if app.boot() else None


def _run(fn):
    app = _app()
    out = fn(app) if app else {"ok": False, "reason": "config: see the config-error lines"}
    print(json.dumps(out))
    return out


def status():
    return _run(lambda app: app.status())


def challenge():
    return _run(lambda app: app.challenge())


def register(code):
    return _run(lambda app: app.register(code))


def deregister():
    return _run(lambda app: app.deregister())


def relay(text):
    def go(app):
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        return app.relay(msg)

    return _run(go)
