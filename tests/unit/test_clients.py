import json

from dash import daily, drs, duties, lwa, reports, result, tokens


def test_replenish_answers():
    ok = json.dumps({"eventInstanceId": "amzn1.e", "detailCode": "STANDARD_ORDER_PLACED"})
    assert drs.classify(200, ok)[:3] == (result.OK, "amzn1.e", "STANDARD_ORDER_PLACED")
    t = json.dumps({"eventInstanceId": "e", "detailCode": "TEST_ORDER_PLACED"})
    assert drs.classify(200, t)[0] == result.OK
    ip = json.dumps({"eventInstanceId": "e", "detailCode": "ORDER_INPROGRESS"})
    assert drs.classify(200, ip)[0] == result.INPROGRESS
    new = json.dumps({"eventInstanceId": "e", "detailCode": "SOMETHING_NEW"})
    assert drs.classify(200, new)[0] == result.UNKNOWN
    for status, outcome in (
        (400, result.AUTH),
        (401, result.AUTH),
        (403, result.AUTH),
        (404, result.SUSPEND),
        (500, result.TRANSIENT),
        (503, result.TRANSIENT),
        (429, result.TRANSIENT),
        (302, result.TRANSIENT),
    ):
        assert drs.classify(status, b"")[0] == outcome, status


def test_a_success_status_without_an_order_in_its_body_is_no_order():
    for status in (201, 202, 204, 299):
        assert drs.classify(status, b"")[:2] == (result.UNKNOWN, None), status
    ip = json.dumps({"eventInstanceId": "e", "detailCode": "ORDER_INPROGRESS"})
    assert drs.classify(202, ip)[0] == result.INPROGRESS
    ok = json.dumps({"eventInstanceId": "amzn1.e", "detailCode": "STANDARD_ORDER_PLACED"})
    assert drs.classify(201, ok)[:2] == (result.OK, "amzn1.e")


def test_order_inprogress_backs_off_even_without_a_usable_id():
    for eid in (None, "", "a\nb", "x" * 256):
        body = json.dumps({"eventInstanceId": eid, "detailCode": "ORDER_INPROGRESS"})
        assert drs.classify(200, body)[:2] == (result.INPROGRESS, None), eid


def test_replenish_rejects_bad_event_ids():
    for eid in ("", "x" * 256, 5, None, "a\nb"):
        body = json.dumps({"eventInstanceId": eid, "detailCode": "STANDARD_ORDER_PLACED"})
        assert drs.classify(200, body)[0] == result.UNKNOWN, eid
    assert (
        drs.classify(
            200, json.dumps({"eventInstanceId": "x" * 255, "detailCode": "STANDARD_ORDER_PLACED"})
        )[0]
        == result.OK
    )
    for junk in (b"{", b"[]", b"null", b"", b"\xff"):
        assert drs.classify(200, junk)[0] == result.UNKNOWN


def test_form_encoding():
    assert lwa.quote("Atzr|a+b/c=d ~._-") == b"Atzr%7Ca%2Bb%2Fc%3Dd%20~._-"
    body = lwa.refresh_body("Atzr|x", "cid", "")
    assert body == b"grant_type=refresh_token&refresh_token=Atzr%7Cx&client_id=cid"
    assert lwa.refresh_body("r", "c", "s").endswith(b"&client_secret=s")


def test_token_answers():
    ok = json.dumps(
        {
            "access_token": "Atza|a",
            "refresh_token": "Atzr|b",
            "token_type": "bearer",
            "expires_in": 3600,
        }
    )
    assert lwa.parse_answer(200, ok)[:4] == (result.OK, "Atza|a", "Atzr|b", 3600)
    no_rt = json.dumps({"access_token": "Atza|a", "token_type": "bearer", "expires_in": 60})
    assert lwa.parse_answer(200, no_rt)[:3] == (result.OK, "Atza|a", None)
    grant = json.dumps({"error": "invalid_grant", "error_description": "revoked"})
    assert lwa.parse_answer(400, grant)[0] == result.REVOKED
    client = json.dumps({"error": "invalid_client"})
    assert lwa.parse_answer(401, client)[0] == result.SUSPEND
    assert lwa.parse_answer(500, b"oops")[0] == result.TRANSIENT
    assert lwa.parse_answer(400, json.dumps({"error": "invalid_request"}))[0] == result.TRANSIENT
    for bad in (
        b"{",
        json.dumps({"access_token": 5}),
        json.dumps({"access_token": "a b"}),
        json.dumps({"access_token": "a", "token_type": "mac"}),
    ):
        assert lwa.parse_answer(200, bad)[0] == result.TRANSIENT


