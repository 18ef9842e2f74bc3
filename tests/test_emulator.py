"""Host tests for tools/drs_emulator.py and tools/certs.py, using CPython's HTTPS client."""

import argparse
import base64
import copy
import hashlib
import http.client
import http.server
import importlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

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
        "client",
        "client_key",
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


# -- SNS: DRS notifications to the maker's cloud --


class SnsSink:
    """An https endpoint for the emulator's SNS deliveries: records each POST, answers the
    statuses in `statuses` first (then 200), and holds its answers while `release` is clear."""

    def __init__(self, cert_dir):
        self.posts = []
        self.statuses = []
        self.release = threading.Event()
        self.release.set()
        self.arrived = threading.Event()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                sink.posts.append({"headers": headers, "body": body, "env": json.loads(body)})
                sink.arrived.set()
                sink.release.wait(10)
                status = sink.statuses.pop(0) if sink.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(
            os.path.join(cert_dir, "server.pem"), os.path.join(cert_dir, "server.key")
        )
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = "https://localhost:%d/sns" % self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def envelopes(self, kind="Notification"):
        return [p["env"] for p in self.posts if p["env"]["Type"] == kind]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink(cert_dir):
    s = SnsSink(cert_dir)
    yield s
    s.close()


SIGNED = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ],
}


def assert_signed(env, ctx):
    """The envelope's signature holds, checked as AWS documents it, with the certificate
    from its SigningCertURL."""
    url = urllib.parse.urlsplit(env["SigningCertURL"])
    assert url.scheme == "https" and url.hostname == "localhost"
    assert re.fullmatch(r"/sns/SimpleNotificationService-[0-9a-f]+\.pem", url.path)
    conn = http.client.HTTPSConnection("localhost", url.port, context=ctx, timeout=5)
    conn.request("GET", url.path)  # no DRS headers: SNS's own endpoints need none
    resp = conn.getresponse()
    assert resp.status == 200
    cert = x509.load_pem_x509_certificate(resp.read())
    conn.close()
    text = "".join(f"{k}\n{env[k]}\n" for k in SIGNED[env["Type"]] if env.get(k) is not None)
    digest = {"1": hashes.SHA1, "2": hashes.SHA256}[env["SignatureVersion"]]()
    signature = base64.b64decode(env["Signature"])
    cert.public_key().verify(signature, text.encode(), padding.PKCS1v15(), digest)
    tampered = text.replace("Type\n", "Type\nX", 1).encode()
    with pytest.raises(InvalidSignature):
        cert.public_key().verify(signature, tampered, padding.PKCS1v15(), digest)


def subscribe(emu, sink, ctx, cert_dir):
    """Subscribe the sink and confirm as an endpoint does: GET the SubscribeURL."""
    arn = emu.sns_subscribe(sink.url, os.path.join(cert_dir, "ca.pem"))
    assert emu.sns_flush()
    env = sink.envelopes("SubscriptionConfirmation")[-1]
    assert_signed(env, ctx)
    url = urllib.parse.urlsplit(env["SubscribeURL"])
    assert (url.hostname, url.port, url.path) == ("localhost", emu.port, "/sns/confirm")
    resp, data = call(emu, ctx, "GET", url.path + "?" + url.query)
    assert resp.status == 200 and f"<SubscriptionArn>{arn}</SubscriptionArn>" in data.decode()
    assert emu.sns_confirmed() == [arn]
    return arn


uuid_re = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def notification(env):
    doc = json.loads(env["Message"])
    assert doc["notificationInfo"]["version"] == "2015-06-05"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["notificationInfo"]["notificationTime"]
    )
    return doc


