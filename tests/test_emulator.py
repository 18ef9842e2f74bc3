"""Host tests for tools/drs_emulator.py and tools/certs.py, using CPython's HTTPS client."""

import http.client
import importlib
import json
import os
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
    status, answer = refresh(emu, ctx, token, grant_type="authorization_code")
    assert (status, answer["error"]) == (400, "unsupported_grant_type")
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
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            info = json.loads(proc.stdout.readline())
            assert info["ca"] == os.path.join(cert_dir, "ca.pem")
            assert info["refresh_token"].startswith("Atzr|")
            conn = http.client.HTTPSConnection("localhost", info["port"], context=ctx, timeout=5)
            conn.request("POST", "/replenish/a", headers=DRS_HEADERS)
            assert conn.getresponse().status == 400
            conn.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
        assert "POST /replenish/a -> 400" in proc.stderr.read()
