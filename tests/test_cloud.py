"""The cloud link, end to end: the real firmware under `micropython`, a real mosquitto with TLS
on the test CA and authentication, and a paho-mqtt client playing the maker's cloud. What the
cloud sees on every topic, every command, and brokers that are down, restarted, untrusted,
silent, trickling or hostile: the device keeps ordering exactly as it would without them."""

import json
import shutil
import socket
import threading
import time

import pytest
from cloud import DEVICE_ID, DEVICE_PW, Cloud, Proxy, Silent, Trickle, command, mqtt_config
from conftest import CLIENT_SECRET

LOW, FULL = 100, 900
MIN = 60
HOUR = 3600


@pytest.fixture
def link_device(make_device, broker):
    def make(listener="tls", mqtt=None, config=None, **kw):
        cfg = dict(config or {})
        cfg["mqtt"] = mqtt or mqtt_config(broker, listener)
        secrets = kw.pop("secrets", {"mqtt_password": DEVICE_PW})
        return make_device(config=cfg, secrets=secrets, **kw)

    return make


def drain(dev, minutes=8):
    dev.set_level(LOW)
    return dev.run(minutes * MIN)


def secrets_of(emulator, dev):
    """Every secret the device holds or was given, as bytes."""
    with emulator._lock:
        tokens = set(emulator._refresh_tokens) | set(emulator._access_tokens)
    out = {CLIENT_SECRET, DEVICE_PW} | tokens
    return [s.encode() for s in out if s]


# -- what the cloud sees --------------------------------------------------------------------


def test_online_state_and_events_reach_the_cloud_over_verified_tls(
    link_device, broker, cloud, emulator
):
    dev = link_device().start()
    dev.run(5 * MIN)
    online = json.loads(cloud.on("dash/%s/online" % DEVICE_ID)[0])
    assert online == {"online": True, "device_id": DEVICE_ID, "fw": "0.5.0"}
    st = drain(dev)
    assert st["state"] == "ordered"
    cloud.wait(lambda: cloud.events("order-placed"))
    (placed,) = cloud.events("order-placed")
    assert placed["f"]["event_instance_id"] == emulator.orders[0]["event_instance_id"]
    assert placed["f"]["slot"] == "slot-a" and placed["n"] >= 1 and placed["up"] > 0
    cloud.wait(lambda: (cloud.state() or {}).get("state") == "ordered")
    state = cloud.state()
    one = state["slots"][0]
    assert one["event_instance_id"] == placed["f"]["event_instance_id"]
    assert one["detail_code"] == "STANDARD_ORDER_PLACED" and one["level"] == LOW
    assert state["registered"] is True and state["fw"] == "0.5.0"
    assert state["heap_free"] > 0 and state["up_s"] > 0
    # A newcomer (the fleet view) finds both retained: online and the latest state.
    got = cloud.retained()
    assert json.loads(got["dash/%s/online" % DEVICE_ID])["online"] is True
    assert json.loads(got["dash/%s/state" % DEVICE_ID])["state"] == "ordered"
    # Each event once, in order.
    ns = [e["n"] for e in cloud.events()]
    assert ns == sorted(set(ns))
    for secret in secrets_of(emulator, dev):
        assert secret not in cloud.text()


def test_mutual_tls_with_a_client_certificate(link_device, broker, cloud, certs):
    m = mqtt_config(broker, "mtls", client_cert="client.pem", client_key="client.key")
    del m["username"]
    dev = link_device(mqtt=m, secrets={})
    shutil.copy(certs["client"], dev.root / "client.pem")
    shutil.copy(certs["client_key"], dev.root / "client.key")
    dev.start()
    st = drain(dev)
    assert st["state"] == "ordered" and st["mqtt"]["connected"]
    cloud.wait(lambda: cloud.events("order-placed"))


