"""A rotated refresh token whose write to flash fails (flash full or worn, no memory): it is
kept and used for nothing until a later write succeeds; no refresh sends it before that."""

from test_store import empty_dir

from dash import lwa
from dash.app import App
from dash.store import Store
from dash.tokens import TOKENS, Tokens

ROOT = "/tmp/dash_unit_rotation"


class Clock:
    def ticks_ms(self):
        return 0

    def ticks_diff(self, a, b):
        return a - b

    def ticks_add(self, a, b):
        return a + b

    def wall(self):
        return 0


class Rtc:
    def read(self):
        return b""

    def write(self, data):
        return True


class LwA:
    """Rotates the refresh token on every refresh; records what each request carried."""

    def __init__(self):
        self.buf = bytearray(4432)
        self.sent = []

    def request(self, method, host, port, path, headers, form, max_body):
        self.sent.append(form.split(b"&refresh_token=")[1].split(b"&")[0])
        n = len(self.sent)
        body = b'{"access_token":"Atza|%s","refresh_token":"Atzr|rt%d","expires_in":3600}' % (
            b"a" * 400,
            n,
        )
        return 200, body, {}


class FullFlash(Store):
    """Refuses the token record's writes while `full`."""

    full = True

    def save(self, name, obj):
        if name == TOKENS and self.full:
            raise OSError(28)  # ENOSPC
        return Store.save(self, name, obj)


def _device():
    empty_dir(ROOT)
    logged = []
    app = App(ROOT, Clock(), logged.append, rtc=Rtc())
    app.store = FullFlash(ROOT)
    app.https = LwA()
    app.lwa_url = ("api.amazon.com", 443, "/auth/o2/token")
    app.cfg = {"sample_s": 60}
    secrets = {"client_id": "cid", "refresh_token": "Atzr|rt0"}
    app.tokens = Tokens(app.store, secrets, app.clock, 300, app.warm, app.keep)
    return app, logged


def test_a_rotated_token_that_cannot_be_written_is_kept_and_never_sent_unwritten():
    app, logged = _device()
    tokens = app.tokens
    assert lwa.refresh(app) is None  # the access token is good, whatever the flash does
    assert tokens.access is not None and tokens.refresh == "Atzr|rt1" and tokens.unsaved
    assert Store(ROOT).load(TOKENS) is None
    assert any("not on flash" in line for line in logged)
    tokens.access = None  # expired: another refresh is due, but rt1 is on no flash
    refused = lwa.refresh(app)
    assert refused is not None and "not on flash" in refused[1]
    assert app.https.sent == [b"Atzr%7Crt0"]  # nothing sent with rt1
    app.store.full = False  # room again: the next step writes it, and then it may be used
    app.duty_at = 1 << 29  # no periodic call in this step: only the write is looked at
    app.step()
    assert not tokens.unsaved and Store(ROOT).load(TOKENS)["rt"] == "Atzr|rt1"
    assert lwa.refresh(app) is None
    assert app.https.sent == [b"Atzr%7Crt0", b"Atzr%7Crt1"]
    assert Store(ROOT).load(TOKENS)["rt"] == "Atzr|rt2"
