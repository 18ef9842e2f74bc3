import json

from dash import drs, lwa, result


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
    assert lwa.parse_answer(400, grant)[0] == result.SUSPEND
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


def test_expiry_margin():
    assert lwa.fresh(1000, 1400, 300)
    assert not lwa.fresh(1000, 1300, 300)
    assert not lwa.fresh(2000, 1300, 0)
