"""Host tests for tools/drs_emulator.py and tools/certs.py, using CPython's HTTPS client."""

import argparse
import base64
import copy
import hashlib
import http.client
import importlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse

import pytest

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
sys.path.insert(0, TOOLS)

certs = importlib.import_module("certs")
drs_emulator = importlib.import_module("drs_emulator")

DRS_HEADERS = {
    "x-amzn-type-version": drs_emulator.REPLENISH_INPUT,
    "x-amzn-accept-type": drs_emulator.REPLENISH_RESULT,
}


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("certs"))
    certs.ensure_certs(d)
    return d


@pytest.fixture
def emu(cert_dir):
    with drs_emulator.Emulator(cert_dir, slots=("slot-a", "slot-b")) as e:
        yield e


@pytest.fixture(scope="session")
def ctx(cert_dir):
    c = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.pem"))
    return c


def call(emu, ctx, method, path, body=None, headers=None, port=None, timeout=5):
    conn = http.client.HTTPSConnection("localhost", port or emu.port, context=ctx, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def refresh(emu, ctx, token, **overrides):
    form = {
        "grant_type": "refresh_token",
        "refresh_token": token,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        **overrides,
    }
    return lwa(emu, ctx, **form)


def access_token(emu, ctx):
    status, answer = refresh(emu, ctx, emu.add_refresh_token())
    assert status == 200
    return answer["access_token"]


def replenish(emu, ctx, token, slot="slot-a", **kw):
    resp, data = call(
        emu,
        ctx,
        "POST",
        "/replenish/" + slot,
        headers={**DRS_HEADERS, "Authorization": "Bearer " + token},
        **kw,
    )
    return resp, json.loads(data) if data else None


def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_certs_reused_and_complete(cert_dir):
    paths = certs.ensure_certs(cert_dir)
    before = os.path.getmtime(paths["ca"])
    assert set(paths) == {
        "ca",
        "ca_key",
        "server",
        "server_key",
        "wrongname",
        "wrongname_key",
        "rogue_ca",
        "rogue_ca_key",
        "rogue",
        "rogue_key",
        "ca_der",
    }
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths.values())
    assert certs.ensure_certs(cert_dir) == paths
    assert os.path.getmtime(paths["ca"]) == before
    assert os.stat(paths["server_key"]).st_mode & 0o077 == 0
    with open(paths["ca"]) as pem, open(paths["ca_der"], "rb") as der:
        assert ssl.PEM_cert_to_DER_cert(pem.read()) == der.read()


def test_certs_regenerated_when_incomplete(tmp_path):
    paths = certs.ensure_certs(tmp_path)
    with open(paths["ca"]) as f:
        old_ca = f.read()
    os.remove(paths["rogue_key"])
    assert certs.ensure_certs(tmp_path) == paths
    with open(paths["ca"]) as f:
        assert f.read() != old_ca  # everything was remade, not just the missing key


