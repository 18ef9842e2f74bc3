"""tools/drsctl.py as a maker runs it on the bench: a subprocess against the emulator."""

import fcntl
import http.client
import json
import os
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DRSCTL = str(REPO / "tools" / "drsctl.py")
CLIENT_ID = "amzn1.application-oa2-client.test"
CLIENT_SECRET = "test-secret"
T = "com.amazon.dash.replenishment."
REVOKED = "drsctl: error: refresh token revoked or expired: register again\n"


@pytest.fixture
def creds(tmp_path, emulator):
    path = tmp_path / "unit-7.json"
    write_creds(path, emulator.add_refresh_token(), note="bench unit 7")
    return path


def write_creds(path, refresh_token, client_secret=CLIENT_SECRET, **extra):
    doc = {"client_id": CLIENT_ID, "refresh_token": refresh_token, **extra}
    if client_secret is not None:
        doc["client_secret"] = client_secret
    path.write_text(json.dumps(doc))
    path.chmod(0o644)


def read_creds(path):
    return json.loads(path.read_text())


def current_token(path):
    try:
        return json.loads(path.read_text()).get("refresh_token")
    except (OSError, ValueError):
        return None


def drsctl(emulator, certs, creds, *args, stdin="", port=None, lwa_port=None, ca=True):
    """Run the tool; check that nothing secret shows in anything it printed."""
    before = current_token(creds)
    cmd = [
        sys.executable,
        DRSCTL,
        "--credentials",
        str(creds),
        "--drs-url",
        f"https://localhost:{port or emulator.port}",
        "--lwa-url",
        f"https://localhost:{lwa_port or emulator.port}/auth/o2/token",
        "--timeout",
        "5",
        *(["--ca", certs["ca"]] if ca else []),
        *args,
    ]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    printed = proc.stdout + proc.stderr
    secrets = {CLIENT_SECRET, before, current_token(creds)}
    with emulator._lock:
        secrets.update(emulator._access_tokens)
        for rec in emulator.requests:
            secrets.add(rec["headers"].get("authorization", "").partition(" ")[2])
            form = urllib.parse.parse_qs(rec["body"].decode("latin-1"))
            secrets.update(v[0] for k, v in form.items() if k != "client_id")
    for secret in secrets - {None, ""}:
        assert secret not in printed
    assert "Atza|" not in printed and "Atzr|" not in printed
    return proc


def assert_failed(proc, *words):
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("drsctl: error: ") and proc.stderr.count("\n") == 1
    for word in words:
        assert word in proc.stderr