def test_a_link_that_cannot_start_is_said_and_the_device_orders_without_it(
    link_device, broker, emulator
):
    m = mqtt_config(broker, "mtls", client_cert="client.pem", client_key="nokey.pem")
    dev = link_device(mqtt=m).start()
    assert dev.boot_ok is True
    errors = [e["message"] for e in dev.tagged("config-error")]
    assert any("'mqtt.client_key'" in e and "nokey.pem" in e for e in errors), errors
    assert dev.tagged("mqtt-off")
    assert drain(dev)["state"] == "ordered" and len(emulator.orders) == 1
    # An mqtt object the rules refuse: the same.
    dev.stop()
    bad = link_device(mqtt=mqtt_config(broker, keepalive_s=1)).start()
    assert bad.boot_ok is True
    assert any("'mqtt.keepalive_s'" in e["message"] for e in bad.tagged("config-error"))
    assert "mqtt" not in bad.status()


def test_an_untrusted_broker_gets_nothing_and_ordering_goes_on(link_device, broker, cloud):
    dev = link_device("rogue").start()
    st = drain(dev)
    assert st["state"] == "ordered"
    downs = dev.tagged("mqtt-down")
    assert downs and all(d["reason"].startswith("tls") for d in downs), downs
    assert st["mqtt"]["connects"] == 0
    assert cloud.on("dash/%s/online" % DEVICE_ID) == []


def test_plain_tcp_only_when_the_config_names_it(link_device, broker, cloud):
    # TLS is the default: pointed at the plain port, the handshake fails and nothing is sent.
    dev = link_device(mqtt=mqtt_config(broker, broker.ports["plain"])).start()
    dev.run(5 * MIN)
    assert dev.status()["mqtt"]["connects"] == 0
    dev.stop()
    plain = link_device("plain", secrets={}).start()  # a password would cross in clear
    plain.run(5 * MIN)
    assert plain.status()["mqtt"]["connected"]
    cloud.wait(lambda: cloud.on("dash/%s/online" % DEVICE_ID))


def test_a_wrong_password_is_refused_by_the_broker_and_backs_off(link_device, broker):
    # (what each failure says: test_each_failure_says_what_failed)
    dev = link_device(secrets={"mqtt_password": "wrong"}).start()
    dev.run(10 * MIN)
    downs = dev.tagged("mqtt-down")
    assert downs and "refused" in downs[0]["reason"], downs
    waits = [d["retry_in_s"] for d in downs]
    assert len(downs) < 20 and max(waits) > waits[0], waits  # backing off, with jitter


# -- brokers that are down, restarted, silent, slow -------------------------------------


def test_broker_down_from_boot_keeps_the_newest_events_and_sends_them_later(
    link_device, broker, emulator
):
    broker.stop()
    m = mqtt_config(broker, queue=3, retry_cap_s=120)
    dev = link_device(mqtt=m, config={"retry_base_s": 60, "retry_cap_s": 60}).start()
    emulator.inject("/replenish/", "status", times=4, status=500)
    st = drain(dev, 30)  # four failed attempts, then the order: five events
    assert st["state"] == "ordered"
    assert st["mqtt"]["queued"] == 3 and st["mqtt"]["dropped"] >= 2
    broker.start()
    cloud = Cloud(broker)
    dev.run(10 * MIN)
    cloud.wait(lambda: cloud.events("order-placed"))
    tags = [e["t"] for e in cloud.events()]
    assert tags[-1] == "order-placed" and len(tags) == 3, tags  # the oldest went
    cloud.wait(lambda: (cloud.state() or {}).get("mqtt", {}).get("dropped", 0) >= 2)
    cloud.close()


def test_broker_restarted_mid_run_the_device_comes_back(link_device, broker):
    dev = link_device().start()
    cloud = Cloud(broker)
    dev.run(5 * MIN)
    cloud.wait(lambda: cloud.on("dash/%s/online" % DEVICE_ID))
    cloud.close()
    broker.restart()  # retained messages and sessions are gone with it
    cloud = Cloud(broker)
    st = drain(dev)
    assert st["state"] == "ordered"
    cloud.wait(lambda: cloud.events("order-placed"))
    assert dev.status()["mqtt"]["reconnects"] >= 1
    # It said it is back: online and its state, retained again.
    got = cloud.retained()
    cloud.close()
    assert json.loads(got["dash/%s/online" % DEVICE_ID])["online"] is True
    assert json.loads(got["dash/%s/state" % DEVICE_ID])["state"] == "ordered"


