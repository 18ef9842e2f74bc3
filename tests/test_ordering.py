"""The firmware end to end: real `micropython`, real TLS, the DRS/LwA emulator.

Time is virtual (tools/vdevice.py), so hours of back-off pass in milliseconds; the network
and the emulator are real.
"""

import json

LOW, FULL = 100, 900
MIN = 60
HOUR = 3600


def drain(dev, minutes=15):
    dev.set_level(LOW)
    return dev.run(minutes * MIN)


def record(path):
    """A record the firmware wrote (flash or RTC memory): its JSON, without the checksum."""
    return json.loads(path.read_bytes().rsplit(b"\n#", 1)[0])


def replenishes(emu):
    return emu.requests_to("/replenish/")


def test_one_order_per_depletion_and_rearm_after_refill(device, emulator):
    st = device.run(10 * MIN)
    assert st["state"] == "monitor" and replenishes(emulator) == []
    st = drain(device)
    assert st["state"] == "ordered" and st["orders_placed"] == 1
    # Hours at the bottom of the tank: still one order.
    st = device.run(12 * HOUR)
    assert st["state"] == "ordered"
    assert len(emulator.orders) == 1 and len(replenishes(emulator)) == 1
    # Delivery and refill re-arm the slot; the next depletion orders again.
    emulator.mark_delivered("slot-a")
    device.set_level(FULL)
    assert device.run(10 * MIN)["state"] == "monitor"
    st = drain(device)
    assert st["state"] == "ordered" and len(emulator.orders) == 2


def test_no_order_while_between_thresholds_or_during_warmup(make_device, emulator):
    dev = make_device(config={"warmup_samples": 5})
    dev.set_level(LOW)
    dev.start()
    st = dev.run(3 * MIN)  # samples at 0, 1, 2 and 3 minutes: four of five
    assert st["state"] == "warmup" and replenishes(emulator) == []
    dev.set_level(500)
    dev.run(2 * HOUR)
    assert replenishes(emulator) == []


def test_request_is_exactly_the_documented_one(device, emulator):
    drain(device)
    (req,) = replenishes(emulator)
    assert req["method"] == "POST" and req["path"] == "/replenish/slot-a"
    h = req["headers"]
    assert h["x-amzn-type-version"] == "com.amazon.dash.replenishment.DrsReplenishInput@1.0"
    assert h["x-amzn-accept-type"] == "com.amazon.dash.replenishment.DrsReplenishResult@1.0"
    assert h["authorization"].startswith("Bearer Atza|")
    assert req["body"] == b""
    (tok,) = emulator.requests_to("/auth/o2/token")
    assert tok["headers"]["content-type"] == "application/x-www-form-urlencoded"


def test_event_id_persisted_and_survives_restart(device, emulator):
    drain(device)
    (order,) = emulator.orders
    eid = order["event_instance_id"]
    assert device.state_record()["ev"] == eid
    device.restart()
    st = device.run(2 * HOUR)
    assert st["event_instance_id"] == eid and st["state"] == "ordered"
    assert len(replenishes(emulator)) == 1


def test_valid_access_token_survives_reboot_without_refresh(device, emulator):
    drain(device)
    assert emulator.refresh_count == 1
    emulator.mark_delivered("slot-a")
    device.set_level(FULL)
    device.run(10 * MIN)
    device.restart()
    n0 = len(emulator.requests)
    device.set_level(FULL)
    device.run(10 * MIN)
    st = drain(device)
    assert st["orders_placed"] == 1 and emulator.refresh_count == 1
    since = [r["path"] for r in emulator.requests[n0:]]
    # One connection per call, and none of them to the token endpoint.
    assert st["handshakes"] == len(since) and not any(p.startswith("/auth") for p in since)
    assert sum(p.startswith("/replenish/") for p in since) == 1


def test_rotated_refresh_token_is_persisted_and_used_after_reboot(device, emulator):
    # The emulator rotates refresh tokens: the provisioned one dies with the first refresh.
    drain(device)
    emulator.mark_delivered("slot-a")
    emulator.expire_access_tokens()
    device.set_level(FULL)
    device.run(2 * HOUR)  # the access token is also old by the device's own clock now
    device.restart()
    st = drain(device)
    assert st["state"] == "ordered" and len(emulator.orders) == 2
    assert emulator.refresh_count >= 2  # each with the token the one before handed out
    assert all(r["status"] == 200 for r in emulator.requests_to("/auth/o2/token"))


def test_power_cut_costs_the_access_token_not_the_registration(device, emulator):
    drain(device)
    emulator.mark_delivered("slot-a")
    device.set_level(FULL)
    device.run(10 * MIN)
    device.kill()  # RTC memory goes with the power; flash keeps the refresh token
    device.start()
    device.run(10 * MIN)
    st = drain(device)
    assert st["state"] == "ordered" and len(emulator.orders) == 2
    assert emulator.refresh_count == 2  # the access token had to be fetched again


def test_idle_days_write_nothing_to_flash_unless_lwa_rotates_the_refresh_token(device, emulator):
    emulator.rotate_refresh_tokens = False
    device.run(24 * HOUR)  # settle: first token record, subscriptions, SlotStatus baseline
    w0, r0 = device.status()["flash_writes"], emulator.refresh_count
    d0 = len(emulator.device_status)
    device.run(48 * HOUR)
    assert device.status()["flash_writes"] == w0
    assert emulator.refresh_count >= r0 + 2 and len(emulator.device_status) == d0 + 2
    emulator.rotate_refresh_tokens = True
    r1 = emulator.refresh_count
    device.run(48 * HOUR)
    # A rotated refresh token is always persisted before the access token is used.
    assert device.status()["flash_writes"] - w0 == emulator.refresh_count - r1 >= 2


def test_token_expiry_tracked_by_ticks_without_wall_clock(make_device, emulator):
    dev = make_device(wall=0).start()
    drain(dev)
    assert emulator.refresh_count == 1
    # Without a wall clock the access token has no absolute expiry: nothing keeps it.
    assert "at" not in record(dev.root / "tokens.json")
    assert "at" not in record(dev.root / "rtc.bin")
    emulator.mark_delivered("slot-a")
    dev.set_level(FULL)
    dev.run(30 * MIN)
    drain(dev)  # within the hour: no refresh
    assert emulator.refresh_count == 1
    emulator.mark_delivered("slot-a")
    dev.set_level(FULL)
    dev.run(2 * HOUR)
    drain(dev)  # past the hour: refresh first
    assert emulator.refresh_count == 2 and len(emulator.orders) == 3


def test_order_inprogress_backs_off_until_refill(device, emulator):
    emulator.place_order("slot-a")  # somebody else's order is open for this slot
    st = drain(device)
    assert st["state"] == "inprogress"
    assert 6 * HOUR - 20 * MIN <= st["backoff_s"] <= 6.6 * HOUR
    device.run(5 * HOUR)
    assert len(replenishes(emulator)) == 1  # not hammered
    device.run(2 * HOUR)
    assert len(replenishes(emulator)) == 2  # asked again after the back-off
    device.set_level(FULL)
    assert device.run(10 * MIN)["state"] == "monitor"
    device.run(24 * HOUR)
    assert len(replenishes(emulator)) == 2