def test_sns_subscription_confirmation(emu, sink, ctx, cert_dir):
    emu.notify("OrderPlaced")  # nobody is subscribed: made, not sent
    arn = emu.sns_subscribe(sink.url, os.path.join(cert_dir, "ca.pem"))
    assert arn.startswith(emu.topic_arn + ":")
    emu.notify("OrderCancelled")  # subscribed but not confirmed: not sent either
    assert emu.sns_flush()
    assert len(sink.posts) == 1 and emu.sns_confirmed() == []
    post = sink.posts[0]
    env = post["env"]
    assert post["headers"]["x-amz-sns-message-type"] == "SubscriptionConfirmation"
    assert post["headers"]["x-amz-sns-topic-arn"] == emu.topic_arn
    assert post["headers"]["x-amz-sns-message-id"] == env["MessageId"]
    assert post["headers"]["content-type"] == "text/plain; charset=UTF-8"
    assert set(env) == {
        "Type",
        "MessageId",
        "Token",
        "TopicArn",
        "Message",
        "SubscribeURL",
        "Timestamp",
        "SignatureVersion",
        "Signature",
        "SigningCertURL",
    }
    assert env["SignatureVersion"] == "2" and env["TopicArn"] == emu.topic_arn
    assert_signed(env, ctx)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(env["SubscribeURL"]).query)
    assert query == {
        "Action": ["ConfirmSubscription"],
        "TopicArn": [emu.topic_arn],
        "Token": [env["Token"]],
    }
    # A wrong token or topic confirms nothing.
    for bad in ({"Token": "nope"}, {"TopicArn": emu.topic_arn + "x"}, {"Action": "Subscribe"}):
        q = urllib.parse.urlencode({**{k: v[0] for k, v in query.items()}, **bad})
        resp, data = call(emu, ctx, "GET", "/sns/confirm?" + q)
        assert resp.status in (400, 404) and b"<ErrorResponse" in data
    assert emu.sns_confirmed() == []
    url = urllib.parse.urlsplit(env["SubscribeURL"])
    assert call(emu, ctx, "GET", url.path + "?" + url.query)[0].status == 200
    assert emu.sns_confirmed() == [arn]
    emu.notify("OrderCancelled")
    assert emu.sns_flush()
    assert [notification(e)["notificationInfo"]["notificationType"] for e in sink.envelopes()] == [
        "OrderCancelledNotification"
    ]
    assert [d["delivered"] for d in emu.sns_deliveries] == [True, True]
    assert [n["notificationInfo"]["notificationType"] for n in emu.notifications] == [
        "OrderPlacedNotification",
        "OrderCancelledNotification",
        "OrderCancelledNotification",
    ]


def test_sns_routes(emu, ctx):
    path = urllib.parse.urlsplit(emu.sns_signing_cert_url).path
    resp, data = call(emu, ctx, "GET", path)
    assert resp.status == 200 and data == emu.sns_signing_cert_pem
    assert data.startswith(b"-----BEGIN CERTIFICATE-----")
    assert call(emu, ctx, "POST", path)[0].status == 405
    assert call(emu, ctx, "GET", "/sns/SimpleNotificationService-0.pem")[0].status == 404
    assert call(emu, ctx, "GET", "/sns/confirm")[0].status == 400
    assert call(emu, ctx, "GET", "/sns/unsubscribe?Action=Unsubscribe")[0].status == 404
    with pytest.raises(ValueError):
        emu.sns_subscribe("ftp://localhost/sns")