def test_a_token_answer_is_read_for_its_members_alone_and_strictly():
    body = (
        b' { "access_token" : "Atza|a\\/b" , "scope": {"a": [1, "}", {"b": "]"}]}, "n": null,'
        b' "refresh_token": "Atzr|' + b"r" * 2000 + b'", "expires_in": 12 } '
    )
    got = lwa.members(body)
    assert sorted(got) == ["access_token", "expires_in", "refresh_token"]
    assert {k: lwa.value(body, span) for k, span in got.items()} == {
        "access_token": "Atza|a/b",
        "refresh_token": "Atzr|" + "r" * 2000,
        "expires_in": 12,
    }
    err = b'{"error": "invalid_grant", "error_description": "a \\" }"}'
    assert {k: lwa.value(err, s) for k, s in lwa.members(err).items()} == {
        "error": "invalid_grant"
    }
    assert lwa.members(b"{}") == {}
    for bad in (b"", b"[1]", b"{", b'{"a":}', b'{"a" 1}', b'{"a":1,}', b'{"a":1} x', b'{"a":[1}'):
        assert lwa.members(bad) is None, bad
    assert lwa.members(b'{"access_token": "open}') is None
    # A member it reads must be JSON.
    assert lwa.parse_answer(200, b'{"access_token": "a", "expires_in": 1e}')[0] == result.TRANSIENT


def _fill_heap():
    """The heap filled with small blocks, then every other one given back: room for many small
    objects, none of 1 KB. Returns what holds the rest (drop it to give the heap back)."""
    import gc

    gc.collect()
    node = None
    try:
        while True:
            node = [bytearray(64), node]
    except MemoryError:
        pass
    n, odd = node, False
    while n is not None:
        if odd:
            n[0] = None
        odd = not odd
        n = n[1]
    gc.collect()
    return node


def test_without_room_for_the_access_token_the_refresh_token_is_kept():
    # The refresh token is made first, in the room the refresh set aside for it; the access
    # token last, as room allows. Out of memory there, the answer still gives up the rotated
    # refresh token (the next refresh gets an access token), where a MemoryError would lose it.
    body = json.dumps({"access_token": "Atza|" + "a" * 1500, "refresh_token": "Atzr|b"})
    b = bytes(body, "utf-8")
    hog = _fill_heap()
    try:
        got = lwa.parse_answer(200, b)
    finally:
        hog = None  # noqa: F841 - the heap back
    assert got[:3] == (result.OK, None, "Atzr|b"), got[:3]
    assert got[4].startswith("low memory"), got[4]
    # With room, the same answer gives both.
    assert lwa.parse_answer(200, b)[:3] == (result.OK, "Atza|" + "a" * 1500, "Atzr|b")


def test_expiry_margin():
    assert tokens.fresh(1000, 1400, 300)
    assert not tokens.fresh(1000, 1300, 300)
    assert not tokens.fresh(2000, 1300, 0)


def test_subscription_answers_v1_and_v2():
    v1 = json.dumps({"slotsSubscriptionStatus": {"a": True, "b": False}})
    assert duties.parse_subscriptions(v1, ["a", "b", "c"]) == {"a": 1, "b": 0, "c": -1}
    # An empty list says nothing (it must not make every slot unknown).
    assert duties.parse_subscriptions(b'{"slotsSubscriptionStatus": {}}', ["a"]) is None
    v2 = json.dumps(
        {"slotsSubscriptionStatus": {"a": {"subscribed": True, "productInfoList": []}, "b": {}}}
    )
    assert duties.parse_subscriptions(v2, ["a", "b"]) == {"a": 1, "b": 0}
    assert duties.parse_subscriptions(
        json.dumps({"slotsSubscriptionStatus": {"a": "yes"}}), ["a"]
    ) == {"a": False}
    for junk in (b"", b"[]", b"{}", b'{"slotsSubscriptionStatus": []}', b"\xff"):
        assert duties.parse_subscriptions(junk, ["a"]) is None


def _order(*statuses, iid="e1"):
    items = [{"asin": "B0", "quantity": 1, "slotId": "a", "status": s} for s in statuses]
    return json.dumps({"orderInfoData": {"instanceId": iid, "orderItems": items}})


def test_order_info_answers():
    def status(body, eid="e1"):
        return reports.parse_order_status(body, eid, "a")

    assert status(_order("Pending")) == reports.O_OPEN
    assert status(_order("Processing")) == reports.O_OPEN
    assert status(_order("SomethingNew")) == reports.O_OPEN
    assert status(_order("Cancelled")) == reports.O_CANCELLED
    assert status(_order("Delivered")) == reports.O_DONE
    assert status(_order("Delivered", "Cancelled")) == reports.O_DONE
    assert status(_order("Cancelled", "Shipped")) == reports.O_OPEN
    assert status(_order("Cancelled", iid="other")) is None
    # An order of another slot says nothing about this one's (a notification may name it).
    assert reports.parse_order_status(_order("Cancelled"), "e1", "b") is None
    no_slot = json.dumps({"orderInfoData": {"instanceId": "e1", "orderItems": [{"status": "X"}]}})
    assert status(no_slot) == reports.O_OPEN
    not_item = b'{"orderInfoData": {"instanceId": "e1", "orderItems": [5]}}'
    for junk in (b"", b"{}", b'{"orderInfoData": 5}', not_item):
        assert status(junk) is None