def test_a_power_cut_leaves_the_last_will_offline(link_device, broker, cloud):
    dev = link_device().start()
    dev.run(5 * MIN)
    cloud.wait(lambda: cloud.on("dash/%s/online" % DEVICE_ID))
    dev.kill()
    cloud.wait(lambda: cloud.on("dash/%s/online" % DEVICE_ID)[-1] == b'{"online": false}')


def ordering_story(dev, emulator):
    """The same depletion, failure and recovery for any device: what DRS saw, and when."""
    dev.run(10 * MIN)
    emulator.inject("/replenish/", "status", times=2, status=500)
    drain(dev, 30)
    return [(r["method"], r["path"]) for r in emulator.requests], [
        (up, tag) for up, tag, f in dev.events if tag.startswith("order-")
    ]


@pytest.mark.parametrize("hostile", ["silent", "trickle", "down"])
def test_a_hostile_broker_changes_nothing_in_ordering(
    link_device, make_device, broker, emulator, hostile
):
    plain_dev = make_device(config={"retry_base_s": 120, "retry_cap_s": 600}).start()
    expected = ordering_story(plain_dev, emulator)
    plain_dev.stop()
    emulator.requests.clear()
    emulator.orders.clear()
    if hostile == "silent":
        peer = Silent()
    elif hostile == "trickle":
        peer = Trickle(broker.ports["tls"], interval=1.0)
    else:
        peer = Silent()
        peer.close()  # nothing listens there
    try:
        m = mqtt_config(broker, peer.port, timeout_s=1, retry_base_s=300)
        dev = link_device(mqtt=m, config={"retry_base_s": 120, "retry_cap_s": 600}).start()
        got = ordering_story(dev, emulator)
        st = dev.status()
    finally:
        peer.close()
    assert got[0] == expected[0]  # the same requests to DRS, in the same order
    assert [t for _, t in got[1]] == [t for _, t in expected[1]]
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    assert st["mqtt"]["connects"] == 0 and dev.tagged("mqtt-down")
    # No turn of the link held a step up past its budget: four timeouts (here 1 s each),
    # with room for a loaded machine.
    assert st["mqtt"]["longest_turn_ms"] <= 4000 + 2000, st["mqtt"]


# -- commands ---------------------------------------------------------------------------


def test_state_on_request_and_bad_commands_each_get_an_error_event(link_device, cloud):
    dev = link_device().start()
    dev.run(5 * MIN)
    n = len(cloud.on("dash/%s/state" % DEVICE_ID))
    command(dev, cloud, "state", {"id": "s-1"})
    cloud.wait(lambda: len(cloud.on("dash/%s/state" % DEVICE_ID)) > n)
    bad = [
        ("state", b"not json"),
        ("state", {"no": "id"}),
        ("state", {"id": "s-1"}),  # repeated
        ("reboot", {"id": "x-1"}),  # unknown
        ("relay", {"hello": 1}),  # not a notification
        ("state", [1, 2]),
    ]
    for kind, payload in bad:
        command(dev, cloud, kind, payload)
    cloud.wait(lambda: len(cloud.commands()) >= 7)
    done = cloud.commands()
    assert done[0] == {"cmd": "state", "id": "s-1", "ok": True}
    reasons = [c["reason"] for c in done[1:]]
    assert reasons[0] == "not a JSON object"
    assert "'id'" in reasons[1]
    assert reasons[2].startswith("repeated")
    assert reasons[3] == "unknown command"
    assert reasons[4] == "not a DRS notification"
    assert reasons[5] == "not a JSON object"
    assert all(c["ok"] is False for c in done[1:])
    assert dev.status()["mqtt"]["connected"]


def test_a_retained_command_is_refused_every_time_it_comes(link_device, cloud, emulator):
    # Left on the broker, a deregistration would end every registration at each reconnect.
    cloud.send("deregister", {"id": "old"}, retain=True)
    dev = link_device().start()
    assert dev.command("link-wait", "10000")["arrived"]
    st = drain(dev)
    assert st["registered"] and st["state"] == "ordered" and emulator.deregistrations == 0
    cloud.wait(lambda: cloud.commands())
    refused = cloud.commands()[0]
    assert refused["cmd"] == "deregister" and refused["reason"].startswith("retained")