def test_sns_notifications_for_drs_actions(emu, sink, ctx, cert_dir):
    subscribe(emu, sink, ctx, cert_dir)
    token = access_token(emu, ctx)
    event = replenish(emu, ctx, token)[1]["eventInstanceId"]
    assert replenish(emu, ctx, token)[1]["detailCode"] == "ORDER_INPROGRESS"  # no order, none
    emu.ship("slot-a")
    emu.cancel_order("slot-a")
    emu.mark_delivered("slot-b")  # no order: nothing happens, nothing is sent
    emu.set_subscribed("slot-b", False)
    code = emu.issue_auth_code()
    form = {"client_id": emu.client_id, "client_secret": emu.client_secret}
    status, _ = lwa(
        emu, ctx, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, **form
    )
    assert status == 200
    assert drs(emu, ctx, "deregister", token)[0].status == 200
    assert emu.sns_flush()
    docs = [notification(e) for e in sink.envelopes()]
    assert [d["notificationInfo"]["notificationType"] for d in docs] == [
        "OrderPlacedNotification",
        "ItemShippedNotification",
        "OrderCancelledNotification",
        "SubscriptionChangedNotification",
        "DeviceRegisteredNotification",
        "DeviceDeregisteredNotification",
    ]
    device = {
        "deviceIdentifier": {"serialNumber": "dash-dev-1"},
        "productIdentifier": {"modelId": "dash-emulated"},
    }
    assert all(d["deviceInfo"] == device for d in docs)
    order = {
        "instanceId": event,
        "slotId": "slot-a",
        "productInfo": [{"asin": emu.asins["slot-a"], "quantity": 1, "unit": "count"}],
    }
    assert [d["orderInfo"] for d in docs[:3]] == [order] * 3
    assert docs[3]["subscriptionInfo"] == {
        "slotsSubscriptionStatus": {"slot-a": True, "slot-b": False}
    }
    assert "orderInfo" not in docs[4] and "orderInfo" not in docs[5]
    ids = [d["notificationInfo"]["notificationId"] for d in docs]
    assert len(set(ids)) == len(ids) and all(uuid_re.fullmatch(i) for i in ids)
    for post in sink.posts[1:]:
        env, headers = post["env"], post["headers"]
        assert headers["x-amz-sns-message-type"] == "Notification"
        assert headers["x-amz-sns-subscription-arn"] == emu.sns_confirmed()[0]
        assert headers["user-agent"] == "Amazon Simple Notification Service Agent"
        assert env["UnsubscribeURL"].startswith(f"https://localhost:{emu.port}/sns/unsubscribe?")
        assert "Subject" not in env
        assert_signed(env, ctx)
    assert [d["status"] for d in emu.sns_deliveries] == [200] * 7


def test_sns_test_orders_cancelled(cert_dir, ctx, sink):
    with drs_emulator.Emulator(cert_dir, slots=("a", "b"), is_test_device=True) as emu:
        subscribe(emu, sink, ctx, cert_dir)
        token = access_token(emu, ctx)
        events = [replenish(emu, ctx, token, slot=s)[1]["eventInstanceId"] for s in "ab"]
        assert drs(emu, ctx, "cancel_test_all", token, path="/testOrders")[0].status == 200
        assert emu.sns_flush()
        docs = [notification(e) for e in sink.envelopes()]
        kinds = [(d["notificationInfo"]["notificationType"], d["orderInfo"]) for d in docs]
        assert [(k, o["instanceId"], o["slotId"]) for k, o in kinds] == [
            ("OrderPlacedNotification", events[0], "a"),
            ("OrderPlacedNotification", events[1], "b"),
            ("OrderCancelledNotification", events[0], "a"),
            ("OrderCancelledNotification", events[1], "b"),
        ]


def test_sns_does_not_delay_drs_answers(emu, sink, ctx, cert_dir):
    subscribe(emu, sink, ctx, cert_dir)
    sink.release.clear()  # the endpoint holds its answers
    sink.arrived.clear()
    token = access_token(emu, ctx)
    resp, answer = replenish(emu, ctx, token, timeout=3)
    assert answer["detailCode"] == "STANDARD_ORDER_PLACED"
    assert sink.arrived.wait(5)  # the delivery is under way meanwhile ...
    assert replenish(emu, ctx, token, slot="slot-b", timeout=3)[0].status == 200
    assert not emu.sns_flush(timeout=0.2)  # ... and not over
    sink.release.set()
    assert emu.sns_flush()
    kinds = [notification(e)["orderInfo"]["slotId"] for e in sink.envelopes()]
    assert kinds == ["slot-a", "slot-b"]  # in order