def test_refresh_rotates_and_old_token_dies(emu, ctx):
    old = emu.add_refresh_token()
    assert old.startswith("Atzr|") and "|" in old[5:]
    status, answer = refresh(emu, ctx, old)
    assert status == 200
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 3600
    assert answer["access_token"].startswith("Atza|") and len(answer["access_token"]) >= 350
    new = answer["refresh_token"]
    assert new != old
    status, answer = refresh(emu, ctx, old)
    assert (status, answer["error"]) == (400, "invalid_grant")
    assert refresh(emu, ctx, new)[0] == 200
    assert emu.refresh_count == 2
    rec = emu.requests_to("/auth/o2/token")[0]
    assert rec["port"] == "good" and rec["method"] == "POST" and rec["status"] == 200
    assert rec["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(rec["body"].decode())["refresh_token"] == [old]


def test_token_errors(emu, ctx):
    token = emu.add_refresh_token()
    status, answer = refresh(emu, ctx, token, client_secret="nope")
    assert (status, answer["error"]) == (401, "invalid_client")
    status, answer = refresh(emu, ctx, token, client_id="amzn1.application-oa2-client.other")
    assert (status, answer["error"]) == (401, "invalid_client")
    status, answer = refresh(emu, ctx, token, client_id=None)
    assert (status, answer["error"]) == (400, "invalid_request")
    status, answer = refresh(emu, ctx, token, grant_type="password")
    assert (status, answer["error"]) == (400, "unsupported_grant_type")
    status, answer = refresh(emu, ctx, token, grant_type="authorization_code")
    assert (status, answer["error"]) == (400, "invalid_request")  # no code, no redirect_uri
    resp, data = call(
        emu,
        ctx,
        "POST",
        "/auth/o2/token",
        json.dumps({"refresh_token": token}),
        {"Content-Type": "application/json"},
    )
    assert (resp.status, json.loads(data)["error"]) == (400, "invalid_request")
    assert emu.refresh_count == 0
    emu.revoke_all()
    assert refresh(emu, ctx, token)[1]["error"] == "invalid_grant"


def test_replenish_order_lifecycle(emu, ctx):
    token = access_token(emu, ctx)
    resp, answer = replenish(emu, ctx, token)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("x-amzn-type-version") == drs_emulator.REPLENISH_RESULT
    assert answer["detailCode"] == "STANDARD_ORDER_PLACED"
    first = answer["eventInstanceId"]
    assert first.startswith("amzn1.dash.v2.o.ro.") and len(first) <= 255
    assert emu.open_order("slot-a") == first
    for _ in range(2):
        resp, answer = replenish(emu, ctx, token)
        assert answer["detailCode"] == "ORDER_INPROGRESS" and answer["eventInstanceId"] != first
    assert replenish(emu, ctx, token, slot="slot-b")[1]["detailCode"] == "STANDARD_ORDER_PLACED"
    assert emu.mark_delivered("slot-a") == first
    assert emu.open_order("slot-a") is None
    assert replenish(emu, ctx, token)[1]["detailCode"] == "STANDARD_ORDER_PLACED"
    assert [o["slot"] for o in emu.orders] == ["slot-a", "slot-b", "slot-a"]


def test_test_device_orders(cert_dir, ctx):
    with drs_emulator.Emulator(cert_dir, is_test_device=True) as emu:
        answer = replenish(emu, ctx, access_token(emu, ctx))[1]
        assert answer["detailCode"] == "TEST_ORDER_PLACED"


@pytest.mark.parametrize(
    "change",
    [
        {"x-amzn-type-version": None},
        {"x-amzn-accept-type": "com.amazon.dash.replenishment.DrsReplenishResult@2.0"},
        {"Authorization": None},
        {"Authorization": "Bearer Atza|forged"},
        {"method": "GET"},
        {"body": b"{}"},
    ],
)
def test_replenish_rejects_bad_requests(emu, ctx, change):
    headers = {**DRS_HEADERS, "Authorization": "Bearer " + access_token(emu, ctx)}
    method, body = change.pop("method", "POST"), change.pop("body", None)
    headers.update(change)
    resp, data = call(
        emu,
        ctx,
        method,
        "/replenish/slot-a",
        body,
        {k: v for k, v in headers.items() if v is not None},
    )
    assert resp.status == 400 and json.loads(data)["message"]
    assert emu.orders == []


def test_expired_and_revoked_access_tokens(emu, ctx):
    refresh_token = emu.add_refresh_token()
    status, answer = refresh(emu, ctx, refresh_token)
    emu.expire_access_tokens()
    resp, body = replenish(emu, ctx, answer["access_token"])
    assert resp.status == 400 and "expired" in body["message"]
    status, answer = refresh(emu, ctx, answer["refresh_token"])
    assert status == 200
    assert replenish(emu, ctx, answer["access_token"])[0].status == 200
    emu.revoke_all()
    assert replenish(emu, ctx, answer["access_token"])[0].status == 400
    assert refresh(emu, ctx, answer["refresh_token"])[0] == 400


def test_unknown_slot_is_404(emu, ctx):
    resp, answer = replenish(emu, ctx, access_token(emu, ctx), slot="slot-z")
    assert resp.status == 404 and "slot-z" in answer["message"]


def test_untrusted_and_wrong_name_are_refused(emu, ctx):
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        call(emu, ctx, "GET", "/", port=emu.port_untrusted)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        call(emu, ctx, "GET", "/", port=emu.port_wrong_name)
    wait_for(lambda: emu.tls_failures == 2)
    assert emu.requests == []
    # Both listeners serve the API to a client that skips verification.
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loose.check_hostname, loose.verify_mode = False, ssl.CERT_NONE
    resp, _ = call(emu, loose, "GET", "/nowhere", port=emu.port_wrong_name)
    assert resp.status == 404 and emu.requests[0]["port"] == "wrong_name"


def test_fault_status_with_retry_after(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject(
        "/replenish/",
        "status",
        status=503,
        body={"message": "busy"},
        headers={"Retry-After": "7"},
        times=2,
    )
    for _ in range(2):
        resp, answer = replenish(emu, ctx, token)
        assert (resp.status, resp.getheader("Retry-After"), answer) == (
            503,
            "7",
            {"message": "busy"},
        )
    assert emu.orders == [] and emu.pending_faults() == 0
    assert replenish(emu, ctx, token)[0].status == 200


def test_fault_reset_after_processing_places_order(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject("/replenish/slot-a", "reset_after_processing")
    with pytest.raises((OSError, http.client.HTTPException)):
        replenish(emu, ctx, token)
    assert emu.open_order("slot-a") is not None
    assert emu.requests_to("/replenish/")[-1]["status"] is None
    assert replenish(emu, ctx, token)[1]["detailCode"] == "ORDER_INPROGRESS"


def test_fault_reset_does_not_process(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject("/replenish/", "reset")
    with pytest.raises((OSError, http.client.HTTPException)):
        replenish(emu, ctx, token)
    assert emu.orders == []


def test_fault_chunked(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject("/replenish/", "chunked")
    resp, answer = replenish(emu, ctx, token)
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert answer["detailCode"] == "STANDARD_ORDER_PLACED"


def test_fault_close_delimited(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject("/replenish/", "close_delimited")
    resp, answer = replenish(emu, ctx, token)
    assert resp.getheader("Content-Length") is None and resp.getheader("Transfer-Encoding") is None
    assert answer["detailCode"] == "STANDARD_ORDER_PLACED"


def test_faults_that_break_the_answer(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject("/replenish/", "truncate")
    with pytest.raises(http.client.IncompleteRead):
        replenish(emu, ctx, token)
    emu.inject("/replenish/", "invalid_json")
    with pytest.raises(json.JSONDecodeError):
        replenish(emu, ctx, token)
    emu.inject("/replenish/", "oversized", size=70000)
    resp, data = call(emu, ctx, "POST", "/replenish/slot-a", headers=DRS_HEADERS)
    assert len(data) == 70000 and json.loads(data)["eventInstanceId"]
    emu.inject("/replenish/", "oversized_headers", size=9000)
    resp, _ = replenish(emu, ctx, token)
    assert len(resp.getheader("X-Padding")) == 9000 - len("X-Padding: ")
    emu.inject("/replenish/", "oversized_headers", size=70000)
    with pytest.raises(http.client.LineTooLong):  # http.client caps header lines at 64 KiB
        replenish(emu, ctx, token)
    emu.inject("/replenish/", "redirect")
    resp, _ = call(emu, ctx, "POST", "/replenish/slot-a", headers=DRS_HEADERS)
    assert resp.status == 302
    assert resp.getheader("Location") == f"https://localhost:{emu.port}/elsewhere"


def test_fault_delay_and_silence_time_out(emu, ctx):
    token = access_token(emu, ctx)
    emu.inject("/replenish/", "delay", seconds=1)
    with pytest.raises(TimeoutError):
        replenish(emu, ctx, token, timeout=0.3)
    emu.inject("/replenish/", "silence", seconds=5)
    with pytest.raises(TimeoutError):
        replenish(emu, ctx, token, timeout=0.3)
    wait_for(lambda: len(emu.orders) == 1)  # the delayed request was processed after all


def test_cli_prints_ports_and_stops_on_sigterm(cert_dir, ctx):
    cmd = [
        sys.executable,
        os.path.join(TOOLS, "drs_emulator.py"),
        "--certs",
        cert_dir,
        "--slots",
        "a,b",
        "--unsubscribed",
        "b",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            info = json.loads(proc.stdout.readline())
            assert info["ca"] == os.path.join(cert_dir, "ca.pem")
            assert info["refresh_token"].startswith("Atzr|")
            assert info["auth_code"].startswith("AN")
            conn = http.client.HTTPSConnection("localhost", info["port"], context=ctx, timeout=5)
            conn.request("POST", "/replenish/a", headers=DRS_HEADERS)
            assert conn.getresponse().status == 400
            conn.close()
            # The printed code is a confidential one for the printed redirect_uri.
            cli = argparse.Namespace(port=info["port"], client_id=CLIENT_ID)
            status, answer = lwa(
                cli,
                ctx,
                grant_type="authorization_code",
                code=info["auth_code"],
                redirect_uri=info["redirect_uri"],
                client_id=CLIENT_ID,
                client_secret="test-secret",
            )
            assert status == 200
            resp, answer = drs(cli, ctx, "subscription_info", answer["access_token"])
            assert answer == {"slotsSubscriptionStatus": {"a": True, "b": False}}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
        assert "POST /replenish/a -> 400" in proc.stderr.read()


def test_cli_refuses_unknown_unsubscribed_slot(cert_dir):
    cmd = [sys.executable, os.path.join(TOOLS, "drs_emulator.py"), "--certs", cert_dir]
    proc = subprocess.run(
        [*cmd, "--slots", "a", "--unsubscribed", "z"], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 2 and "z" in proc.stderr


# -- every DRS endpoint --

CLIENT_ID = "amzn1.application-oa2-client.test"
T = "com.amazon.dash.replenishment."
# name -> (method, path, x-amzn-type-version, x-amzn-accept-type), as drs-api.md lists them.
ENDPOINTS = {
    "replenish": ("POST", "/replenish/slot-a", "DrsReplenishInput@1.0", "DrsReplenishResult@1.0"),
    "slot_status": (
        "POST",
        "/slotStatus/slot-a",
        "DrsSlotStatusInput@1.0",
        "DrsSlotStatusResult@1.0",
    ),
    "device_status": (
        "POST",
        "/deviceStatus",
        "DrsDeviceStatusInput@1.0",
        "DrsDeviceStatusResult@1.0",
    ),
    "subscription_info": (
        "GET",
        "/subscriptionInfo",
        "DrsSubscriptionInfoInput@1.0",
        "DrsSubscriptionInfoResult@1.0",
    ),
    "order_info": (
        "GET",
        "/getOrderInfo/amzn1.dash.v2.o.ro.elsewhere",
        "DrsOrderInfoInput@1.0",
        "DrsOrderInfoResult@1.0",
    ),
    "deregister": ("DELETE", "/registration", "DrsDeregisterInput@2.0", "DrsDeregisterResult@1.0"),
    "cancel_test_slot": (
        "DELETE",
        "/testOrders/slots/slot-a",
        "DrsCancelTestOrdersInput@1.0",
        "DrsCancelTestOrdersResult@1.0",
    ),
    "cancel_test_all": (
        "DELETE",
        "/testOrders",
        "DrsCancelTestOrdersInput@1.0",
        "DrsCancelTestOrdersResult@1.0",
    ),
}
SLOT_REPORT = {
    "expectedReplenishmentDate": "2015-12-28T10:00:00Z",
    "remainingQuantityInUnit": 3.5,
    "originalQuantityInUnit": 10,
    "totalQuantityOnHand": 20,
    "lastUseDate": "2015-12-21T10:00:00Z",
}
BODIES = {
    "slot_status": SLOT_REPORT,
    "device_status": {"mostRecentlyActiveDate": "2015-12-21T10:00:00Z"},
}
KEEP = object()


def drs(
    emu,
    ctx,
    endpoint,
    token,
    body=KEEP,
    path=None,
    method=None,
    type_version=KEEP,
    accept=KEEP,
    headers=None,
):
    """Call an endpoint the documented way; override any part to break it (None drops a
    header). Returns (response, parsed JSON body or None)."""
    want_method, want_path, input_type, result_type = ENDPOINTS[endpoint]
    hdrs = {
        "x-amzn-type-version": T + input_type if type_version is KEEP else type_version,
        "x-amzn-accept-type": T + result_type if accept is KEEP else accept,
        "Authorization": token and "Bearer " + token,
    }
    if body is KEEP:
        body = BODIES.get(endpoint)
    if isinstance(body, dict):
        body = json.dumps(body)
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    resp, data = call(
        emu,
        ctx,
        method or want_method,
        path or want_path,
        body,
        {k: v for k, v in hdrs.items() if v is not None},
    )
    return resp, json.loads(data) if data else None


def lwa(emu, ctx, **form):
    body = urllib.parse.urlencode({k: v for k, v in form.items() if v is not None})
    resp, data = call(
        emu,
        ctx,
        "POST",
        "/auth/o2/token",
        body,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    return resp.status, json.loads(data)


def snapshot(emu):
    with emu._lock:
        return copy.deepcopy(
            (
                emu.orders,
                emu.slot_status,
                emu.device_status,
                emu.deregistrations,
                emu.refresh_count,
                emu.code_grants,
            )
        )


def assert_refused(resp, answer, endpoint, status=400):
    assert resp.status == status
    assert isinstance(answer["message"], str) and answer["message"]
    assert resp.getheader("x-amzn-type-version") == T + ENDPOINTS[endpoint][3]
    assert resp.getheader("Content-Type") == "application/json"


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_every_endpoint_refuses_malformed_calls(emu, ctx, endpoint):
    emu.place_order("slot-a")  # gives order_info something to find
    token = access_token(emu, ctx)
    method = ENDPOINTS[endpoint][0]
    other_input = T + (
        "DrsSlotStatusInput@1.0" if endpoint == "replenish" else "DrsReplenishInput@1.0"
    )
    before = snapshot(emu)
    cases = [  # (one change to a good call, a word the refusal must contain)
        ({"method": "PUT"}, "method"),
        ({"method": "GET" if method != "GET" else "DELETE"}, "method"),
        ({"type_version": None}, "x-amzn-type-version"),
        ({"type_version": other_input}, "x-amzn-type-version"),
        ({"type_version": T + ENDPOINTS[endpoint][2].replace("@", "@9")}, "x-amzn-type-version"),
        ({"accept": None}, "x-amzn-accept-type"),
        ({"accept": T + "DrsReplenishResult@9.0"}, "x-amzn-accept-type"),
        ({"accept": ENDPOINTS[endpoint][3]}, "x-amzn-accept-type"),  # no com.amazon... prefix
        ({"headers": {"Authorization": None}}, "Authorization"),
        ({"headers": {"Authorization": "Basic " + token}}, "Authorization"),
        ({"headers": {"Authorization": "Bearer "}}, "Authorization"),
        ({"token": "Atza|forged"}, "invalid or revoked access token"),
    ]
    if endpoint in BODIES:
        cases += [({"body": None}, "JSON"), ({"body": b"[]"}, "object"), ({"body": {}}, "missing")]
    else:
        cases += [({"body": b"{}"}, "no request body"), ({"body": b"x"}, "no request body")]
    for case, word in cases:
        case = dict(case)
        resp, answer = drs(emu, ctx, endpoint, case.pop("token", token), **case)
        assert_refused(resp, answer, endpoint)
        assert word in answer["message"], (case, answer)
    emu.expire_access_tokens()
    resp, answer = drs(emu, ctx, endpoint, token)
    assert_refused(resp, answer, endpoint)
    assert "expired" in answer["message"]
    assert snapshot(emu) == before
    assert all(r["status"] == 400 for r in emu.requests[1:])  # [0] was the token refresh
    # The same call, unbroken and with a fresh token, is accepted.
    assert drs(emu, ctx, endpoint, access_token(emu, ctx))[0].status == 200


@pytest.mark.parametrize("endpoint", ["slot_status", "cancel_test_slot", "replenish"])
def test_unknown_slot_is_404_everywhere(emu, ctx, endpoint):
    path = ENDPOINTS[endpoint][1].replace("slot-a", "slot-z")
    before = snapshot(emu)
    resp, answer = drs(emu, ctx, endpoint, access_token(emu, ctx), path=path)
    assert_refused(resp, answer, endpoint, status=404)
    assert "slot-z" in answer["message"]
    assert snapshot(emu)[:4] == before[:4]


@pytest.mark.parametrize(
    "path", ["/slotStatus", "/slotStatus/slot-a/x", "/deviceStatus/x", "/testOrders/", "/x"]
)
def test_unknown_resource_is_404(emu, ctx, path):
    resp, data = call(emu, ctx, "GET", path)
    assert resp.status == 404 and path in json.loads(data)["message"]


def test_slot_status_accepts_large_and_zero_quantities(emu, ctx):
    report = {**SLOT_REPORT, "totalQuantityOnHand": 10**400, "remainingQuantityInUnit": 0.0}
    assert drs(emu, ctx, "slot_status", access_token(emu, ctx), body=report)[0].status == 200
    assert emu.slot_status["slot-a"] == [report]


def test_slot_status_recorded(emu, ctx):
    token = access_token(emu, ctx)
    resp, answer = drs(emu, ctx, "slot_status", token)
    assert (resp.status, answer, resp.getheader("Content-Length")) == (200, None, "0")
    assert resp.getheader("x-amzn-type-version") == T + "DrsSlotStatusResult@1.0"
    second = {
        **SLOT_REPORT,
        "expectedReplenishmentDate": "2016-01-02T00:00:00.000Z",
        "remainingQuantityInUnit": 0,
        "totalQuantityOnHand": 0.25,
    }
    # No Content-Type at all is accepted; so is one with parameters.
    resp, _ = drs(emu, ctx, "slot_status", token, body=json.dumps(second).encode())
    assert resp.status == 200
    resp, _ = drs(
        emu,
        ctx,
        "slot_status",
        token,
        path="/slotStatus/slot-b",
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 200
    assert emu.slot_status == {"slot-a": [SLOT_REPORT, second], "slot-b": [SLOT_REPORT]}
    rec = emu.requests_to("/slotStatus/slot-a")[0]
    assert json.loads(rec["body"]) == SLOT_REPORT and rec["status"] == 200


@pytest.mark.parametrize(
    "change",
    [
        {"lastUseDate": None},
        {"extra": 1},
        {"lastUseDate": "2015-12-21T10:00:00"},
        {"lastUseDate": "2015-12-21T10:00:00+00:00"},
        {"lastUseDate": "2015-12-21 10:00:00Z"},
        {"lastUseDate": "2015-13-21T10:00:00Z"},
        {"lastUseDate": "2015-12-21T10:00:00.5Z"},
        {"lastUseDate": 1450692000},
        {"expectedReplenishmentDate": ""},
        {"remainingQuantityInUnit": -1},
        {"remainingQuantityInUnit": "3"},
        {"originalQuantityInUnit": True},
        {"totalQuantityOnHand": None},
        {"totalQuantityOnHand": [1]},
        {"totalQuantityOnHand": -(10**400)},
        {"totalQuantityOnHand": 1e400},  # json.dumps writes Infinity
    ],
)
def test_slot_status_rejects_bad_fields(emu, ctx, change):
    body = {**SLOT_REPORT, **change}
    if change.get("lastUseDate", 0) is None:
        del body["lastUseDate"]
    resp, answer = drs(emu, ctx, "slot_status", access_token(emu, ctx), body=body)
    assert_refused(resp, answer, "slot_status")
    assert emu.slot_status == {"slot-a": [], "slot-b": []}


@pytest.mark.parametrize(
    "body, ctype",
    [
        (b"", None),
        (b"not json", "application/json"),
        (b'{"lastUseDate": NaN}', "application/json"),
        (json.dumps(SLOT_REPORT).replace("3.5", "NaN").encode(), None),
        (json.dumps(SLOT_REPORT).replace("}", ', "lastUseDate": "2015-12-21T10:00:00Z"}'), None),
        (b"\xff\xfe", None),
        (json.dumps(SLOT_REPORT).encode(), "text/plain"),
        (json.dumps(SLOT_REPORT).encode(), "application/x-www-form-urlencoded"),
    ],
)
def test_slot_status_rejects_bad_documents(emu, ctx, body, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    resp, answer = drs(emu, ctx, "slot_status", access_token(emu, ctx), body=body, headers=headers)
    assert_refused(resp, answer, "slot_status")
    assert emu.slot_status["slot-a"] == []


def test_device_status(emu, ctx):
    token = access_token(emu, ctx)
    resp, answer = drs(emu, ctx, "device_status", token)
    assert (resp.status, answer) == (200, None)
    assert resp.getheader("x-amzn-type-version") == T + "DrsDeviceStatusResult@1.0"
    body = {"mostRecentlyActiveDate": "2026-03-01T08:30:00.000Z"}
    assert drs(emu, ctx, "device_status", token, body=body)[0].status == 200
    for bad in (
        {},
        {"mostRecentlyActiveDate": "2026-03-01T08:30:00Z", "serial": "x"},
        {"mostrecentlyactivedate": "2026-03-01T08:30:00Z"},
        {"mostRecentlyActiveDate": "yesterday"},
        {"mostRecentlyActiveDate": "2026-02-30T08:30:00Z"},
        {"mostRecentlyActiveDate": None},
    ):
        assert_refused(*drs(emu, ctx, "device_status", token, body=bad), "device_status")
    resp, answer = drs(emu, ctx, "device_status", token, headers={"Content-Type": "text/json"})
    assert_refused(resp, answer, "device_status")
    assert emu.device_status == ["2015-12-21T10:00:00Z", "2026-03-01T08:30:00.000Z"]


def test_subscription_info_v1_and_v2(emu, ctx):
    token = access_token(emu, ctx)
    resp, answer = drs(emu, ctx, "subscription_info", token)
    assert resp.status == 200
    assert resp.getheader("x-amzn-type-version") == T + "DrsSubscriptionInfoResult@1.0"
    assert answer == {"slotsSubscriptionStatus": {"slot-a": True, "slot-b": True}}
    emu.set_subscribed("slot-b", False)
    assert emu.subscriptions == {"slot-a": True, "slot-b": False}
    answer = drs(emu, ctx, "subscription_info", token)[1]
    assert answer == {"slotsSubscriptionStatus": {"slot-a": True, "slot-b": False}}
    resp, answer = drs(
        emu, ctx, "subscription_info", token, accept=T + "DrsSubscriptionInfoResult@2.0"
    )
    assert resp.getheader("x-amzn-type-version") == T + "DrsSubscriptionInfoResult@2.0"
    status = answer["slotsSubscriptionStatus"]
    assert status["slot-b"] == {"subscribed": False, "productInfoList": []}
    assert status["slot-a"]["subscribed"] is True
    (product,) = status["slot-a"]["productInfoList"]
    assert product == {"asin": emu.asins["slot-a"], "quantity": 1, "unit": "count"}
    assert product["asin"].startswith("B0") and len(product["asin"]) == 10
    with pytest.raises(ValueError):
        emu.set_subscribed("slot-z", True)


def order_info(emu, ctx, token, event_id):
    path = "/getOrderInfo/" + urllib.parse.quote(event_id, safe="")
    return drs(emu, ctx, "order_info", token, path=path)


def items(emu, ctx, token, event_id):
    resp, answer = order_info(emu, ctx, token, event_id)
    assert resp.status == 200, answer
    assert resp.getheader("x-amzn-type-version") == T + "DrsOrderInfoResult@1.0"
    assert answer["orderInfoData"]["instanceId"] == event_id
    return answer["orderInfoData"]["orderItems"]


def test_order_lifecycle_through_get_order_info(emu, ctx):
    token = access_token(emu, ctx)
    event = replenish(emu, ctx, token)[1]["eventInstanceId"]
    (item,) = items(emu, ctx, token, event)
    asin = emu.asins["slot-a"]
    assert item == {
        "asin": asin,
        "expectedDeliveryDate": "",
        "quantity": 1,
        "slotId": "slot-a",
        "status": "Pending",
    }
    assert emu.orders[0]["status"] == "Pending"
    assert emu.ship("slot-a") == event
    (item,) = items(emu, ctx, token, event)
    assert item["status"] == "Shipped"
    assert re.fullmatch(r"20\d\d-\d\d-\d\dT07:59:59\.000Z", item["expectedDeliveryDate"])
    in_progress = replenish(emu, ctx, token)[1]
    assert in_progress["detailCode"] == "ORDER_INPROGRESS"  # shipped is still open
    resp, answer = order_info(emu, ctx, token, in_progress["eventInstanceId"])
    assert_refused(resp, answer, "order_info")  # ORDER_INPROGRESS named no order
    assert emu.mark_delivered("slot-a") == event
    assert items(emu, ctx, token, event)[0]["status"] == "Delivered"
    assert emu.ship("slot-a") is None and emu.mark_delivered("slot-a") is None

    second = replenish(emu, ctx, token)[1]["eventInstanceId"]
    emu.set_order_status(second, "Processing")
    assert items(emu, ctx, token, second)[0]["status"] == "Processing"
    emu.set_order_status(second, "SomethingNew", expected_delivery_date="2026-01-05T07:59:59Z")
    (item,) = items(emu, ctx, token, second)
    assert (item["status"], item["expectedDeliveryDate"]) == (
        "SomethingNew",
        "2026-01-05T07:59:59Z",
    )
    assert emu.open_order("slot-a") == second  # a status alone does not close the order
    assert emu.cancel_order("slot-a") == second
    assert items(emu, ctx, token, second)[0]["status"] == "Cancelled"
    assert emu.open_order("slot-a") is None and emu.cancel_order("slot-a") is None
    with pytest.raises(KeyError):
        emu.set_order_status("amzn1.dash.v2.o.ro.nope", "Pending")

    outside = emu.place_order("slot-b", "amzn1.dash.v2.o.ro.by/hand")
    assert items(emu, ctx, token, outside)[0]["slotId"] == "slot-b"
    resp, answer = order_info(emu, ctx, token, "amzn1.dash.v2.o.ro.unknown")
    assert_refused(resp, answer, "order_info")
    assert "amzn1.dash.v2.o.ro.unknown" in answer["message"]


def test_deregistration_kills_every_token(emu, ctx):
    refresh_token = emu.add_refresh_token()
    status, answer = refresh(emu, ctx, refresh_token)
    token, refresh_token = answer["access_token"], answer["refresh_token"]
    other = access_token(emu, ctx)
    code = emu.issue_auth_code()  # a registration under way elsewhere is not affected
    resp, answer = drs(emu, ctx, "deregister", token)
    assert (resp.status, answer) == (200, None)
    assert resp.getheader("x-amzn-type-version") == T + "DrsDeregisterResult@1.0"
    assert emu.deregistrations == 1
    for t in (token, other):
        resp, answer = replenish(emu, ctx, t)
        assert resp.status == 400 and "revoked" in answer["message"]
    assert refresh(emu, ctx, refresh_token)[1]["error"] == "invalid_grant"
    assert_refused(*drs(emu, ctx, "deregister", token), "deregister")
    assert emu.deregistrations == 1 and emu.orders == []
    # Registering again: the code grant gives working tokens.
    status, answer = lwa(
        emu,
        ctx,
        grant_type="authorization_code",
        code=code,
        redirect_uri=drs_emulator.DEFAULT_REDIRECT_URI,
        client_id=emu.client_id,
        client_secret=emu.client_secret,
    )
    assert status == 200
    assert replenish(emu, ctx, answer["access_token"])[0].status == 200


def test_cancel_test_orders(cert_dir, ctx):
    with drs_emulator.Emulator(cert_dir, slots=("slot-a", "slot-b"), is_test_device=True) as emu:
        token = access_token(emu, ctx)
        first = replenish(emu, ctx, token)[1]
        assert first["detailCode"] == "TEST_ORDER_PLACED"
        assert replenish(emu, ctx, token, slot="slot-b")[1]["detailCode"] == "TEST_ORDER_PLACED"
        assert replenish(emu, ctx, token)[1]["detailCode"] == "ORDER_INPROGRESS"
        resp, answer = drs(emu, ctx, "cancel_test_slot", token)
        assert resp.status == 200
        assert resp.getheader("x-amzn-type-version") == T + "DrsCancelTestOrdersResult@1.0"
        assert answer == {"slotOrderStatuses": [{"orderStatus": "CANCELLED", "slotId": "slot-a"}]}
        assert emu.open_order("slot-a") is None and emu.open_order("slot-b") is not None
        assert items(emu, ctx, token, first["eventInstanceId"])[0]["status"] == "Cancelled"
        assert drs(emu, ctx, "cancel_test_slot", token)[1]["slotOrderStatuses"] == [
            {"orderStatus": "NO_ORDER_IN_PROGRESS", "slotId": "slot-a"}
        ]
        # Replenish may place a test order again.
        assert replenish(emu, ctx, token)[1]["detailCode"] == "TEST_ORDER_PLACED"
        answer = drs(emu, ctx, "cancel_test_all", token)[1]
        assert answer == {
            "slotOrderStatuses": [
                {"orderStatus": "CANCELLED", "slotId": "slot-a"},
                {"orderStatus": "CANCELLED", "slotId": "slot-b"},
            ]
        }
        assert all(not o["open"] and o["status"] == "Cancelled" for o in emu.orders)
        answer = drs(emu, ctx, "cancel_test_all", token)[1]
        assert {s["orderStatus"] for s in answer["slotOrderStatuses"]} == {"NO_ORDER_IN_PROGRESS"}


def test_cancel_test_orders_leaves_real_orders_alone(emu, ctx):
    token = access_token(emu, ctx)
    event = replenish(emu, ctx, token)[1]["eventInstanceId"]
    answer = drs(emu, ctx, "cancel_test_all", token)[1]
    assert answer["slotOrderStatuses"] == [
        {"orderStatus": "NO_ORDER_IN_PROGRESS", "slotId": "slot-a"},
        {"orderStatus": "NO_ORDER_IN_PROGRESS", "slotId": "slot-b"},
    ]
    assert emu.open_order("slot-a") == event and emu.orders[0]["status"] == "Pending"


@pytest.mark.parametrize("endpoint", sorted(set(ENDPOINTS) - {"replenish"}))
def test_faults_apply_to_every_endpoint(emu, ctx, endpoint):
    token = access_token(emu, ctx)
    emu.place_order("slot-a")
    before = snapshot(emu)
    prefix = ENDPOINTS[endpoint][1][:8]
    emu.inject(
        prefix, "status", status=503, body={"message": "busy"}, headers={"Retry-After": "2"}
    )
    resp, answer = drs(emu, ctx, endpoint, token)
    assert (resp.status, resp.getheader("Retry-After"), answer) == (503, "2", {"message": "busy"})
    assert snapshot(emu) == before
    emu.inject(prefix, "reset")
    with pytest.raises((OSError, http.client.HTTPException)):
        drs(emu, ctx, endpoint, token)
    assert snapshot(emu) == before
    emu.inject(prefix, "chunked")
    resp, _ = drs(emu, ctx, endpoint, token)
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert [r["status"] for r in emu.requests_to(prefix)] == [503, None, 200]


# -- LwA authorization-code grant --

REDIRECT = "https://maker.example/dash/callback"


def s256(verifier):
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def exchange(emu, ctx, code, redirect_uri=REDIRECT, **extra):
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": emu.client_id,
        **extra,
    }
    return lwa(emu, ctx, **form)


def assert_tokens(status, answer):
    assert status == 200, answer
    assert answer["access_token"].startswith("Atza|") and len(answer["access_token"]) >= 350
    assert answer["refresh_token"].startswith("Atzr|")
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 3600
    assert set(answer) == {"access_token", "refresh_token", "token_type", "expires_in"}


def assert_error(result, status, error, words=""):
    assert result[0] == status, result
    assert result[1]["error"] == error
    assert words.lower() in result[1]["error_description"].lower()


@pytest.mark.parametrize("method", ["S256", "plain"])
def test_pkce_code_grant(emu, ctx, method):
    verifier = "aB3-._~" * 9  # 63 characters of the allowed set
    challenge = s256(verifier) if method == "S256" else verifier
    code = emu.issue_auth_code(code_challenge=challenge, code_challenge_method=method)
    assert re.fullmatch(r"AN[A-Za-z]{18}", code)
    status, answer = exchange(emu, ctx, code, code_verifier=verifier)  # no client_secret
    assert_tokens(status, answer)
    assert (emu.code_grants, emu.refresh_count) == (1, 0)
    assert replenish(emu, ctx, answer["access_token"])[0].status == 200
    rec = emu.requests_to("/auth/o2/token")[0]
    assert rec["status"] == 200 and "client_secret" not in rec["body"].decode()
    # A token from a PKCE code is public: it refreshes without client_secret, also rotated.
    status, answer = refresh(emu, ctx, answer["refresh_token"], client_secret=None)
    assert_tokens(status, answer)
    status, answer = refresh(emu, ctx, answer["refresh_token"], client_secret=None)
    assert_tokens(status, answer)
    assert (emu.code_grants, emu.refresh_count) == (1, 2)
    # ... but a wrong secret, when one is sent, is still wrong.
    assert_error(
        refresh(emu, ctx, answer["refresh_token"], client_secret="x"), 401, "invalid_client"
    )
    # Confidential tokens keep needing the secret.
    assert_error(
        refresh(emu, ctx, emu.add_refresh_token(), client_secret=None),
        400,
        "invalid_request",
        "client_secret",
    )
    assert_tokens(*refresh(emu, ctx, emu.add_refresh_token(public=True), client_secret=None))


def test_pkce_code_invalid_grants(emu, ctx):
    verifier = "v" * 43
    pkce = {"code_challenge": s256(verifier)}
    # Unknown code.
    assert_error(exchange(emu, ctx, "ANnosuchcode", code_verifier=verifier), 400, "invalid_grant")
    # Wrong verifier; a failed attempt does not use the code up.
    code = emu.issue_auth_code(**pkce)
    result = exchange(emu, ctx, code, code_verifier="w" * 43)
    assert_error(result, 400, "invalid_grant", "code_verifier")
    # Redirect URI other than the one the code was issued for.
    result = exchange(emu, ctx, code, redirect_uri=REDIRECT + "/x", code_verifier=verifier)
    assert_error(result, 400, "invalid_grant", "redirect_uri")
    assert_tokens(*exchange(emu, ctx, code, code_verifier=verifier))
    # Single use.
    assert_error(exchange(emu, ctx, code, code_verifier=verifier), 400, "invalid_grant", "used")
    # Expired, by ttl and by expire_codes().
    code = emu.issue_auth_code(ttl=0, **pkce)
    assert_error(exchange(emu, ctx, code, code_verifier=verifier), 400, "invalid_grant", "expired")
    code = emu.issue_auth_code(**pkce)
    emu.expire_codes()
    assert_error(exchange(emu, ctx, code, code_verifier=verifier), 400, "invalid_grant", "expired")
    # plain challenge compared exactly.
    code = emu.issue_auth_code(code_challenge=verifier, code_challenge_method="plain")
    assert_error(exchange(emu, ctx, code, code_verifier=verifier + "x"), 400, "invalid_grant")
    # S256 challenge sent as if it were plain.
    code = emu.issue_auth_code(**pkce)
    assert_error(exchange(emu, ctx, code, code_verifier=s256(verifier)), 400, "invalid_grant")
    assert emu.code_grants == 1


def test_code_grant_invalid_requests_and_clients(emu, ctx):
    verifier = "Z" * 128
    code = emu.issue_auth_code(code_challenge=s256(verifier))
    for missing in ("code", "redirect_uri", "client_id"):
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": emu.client_id,
            "code_verifier": verifier,
            missing: None,
        }
        assert_error(lwa(emu, ctx, **form), 400, "invalid_request", missing)
    assert_error(exchange(emu, ctx, code), 400, "invalid_request", "code_verifier")
    for bad in ("Z" * 42, "Z" * 129, "Z" * 42 + "+", "Z" * 42 + "="):
        assert_error(exchange(emu, ctx, code, code_verifier=bad), 400, "invalid_request")
    result = exchange(emu, ctx, code, code_verifier=verifier, client_id=CLIENT_ID + "x")
    assert_error(result, 401, "invalid_client")
    result = exchange(emu, ctx, code, code_verifier=verifier, client_secret="wrong")
    assert_error(result, 401, "invalid_client")
    assert emu.code_grants == 0
    assert_tokens(*exchange(emu, ctx, code, code_verifier=verifier, client_secret="test-secret"))


def test_confidential_code_grant(emu, ctx):
    code = emu.issue_auth_code()
    assert_error(exchange(emu, ctx, code), 400, "invalid_request", "client_secret")
    assert_error(exchange(emu, ctx, code, client_secret="nope"), 401, "invalid_client")
    # A verifier for a code issued without a challenge is a downgrade attempt.
    result = exchange(emu, ctx, code, client_secret=emu.client_secret, code_verifier="v" * 43)
    assert_error(result, 400, "invalid_grant", "code_challenge")
    status, answer = exchange(emu, ctx, code, client_secret=emu.client_secret)
    assert_tokens(status, answer)
    assert (emu.code_grants, emu.refresh_count) == (1, 0)
    # Its refresh token is confidential: no secret, no access token.
    result = refresh(emu, ctx, answer["refresh_token"], client_secret=None)
    assert_error(result, 400, "invalid_request", "client_secret")
    assert_tokens(*refresh(emu, ctx, answer["refresh_token"]))
    result = exchange(emu, ctx, code, client_secret=emu.client_secret)
    assert_error(result, 400, "invalid_grant", "used")
    with pytest.raises(ValueError):
        emu.issue_auth_code(code_challenge="x" * 43, code_challenge_method="S512")


def test_confidential_code_for_public_client(cert_dir, ctx):
    with drs_emulator.Emulator(cert_dir, client_secret=None) as emu:
        code = emu.issue_auth_code(redirect_uri="https://app.example/cb")
        assert_error(exchange(emu, ctx, code), 400, "invalid_grant", "redirect_uri")
        status, answer = exchange(emu, ctx, code, redirect_uri="https://app.example/cb")
        assert_tokens(status, answer)
        assert_tokens(*refresh(emu, ctx, answer["refresh_token"], client_secret=None))