def test_a_1_mb_publish_is_drained_not_allocated(link_device, cloud, emulator):
    dev = link_device(heap_kb=256).start()
    dev.run(5 * MIN)
    command(dev, cloud, "relay", b"x" * (1 << 20))
    cloud.wait(lambda: cloud.commands())
    (big,) = cloud.commands()
    assert big["ok"] is False and big["reason"].startswith("too big: 1048576 bytes"), big
    st = drain(dev)  # still connected, still ordering
    assert st["state"] == "ordered" and st["mqtt"]["connected"] and st["mqtt"]["reconnects"] == 0
    command(dev, cloud, "state", {"id": "after"})
    cloud.wait(lambda: len(cloud.commands()) == 2)


def test_a_flood_of_commands_changes_nothing_but_its_events(link_device, cloud, emulator):
    dev = link_device(mqtt=None).start()
    dev.run(5 * MIN)
    for i in range(300):
        cloud.send("state" if i % 3 else "relay", b"{junk %d" % i if i % 2 else {"id": "f%d" % i})
    got = dev.command("link-wait", "20000 300")
    assert got["arrived"], got
    st = drain(dev)
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    cloud.wait(lambda: cloud.events("order-placed"))
    assert st["mqtt"]["commands"] == 300


def notification(kind, emulator, eid=None, slot="slot-a", serial=DEVICE_ID, nid="n-1"):
    msg = {
        "notificationInfo": {
            "notificationType": kind + "Notification",
            "notificationTime": "2026-12-07T10:00:00Z",
            "notificationId": nid,
            "version": "2015-06-05",
        },
        "deviceInfo": {
            "deviceIdentifier": {"serialNumber": serial},
            "productIdentifier": {"modelId": "dash-emulated"},
        },
    }
    if eid:
        msg["orderInfo"] = {"instanceId": eid, "slotId": slot}
    return msg


def test_a_relayed_cancellation_rearms_through_drs_once_however_often_it_comes(
    link_device, cloud, emulator
):
    dev = link_device(config={"order_check_s": 12 * HOUR}).start()
    st = drain(dev)
    assert st["state"] == "ordered"
    eid = emulator.cancel_order("slot-a")
    n = len(emulator.requests_to("/getOrderInfo/"))
    msg = notification("OrderCancelled", emulator, eid)
    command(dev, cloud, "relay", msg)
    st = dev.run(10 * MIN)  # learned from the notification, not from polling (12 h)
    assert len(emulator.orders) == 2 and st["state"] == "ordered"
    assert len(emulator.requests_to("/getOrderInfo/")) == n + 1
    # The same notification again (SNS delivers at least once), and wrapped in its envelope.
    command(dev, cloud, "relay", msg)
    env = {"Type": "Notification", "MessageId": "m-9", "Message": json.dumps(msg)}
    command(dev, cloud, "relay", env)
    dev.run(HOUR)
    assert len(emulator.orders) == 2
    assert len(emulator.requests_to("/getOrderInfo/")) == n + 1
    cloud.wait(lambda: len(cloud.commands()) >= 3)
    first, again, wrapped = cloud.commands()[:3]
    assert first["ok"] and first["matched"] == 1 and first["id"] == "n-1"
    assert not again["ok"] and again["reason"].startswith("repeated")
    assert not wrapped["ok"] and wrapped["reason"].startswith("repeated")


def test_a_notification_for_another_device_changes_nothing(link_device, cloud, emulator):
    dev = link_device().start()
    drain(dev)
    eid = emulator.cancel_order("slot-a")
    n = len(emulator.requests_to("/getOrderInfo/"))
    msg = notification("OrderCancelled", emulator, eid, serial="dash-dev-2")
    command(dev, cloud, "relay", msg)
    dev.run(HOUR)
    assert len(emulator.requests_to("/getOrderInfo/")) == n and len(emulator.orders) == 1
    cloud.wait(lambda: cloud.commands())
    assert cloud.commands()[0]["reason"] == "for another device"


