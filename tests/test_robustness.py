"""What an outside test of the firmware found (issue 18), each with the test that would have
found it: the real firmware under `micropython` against the emulator."""

import socket
import struct
import threading

import pytest

MIN = 60


@pytest.fixture
def live_device(make_device):
    """A device whose clock runs in real time inside each step, as a board's does: a request
    that takes seconds takes them from the device's time too."""

    def make(**kw):
        return make_device(env={"VDEVICE_LIVE": "1"}, **kw)

    return make


def test_a_retry_after_counts_from_when_the_answer_came(live_device, emulator):
    # The server takes 2 s to answer 429 with Retry-After: 5, and the device samples every
    # second: the next request may not leave before 5 s after the answer, 7 s after the first
    # request left.
    config = {"sample_s": 1, "retry_base_s": 1, "retry_cap_s": 60, "warmup_samples": 1}
    dev = live_device(config=dict(config, http_timeout_s=10))
    emulator.inject(
        "/replenish/", "status", times=1, status=429, headers={"Retry-After": "5"}, after=2
    )
    dev.set_level(100)
    dev.start()
    dev.run(40)
    requests = [up for up, tag, f in dev.events if tag == "order-request"]
    (failed,) = [(up, f) for up, tag, f in dev.events if tag == "order-failed"]
    assert len(requests) >= 2, dev.events
    assert failed[1]["retry_in_s"] == 5
    assert failed[0] - requests[0] >= 2  # its log line is stamped when the answer came
    assert requests[1] - requests[0] >= 2 + 5, (requests, failed)