def test_event_ids_that_cannot_go_into_a_url_are_not_looked_up():
    assert (
        reports.order_info_path("amzn1.dash.v2.o.ro.1-2") == "/getOrderInfo/amzn1.dash.v2.o.ro.1-2"
    )
    assert reports.order_info_path("a/../b") is None and reports.order_info_path("a b") is None


def test_dates_and_report_bodies():
    assert daily.iso8601(0) == "1970-01-01T00:00:00Z"
    assert daily.iso8601(951782400) == "2000-02-29T00:00:00Z"
    assert daily.iso8601(1790000000) == "2026-09-21T14:13:20Z"
    assert daily.iso8601(4102444799) == "2099-12-31T23:59:59Z"
    assert json.loads(daily.device_status_body(daily.iso8601(0))) == {
        "mostRecentlyActiveDate": "1970-01-01T00:00:00Z"
    }
    body = json.loads(reports.slot_status_body(35, 100, 35, 0, 86400))
    assert body == {
        "expectedReplenishmentDate": "1970-01-02T00:00:00Z",
        "remainingQuantityInUnit": 35,
        "originalQuantityInUnit": 100,
        "totalQuantityOnHand": 35,
        "lastUseDate": "1970-01-01T00:00:00Z",
    }


NOW = 1790000000
DAY = 86400


class DsApp:
    """What `daily.device_status` asks of the application, and its clock."""

    up_s = 1000

    def __init__(self, ds):
        self.warm = {"ds": ds}
        self.clock = self
        self.ds_up = -1
        self.logged = []

    def wall(self):
        return NOW

    def ticks_ms(self):
        return 0

    def keep(self):
        pass

    def log(self, tag, **fields):
        self.logged.append(tag)


def test_device_status_sent_ahead_of_the_clock_is_due_now():
    # The RTC was ahead when DeviceStatus last went out, then NTP set it back: `now - ds` is
    # negative, and was read as "sent less than a day ago" for as long as the clock was ahead.
    from dash.app import App

    class Registered:
        registered = True

    sent = []
    real = daily.answer
    daily.answer = lambda app, *a, **k: sent.append(a[1]) or (None, None)
    try:
        for ds, is_sent, due in (
            (NOW + 10 * DAY, 1, 1000 + DAY),
            (NOW - 3600, 0, 1000 + DAY - 3600),
        ):
            app = DsApp(ds)
            assert daily.device_status(app) is None
            assert len(sent) == is_sent and app.ds_up == due, (ds, sent, app.ds_up)
            assert app.warm["ds"] == (NOW if is_sent else ds)
            sent.clear()
    finally:
        daily.answer = real
    # The same rule where the clock becomes known after boot (App._duty); at boot (start):
    # test_contract.py. A due time is uptime there too (it was seconds from now).
    for ds, due in ((NOW + 10 * DAY, 0), (NOW - 3600, DAY - 3600), (NOW - 2 * DAY, 0)):
        clock = DsApp(ds)
        app = App(".", clock, clock.log, rtc=object())
        app.tokens = Registered()
        app.cfg = {"subscription_check_s": DAY}
        app.sub_at = app.up_s = 1000
        app.warm = clock.warm
        app._duty()
        assert app.ds_up == 1000 + due, (ds, app.ds_up)


def test_pkce_challenge_matches_rfc7636():
    from dash import provision

    v = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert provision.challenge(v) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_code_exchange_bodies():
    class T:
        buf = bytearray(3072)

        def request(self, *a):
            self.form = a[5]
            return 400, b'{"error": "invalid_grant"}', {}

    class NoStore:
        def load(self, name):
            return None

        def exists(self, name):
            return False

    tok = tokens.Tokens(NoStore(), {"client_id": "cid", "refresh_token": ""}, None, 60, {}, None)
    assert not tok.registered
    t = T()
    from dash import provision

    outcome, reason = provision.exchange(tok, t, ("h", 1, "/p"), "AN|c", "https://x/cb", "v" * 43)
    assert t.form == (
        b"grant_type=authorization_code&code=AN%7Cc&redirect_uri=https%3A%2F%2Fx%2Fcb"
        b"&client_id=cid&code_verifier=" + b"v" * 43
    )
    assert outcome == result.REVOKED and "expired" in reason
    tok.client_secret = "s"
    provision.exchange(tok, t, ("h", 1, "/p"), "c", "r", "")
    assert t.form.endswith(b"&client_secret=s") and b"code_verifier" not in t.form