def test_registration_over_mqtt_with_pkce(make_device, broker, cloud, emulator):
    emulator.client_secret = None  # a public client: PKCE
    cfg = {"mqtt": mqtt_config(broker), "redirect_uri": "https://maker.example/dash/callback"}
    dev = make_device(
        config=cfg, refresh_token="", client_secret="", secrets={"mqtt_password": DEVICE_PW}
    )
    (dev.root / "secrets.json").write_text(
        json.dumps({"client_id": "amzn1.application-oa2-client.test", "mqtt_password": DEVICE_PW})
    )
    dev.start()
    dev.run(MIN)
    command(dev, cloud, "challenge", {"id": "c-1"})
    cloud.wait(lambda: cloud.commands())
    ch = cloud.commands()[0]
    assert ch["ok"] and ch["code_challenge_method"] == "S256"
    code = emulator.issue_auth_code(code_challenge=ch["code_challenge"])
    command(dev, cloud, "register", {"id": "r-1", "code": code})
    cloud.wait(lambda: len(cloud.commands()) >= 2)
    assert cloud.commands()[1] == {"cmd": "register", "id": "r-1", "ok": True, "reason": ""}
    st = drain(dev)
    assert st["registered"] and st["state"] == "ordered"
    assert code.encode() not in cloud.text()  # the code is not echoed
    command(dev, cloud, "deregister", {"id": "d-1"})
    cloud.wait(lambda: len(cloud.commands()) >= 3)
    assert cloud.commands()[2]["drs_confirmed"] is True
    assert emulator.deregistrations == 1 and not dev.status()["registered"]
    cloud.wait(lambda: cloud.events("unregistered"))


def test_a_test_order_only_for_a_test_registration_and_never_over_an_open_order(
    link_device, cloud, emulator
):
    real = link_device().start()
    real.run(MIN)
    command(real, cloud, "test-order", {"id": "t-1", "slot": "slot-a"})
    cloud.wait(lambda: cloud.commands())
    assert "test_device" in cloud.commands()[0]["reason"] and emulator.orders == []
    real.stop()
    emulator.is_test_device = True
    dev = link_device(config={"test_device": True})
    dev.set_level(500)  # neither low nor a refill: the test order stays open
    dev.start()
    dev.run(MIN)
    command(dev, cloud, "test-order", {"id": "t-2", "slot": "slot-a"})
    cloud.wait(lambda: len(cloud.commands()) >= 2)
    placed = cloud.commands()[1]
    assert placed["ok"] and placed["detail_code"] == "TEST_ORDER_PLACED"
    command(dev, cloud, "test-order", {"id": "t-3", "slot": "slot-a"})
    command(dev, cloud, "test-order", {"id": "t-3", "slot": "slot-a"})
    cloud.wait(lambda: len(cloud.commands()) >= 4)
    open_, repeated = cloud.commands()[2:4]
    assert not open_["ok"] and "has an order open" in open_["reason"]
    assert not repeated["ok"] and repeated["reason"].startswith("repeated")
    assert len(emulator.orders) == 1


def test_new_thresholds_are_checked_persisted_and_applied_without_a_reboot(
    link_device, cloud, emulator
):
    dev = link_device().start()
    dev.set_level(300)  # above low (200): no order
    dev.run(10 * MIN)
    assert emulator.orders == []
    command(dev, cloud, "config", {"id": "k-1", "set": {"low": 500, "high": 400}})
    command(dev, cloud, "config", {"id": "k-2", "set": {"client_secret": "x"}})
    command(dev, cloud, "config", {"id": "k-3", "set": {"low": 400, "sample_s": 120}})
    cloud.wait(lambda: len(cloud.commands()) >= 3)
    bad, forbidden, good = cloud.commands()[:3]
    assert not bad["ok"] and any("'low' must be below 'high'" in e for e in bad["errors"])
    assert not forbidden["ok"] and "cannot be set" in forbidden["reason"]
    assert good["ok"] and good["changed"] == ["low", "sample_s"], good
    on_flash = json.loads((dev.root / "config.json").read_text())
    assert on_flash["low"] == 400 and on_flash["sample_s"] == 120
    st = dev.run(15 * MIN)
    assert st["state"] == "ordered" and len(emulator.orders) == 1  # 300 is low now
    dev.restart()
    assert dev.run(5 * MIN)["state"] == "ordered"


