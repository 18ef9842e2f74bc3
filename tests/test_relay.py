"""tools/relay.py, the maker's cloud relay, with real parts only: Debian's mosquitto
(tools/broker.py), the DRS emulator sending SNS over HTTPS, the relay's HTTPS endpoint, and
paho clients playing the devices."""

import http.client
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import paho.mqtt.client as mqtt
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
sys.path.insert(0, TOOLS)

import relay as relay_mod  # noqa: E402
from broker import Broker  # noqa: E402
from drs_emulator import REPLENISH_INPUT, REPLENISH_RESULT, Emulator  # noqa: E402

CERT_DIR = os.path.join(REPO, "build", "certs")
USERS = {"cloud": "cloud-pw", "dash-dev-1": "device-pw", "dash-dev-2": "device2-pw"}
T = "com.amazon.dash.replenishment."


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def broker(certs):
    b = Broker(users=USERS, certs=certs).start()
    yield b
    b.close()


@pytest.fixture
def emu(certs):
    with Emulator(CERT_DIR, slots=("slot-a", "slot-b")) as e:
        yield e


@pytest.fixture
def relay(broker, emu, certs):
    r = relay_mod.Relay(
        "localhost",
        broker.ports["tls"],
        certs["ca"],
        "cloud",
        USERS["cloud"],
        signing_hosts=(f"localhost:{emu.port}",),
        fetch_ca=certs["ca"],
    ).start()
    assert r.wait_ready(10)
    yield r
    r.stop()


@pytest.fixture
def subscribed(emu, relay, certs):
    """The relay subscribed to the emulator's topic, the subscription confirmed."""
    arn = emu.sns_subscribe(relay.url, certs["ca"])
    assert emu.sns_flush()
    assert emu.sns_confirmed() == [arn] and relay.subscriptions_confirmed == 1
    return arn


class Client:
    """A paho client over TLS; what it receives queues up."""

    count = 0

    def __init__(self, broker, user, will=None):
        Client.count += 1
        self.user = user
        self.q = queue.Queue()
        self.acks = threading.Semaphore(0)
        self.connected = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{user}-t{Client.count}",
            protocol=mqtt.MQTTv311,
        )
        c.username_pw_set(user, broker.users[user])
        c.tls_set(ca_certs=broker.certs["ca"])
        if will:
            c.will_set(*will, qos=1, retain=True)
        c.on_message = lambda client, userdata, msg: self.q.put(msg)
        c.on_subscribe = lambda *args: self.acks.release()
        c.on_connect = lambda *args: self.connected.set()
        c.connect("localhost", broker.ports["tls"], keepalive=30)
        c.loop_start()
        assert self.connected.wait(10)
        self.c = c

    def subscribe(self, *filters):
        self.c.subscribe([(f, 1) for f in filters])
        assert self.acks.acquire(timeout=10)

    def publish(self, topic, payload, retain=False):
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def get(self, timeout=10):
        return self.q.get(timeout=timeout)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(broker):
    made = []

    def make(user, *filters, will=None):
        c = Client(broker, user, will)
        made.append(c)
        if filters:
            c.subscribe(*filters)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def device(clients):
    """dash-dev-1 listening on its command topics."""
    return clients("dash-dev-1", "dash/dash-dev-1/cmd/#")


@pytest.fixture
def cloud(clients):
    return clients("cloud")


def assert_quiet(dev, cloud):
    """Nothing reached `dev` on its command topics: a marker sent now is the first thing it
    gets (the broker forwards what it had before the marker first)."""
    marker = uuid.uuid4().hex
    cloud.publish(f"dash/{dev.user}/cmd/zz-marker", marker)
    msg = dev.get()
    assert (msg.topic, msg.payload) == (f"dash/{dev.user}/cmd/zz-marker", marker.encode()), (
        msg.topic,
        msg.payload,
    )


