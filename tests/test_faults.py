"""What the firmware does with every kind of bad answer, bad input and interruption."""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from devicectl import MICROPYTHON

LOW, FULL = 100, 900
MIN = 60
HOUR = 3600


def drain(dev, minutes=8):
    dev.set_level(LOW)
    return dev.run(minutes * MIN)


def run_micropython(script):
    """What `script` prints, run in the real interpreter with the device code on its path."""
    return subprocess.run(
        [MICROPYTHON, "-c", script],
        env=dict(os.environ, MICROPYPATH=str(REPO / "lib")),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def replenishes(emu):
    return emu.requests_to("/replenish/")


def first_failure(dev):
    """Why the first call failed: an order's, or the boot's SubscriptionInfo (whose back-off
    the order then waits for)."""
    return next(f["reason"] for _, tag, f in dev.events if tag in ("order-failed", "duty-failed"))


def token_calls(emu):
    return emu.requests_to("/auth/o2/token")


def test_400_means_one_refresh_and_one_retry(device, emulator):
    emulator.inject("/replenish/", "status", status=400, body={"message": "bad token"})
    st = drain(device)
    assert st["state"] == "ordered" and st["orders_placed"] == 1
    assert len(token_calls(emulator)) == 2 and len(replenishes(emulator)) == 2


def test_400_twice_is_reported_and_backed_off(device, emulator):
    emulator.inject("/replenish/", "status", times=2, status=400, body={"message": "no"})
    st = drain(device)
    assert st["state"] == "retry" and st["orders_placed"] == 0
    assert len(token_calls(emulator)) == 2 and len(replenishes(emulator)) == 2
    (failed,) = device.tagged("order-failed")
    assert "400" in failed["reason"]
    device.run(20)
    assert len(replenishes(emulator)) == 2  # no hammering
    device.run(2 * HOUR)
    assert device.status()["state"] == "ordered"


def test_unknown_slot_suspends_until_the_config_changes(make_device, emulator):
    # DRS's SubscriptionInfo lists every slot of the device model; ours is not among them.
    dev = make_device(config={"slot_id": "no-such-slot"}).start()
    st = drain(dev)
    assert st["state"] == "suspended" and "does not exist" in st["reason"]
    dev.run(24 * HOUR)
    dev.restart()
    assert dev.run(24 * HOUR)["state"] == "suspended"
    assert replenishes(emulator) == []
    cfg = json.loads((dev.root / "config.json").read_text())
    cfg["slot_id"] = "slot-a"
    dev.write_json("config.json", cfg)
    dev.restart()
    assert dev.run(30 * MIN)["state"] == "ordered"


def test_replenish_404_suspends(device, emulator):
    emulator.inject("/replenish/", "status", status=404, body={"message": "no such slot"})
    st = drain(device)
    assert st["state"] == "suspended" and "404" in st["reason"]
    device.run(24 * HOUR)
    device.restart()
    assert device.run(24 * HOUR)["state"] == "suspended"
    assert len(replenishes(emulator)) == 1


def test_invalid_grant_suspends_and_says_so(device, emulator):
    emulator.revoke_all()
    st = drain(device)
    assert st["state"] == "suspended" and "invalid_grant" in st["reason"]
    assert replenishes(emulator) == []
    device.run(48 * HOUR)
    assert len(token_calls(emulator)) == 1
    device.restart()
    device.run(HOUR)
    assert len(token_calls(emulator)) == 1
    assert any("invalid_grant" in e["reason"] for e in device.tagged("suspended"))


def test_invalid_client_suspends(make_device, emulator):
    dev = make_device(client_secret="wrong-secret").start()
    st = drain(dev)
    assert st["state"] == "suspended" and "invalid_client" in st["reason"]
    assert replenishes(emulator) == []
    # A configuration fault: no more calls at all, reboots included, until the secrets change.
    n = len(emulator.requests)
    dev.run(2 * 24 * HOUR)
    dev.restart()
    dev.run(24 * HOUR)
    assert len(emulator.requests) == n
    sec = json.loads((dev.root / "secrets.json").read_text())
    sec["client_secret"] = "test-secret"
    dev.write_json("secrets.json", sec)
    dev.restart()
    assert drain(dev)["state"] == "ordered"


def test_500_storm_backs_off_with_growing_jittered_gaps(make_device, emulator):
    device = make_device(config={"retry_base_s": 30}).start()
    emulator.inject("/replenish/", "status", times=9, status=500)
    drain(device)
    device.run(20 * HOUR)
    times = [t for t, tag, _ in device.events if tag == "order-request"]
    assert len(times) == 10 and device.status()["state"] == "ordered"
    gaps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    for n, gap in enumerate(gaps[:-1]):
        assert 30 <= gap <= min(30 << n, 3600), (n, gaps)
    assert sum(gaps[-5:-1]) > sum(gaps[:4]), gaps
    assert len(set(gaps)) > 3, gaps  # jittered, not a fixed schedule


def test_retry_after_is_honoured(device, emulator):
    emulator.inject("/replenish/", "status", status=503, headers={"Retry-After": "3600"})
    drain(device)
    assert device.tagged("order-failed")[0]["retry_in_s"] >= 3600
    device.run(2 * HOUR)
    first, second = [t for t, tag, _ in device.events if tag == "order-request"]
    assert second - first >= 3600


def test_a_huge_retry_after_from_lwa_is_capped(make_device, emulator):
    dev = make_device(config={"retry_cap_s": 3600}).start()
    dev.run(10 * MIN)
    emulator.expire_access_tokens()
    emulator.inject("/auth/", "status", status=429, headers={"Retry-After": "200000000"})
    drain(dev)
    assert dev.run(3 * HOUR)["state"] == "ordered"


def test_a_token_shorter_lived_than_the_margin_is_used_not_refreshed_again(make_device, emulator):
    emulator.access_token_lifetime = 240  # LwA's token lives less than token_margin_s (300)
    dev = make_device().start()
    dev.run(10 * MIN)
    drs = [r for r in emulator.requests if not r["path"].startswith("/auth/")]
    assert len(drs) == 2  # SubscriptionInfo and DeviceStatus at boot
    assert len(token_calls(emulator)) == 1  # one refresh for both, not two for each


def test_untrusted_certificate_is_refused_before_any_request(make_device, emulator):
    dev = make_device(port=emulator.port_untrusted).start()
    st = drain(dev)
    assert st["state"] == "retry" and st["orders_placed"] == 0
    assert emulator.requests == [] and emulator.tls_failures >= 1
    assert "tls" in first_failure(dev)


def test_wrong_host_name_is_refused_before_any_request(make_device, emulator):
    dev = make_device(port=emulator.port_wrong_name).start()
    st = drain(dev)
    assert st["state"] == "retry" and emulator.requests == []
    assert emulator.tls_failures >= 1


@pytest.mark.parametrize("order", [("rogue_ca", "ca"), ("ca", "rogue_ca")])
def test_trust_store_bundle_with_several_roots(make_device, emulator, certs, tmp_path, order):
    # Devices ship several roots; the one that signs the server may sit anywhere in the file.
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("".join(Path(certs[k]).read_text() for k in order))
    dev = make_device(ca=str(bundle)).start()
    st = drain(dev)
    assert st["state"] == "ordered" and len(emulator.orders) == 1


def test_missing_trust_store_is_a_clean_error(device, emulator):
    # A config error like any other (named, idle, no calls): test_robustness.py has more.
    (device.root / "ca.pem").write_text("not a certificate\n")
    device.restart()
    st = drain(device)
    assert st["state"] == "suspended" and st["reason"] == "config"
    assert emulator.requests == [] and "'ca_file'" in device.tagged("config-error")[0]["message"]


def test_oversized_answer_is_a_clean_error(device, emulator):
    emulator.inject("/replenish/", "oversized", size=200_000)
    st = drain(device)
    assert st["state"] == "retry"
    assert "too_big" in device.tagged("order-failed")[0]["reason"]
    assert device.run(2 * HOUR)["state"] == "ordered"


def test_oversized_headers_are_a_clean_error(device, emulator):
    emulator.inject("/replenish/", "oversized_headers", size=9000)
    drain(device)
    assert "too_big" in device.tagged("order-failed")[0]["reason"]
    # That request did place an order; the retry sees ORDER_INPROGRESS and takes it as ours.
    st = device.run(2 * HOUR)
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    assert device.tagged("order-recovered")


def test_redirect_is_not_followed(device, emulator):
    emulator.inject("/replenish/", "redirect")
    drain(device)
    assert "redirect" in device.tagged("order-failed")[0]["reason"]
    assert [r["path"] for r in emulator.requests if "elsewhere" in r["path"]] == []


def test_truncated_and_broken_answers(device, emulator):
    emulator.inject("/replenish/", "truncate")
    drain(device)
    assert "reset" in device.tagged("order-failed")[0]["reason"]
    st = device.run(2 * HOUR)
    # The truncated answer's order was real: recovered, not ordered twice.
    assert st["state"] == "ordered" and len(emulator.orders) == 1


def test_invalid_json_and_unknown_detail_code_are_not_orders(device, emulator):
    emulator.inject("/replenish/", "invalid_json")
    emulator.inject(
        "/replenish/",
        "status",
        status=200,
        body={"eventInstanceId": "amzn1.x", "detailCode": "SOMETHING_NEW"},
    )
    drain(device)
    st = device.run(3 * HOUR)
    tags = [tag for _, tag, _ in device.events if tag.startswith("order-")]
    assert tags == ["order-request", "order-failed"] * 2 + ["order-request", "order-placed"]
    failed = device.tagged("order-failed")
    assert "JSON" in failed[0]["reason"]
    assert failed[1]["detail_code"] == "SOMETHING_NEW"
    assert st["orders_placed"] == 1 and st["event_instance_id"] != "amzn1.x"


@pytest.mark.parametrize("framing", ["chunked", "close_delimited"])
def test_answers_framed_without_a_length_are_understood(device, emulator, framing):
    emulator.inject("/replenish/", framing)
    emulator.inject("/auth/o2/token", framing)
    st = drain(device)
    assert st["state"] == "ordered"
    assert st["event_instance_id"] == emulator.orders[0]["event_instance_id"]


def test_an_answer_whose_connection_stays_open_ends_at_its_length(device, emulator):
    # The server ignores "Connection: close": the answer is whole at its Content-Length.
    emulator.inject("/replenish/", "keep_open", seconds=30)
    st = drain(device)
    assert st["state"] == "ordered" and st["orders_placed"] == 1
    assert not device.tagged("order-failed") and len(replenishes(emulator)) == 1


def test_a_server_sending_a_byte_at_a_time_is_given_up_on(make_device, emulator):
    dev = make_device(config={"http_timeout_s": 1}).start()
    emulator.inject("/replenish/", "drip", interval=0.2)
    st = drain(dev)
    assert st["state"] == "retry"
    (failed,) = dev.tagged("order-failed")
    assert "timeout" in failed["reason"]
    (rec,) = replenishes(emulator)
    # It hung up at its deadline, long before the answer's last byte (200 bytes or more).
    assert 0 < rec["dripped"] < 100


def test_silent_server_times_out(device, emulator):
    emulator.inject("/replenish/", "silence", seconds=10)
    t0 = time.monotonic()
    st = drain(device)
    assert time.monotonic() - t0 < 9  # http_timeout_s is 3
    assert st["state"] == "retry"  # no answer: it may have been acted on, so it backs off
    assert "timeout" in device.tagged("order-failed")[0]["reason"]


def test_connection_lost_after_the_server_acted(device, emulator):
    emulator.inject("/replenish/", "reset_after_processing")
    drain(device)
    st = device.run(2 * HOUR)
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    assert st["event_instance_id"]


def cut_power_during_the_order(device, emulator):
    """The slot runs low, Replenish leaves, the power goes before the answer arrives; DRS
    places the order all the same."""
    emulator.inject("/replenish/", "delay", seconds=1.5)
    device.set_level(LOW)
    device._send("run %d" % (15 * MIN * 1000))
    deadline = time.monotonic() + 30
    while not replenishes(emulator) and time.monotonic() < deadline:
        time.sleep(0.02)
    device.kill()  # the request has left; the answer never arrives
    while not emulator.orders and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(emulator.orders) == 1
    assert device.state_record()["fl"] == 1  # the intent was on flash before the request


def test_power_cut_during_the_request_never_orders_twice(device, emulator):
    cut_power_during_the_order(device, emulator)
    device.start()
    st = device.run(HOUR)
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    assert device.tagged("order-recovered")
    assert device.run(24 * HOUR)["state"] == "ordered"
    assert len(replenishes(emulator)) == 2


def test_a_board_that_browns_out_in_every_request_backs_off(make_device, emulator):
    dev = make_device(config={"retry_base_s": 600}).start()
    cut_power_during_the_order(dev, emulator)
    for attempt in (1, 2):
        dev.start()
        f = dev.tagged("order-failed")[-1]
        assert "power" in f["reason"] and f["attempt"] == attempt
        assert 600 <= f["retry_in_s"] <= 600 << (attempt - 1)
        dev.run(9 * MIN)  # warm-up over, the back-off not
        assert len(replenishes(emulator)) == attempt
        if attempt == 1:  # the retry leaves, and the power goes again
            emulator.inject("/replenish/", "delay", seconds=1.5)
            dev._send("run %d" % (HOUR * 1000))
            deadline = time.monotonic() + 30
            while len(replenishes(emulator)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            dev.kill()
    assert dev.run(HOUR)["state"] == "ordered" and dev.tagged("order-recovered")
    assert len(emulator.orders) == 1


def test_a_refill_while_the_device_was_off_ends_the_order_attempt(device, emulator):
    cut_power_during_the_order(device, emulator)
    device.set_level(FULL)  # the customer refilled it by hand meanwhile
    device.start()
    st = device.run(24 * HOUR)
    assert st["state"] == "monitor" and device.tagged("refilled")
    assert len(replenishes(emulator)) == 1 and len(emulator.orders) == 1


def test_a_refill_noticed_at_boot_ends_the_episode(device, emulator):
    # The answer is lost after DRS acted; the retry's ORDER_INPROGRESS is taken as ours.
    emulator.inject("/replenish/", "reset_after_processing")
    drain(device)
    st = device.run(2 * HOUR)
    assert st["state"] == "ordered" and device.tagged("order-recovered")
    device.kill()
    device.set_level(FULL)
    device.start()
    st = device.run(HOUR)
    assert st["state"] == "monitor" and device.tagged("refilled")
    # A new depletion while that order is still open: it belongs to the ended episode, so
    # the device backs off instead of taking it as this one's order.
    drain(device)
    assert device.status()["state"] == "inprogress" and device.tagged("order-inprogress")
    assert len(device.tagged("order-recovered")) == 1  # the one before the power cut


def test_a_slot_suspended_after_its_order_resumes_waiting_for_the_refill(device, emulator):
    assert drain(device)["state"] == "ordered"
    emulator.mark_delivered("slot-a")  # delivered, not put in yet: the level is still low
    unlisted = {"slotsSubscriptionStatus": {"slot-b": True}}
    emulator.inject("/subscriptionInfo", "status", status=200, body=unlisted)
    assert device.run(25 * HOUR)["state"] == "suspended"  # the daily check did not list it
    st = device.run(25 * HOUR)  # the next one does
    assert st["state"] == "ordered" and device.tagged("resumed")
    assert len(replenishes(emulator)) == 1 and len(emulator.orders) == 1
    device.set_level(FULL)
    assert device.run(HOUR)["state"] == "monitor" and device.tagged("refilled")


def test_a_refill_while_suspended_ends_the_episode(device, emulator):
    assert drain(device)["state"] == "ordered"
    emulator.mark_delivered("slot-a")
    unlisted = {"slotsSubscriptionStatus": {"slot-b": True}}
    emulator.inject("/subscriptionInfo", "status", status=200, body=unlisted)
    assert device.run(25 * HOUR)["state"] == "suspended"
    device.set_level(FULL)  # the parcel goes in while the slot is suspended
    device.run(HOUR)
    device.set_level(500)  # and is used a little
    st = device.run(24 * HOUR)  # listed again: the episode it resumes is over
    assert st["state"] == "monitor" and device.tagged("refilled")
    device.set_level(LOW)  # the next depletion orders
    assert device.run(HOUR)["state"] == "ordered" and len(emulator.orders) == 2


def test_a_back_off_ends_in_an_order_only_while_the_slot_is_low(device, emulator):
    # The customer's own order is open, so DRS answers ORDER_INPROGRESS; it arrives and is
    # put in, not quite to `high`: no order while above low, one once low again.
    device.run(30 * MIN)
    emulator.place_order("slot-a")
    assert drain(device)["state"] == "inprogress"
    emulator.mark_delivered("slot-a")
    device.set_level(600)  # above low (200), below high (800)
    device.run(8 * HOUR)
    assert len(replenishes(emulator)) == 1 and len(emulator.orders) == 1
    assert drain(device)["state"] == "ordered" and len(emulator.orders) == 2


def test_a_top_up_after_a_lost_answer_never_orders_twice(device, emulator):
    # The order is placed but its answer lost; the customer tops up a little by hand while
    # the device backs off. The episode goes on: once low again, DRS's ORDER_INPROGRESS is
    # the episode's own order, not somebody else's.
    device.run(10 * MIN)
    emulator.inject("/replenish/", "reset_after_processing")
    assert drain(device)["state"] == "retry" and len(emulator.orders) == 1
    device.set_level(250)  # low is 200, high 800
    device.run(2 * HOUR)
    assert len(replenishes(emulator)) == 1
    st = drain(device, 60)
    assert st["state"] == "ordered" and device.tagged("order-recovered")
    emulator.mark_delivered("slot-a")  # delivered, not yet put in
    device.run(8 * HOUR)
    assert len(emulator.orders) == 1


def test_subscription_retry_after_holds_for_the_order_too(make_device, emulator):
    dev = make_device(config={"retry_base_s": 30})
    emulator.inject("/subscriptionInfo", "status", status=429, headers={"Retry-After": "3600"})
    dev.set_level(LOW)  # low at boot: the order needs a SubscriptionInfo first
    dev.start()
    dev.run(50 * MIN)
    assert len(emulator.requests_to("/subscriptionInfo")) == 1 and not replenishes(emulator)
    assert dev.tagged("order-failed")[0]["retry_in_s"] >= 3000
    assert dev.run(HOUR)["state"] == "ordered"
    assert len(emulator.requests_to("/subscriptionInfo")) == 2


def test_corrupt_state_file_is_recovered(device, emulator):
    drain(device)
    (device.root / "state.json").write_bytes(b'{"st": 4, "ev": "tampe\n#00000000\n')
    device.restart()
    assert device.tagged("state-reset")
    st = device.run(HOUR)
    # Level is still low; DRS says an order is open; it is taken as ours, not re-ordered.
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    device.restart()
    assert not device.tagged("state-reset")


@pytest.mark.parametrize("field", [("rw", "1790000000"), ("dr", [1]), ("att", -3), ("ev", 7)])
def test_a_state_record_of_the_wrong_shape_is_recovered(device, emulator, field):
    # Its checksum is good (a hand edit, another firmware), its content is not ours.
    from zlib import crc32

    drain(device)
    rec = {"st": 6, "att": 1, "dr": 600, "dw": 0, "ev": None}
    rec[field[0]] = field[1]
    body = json.dumps({"slots": {"slot-a": rec}}).encode()
    (device.root / "state.json").write_bytes(body + b"\n#%08x\n" % crc32(body))
    device.restart()
    assert device.tagged("state-reset") and not device.tagged("error")
    st = device.run(HOUR)
    # The order is open at DRS; it is taken as ours, not placed again.
    assert st["state"] == "ordered" and len(emulator.orders) == 1


def test_bad_config_names_each_key_and_idles(make_device, emulator):
    dev = make_device(config={"low": "low", "sample_s": -5})
    (dev.root / "secrets.json").write_text('{"refresh_token": "Atzr|x"}')
    dev.start()
    assert dev.boot_ok is False
    msgs = [e["message"] for e in dev.tagged("config-error")]
    assert any("'low'" in m for m in msgs) and any("'sample_s'" in m for m in msgs)
    assert any("'client_id' is missing" in m for m in msgs)
    dev.set_level(LOW)
    st = dev.run(24 * HOUR)
    assert st["state"] == "suspended" and emulator.requests == []


def test_a_sensor_the_board_cannot_open_is_a_config_error(make_device, emulator):
    # An ADC sensor on the unix port, which has no ADC: as a pin without one on a board.
    sensor = {"kind": "adc", "pin": 34, "raw_empty": 0, "raw_full": 65535, "capacity": 1000}
    dev = make_device(config={"sensor": sensor})
    dev.start()
    assert dev.boot_ok is False
    (err,) = dev.tagged("config-error")
    assert "slot 'slot-a': its sensor cannot be opened" in err["message"]
    assert not dev.tagged("error") and dev.run(HOUR)["state"] != "ordering"
    assert emulator.requests == []


def test_sensor_faults_never_order(device, emulator):
    device.run(5 * MIN)
    for bad in ("garbage", "-500", "5000"):
        (device.root / "level.txt").write_text(bad)
        st = device.run(HOUR)
        assert st["state"] == "fault"
    assert device.tagged("sensor-fault") and replenishes(emulator) == []
    device.set_level(FULL)
    assert device.run(10 * MIN)["state"] == "monitor"


def test_nothing_is_written_while_nothing_changes(device):
    device.run(10 * MIN)
    before = device.status()["flash_writes"]
    device.run(20 * HOUR)
    assert device.status()["flash_writes"] == before
    # The day's DeviceStatus is remembered in RTC memory (no write); the refresh token its call
    # needed was rotated by LwA (the emulator always does), and that is persisted (one write).
    n = len(device.events)
    device.run(5 * HOUR)
    duties = [tag for _, tag, _ in device.events[n:] if tag in ("device-status", "token-refresh")]
    assert duties == ["token-refresh", "device-status"]
    assert device.status()["flash_writes"] == before + 1


def test_secrets_never_appear_in_output(make_device, emulator):
    rt = emulator.add_refresh_token()
    dev = make_device(refresh_token=rt).start()
    emulator.inject("/replenish/", "status", status=400)
    drain(dev)
    emulator.revoke_all()
    emulator.mark_delivered("slot-a")
    dev.set_level(FULL)
    dev.run(3 * HOUR)
    drain(dev)
    tokens = [rt, "test-secret"] + [
        r["headers"]["authorization"][7:] for r in replenishes(emulator)
    ]
    for req in token_calls(emulator):
        tokens += [v for k, v in _form(req["body"]).items() if k == "refresh_token"]
    out = "\n".join(dev.output)
    assert len(dev.output) > 10
    for t in tokens:
        assert t not in out


def _form(body):
    from urllib.parse import parse_qsl

    return dict(parse_qsl(body.decode()))


def test_back_off_survives_a_reboot(device, emulator):
    emulator.place_order("slot-a")
    st = drain(device)
    assert st["state"] == "inprogress"
    left = st["backoff_s"]
    device.run(HOUR)
    device.restart()
    st = device.run(10 * MIN)
    assert st["state"] == "inprogress"
    assert abs(st["backoff_s"] - (left - HOUR - 10 * MIN)) <= 60
    device.run(st["backoff_s"] - 5 * MIN)
    assert len(replenishes(emulator)) == 1
    device.run(20 * MIN)
    assert len(replenishes(emulator)) == 2


def test_oversized_token_answer_is_a_clean_error(device, emulator):
    emulator.inject("/auth/", "oversized", size=100_000)
    device.run(2 * MIN)  # the first duty after boot needs a token
    assert "too_big" in device.tagged("duty-failed")[0]["reason"]
    drain(device)  # the order waits out that call's back-off, then goes through
    assert device.run(HOUR)["state"] == "ordered" and len(emulator.orders) == 1


def test_sockets_are_closed_on_every_path(make_device, emulator):
    dev = make_device(config={"retry_base_s": 30, "retry_cap_s": 60}).start()
    dev.run(5 * MIN)
    fds = len(list(Path("/proc/%d/fd" % dev.proc.pid).iterdir()))
    for kind in ("reset", "truncate", "invalid_json", "redirect", "oversized"):
        emulator.inject("/replenish/", kind, times=3)
    emulator.inject("/replenish/", "status", times=3, status=500)
    drain(dev)
    dev.run(2 * HOUR)
    assert len(replenishes(emulator)) >= 19
    assert len(list(Path("/proc/%d/fd" % dev.proc.pid).iterdir())) == fds


def test_steady_sampling_allocates_nothing(device, emulator):
    # Settle: warm-up over, subscriptions fetched, DeviceStatus sent, SlotStatus baseline set.
    device.run(30 * MIN)
    n = len(emulator.requests)
    res = device.command("steady", "200")
    assert res["alloc_bytes"] == 0 and res["heap_locked_ok"] is True
    assert len(emulator.requests) == n
    # Waiting for the refill, and suspended (where the sensor is still read).
    assert drain(device)["state"] == "ordered"
    device.run(30 * MIN)
    res = device.command("steady", "100")
    assert res["alloc_bytes"] == 0 and res["heap_locked_ok"] is True
    unlisted = {"slotsSubscriptionStatus": {"slot-b": True}}
    emulator.inject("/subscriptionInfo", "status", status=200, body=unlisted)
    assert device.run(25 * HOUR)["state"] == "suspended"
    res = device.command("steady", "100")
    assert res["alloc_bytes"] == 0 and res["heap_locked_ok"] is True


def test_steady_sampling_of_several_slots_allocates_nothing(certs, tmp_path):
    from conftest import slots_device

    slots = []
    for sid in ("a", "b", "c"):
        sensor = {"kind": "file", "path": "level.txt", "raw_empty": 0, "raw_full": 1000}
        sensor["capacity"] = 1000
        slots.append({"slot_id": sid, "low": 200, "high": 800, "sensor": sensor})
    with slots_device(certs, tmp_path / "d", ("a", "b", "c"), {"slots": slots}) as (_, dev):
        dev.start()
        dev.run(30 * MIN)
        res = dev.command("steady", "100")
        assert res["alloc_bytes"] == 0 and res["heap_locked_ok"] is True
        assert [s["state"] for s in dev.status()["slots"]] == ["monitor"] * 3


def test_each_https_client_trusts_only_its_own_store(emulator, certs):
    # Two clients in one process (a REPL session after ca.pem was replaced, say): the second
    # must not inherit the first one's trust store, though the first got the import-time context.
    script = """
from dash.https import Https, HttpError
port = %d
ok = Https(%r, 3).request(b"GET", "localhost", port, b"/subscriptionInfo")[0]
try:
    Https(%r, 3).request(b"GET", "localhost", port, b"/subscriptionInfo")
    print("rogue: accepted")
except HttpError as e:
    print("rogue: refused", e.args[0])
print("real:", ok)
""" % (emulator.port, certs["ca"], certs["rogue_ca"])
    out = run_micropython(script)
    assert "rogue: refused 3" in out and "real: 400" in out, out


def test_a_handshake_dripped_a_byte_at_a_time_is_given_up_on(certs):
    # Anyone on the path can do this without a certificate: the server's first handshake
    # record promises 16 KB and comes a byte every 0.2 s, each byte well inside the timeout.
    ls = socket.create_server(("127.0.0.1", 0))
    sent = []

    def drip():
        conn, _ = ls.accept()
        with conn:
            conn.recv(4096)  # the ClientHello
            try:
                conn.sendall(b"\x16\x03\x03\x3f\xff")
                for _ in range(300):
                    time.sleep(0.2)
                    conn.sendall(b"\x02")
                    sent.append(1)
            except OSError:
                pass  # the client hung up

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    script = """
from dash.https import Https, HttpError
try:
    Https(%r, 1).request(b"GET", "127.0.0.1", %d, b"/")
    print("answered")
except HttpError as e:
    print("gave up", e.args[0])
""" % (certs["ca"], ls.getsockname()[1])
    out = run_micropython(script)
    t.join(10)
    ls.close()
    assert "gave up 4" in out, out  # E_TIMEOUT
    assert len(sent) < 30  # within three timeouts of 1 s, not the minute the record takes


def test_refused_refresh_before_an_order_is_asked_once_and_backed_off(device, emulator):
    device.set_level(FULL)
    device.run(10 * MIN)
    device.run(2 * HOUR)  # the access token has expired by now
    n = len(token_calls(emulator))
    # Refused for the SlotStatus the drop triggers: the refresh backs off device-wide, so the
    # order does not ask LwA again until that back-off ends (nor twice in one step).
    emulator.inject("/auth/o2/token", "status", times=2, status=503)
    st = drain(device)
    assert len(token_calls(emulator)) == n + 1 and not replenishes(emulator)
    assert st["state"] == "retry"
    (failed,) = device.tagged("order-failed")
    assert "LwA backing off" in failed["reason"]
    device.run(2 * HOUR)
    assert device.status()["state"] == "ordered" and len(replenishes(emulator)) == 1