def test_sns_retries_then_gives_up(emu, sink, ctx, cert_dir):
    subscribe(emu, sink, ctx, cert_dir)
    emu.sns_retry_delays = (0.01, 0.01, 0.01)
    sink.statuses = [500, 503]
    emu.notify("OrderPlaced")
    assert emu.sns_flush()
    rec = emu.sns_deliveries[-1]
    assert (rec["attempts"], rec["statuses"], rec["delivered"]) == (3, [500, 503, 200], True)
    bodies = [p["body"] for p in sink.posts[-3:]]
    assert bodies[0] == bodies[1] == bodies[2]  # a retry is the same message
    sink.statuses = [500] * 4
    emu.notify("OrderCancelled")
    assert emu.sns_flush()
    rec = emu.sns_deliveries[-1]
    assert (rec["attempts"], rec["status"], rec["delivered"]) == (4, 500, False)
    # An endpoint that does not answer at all is given up too, after as many attempts.
    emu.sns_subscribe("https://localhost:1/sns", os.path.join(cert_dir, "ca.pem"))
    emu.sns_subscriptions[-1]["confirmed"] = True
    emu.notify("ItemShipped")
    assert emu.sns_flush()
    rec = emu.sns_deliveries[-1]
    assert (rec["attempts"], rec["status"], rec["delivered"]) == (4, None, False)
    assert "Connection" in rec["error"]


def test_sns_retry_now_cuts_the_back_off_short(emu, sink, ctx, cert_dir):
    subscribe(emu, sink, ctx, cert_dir)
    emu.sns_retry_delays = (60,)
    sink.statuses = [503]
    emu.notify("OrderPlaced")
    wait_for(lambda: emu.sns_deliveries[-1]["attempts"] == 1)
    assert not emu.sns_flush(timeout=0.1)
    emu.sns_retry_now()
    assert emu.sns_flush(timeout=5)
    assert emu.sns_deliveries[-1]["statuses"] == [503, 200]


def test_sns_replay_and_notify_by_hand(emu, sink, ctx, cert_dir):
    subscribe(emu, sink, ctx, cert_dir)
    assert emu.sns_replay() is None  # nothing sent yet
    doc = emu.notify(
        "OrderCancelledNotification",
        serial="dash-dev-2",
        model="m2",
        orderInfo={"instanceId": "amzn1.dash.v2.o.ro.x", "slotId": "s"},
        extra={"unknown": 1},
    )
    message_id = emu.sns_replay()
    assert emu.sns_flush()
    first, again = sink.envelopes()
    assert first == again and first["MessageId"] == message_id
    assert json.loads(first["Message"]) == doc
    assert doc["deviceInfo"]["deviceIdentifier"]["serialNumber"] == "dash-dev-2"
    assert doc["deviceInfo"]["productIdentifier"]["modelId"] == "m2"
    assert doc["extra"] == {"unknown": 1}
    ids = [d["notification_id"] for d in emu.sns_deliveries[1:]]
    assert ids == [doc["notificationInfo"]["notificationId"]] * 2
    # The UnsubscribeURL of a notification ends the subscription.
    url = urllib.parse.urlsplit(first["UnsubscribeURL"])
    resp, data = call(emu, ctx, "GET", url.path + "?" + url.query)
    assert resp.status == 200 and b"<UnsubscribeResponse" in data
    assert emu.sns_confirmed() == [] and emu.sns_subscriptions == []
    emu.notify("OrderPlaced")
    assert emu.sns_replay() is not None  # the last one had no subscriber left: sent to none
    assert emu.sns_flush() and len(sink.posts) == 3


def test_sns_signature_version_1(cert_dir, ctx, sink):
    with drs_emulator.Emulator(cert_dir, sns_signature_version="1") as emu:
        subscribe(emu, sink, ctx, cert_dir)
        emu.notify("DeviceRegistered")
        assert emu.sns_flush()
        env = sink.envelopes()[0]
        assert env["SignatureVersion"] == "1"
        assert_signed(env, ctx)
        # Envelopes made by hand for tests, with a Subject (signed when present).
        fields = {
            "Type": "Notification",
            "MessageId": "m-1",
            "TopicArn": emu.topic_arn,
            "Subject": "hello",
            "Message": "{}",
            "Timestamp": "2026-01-01T00:00:00.000Z",
        }
        assert_signed(emu.sns_envelope(fields, signature_version="2"), ctx)
    with pytest.raises(ValueError):
        drs_emulator.Emulator(cert_dir, sns_signature_version="3")