def retained_on(cloud, topic):
    """The retained messages on `topic`: those the broker sends on subscribing, before the
    answer to a message sent after the SUBACK."""
    echo = "dash/-echo-%s/echo" % uuid.uuid4().hex
    cloud.subscribe(topic, echo)
    cloud.publish(echo, "echo")
    got = []
    while (msg := cloud.get()).topic != echo:
        got.append(msg)
    return [m for m in got if m.retain]


# -- DRS calls, as tests/test_emulator.py makes them --


def https(emu, method, path, body=None, headers=None):
    ctx = ssl.create_default_context(cafile=os.path.join(CERT_DIR, "ca.pem"))
    conn = http.client.HTTPSConnection("localhost", emu.port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def access_token(emu):
    form = {
        "grant_type": "refresh_token",
        "refresh_token": emu.add_refresh_token(),
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, data = https(emu, "POST", "/auth/o2/token", urllib.parse.urlencode(form), headers)
    assert status == 200
    return json.loads(data)["access_token"]


def replenish(emu, token, slot="slot-a"):
    headers = {
        "x-amzn-type-version": REPLENISH_INPUT,
        "x-amzn-accept-type": REPLENISH_RESULT,
        "Authorization": "Bearer " + token,
    }
    status, data = https(emu, "POST", "/replenish/" + slot, headers=headers)
    assert status == 200
    return json.loads(data)


def deregister(emu, token):
    headers = {
        "x-amzn-type-version": T + "DrsDeregisterInput@2.0",
        "x-amzn-accept-type": T + "DrsDeregisterResult@1.0",
        "Authorization": "Bearer " + token,
    }
    assert https(emu, "DELETE", "/registration", headers=headers)[0] == 200


# -- SNS messages made by hand --


def drs_notification(kind="OrderCancelled", serial="dash-dev-1", **members):
    return {
        "notificationInfo": {
            "notificationType": kind + "Notification",
            "notificationTime": "2026-01-01T00:00:00Z",
            "notificationId": str(uuid.uuid4()),
            "version": "2015-06-05",
        },
        "deviceInfo": {
            "deviceIdentifier": {"serialNumber": serial},
            "productIdentifier": {"modelId": "m"},
        },
        **members,
    }


def envelope(emu, message, version=None, **fields):
    base = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": emu.topic_arn,
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2026-01-01T00:00:00.000Z",
        **fields,
    }
    return emu.sns_envelope(base, signature_version=version)


def post(relay, env=None, body=None, mtype=None, headers=None):
    ctx = ssl.create_default_context(cafile=os.path.join(CERT_DIR, "ca.pem"))
    conn = http.client.HTTPSConnection("localhost", relay.port, context=ctx, timeout=15)
    hdrs = {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": mtype or (env or {}).get("Type", "Notification"),
        **(headers or {}),
    }
    try:
        conn.request("POST", "/sns", json.dumps(env) if body is None else body, hdrs)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(data)["reason"] if data else ""


def relayed(dev):
    """The next message `dev` gets: a relayed notification, QoS 1."""
    msg = dev.get()
    assert msg.topic == f"dash/{dev.user}/cmd/relay" and msg.qos == 1
    return msg


# -- the SNS handshake --


def test_subscription_handshake(emu, relay, device, cloud, certs):
    emu.notify("OrderPlaced")  # before any subscription: made, sent to nobody
    arn = emu.sns_subscribe(relay.url, certs["ca"])
    emu.notify("OrderCancelled")  # subscribed, not yet confirmed: not sent either
    assert emu.sns_flush()
    assert relay.subscriptions_confirmed == 1 and emu.sns_confirmed() == [arn]
    assert [d["type"] for d in emu.sns_deliveries] == ["SubscriptionConfirmation"]
    assert emu.sns_deliveries[0]["statuses"] == [200]
    # The relay fetched the signing certificate and GOT the SubscribeURL.
    paths = [r["path"] for r in emu.requests if r["method"] == "GET"]
    assert paths[0] == urllib.parse.urlsplit(emu.sns_signing_cert_url).path
    assert paths[1].startswith("/sns/confirm?Action=ConfirmSubscription&")
    assert_quiet(device, cloud)
    doc = emu.notify("SubscriptionChanged")
    assert emu.sns_flush()
    assert json.loads(relayed(device).payload) == doc
    assert relay.notifications_relayed == 1 and relay.rejected == []
    # The certificate was cached: fetched once for both messages.
    assert len(emu.requests_to(urllib.parse.urlsplit(emu.sns_signing_cert_url).path)) == 1


def test_each_drs_action_reaches_the_device(emu, subscribed, relay, device, cloud):
    token = access_token(emu)
    event = replenish(emu, token)["eventInstanceId"]
    emu.ship("slot-a")
    emu.cancel_order("slot-a")
    emu.set_subscribed("slot-b", False)
    deregister(emu, token)
    assert emu.sns_flush()
    deliveries = emu.sns_deliveries[1:]
    assert [d["status"] for d in deliveries] == [200] * 5
    kinds = []
    for rec in deliveries:
        msg = relayed(device)
        assert msg.payload == rec["message"].encode("utf-8")  # the DRS JSON, unchanged
        doc = json.loads(msg.payload)
        kinds.append(doc["notificationInfo"]["notificationType"])
        assert doc["deviceInfo"]["deviceIdentifier"]["serialNumber"] == "dash-dev-1"
        if "orderInfo" in doc:
            assert doc["orderInfo"]["instanceId"] == event
    assert kinds == [
        "OrderPlacedNotification",
        "ItemShippedNotification",
        "OrderCancelledNotification",
        "SubscriptionChangedNotification",
        "DeviceDeregisteredNotification",
    ]
    assert relay.notifications_relayed == 5
    assert retained_on(cloud, "dash/dash-dev-1/cmd/relay") == []  # not retained


def test_notification_for_another_serial(emu, subscribed, relay, clients, cloud):
    dev1 = clients("dash-dev-1", "dash/dash-dev-1/cmd/#")
    dev2 = clients("dash-dev-2", "dash/dash-dev-2/cmd/#")
    order = {"instanceId": "amzn1.dash.v2.o.ro.x", "slotId": "slot-a"}
    doc = emu.notify("OrderCancelled", serial="dash-dev-2", orderInfo=order)
    assert emu.sns_flush()
    assert json.loads(relayed(dev2).payload) == doc
    assert_quiet(dev1, cloud)


def test_replayed_notification_is_relayed_again(emu, subscribed, relay, device):
    emu.cancel_order("slot-a")  # no order: nothing sent
    doc = emu.notify("OrderCancelled", orderInfo={"instanceId": "amzn1.dash.v2.o.ro.y"})
    message_id = emu.sns_replay()
    assert emu.sns_flush()
    first, again = relayed(device), relayed(device)
    assert first.payload == again.payload
    assert json.loads(again.payload)["notificationInfo"] == doc["notificationInfo"]
    assert [d["message_id"] for d in emu.sns_deliveries[1:]] == [message_id] * 2
    assert relay.notifications_relayed == 2  # the relay relays; the device drops the second


# -- what is refused --


def test_refused_messages_publish_nothing(emu, subscribed, relay, device, cloud):
    good = drs_notification()
    cert_url = urllib.parse.urlsplit(emu.sns_signing_cert_url)
    tampered = envelope(emu, good)
    tampered["Message"] = json.dumps(drs_notification(serial="dash-dev-1"))
    flipped = envelope(emu, good)
    sig = bytearray(flipped["Signature"].encode())
    sig[10] = ord("A") if sig[10] != ord("A") else ord("B")
    flipped["Signature"] = sig.decode()
    other_sig = envelope(emu, good)
    other_sig["Signature"] = envelope(emu, drs_notification())["Signature"]
    not_base64 = envelope(emu, good)
    not_base64["Signature"] = "%%%"
    cases = [  # (envelope, expected status, a word of the reason)
        (tampered, 403, "signature"),
        (flipped, 403, "signature"),
        (other_sig, 403, "signature"),
        (not_base64, 403, "base64"),
        ({**envelope(emu, good), "SignatureVersion": "3"}, 403, "SignatureVersion"),
        (
            {**envelope(emu, good), "SigningCertURL": "https://evil.example" + cert_url.path},
            403,
            "not an allowed",
        ),
        (  # the right host on another port is another host
            {
                **envelope(emu, good),
                "SigningCertURL": f"https://localhost:{emu.port_untrusted}{cert_url.path}",
            },
            403,
            "not an allowed",
        ),
        (
            {**envelope(emu, good), "SigningCertURL": f"http://{cert_url.netloc}{cert_url.path}"},
            403,
            "not https",
        ),
        (
            {
                **envelope(emu, good),
                "SigningCertURL": f"https://x@{cert_url.netloc}{cert_url.path}",
            },
            403,
            "user info",
        ),
        ({**envelope(emu, good), "TopicArn": 7}, 400, "TopicArn"),
        (envelope(emu, "not json"), 400, "not JSON"),
        (envelope(emu, "[1]"), 400, "not a JSON object"),
        (envelope(emu, {"notificationInfo": {}}), 400, "serialNumber"),
        (envelope(emu, drs_notification(serial="dash/+/x")), 400, "serialNumber"),
        # DRS allows "+" in a serial; MQTT does not in a topic: no device can be reached.
        (envelope(emu, drs_notification(serial="dev+1")), 400, "serialNumber"),
        (envelope(emu, drs_notification(serial="")), 400, "serialNumber"),
        (envelope(emu, drs_notification(serial="a" * 65)), 400, "serialNumber"),
    ]
    for env, status, word in cases:
        got, reason = post(relay, env)
        assert got == status and word in reason, (env, got, reason)
    # The envelope itself.
    env = envelope(emu, good)
    assert post(relay, env, mtype="SubscriptionConfirmation")[0] == 400  # header != Type
    assert post(relay, env, mtype="Bogus")[0] == 400
    assert post(relay, body=b"{not json")[0] == 400
    assert post(relay, body=json.dumps([env]))[0] == 400
    assert post(relay, env, headers={"x-amz-sns-topic-arn": "arn:other"})[0] == 400
    big = {"Content-Length": str(relay_mod.MAX_BODY + 1)}
    assert post(relay, body=b"x" * 1000, headers=big)[0] == 413  # not read: refused at once
    # A confirmation whose SubscribeURL is not on an allowed host is not followed.
    url = "https://evil.example/?Action=ConfirmSubscription&Token=t"
    conf = envelope(emu, "confirm", Type="SubscriptionConfirmation", Token="t", SubscribeURL=url)
    assert post(relay, conf)[0] == 403
    assert relay.subscriptions_confirmed == 1
    assert relay.notifications_relayed == 0
    assert len(relay.rejected) == len(cases) + 7
    assert all(r["status"] in (400, 403, 413) for r in relay.rejected)
    assert_quiet(device, cloud)
    # The same message, unspoiled, goes through; with a Subject, and as SignatureVersion 1.
    assert post(relay, envelope(emu, good, Subject="DRS"))[0] == 200
    assert json.loads(relayed(device).payload) == good
    assert post(relay, envelope(emu, good, version="1"))[0] == 200
    assert json.loads(relayed(device).payload) == good


def test_signature_version_1_end_to_end(broker, certs, device):
    with Emulator(CERT_DIR, sns_signature_version="1") as emu:
        r = relay_mod.Relay(
            "localhost",
            broker.ports["tls"],
            certs["ca"],
            "cloud",
            USERS["cloud"],
            signing_hosts=(f"LOCALHOST:{emu.port}",),  # host names are not case-sensitive
            fetch_ca=certs["ca"],
        )
        with r:
            assert r.wait_ready(10)
            emu.sns_subscribe(r.url, certs["ca"])
            assert emu.sns_flush() and r.subscriptions_confirmed == 1
            doc = emu.notify("DeviceRegistered")
            assert emu.sns_flush()
            assert json.loads(relayed(device).payload) == doc
            assert r.notifications_relayed == 1 and r.rejected == []


def test_only_amazon_hosts_by_default(broker, emu, certs, device, cloud):
    """Without signing_hosts, only sns.<region>.amazonaws.com may sign: the emulator's
    subscription is refused, and the emulator gives up after its retries."""
    emu.sns_retry_delays = (0.01,)
    with relay_mod.Relay(
        "localhost", broker.ports["tls"], certs["ca"], "cloud", USERS["cloud"]
    ) as r:
        assert r.wait_ready(10)
        emu.sns_subscribe(r.url, certs["ca"])
        assert emu.sns_flush()
        rec = emu.sns_deliveries[0]
        assert (rec["statuses"], rec["delivered"]) == ([403, 403], False)
        assert "not an allowed SNS host" in r.rejected[0]["reason"]
        assert r.subscriptions_confirmed == 0 and emu.sns_confirmed() == []
        assert emu.requests == []  # neither the certificate nor the SubscribeURL was fetched
    assert_quiet(device, cloud)


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/x.pem", True),
        ("https://sns.eu-west-1.amazonaws.com:443/x.pem", True),
        ("https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem", True),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", False),
        ("http://sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False),
        ("https://evilsns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.amazonaws.com/x.pem", False),
        ("https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://user@sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com%2f.evil/x.pem", False),
        ("https://localhost:1234/x.pem", False),
        ("https://localhost:12345/x.pem", True),  # given as a signing host below
        ("https://sns.us-east-1.amazonaws.com:x/x.pem", False),
    ],
)
def test_allowed_hosts(url, allowed):
    assert (relay_mod.allowed_host(url, {"localhost:12345"}) is None) == allowed