def test_a_bad_config_is_reported_and_a_config_command_brings_the_device_up(
    link_device, cloud, emulator
):
    dev = link_device(config={"low": 900, "high": 800}).start()
    assert dev.boot_ok is False
    dev.run(5 * MIN)
    cloud.wait(lambda: cloud.events("config-error"))
    assert "'low' must be below 'high'" in cloud.events("config-error")[0]["f"]["message"]
    assert emulator.requests == []
    command(dev, cloud, "config", {"id": "fix", "set": {"low": 200}})
    cloud.wait(lambda: cloud.commands())
    assert cloud.commands()[0]["ok"]
    st = drain(dev)
    assert st["state"] == "ordered" and len(emulator.orders) == 1


def test_the_steady_loop_with_the_link_up_allocates_nothing(link_device, broker, cloud):
    # (No hourly state in these 2 x 30 minutes: a publish allocates, a quiet link does not.)
    dev = link_device(mqtt=mqtt_config(broker, state_s=86400)).start()
    dev.run(10 * MIN)
    cloud.wait(lambda: cloud.state())
    got = dev.command("steady", "30")
    assert got["alloc_bytes"] == 0 and got["heap_locked_ok"], got
    assert dev.status()["mqtt"]["connected"]


def test_thresholds_never_change_under_an_open_order(link_device, cloud, emulator):
    dev = link_device().start()
    st = drain(dev)
    assert st["state"] == "ordered"
    # A 'high' under the level would make it a refill and close the episode with its order
    # out; put back, the same depletion would order again.
    command(dev, cloud, "config", {"id": "k-1", "set": {"low": 40, "high": 90}})
    command(dev, cloud, "config", {"id": "k-2", "set": {"sample_s": 120}})
    cloud.wait(lambda: len(cloud.commands()) >= 2)
    refused, timing = cloud.commands()[:2]
    assert not refused["ok"] and "slot-a has an order open (ordered)" in refused["reason"]
    assert timing["ok"]
    assert json.loads((dev.root / "config.json").read_text())["high"] == 800
    emulator.mark_delivered("slot-a")
    dev.run(8 * HOUR)
    assert not dev.tagged("refilled") and len(emulator.requests_to("/replenish/")) == 1


def test_a_config_command_on_a_device_that_cannot_start_says_so(link_device, cloud):
    sensor = {"kind": "file", "raw_empty": 0, "raw_full": 1000, "capacity": 1000}
    slots = [
        {"slot_id": "slot-a", "low": 200, "high": 800, "sensor": sensor},
        {"slot_id": "slot-b", "low": 200, "high": 800, "sensor": dict(sensor, kind="adc", pin=34)},
    ]
    dev = link_device(config={"slots": slots}).start()  # no ADC on this board
    assert dev.boot_ok is False
    dev.run(MIN)
    for i in range(2):
        command(dev, cloud, "config", {"id": "c-%d" % i, "set": {"sample_s": 60 + i}})
    cloud.wait(lambda: len(cloud.commands()) >= 2)
    assert all("cannot start" in c["reason"] for c in cloud.commands())
    assert dev.status()["slots"] == []  # not two half-made copies of slot-a


def test_a_relayed_notification_without_an_id_is_refused(link_device, cloud, emulator):
    dev = link_device().start()
    drain(dev)
    msg = notification("SubscriptionChanged", emulator)
    del msg["notificationInfo"]["notificationId"]
    n = len(emulator.requests_to("/subscriptionInfo"))
    command(dev, cloud, "relay", msg)
    dev.run(HOUR)
    cloud.wait(lambda: cloud.commands())
    assert cloud.commands()[0]["reason"].startswith("no notificationId")
    assert len(emulator.requests_to("/subscriptionInfo")) == n


class LoseFirstSubscribe(Proxy):
    """In front of the plain listener: on the first connection, what the device sends after
    its CONNECT is lost (the SUBSCRIBE, say, on a link that just went bad)."""

    first = True

    def _start(self, c, up):
        lose, self.first = self.first, False
        threading.Thread(target=self._pipe, args=(c, up, lose), daemon=True).start()
        threading.Thread(target=self._pipe, args=(up, c, False), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, lose):
        n = 0
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                n += 1
                if not lose or n == 1:  # the CONNECT goes, the rest does not
                    dst.sendall(data)
        except OSError:
            pass