def https_call(emulator, certs, method, path, body=None, headers=None):
    ctx = ssl.create_default_context(cafile=certs["ca"])
    conn = http.client.HTTPSConnection("localhost", emulator.port, context=ctx, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def lwa(emulator, certs, **form):
    body = urllib.parse.urlencode(form)
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    return https_call(emulator, certs, "POST", "/auth/o2/token", body, ctype)


def replenish(emulator, certs, slot="slot-a"):
    """What the device does: refresh, then Replenish; returns the answer."""
    status, tokens = lwa(
        emulator,
        certs,
        grant_type="refresh_token",
        refresh_token=emulator.add_refresh_token(),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    headers = {
        "x-amzn-type-version": T + "DrsReplenishInput@1.0",
        "x-amzn-accept-type": T + "DrsReplenishResult@1.0",
        "Authorization": "Bearer " + tokens["access_token"],
    }
    status, answer = https_call(emulator, certs, "POST", "/replenish/" + slot, headers=headers)
    assert status == 200
    return answer


def drs_requests(emulator):
    return [r for r in emulator.requests if not r["path"].startswith("/auth/")]


def test_subscriptions(emulator, certs, creds):
    proc = drsctl(emulator, certs, creds, "subscriptions")
    asin = emulator.asins["slot-a"]
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == f"slot-a: subscribed (ASIN {asin} x1 count)\n"
    emulator.set_subscribed("slot-a", False)
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert proc.stdout == "slot-a: not subscribed\n"
    proc = drsctl(emulator, certs, creds, "--json", "subscriptions")
    assert json.loads(proc.stdout) == {
        "slotsSubscriptionStatus": {"slot-a": {"subscribed": False, "productInfoList": []}}
    }
    proc = drsctl(emulator, certs, creds, "subscriptions", "--v1", "--json")
    assert json.loads(proc.stdout) == {"slotsSubscriptionStatus": {"slot-a": False}}
    accepts = [r["headers"]["x-amzn-accept-type"] for r in drs_requests(emulator)]
    assert accepts == [T + "DrsSubscriptionInfoResult@2.0"] * 3 + [
        T + "DrsSubscriptionInfoResult@1.0"
    ]
    assert emulator.refresh_count == 4


def test_rotated_refresh_token_is_saved_before_it_is_used(emulator, certs, creds):
    first = read_creds(creds)["refresh_token"]
    emulator.inject("/subscriptionInfo", "status", status=500, body={"message": "DRS is down"})
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert_failed(proc, "DRS SubscriptionInfo failed: HTTP 500: DRS is down")
    saved = read_creds(creds)
    # The DRS call failed, yet the rotated token had been saved: the old one is dead.
    assert saved["refresh_token"] != first
    assert saved == {
        "client_id": CLIENT_ID,
        "refresh_token": saved["refresh_token"],
        "note": "bench unit 7",
        "client_secret": CLIENT_SECRET,
    }
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    assert os.listdir(creds.parent) == [creds.name]  # no temp file left behind
    write_creds(creds, first)
    assert drsctl(emulator, certs, creds, "subscriptions").stderr == REVOKED
    write_creds(creds, saved["refresh_token"])
    assert drsctl(emulator, certs, creds, "subscriptions").returncode == 0
    # The credentials file may be a symlink (e.g. into a secrets directory): the target moves.
    link = creds.parent / "link.json"
    link.symlink_to(creds)
    assert drsctl(emulator, certs, link, "subscriptions").returncode == 0
    assert link.is_symlink() and read_creds(creds)["refresh_token"] != saved["refresh_token"]


def test_unrotated_refresh_token_leaves_the_file_alone(emulator, certs, creds):
    emulator.rotate_refresh_tokens = False
    before = os.stat(creds)
    assert drsctl(emulator, certs, creds, "subscriptions").returncode == 0
    after = os.stat(creds)
    assert (after.st_ino, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
        before.st_ino,
        before.st_mtime_ns,
        0o644,
    )


def test_order_info(emulator, certs, creds):
    event = replenish(emulator, certs)["eventInstanceId"]
    asin = emulator.asins["slot-a"]
    proc = drsctl(emulator, certs, creds, "order-info", event)
    assert proc.returncode == 0
    assert proc.stdout == (
        f"order {event}: 1 item(s)\n"
        f"  slot-a: Pending (ASIN {asin} x1, expected delivery not known yet)\n"
    )
    emulator.ship("slot-a")
    proc = drsctl(emulator, certs, creds, "order-info", event, "--json")
    (item,) = json.loads(proc.stdout)["orderInfoData"]["orderItems"]
    assert item["status"] == "Shipped" and item["expectedDeliveryDate"].endswith("Z")
    emulator.mark_delivered("slot-a")
    proc = drsctl(emulator, certs, creds, "order-info", event)
    assert "slot-a: Delivered" in proc.stdout and item["expectedDeliveryDate"] in proc.stdout
    # An id with characters that need escaping reaches DRS as one path segment.
    emulator.place_order("slot-a", "amzn1.dash.v2.o.ro.by hand/1")
    proc = drsctl(emulator, certs, creds, "order-info", "amzn1.dash.v2.o.ro.by hand/1")
    assert "slot-a: Pending" in proc.stdout
    proc = drsctl(emulator, certs, creds, "order-info", "amzn1.dash.v2.o.ro.unknown")
    assert_failed(
        proc, "DRS GetOrderInfo failed: HTTP 400: no order with instance id", "ro.unknown"
    )


def test_cancel_test_orders(emulator, certs, creds):
    emulator.is_test_device = True
    first = replenish(emulator, certs)
    assert first["detailCode"] == "TEST_ORDER_PLACED"
    proc = drsctl(emulator, certs, creds, "cancel-test-orders", "--slot", "slot-a")
    assert (proc.returncode, proc.stdout) == (0, "slot-a: test order cancelled\n")
    assert emulator.open_order("slot-a") is None
    assert emulator.orders[0]["status"] == "Cancelled"
    assert drs_requests(emulator)[-1]["path"] == "/testOrders/slots/slot-a"
    assert replenish(emulator, certs)["detailCode"] == "TEST_ORDER_PLACED"  # can order again
    proc = drsctl(emulator, certs, creds, "cancel-test-orders", "--json")
    assert json.loads(proc.stdout) == {
        "slotOrderStatuses": [{"orderStatus": "CANCELLED", "slotId": "slot-a"}]
    }
    assert drs_requests(emulator)[-1]["path"] == "/testOrders"
    proc = drsctl(emulator, certs, creds, "cancel-test-orders")
    assert proc.stdout == "slot-a: no test order open\n"
    proc = drsctl(emulator, certs, creds, "cancel-test-orders", "--slot", "slot-z")
    assert_failed(proc, "DRS CancelTestOrder failed: HTTP 404: slot 'slot-z' does not exist")


def test_deregister_asks_first(emulator, certs, creds):
    for reply in ("", "no\n", "y es\n"):
        proc = drsctl(emulator, certs, creds, "deregister", stdin=reply)
        assert proc.returncode == 1 and proc.stdout == ""
        assert "Type 'yes' to continue" in proc.stderr
        assert proc.stderr.endswith(
            "\ndrsctl: error: deregistration not confirmed; nothing done\n"
        )
    assert emulator.requests == [] and emulator.deregistrations == 0  # not even a token
    proc = drsctl(emulator, certs, creds, "deregister", stdin="yes\n")
    assert proc.returncode == 0
    assert proc.stdout.startswith("device deregistered")
    assert emulator.deregistrations == 1
    (rec,) = drs_requests(emulator)
    assert (rec["method"], rec["path"], rec["status"]) == ("DELETE", "/registration", 200)
    assert rec["headers"]["x-amzn-type-version"] == T + "DrsDeregisterInput@2.0"
    # The device's tokens are all dead now.
    assert drsctl(emulator, certs, creds, "subscriptions").stderr == REVOKED


def test_deregister_yes_json(emulator, certs, creds):
    proc = drsctl(emulator, certs, creds, "--json", "deregister", "--yes")
    assert (proc.returncode, json.loads(proc.stdout), proc.stderr) == (
        0,
        {"deregistered": True},
        "",
    )
    assert emulator.deregistrations == 1


def test_revoked_refresh_token(emulator, certs, creds):
    emulator.revoke_all()
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", REVOKED)
    assert drs_requests(emulator) == []


def test_untrusted_certificates_are_refused(emulator, certs, creds):
    proc = drsctl(emulator, certs, creds, "subscriptions", lwa_port=emulator.port_untrusted)
    assert_failed(proc, "not trusted", "unable to get local issuer certificate", "--ca")
    proc = drsctl(emulator, certs, creds, "subscriptions", lwa_port=emulator.port_wrong_name)
    assert_failed(proc, "not trusted", "Hostname mismatch")
    proc = drsctl(emulator, certs, creds, "subscriptions", ca=False)  # system store only
    assert_failed(proc, "not trusted")
    assert emulator.requests == []  # the credentials never left the tool
    # The DRS host is checked the same way, after a successful token refresh.
    proc = drsctl(emulator, certs, creds, "subscriptions", port=emulator.port_untrusted)
    assert_failed(proc, f"TLS certificate of localhost:{emulator.port_untrusted} not trusted")
    assert drs_requests(emulator) == []
    deadline = time.monotonic() + 2
    while emulator.tls_failures < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emulator.tls_failures == 4


def test_public_client_from_pkce_registration(emulator, certs, tmp_path):
    verifier = "bench-verifier-" + "x" * 40
    code = emulator.issue_auth_code(code_challenge=verifier, code_challenge_method="plain")
    status, tokens = lwa(
        emulator,
        certs,
        grant_type="authorization_code",
        code=code,
        redirect_uri="https://maker.example/dash/callback",
        client_id=CLIENT_ID,
        code_verifier=verifier,
    )
    assert status == 200
    creds = tmp_path / "public.json"
    write_creds(creds, tokens["refresh_token"], client_secret="")
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert proc.returncode == 0, proc.stderr
    form = urllib.parse.parse_qs(emulator.requests_to("/auth/o2/token")[-1]["body"].decode())
    assert "client_secret" not in form and form["client_id"] == [CLIENT_ID]
    assert "client_secret" not in read_creds(creds) or read_creds(creds)["client_secret"] == ""


def test_clear_one_line_errors(emulator, certs, creds):
    proc = drsctl(emulator, certs, creds, "subscriptions", "--timeout", "nope")
    assert_failed(proc, "--timeout")
    missing = creds.parent / "missing.json"
    assert_failed(drsctl(emulator, certs, missing, "subscriptions"), "cannot read credentials")
    bad = creds.parent / "bad.json"
    bad.write_text('{"client_id": "x"')
    assert_failed(drsctl(emulator, certs, bad, "subscriptions"), "not valid JSON")
    bad.write_text('{"client_id": "x"}')
    assert_failed(drsctl(emulator, certs, bad, "subscriptions"), "refresh_token")
    assert emulator.requests == []

    wrong = creds.parent / "wrong.json"
    write_creds(wrong, emulator.add_refresh_token(), client_secret="not-the-secret")
    proc = drsctl(emulator, certs, wrong, "subscriptions")
    assert_failed(proc, "invalid_client", "client_secret")
    assert "not-the-secret" not in proc.stderr

    emulator.inject("/auth/o2/token", "status", status=503, body="")
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert_failed(proc, "LwA token request failed: HTTP 503: Service Unavailable")
    emulator.inject("/subscriptionInfo", "status", status=429, headers={"Retry-After": "7"})
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert_failed(proc, "HTTP 429: Too Many Requests (server asks to retry after 7)")
    emulator.inject("/subscriptionInfo", "redirect")
    proc = drsctl(emulator, certs, creds, "subscriptions")
    assert_failed(proc, "HTTP 302 redirect to", "/elsewhere", "not followed")
    assert emulator.requests_to("/elsewhere") == []
    emulator.inject("/subscriptionInfo", "silence", seconds=5)
    start = time.monotonic()
    proc = drsctl(emulator, certs, creds, "subscriptions", "--timeout", "0.5")
    assert_failed(proc, "no answer within 0.5 s")
    assert time.monotonic() - start < 4
    emulator.inject("/subscriptionInfo", "invalid_json")
    assert_failed(drsctl(emulator, certs, creds, "subscriptions"), "not JSON")
    emulator.inject("/subscriptionInfo", "truncate")
    assert_failed(drsctl(emulator, certs, creds, "subscriptions"), "broken HTTP answer")
    emulator.inject("/subscriptionInfo", "status", status=200, body={"something": "else"})
    assert_failed(drsctl(emulator, certs, creds, "subscriptions"), "unexpected answer")
    # After all that the bench still works: every rotated token was kept.
    assert drsctl(emulator, certs, creds, "subscriptions").returncode == 0


def test_concurrent_runs_take_turns_with_the_credentials(emulator, certs, creds):
    fd = os.open(creds.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another drsctl in the middle of a refresh
        proc = drsctl(emulator, certs, creds, "subscriptions", "--timeout", "0.3")
        assert_failed(proc, "in use by another drsctl")
        assert emulator.requests == []
    finally:
        os.close(fd)
    assert drsctl(emulator, certs, creds, "subscriptions").returncode == 0