def test_string_to_sign_matches_the_emulator():
    import drs_emulator

    env = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "arn",
        "Subject": "s",
        "Message": 'a\n"b"',
        "Timestamp": "t",
    }
    want = (
        b'Message\na\n"b"\nMessageId\nm\nSubject\ns\nTimestamp\nt\n'
        b"TopicArn\narn\nType\nNotification\n"
    )
    assert relay_mod.sns_string_to_sign(env) == want == drs_emulator.sns_string_to_sign(env)
    del env["Subject"]
    assert relay_mod.sns_string_to_sign(env) == drs_emulator.sns_string_to_sign(env)


def test_bounded_requests(relay, certs, monkeypatch):
    ctx = ssl.create_default_context(cafile=certs["ca"])
    # A head over the limit is refused.
    conn = http.client.HTTPSConnection("localhost", relay.port, context=ctx, timeout=10)
    conn.request("POST", "/sns", b"{}", {"X-Big": "a" * relay_mod.MAX_HEAD})
    assert conn.getresponse().status == 431
    conn.close()
    conn = http.client.HTTPSConnection("localhost", relay.port, context=ctx, timeout=10)
    conn.putrequest("POST", "/sns")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    assert post(relay, body=b"", headers={"Content-Length": "x"})[0] in (400, 411)
    # GET /health answers; other paths do not take messages.
    conn = http.client.HTTPSConnection("localhost", relay.port, context=ctx, timeout=10)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["mqtt_connected"] is True
    conn.close()
    # A client that stops sending is cut off at the deadline, not held for good.
    monkeypatch.setattr(relay_mod, "REQUEST_DEADLINE", 1.0)
    raw = socket.create_connection(("127.0.0.1", relay.port), timeout=15)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"POST /sns HTTP/1.1\r\nContent-Length: 10\r\n")
    start = time.monotonic()
    assert tls.recv(100) == b""
    assert time.monotonic() - start < relay_mod.IO_TIMEOUT  # the deadline, not the timeout
    tls.close()