def test_a_subscription_lost_on_the_way_is_made_again(link_device, broker, cloud):
    proxy = LoseFirstSubscribe(broker.ports["plain"])
    try:
        m = mqtt_config(broker, proxy.port, transport="plain", timeout_s=1, retry_base_s=1)
        dev = link_device(mqtt=m, secrets={}).start()
        dev.run(2 * MIN)  # the first session has no subscription; the next connect makes it
        assert dev.tagged("mqtt-down") and dev.status()["mqtt"]["connected"]
        cloud.send("state", {"id": "s-1"})
        assert dev.command("link-wait", "10000")["arrived"]
    finally:
        proxy.close()


class Throttle(Silent):
    """In front of the broker: the broker's bytes reach the device at `rate` bytes a second."""

    def __init__(self, upstream_port, rate):
        self.upstream = upstream_port
        self.rate = rate
        super().__init__()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.conns += [c, up]
            threading.Thread(target=self._pipe, args=(c, up, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, c, self.rate), daemon=True).start()

    def _pipe(self, src, dst, rate):
        try:
            while not self._stop:
                data = src.recv(4096)
                if not data:
                    break
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)  # the slow link's pace, not a wait for it
        except OSError:
            pass
        for sock in (src, dst):
            sock.close()


def test_a_message_too_big_to_read_in_time_does_not_stop_the_link_for_good(
    link_device, broker, cloud
):
    proxy = Throttle(broker.ports["tls"], 200_000)  # 3 MB take 15 s; the deadline is 3 s
    try:
        m = mqtt_config(broker, proxy.port, timeout_s=1, retry_base_s=1, retry_cap_s=5)
        dev = link_device(mqtt=m).start()
        dev.run(MIN)
        cloud.send("state", b"x" * (3 << 20))
        assert not dev.command("link-wait", "5000")["arrived"]  # it cannot be read in time
        assert "timeout" in dev.tagged("mqtt-down")[-1]["reason"]
        dev.run(MIN)  # acknowledged before it was read: the broker does not send it again
        assert dev.status()["mqtt"]["connected"]
        cloud.send("state", {"id": "after"})
        assert dev.command("link-wait", "20000")["arrived"]
        dev.run(MIN)
        cloud.wait(lambda: any(c.get("id") == "after" for c in cloud.commands()))
    finally:
        proxy.close()


def test_each_failure_says_what_failed(link_device, broker):
    closed = Silent()
    closed.close()
    cases = {
        "dns": mqtt_config(broker, host="no-such-host.invalid"),
        "connect": mqtt_config(broker, closed.port),
        "tls": mqtt_config(broker, "rogue"),
        "broker refused the connection: code 5": mqtt_config(broker),  # not authorised
    }
    for want, m in cases.items():
        secrets = {"mqtt_password": "wrong" if want.startswith("broker") else DEVICE_PW}
        dev = link_device(mqtt=m, secrets=secrets).start()
        dev.run(MIN)
        reason = dev.tagged("mqtt-down")[0]["reason"]
        dev.stop()
        assert reason.startswith(want), (want, reason)


def test_a_broker_trust_store_in_der_as_amazon_serves_its_roots(link_device, broker, certs):
    dev = link_device(mqtt=mqtt_config(broker, ca_file="broker-ca.cer"))
    shutil.copy(certs["ca_der"], dev.root / "broker-ca.cer")
    dev.start()
    assert dev.run(MIN)["mqtt"]["connected"]