class Switch:
    """A TCP proxy in front of the emulator's DRS: "pass" forwards, "silent" takes the
    connection and says nothing (a handshake that never ends), "reset" takes it and closes it
    at once (a reset in the handshake). No request byte gets through but in "pass"."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.mode = "pass"
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.mode == "reset":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            elif self.mode == "pass":
                up = socket.create_connection(("127.0.0.1", self.upstream))
                self.conns.append(up)
                for a, b in ((c, up), (up, c)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode", ["silent", "reset"])
def test_a_request_that_never_left_does_not_make_a_customers_order_ours(
    make_device, emulator, mode
):
    proxy = Switch(emulator.port)
    try:
        dev = make_device(
            config={
                "drs_url": "https://localhost:%d" % proxy.port,
                "retry_base_s": 300,
                "retry_cap_s": 600,
                "http_timeout_s": 1,
            }
        ).start()
        dev.run(5 * MIN)  # token, subscriptions, DeviceStatus: all well
        proxy.mode = mode
        dev.set_level(100)
        dev.run(8 * MIN)  # the order's handshake fails: nothing left the device
        assert dev.tagged("order-failed") and not emulator.requests_to("/replenish/")
        proxy.mode = "pass"
        emulator.place_order("slot-a", "amzn1.dash.v2.o.ro.by-hand")  # the customer's
        st = dev.run(15 * MIN)
    finally:
        proxy.close()
    # DRS says an order is in progress: the customer's, not one this device may have placed.
    assert st["state"] == "inprogress" and not dev.tagged("order-recovered"), dev.events[-6:]


def test_an_order_refused_after_it_was_acted_on_is_taken_as_ours(device, emulator):
    # The server places the order and still answers 400: the device refreshes its token and
    # asks again, DRS says ORDER_INPROGRESS, and that order is the device's own.
    emulator.inject("/replenish/", "status", times=1, status=400, process=True)
    device.set_level(100)
    st = device.run(10 * MIN)
    assert st["state"] == "ordered" and device.tagged("order-recovered")
    assert device.state_record()["ev"]
    emulator.mark_delivered("slot-a")  # delivered, and not yet put in
    device.run(8 * 3600)
    assert len(emulator.orders) == 1


def test_the_host_header_names_a_port_other_than_443(device, emulator):
    device.run(MIN)
    hosts = {r["headers"].get("host") for r in emulator.requests}
    assert hosts == {"localhost:%d" % emulator.port}  # RFC 9110 7.2


def test_a_stale_temporary_file_never_stands_for_the_state(device, emulator):
    device.run(5 * MIN)
    before = (device.root / "state.json").read_bytes()  # no order yet
    device.set_level(100)
    assert device.run(10 * MIN)["state"] == "ordered"
    eid = device.state_record()["ev"]
    device.stop()
    (device.root / "state.json.tmp").write_bytes(before)  # whole, good, and stale
    device.start()
    assert device.run(10 * MIN)["state"] == "ordered"
    assert device.state_record()["ev"] == eid
    emulator.mark_delivered("slot-a")  # delivered, not yet put in: still low
    device.run(8 * 3600)
    assert len(emulator.orders) == 1


@pytest.mark.parametrize("damage", [b"", b'{"rt": "Atzr|tru', b"\x00\xff" * 40])
def test_a_damaged_tokens_file_is_said(device, damage):
    device.run(5 * MIN)  # a refresh: the rotated token in tokens.json
    device.stop()
    (device.root / "tokens.json").write_bytes(damage)
    device.start()
    (said,) = [f for f in device.tagged("state-reset") if f.get("file") == "tokens.json"]
    assert "rotated last is lost" in said["reason"]


def test_a_sensor_unreadable_from_boot_is_said(make_device):
    dev = make_device()
    (dev.root / "level.txt").unlink()  # wired wrong: nothing to read from the start
    dev.start()
    dev.run(5 * MIN)
    (fault,) = dev.tagged("sensor-fault")
    assert fault["fault"] == "unreadable" and fault["slot"] == "slot-a"
    dev.set_level(900)
    dev.run(2 * MIN)
    assert dev.tagged("sensor-ok") and dev.status()["state"] == "monitor"


def test_one_glitch_at_the_top_is_not_a_refill_while_an_order_is_out(make_device, emulator):
    sensor = {"kind": "file", "raw_empty": 0, "raw_full": 1000, "capacity": 1000, "median": 1}
    dev = make_device(config={"sensor": sensor}).start()
    dev.set_level(100)
    assert dev.run(10 * MIN)["state"] == "ordered"
    dev.set_level(950)  # a door shut on the load cell: one reading
    dev.run(MIN)
    dev.set_level(100)
    st = dev.run(10 * MIN)
    assert st["state"] == "ordered" and not dev.tagged("refilled")
    emulator.mark_delivered("slot-a")  # delivered, not yet put in: still low
    dev.run(8 * 3600)
    assert len(emulator.orders) == 1
    dev.set_level(950)  # put in: the readings stay at the top
    assert dev.run(5 * MIN)["state"] == "monitor" and dev.tagged("refilled")


def test_a_level_hovering_at_a_threshold_does_not_flood_the_log(make_device):
    dev = make_device(
        config={"sample_s": 5, "confirm_samples": 5, "sensor": dict(median=1, **FILE_SENSOR)}
    ).start()
    dev.run(MIN)
    for i in range(120):  # ten minutes around `low`, and a sensor coming and going
        if i % 4 == 3:
            (dev.root / "level.txt").unlink()
        else:
            dev.set_level(199 if i % 2 else 201)
        dev.run(5)
    noisy = [(up, t, f) for up, t, f in dev.events if t in ("state", "sensor-fault", "sensor-ok")]
    per_minute = {}
    for up, _, _ in noisy:
        per_minute[up // 60] = per_minute.get(up // 60, 0) + 1
    assert max(per_minute.values()) <= 6, per_minute
    assert any(f.get("hushed") for _, _, f in noisy)  # and it says how many it left out


FILE_SENSOR = {"kind": "file", "raw_empty": 0, "raw_full": 1000, "capacity": 1000}


@pytest.mark.parametrize("ca", [None, b"", b"not a certificate at all\n"])
def test_a_trust_store_that_cannot_be_used_is_a_config_error(make_device, emulator, ca):
    dev = make_device()
    if ca is None:
        (dev.root / "ca.pem").unlink()
    else:
        (dev.root / "ca.pem").write_bytes(ca)
    dev.start()
    assert dev.boot_ok is False
    (err,) = dev.tagged("config-error")
    assert "'ca_file'" in err["message"]
    dev.set_level(100)
    dev.run(30 * MIN)
    assert emulator.requests == []  # idle: no calls, no back-offs climbing


def test_an_lwa_outage_costs_as_few_refreshes_for_eight_slots_as_for_one(certs, tmp_path):
    from conftest import slots_device

    def slot(sid):
        sensor = dict(FILE_SENSOR, path=sid + ".txt")
        return {"slot_id": sid, "low": 200, "high": 800, "sensor": sensor}

    asked = {}
    for n in (1, 8):
        sids = ["s%d" % i for i in range(n)]
        cfg = {"slots": [slot(s) for s in sids], "retry_base_s": 30, "retry_cap_s": 3600}
        with slots_device(certs, tmp_path / str(n), sids, cfg) as (emu, dev):
            for s in sids:
                dev.set_level(900, s + ".txt")
            dev.start()
            dev.run(10 * MIN)
            emu.inject("/auth/o2/token", "status", times=10000, status=500)  # no Retry-After
            emu.expire_access_tokens()
            before = len(emu.requests_to("/auth/"))
            for s in sids:
                dev.set_level(100, s + ".txt")  # every slot wants to order, and to report
            dev.run(3600)
            asked[n] = len(emu.requests_to("/auth/")) - before
    assert asked[8] <= asked[1] + 2, asked  # the refresh backs off device-wide