# -- the broker down --


def test_broker_down_503_then_retried(emu, subscribed, relay, broker, clients):
    emu.sns_retry_delays = (60, 60)  # the test says when to retry: sns_retry_now()
    broker.stop()
    assert relay.wait_ready(10, ready=False)
    doc = emu.notify("OrderCancelled", orderInfo={"instanceId": "amzn1.dash.v2.o.ro.z"})
    rec = emu.sns_deliveries[-1]
    wait_for(lambda: rec["statuses"] == [503])
    assert rec["attempts"] == 1 and rec["delivered"] is None
    assert relay.unavailable == 1 and relay.notifications_relayed == 0
    broker.start()
    assert relay.wait_ready(15)
    dev = clients("dash-dev-1", "dash/dash-dev-1/cmd/#")
    emu.sns_retry_now()
    assert emu.sns_flush()
    assert rec["statuses"] == [503, 200] and rec["delivered"] is True
    assert json.loads(relayed(dev).payload) == doc
    assert relay.notifications_relayed == 1


# -- the fleet --


def test_fleet_view(relay, clients, broker, tmp_path, certs):
    will = ("dash/dash-dev-2/online", json.dumps({"online": False}))
    dev1 = clients("dash-dev-1")
    dev2 = clients("dash-dev-2", will=will)
    state = {"slots": {"slot-a": {"state": "monitor", "level": 812}}, "registered": True}
    dev1.publish("dash/dash-dev-1/state", state, retain=True)
    dev1.publish("dash/dash-dev-1/online", {"online": True, "fw": "1.4.0"}, retain=True)
    dev2.publish("dash/dash-dev-2/online", {"online": True, "fw": "1.3.9"}, retain=True)
    for n in range(1, 4):
        event = {"n": n, "t": "boot" if n == 1 else "sample", "up": n * 60, "f": {}}
        dev1.publish("dash/dash-dev-1/event", event)
    wait_for(lambda: len(relay.fleet().get("dash-dev-1", {}).get("events", ())) == 3)
    fleet = relay.fleet()
    rec = fleet["dash-dev-1"]
    assert rec["state"] == state and rec["online"] is True and rec["fw"] == "1.4.0"
    assert [e["n"] for e in rec["events"]] == [1, 2, 3]
    assert rec["last_heard"] <= time.time()
    # dash-dev-2 drops off the network: its last will says so.
    dev2.c.loop_stop()
    dev2.c.socket().shutdown(socket.SHUT_RDWR)
    wait_for(lambda: relay.fleet()["dash-dev-2"]["online"] is False)
    assert relay.fleet()["dash-dev-2"]["fw"] == "1.3.9"  # the will names no firmware
    # The CLI, from the retained messages.
    pw = tmp_path / "pw"
    pw.write_text(USERS["cloud"] + "\n")
    opts = [
        "--broker",
        "localhost:%d" % broker.ports["tls"],
        "--ca",
        certs["ca"],
        "--user",
        "cloud",
        "--password-file",
        str(pw),
    ]
    out = run_cli("fleet", *opts, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "dash-dev-1": {"state": state, "online": True, "fw": "1.4.0"},
        "dash-dev-2": {"state": None, "online": False, "fw": None},
    }
    out = run_cli("fleet", *opts)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["DEVICE", "ONLINE", "FW", "STATE"]
    assert lines[1].split()[:3] == ["dash-dev-1", "yes", "1.4.0"]
    assert json.loads(lines[1].split(None, 3)[3]) == state
    assert lines[2].split() == ["dash-dev-2", "no", "-", "-"]
    # A wrong password: a clear error, exit 1, no traceback.
    pw.write_text("nope\n")
    out = run_cli("fleet", *opts)
    assert out.returncode == 1 and "refused" in out.stderr and "Traceback" not in out.stderr