def test_the_makers_relay_tool_commands_the_device_and_shows_the_fleet(
    link_device, broker, tmp_path
):
    import subprocess
    import sys

    from conftest import REPO

    dev = link_device().start()
    dev.run(5 * MIN)
    pw = tmp_path / "cloud.pw"
    pw.write_text(broker.users["cloud"])
    opts = ["--broker", "localhost:%d" % broker.ports["tls"], "--ca", broker.certs["ca"]]
    opts += ["--user", "cloud", "--password-file", str(pw)]
    relay = [sys.executable, str(REPO / "tools" / "relay.py")]
    cmd = subprocess.Popen(
        relay
        + ["command", DEVICE_ID, "config", '{"set": {"sample_s": 90}}', "--timeout", "60"]
        + opts,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dev.command("link-wait", "30000")["arrived"]  # it came from the tool
        dev.run(MIN)  # and the answer goes out
        out, err = cmd.communicate(timeout=60)
    finally:
        cmd.kill()
    assert cmd.returncode == 0, err
    answer = json.loads(out.strip().splitlines()[-1])
    assert (
        answer["t"] == "command" and answer["f"]["ok"] and answer["f"]["changed"] == ["sample_s"]
    )
    fleet = subprocess.run(relay + ["fleet", "--json"] + opts, capture_output=True, text=True)
    assert fleet.returncode == 0, fleet.stderr
    assert json.loads(fleet.stdout)[DEVICE_ID]["online"] is True


def test_a_big_message_that_waited_on_the_broker_does_not_stop_the_link(
    link_device, broker, cloud
):
    proxy = Throttle(broker.ports["tls"], 200_000)
    try:
        m = mqtt_config(broker, proxy.port, timeout_s=1, retry_base_s=20, retry_cap_s=40)
        dev = link_device(mqtt=m).start()
        dev.run(MIN)
        dev.stop()  # away: the persistent session keeps what comes meanwhile
        cloud.send("state", b"x" * (3 << 20))
        dev.start()  # it comes right after the CONNACK, before the SUBACK
        dev.run(4 * MIN)
        assert dev.status()["mqtt"]["connected"]
    finally:
        proxy.close()


class CutMidCommand(Proxy):
    """In front of the plain listener: the first command's PUBLISH is cut 6 bytes in and the
    connection closed (Wi-Fi lost in the middle of a message); later ones pass."""

    first = True

    def _pipe(self, src, dst, out):
        cut = not out  # the broker's side
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                i = data.find(b"/cmd/state") if cut and self.first else -1
                if i >= 0:
                    self.first = False
                    start = data.rfind(b"\x32", 0, i)  # the PUBLISH's first byte (QoS 1)
                    dst.sendall(data[: start + 6])
                    src.close()
                    dst.close()
                    return
                dst.sendall(data)
        except OSError:
            pass


def test_a_command_cut_in_the_middle_comes_again(link_device, broker, cloud):
    proxy = CutMidCommand(broker.ports["plain"])
    try:
        m = mqtt_config(broker, proxy.port, transport="plain", timeout_s=1, retry_base_s=1)
        dev = link_device(mqtt=m, secrets={}).start()
        dev.run(MIN)
        cloud.send("state", {"id": "cut"})
        dev.command("link-wait", "1500")  # cut: not taken, not acknowledged
        dev.run(2 * MIN)  # the session resumes, and the broker sends it again
        if not [c for c in dev.tagged("command") if c.get("id") == "cut"]:
            assert dev.command("link-wait", "5000")["arrived"]
        dev.run(MIN)
        cloud.wait(lambda: any(c.get("id") == "cut" for c in cloud.commands()))
    finally:
        proxy.close()


def test_a_device_started_by_a_command_after_a_week_counts_its_time(link_device, cloud, emulator):
    dev = link_device(config={"low": 900}).start()  # low above high: idle
    dev.run(7 * 86400)  # the ticks of a board wrap in 6.2 days
    command(dev, cloud, "config", {"id": "fix", "set": {"low": 200}})
    emulator.inject("/replenish/", "status", times=1, status=500)
    dev.set_level(LOW)
    st = dev.run(HOUR)  # the failed order backs off (900 s at most here) and is tried again
    assert st["state"] == "ordered" and len(emulator.requests_to("/replenish/")) == 2


def test_a_device_idle_for_a_bad_config_keeps_its_open_order_safe(link_device, cloud, emulator):
    dev = link_device().start()
    assert drain(dev)["state"] == "ordered"
    cfg = json.loads((dev.root / "config.json").read_text())
    cfg["low"] = 900  # made bad by hand: after a restart it idles, its order still out
    dev.write_json("config.json", cfg)
    dev.restart()
    assert dev.boot_ok is False
    command(dev, cloud, "config", {"id": "fix", "set": {"low": 50, "high": 90}})
    cloud.wait(lambda: cloud.commands())
    assert "has an order open (ordered)" in cloud.commands()[0]["reason"]
    command(dev, cloud, "config", {"id": "fix-2", "set": {"low": 200}})
    dev.run(HOUR)
    dev.set_level(40)
    dev.run(HOUR)
    assert len(emulator.requests_to("/replenish/")) == 1