def test_sns_cli_subscribes_the_endpoint(cert_dir, sink):
    cmd = [
        sys.executable,
        os.path.join(TOOLS, "drs_emulator.py"),
        "--certs",
        cert_dir,
        "--serial",
        "dev-42",
        "--sns-endpoint",
        sink.url,
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            info = json.loads(proc.stdout.readline())
            assert info["serial"] == "dev-42"
            assert info["sns"]["topic_arn"] == drs_emulator.SNS_TOPIC_ARN
            assert info["sns"]["signing_host"] == "localhost:%d" % info["port"]
            assert info["sns"]["subscription_arn"].startswith(drs_emulator.SNS_TOPIC_ARN + ":")
            assert sink.arrived.wait(10)
            assert sink.posts[0]["env"]["Type"] == "SubscriptionConfirmation"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
    proc = subprocess.run(
        [*cmd[:4], "--sns-endpoint", "ftp://x"], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 2 and "--sns-endpoint" in proc.stderr
    help_text = subprocess.run(
        [*cmd[:2], "--help"], capture_output=True, text=True, timeout=10
    ).stdout
    assert "--sns-endpoint" in help_text and "--serial" in help_text


def consent(emu, ctx, **over):
    query = {
        "client_id": emu.client_id,
        "scope": "dash:replenish",
        "scope_data": json.dumps({"dash:replenish": {"device_model": "m-1", "serial": "s-1"}}),
        "response_type": "code",
        "redirect_uri": drs_emulator.DEFAULT_REDIRECT_URI,
        "state": "xyz",
        **over,
    }
    query = {k: v for k, v in query.items() if v is not None}
    return call(emu, ctx, "GET", "/ap/oa?" + urllib.parse.urlencode(query))


def test_the_consent_page_gives_a_code_that_registers(emu, ctx):
    resp, _ = consent(emu, ctx)
    assert resp.status == 302
    where = urllib.parse.urlsplit(resp.getheader("Location"))
    back = urllib.parse.parse_qs(where.query)
    assert where.geturl().startswith(drs_emulator.DEFAULT_REDIRECT_URI + "?")
    assert back["scope"] == ["dash:replenish"] and back["state"] == ["xyz"]
    form = {
        "grant_type": "authorization_code",
        "code": back["code"][0],
        "redirect_uri": drs_emulator.DEFAULT_REDIRECT_URI,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }
    status, answer = lwa(emu, ctx, **form)
    assert status == 200 and replenish(emu, ctx, answer["access_token"])[0].status == 200
    assert lwa(emu, ctx, **form)[0] == 400  # once only


@pytest.mark.parametrize(
    "over",
    [
        {"client_id": "someone-else"},
        {"scope": "profile"},
        {"response_type": "token"},
        {"scope_data": json.dumps({"dash:replenish": {"serial": "s-1"}})},
        {"scope_data": "not json"},
        {"redirect_uri": "http://maker.example/cb"},
    ],
)
def test_the_consent_page_refuses_what_lwa_refuses(emu, ctx, over):
    resp, body = consent(emu, ctx, **over)
    assert resp.status == 400 and body and resp.getheader("Location") is None


def test_auth_code_from_the_command_line(cert_dir, ctx):
    with drs_emulator.Emulator(cert_dir) as emu:
        tool = [sys.executable, os.path.join(TOOLS, "drs_emulator.py"), "auth-code"]
        verifier = "v" * 43
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        p = subprocess.run(
            [*tool, "--port", str(emu.port), "--certs", cert_dir, "--challenge", challenge],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert p.returncode == 0 and re.fullmatch(r"AN[A-Za-z]{18}\n", p.stdout), p.stderr
        status, _ = lwa(
            emu,
            ctx,
            grant_type="authorization_code",
            code=p.stdout.strip(),
            redirect_uri=drs_emulator.DEFAULT_REDIRECT_URI,
            client_id=emu.client_id,
            code_verifier=verifier,
        )
        assert status == 200  # a PKCE code, for that challenge
    p = subprocess.run(
        [*tool, "--port", str(emu.port), "--certs", cert_dir],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1 and "make emulator" in p.stderr