def run_cli(*args, timeout=30):
    return subprocess.run(
        [sys.executable, os.path.join(TOOLS, "relay.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_command_round_trip(broker, clients, tmp_path, certs):
    dev = clients("dash-dev-1", "dash/dash-dev-1/cmd/#")
    got = queue.Queue()

    def answer(client, userdata, msg):
        doc = json.loads(msg.payload)
        got.put((msg.topic, msg.retain, doc))
        # Somebody else's answer first, then ours.
        for n, cid in ((1, "c-other"), (2, doc["id"])):
            fields = {"id": cid, "cmd": msg.topic.rsplit("/", 1)[1], "ok": True, "reason": ""}
            event = {"n": n, "t": "command", "up": 120, "f": fields}
            client.publish("dash/dash-dev-1/event", json.dumps(event), qos=1)

    dev.c.on_message = answer
    pw = tmp_path / "pw"
    pw.write_text(USERS["cloud"])
    opts = ["--broker", "localhost:%d" % broker.ports["tls"], "--ca", certs["ca"]]
    opts += ["--password-file", str(pw)]
    out = run_cli("command", "dash-dev-1", "register", '{"code": "ANabc"}', *opts)
    assert out.returncode == 0, out.stderr
    topic, retain, cmd = got.get(timeout=10)
    assert topic == "dash/dash-dev-1/cmd/register" and not retain
    assert set(cmd) == {"id", "code"} and cmd["code"] == "ANabc"
    assert relay_mod.COMMAND_ID.fullmatch(cmd["id"])
    event = json.loads(out.stdout)
    assert event["t"] == "command" and event["f"]["id"] == cmd["id"] and event["n"] == 2
    # Fresh ids each time.
    out = run_cli("command", "dash-dev-1", "test-order", '{"slot": "slot-a"}', *opts)
    assert out.returncode == 0, out.stderr
    second = got.get(timeout=10)[2]
    assert second["id"] != cmd["id"] and second["slot"] == "slot-a"
    # Nobody answers for dash-dev-2: exit 1 after the timeout.
    out = run_cli("command", "dash-dev-2", "state", *opts, "--timeout", "0.5")
    assert out.returncode == 1 and "no answer" in out.stderr
    # Bad usage.
    assert run_cli("command", "dash/dev", "state", *opts).returncode == 2
    assert run_cli("command", "dash-dev-1", "relay", *opts).returncode == 2
    out = run_cli("command", "dash-dev-1", "state", '{"id": "x"}', *opts)
    assert out.returncode == 1 and '"id"' in out.stderr


def test_serve_cli(broker, emu, device, tmp_path, certs):
    pw = tmp_path / "pw"
    pw.write_text(USERS["cloud"] + "\n")
    cmd = [
        sys.executable,
        os.path.join(TOOLS, "relay.py"),
        "serve",
        "--broker",
        "localhost:%d" % broker.ports["tls"],
        "--ca",
        certs["ca"],
        "--user",
        "cloud",
        "--password-file",
        str(pw),
        "--signing-host",
        "localhost:%d" % emu.port,
        "--fetch-ca",
        certs["ca"],
        "--topic-arn",
        emu.topic_arn,
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            info = json.loads(proc.stdout.readline())
            assert info["url"] == "https://localhost:%d/sns" % info["port"]
            emu.sns_subscribe(info["url"], certs["ca"])
            assert emu.sns_flush() and emu.sns_confirmed()
            # The relay connects to the broker on its own time: SNS's retries cover it.
            emu.sns_retry_delays = (0.2,) * 50
            doc = emu.notify("SubscriptionChanged")
            assert emu.sns_flush(timeout=15) and emu.sns_deliveries[-1]["delivered"]
            assert json.loads(relayed(device).payload) == doc
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        err = proc.stderr.read()
    assert "Traceback" not in err and "relayed" in err


def test_help():
    for args in ([], ["serve"], ["fleet"], ["command"]):
        out = run_cli(*args, "--help")
        assert out.returncode == 0 and "usage: relay.py" in out.stdout, args
    assert "--signing-host" in run_cli("serve", "--help").stdout
    assert "KIND" in run_cli("command", "--help").stdout
