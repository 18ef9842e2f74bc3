"""The whole DRS device contract, end to end: the real firmware under `micropython` against the
emulator. For each endpoint, the exact request the device sent and what it did with each
answer; registration (PKCE and confidential), deregistration, several slots."""

import json
from contextlib import contextmanager
from datetime import datetime

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, slots_device

LOW, FULL = 100, 900
MIN = 60
HOUR = 3600
DAY = 86400
PFX = "com.amazon.dash.replenishment."
REDIRECT = "https://maker.example/dash/callback"


def drain(dev, minutes=8, path="level.txt"):
    dev.set_level(LOW, path)
    return dev.run(minutes * MIN)


def replenishes(emu):
    return emu.requests_to("/replenish/")


def only(emu, prefix):
    return emu.requests_to(prefix)


def assert_drs_request(req, method, path, tin, tout):
    assert req["method"] == method and req["path"] == path
    h = req["headers"]
    assert h["x-amzn-type-version"] == PFX + tin
    assert h["x-amzn-accept-type"] == PFX + tout
    assert h["authorization"].startswith("Bearer Atza|")


def flash_text(dev):
    return "".join(p.read_bytes().decode("latin-1") for p in dev.root.iterdir() if p.is_file())


# -- SubscriptionInfo -------------------------------------------------------------------


def test_subscription_info_request_and_an_unsubscribed_slot_never_orders(device, emulator):
    emulator.set_subscribed("slot-a", False)
    device.restart()
    st = drain(device, 60)
    assert st["state"] == "unsubscribed" and st["subscribed"] is False
    assert only(emulator, "/replenish/") == []
    assert device.tagged("slot-unsubscribed")
    req = only(emulator, "/subscriptionInfo")[0]
    assert_drs_request(
        req,
        "GET",
        "/subscriptionInfo",
        "DrsSubscriptionInfoInput@1.0",
        "DrsSubscriptionInfoResult@1.0",
    )
    assert req["body"] == b""
    # The customer subscribes; the maker's cloud relays SubscriptionChanged.
    emulator.set_subscribed("slot-a", True)
    relay = {"notificationInfo": {"notificationType": "SubscriptionChangedNotification"}}
    assert device.command("relay", json.dumps(relay))["ok"]
    st = device.run(10 * MIN)
    assert st["state"] == "ordered" and len(emulator.orders) == 1


def test_subscriptions_are_refreshed_daily_not_more(device, emulator):
    device.run(3 * DAY + HOUR)
    # At boot, then once a day.
    assert len(only(emulator, "/subscriptionInfo")) == 4


# -- DeviceStatus -----------------------------------------------------------------------


def test_device_status_once_a_day_none_missed_none_extra(device, emulator):
    device.run(2 * DAY + 12 * HOUR)
    device.restart()  # not overdue: a reboot sends nothing extra
    device.run(2 * DAY)
    reqs = only(emulator, "/deviceStatus")
    assert len(reqs) == 5  # day 0, 1, 2, 3 and 4
    for r in reqs:
        assert_drs_request(
            r, "POST", "/deviceStatus", "DrsDeviceStatusInput@1.0", "DrsDeviceStatusResult@1.0"
        )
        assert r["headers"]["content-type"] == "application/json"
        assert list(json.loads(r["body"])) == ["mostRecentlyActiveDate"]
    sent = [e["sent"] for e in device.tagged("device-status")]
    assert sent[-1] == emulator.device_status[-1]
    days = [d[:10] for d in emulator.device_status]
    assert len(set(days)) == 5


def test_overdue_device_status_is_sent_at_boot(device, emulator):
    device.run(HOUR)
    device.stop()
    device.elapsed += 3 * DAY  # the appliance was unplugged for three days
    device.start()
    device.run(5 * MIN)
    assert len(only(emulator, "/deviceStatus")) == 2


def test_a_device_status_sent_while_the_clock_was_ahead_holds_up_none(make_device, emulator):
    wall = 1790000000
    dev = make_device(wall=wall + 10 * DAY).start()  # the RTC ten days ahead
    dev.run(HOUR)
    assert len(only(emulator, "/deviceStatus")) == 1
    dev.stop()
    dev.wall = wall - dev.elapsed  # the clock set right, the board reset: RTC memory kept
    dev.start()
    dev.run(5 * MIN)
    # The last one was sent "in the future": when is unknown, so one goes out at boot (it
    # used to wait the ten days), then one a day.
    assert len(only(emulator, "/deviceStatus")) == 2
    dev.run(2 * DAY)
    assert [d[:10] for d in emulator.device_status[1:]] == [
        "2026-09-21",
        "2026-09-22",
        "2026-09-23",
    ]


def test_device_status_waits_for_the_wall_clock(make_device, emulator):
    dev = make_device(wall=0).start()
    dev.run(2 * DAY)
    assert only(emulator, "/deviceStatus") == []


# -- SlotStatus -------------------------------------------------------------------------


def test_slot_status_reports_consumption_rate_limited_with_an_estimate(device, emulator):
    device.run(10 * MIN)
    raw = FULL
    for _ in range(60):  # 10 hours, 10 units used every 10 minutes: 1440 a day
        raw -= 10
        device.set_level(raw)
        device.run(10 * MIN)
    reports = emulator.slot_status["slot-a"]
    assert 8 <= len(reports) <= 11  # hourly at most
    reqs = only(emulator, "/slotStatus/")
    assert_drs_request(
        reqs[0], "POST", "/slotStatus/slot-a", "DrsSlotStatusInput@1.0", "DrsSlotStatusResult@1.0"
    )
    last = reports[-1]
    assert set(last) == {
        "expectedReplenishmentDate",
        "remainingQuantityInUnit",
        "originalQuantityInUnit",
        "totalQuantityOnHand",
        "lastUseDate",
    }
    assert last["originalQuantityInUnit"] == 1000
    assert abs(last["remainingQuantityInUnit"] - raw) <= 20
    # 300 units above the low threshold at 1440 a day: about five hours from the report.
    logged = device.tagged("slot-status")[-1]
    assert 1200 <= logged["per_day"] <= 1700
    # The estimate: (remaining - low) at the measured rate, from the last use (~ the report).
    used = datetime.fromisoformat(last["lastUseDate"].replace("Z", "+00:00"))
    eta = datetime.fromisoformat(last["expectedReplenishmentDate"].replace("Z", "+00:00"))
    hours = (eta - used).total_seconds() / 3600
    want = (last["remainingQuantityInUnit"] - 200) / 60
    assert abs(hours - want) <= max(1.0, 0.3 * want), (hours, want)


def test_a_slot_status_baseline_taken_while_the_clock_was_ahead_holds_up_none(
    make_device, emulator
):
    wall = 1790000000
    dev = make_device(wall=wall + 10 * DAY).start()  # the RTC ten days ahead
    dev.run(HOUR)  # the SlotStatus baseline is taken "in the future"
    dev.stop()
    dev.wall = wall - dev.elapsed  # the clock set right, the board reset
    dev.start()
    dev.set_level(FULL - 300)
    dev.run(2 * HOUR)
    assert len(emulator.slot_status.get("slot-a", [])) == 1


def test_no_slot_status_while_nothing_is_used(device, emulator):
    device.run(3 * DAY)
    assert emulator.slot_status.get("slot-a", []) == []


# -- GetOrderInfo -----------------------------------------------------------------------


def test_cancelled_order_rearms_the_slot(device, emulator):
    drain(device)
    eid = device.status()["event_instance_id"]
    emulator.cancel_order("slot-a")
    st = device.run(13 * HOUR)  # order_check_s is 12 h
    req = only(emulator, "/getOrderInfo/")[0]
    assert_drs_request(
        req, "GET", "/getOrderInfo/" + eid, "DrsOrderInfoInput@1.0", "DrsOrderInfoResult@1.0"
    )
    assert device.tagged("order-cancelled")[0]["event_instance_id"] == eid
    # Still low: the customer is not left without supply.
    assert st["state"] == "ordered" and len(emulator.orders) == 2
    assert st["event_instance_id"] != eid


def test_delivered_order_does_not_order_twice(device, emulator):
    drain(device)
    emulator.mark_delivered("slot-a")
    st = device.run(4 * DAY)  # still low: the parcel sits unopened
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    assert device.tagged("order-delivered")
    assert len(only(emulator, "/getOrderInfo/")) == 1  # then it stops asking
    device.set_level(FULL)
    assert device.run(10 * MIN)["state"] == "monitor"


def test_unknown_order_status_means_still_open_and_checks_are_bounded(make_device, emulator):
    dev = make_device(config={"order_checks_max": 3}).start()
    drain(dev)
    eid = dev.status()["event_instance_id"]
    emulator.set_order_status(eid, "WithTheCourierPigeon")
    st = dev.run(5 * DAY)
    assert st["state"] == "ordered" and len(emulator.orders) == 1
    assert len(only(emulator, "/getOrderInfo/")) == 3


def test_order_cancelled_notification_rearms(device, emulator):
    drain(device)
    eid = device.status()["event_instance_id"]
    emulator.cancel_order("slot-a")
    other = {
        "notificationInfo": {"notificationType": "OrderCancelledNotification"},
        "orderInfo": {"instanceId": "amzn1.dash.v2.o.ro.not-ours", "slotId": "slot-a"},
    }
    device.command("relay", json.dumps(other))
    assert device.run(5 * MIN)["state"] == "ordered" and len(emulator.orders) == 1
    ours = {
        "notificationInfo": {"notificationType": "OrderCancelledNotification", "x": 1},
        "orderInfo": {"instanceId": eid, "slotId": "slot-a"},
    }
    device.command("relay", json.dumps(ours))
    st = device.run(10 * MIN)
    assert st["state"] == "ordered" and len(emulator.orders) == 2


def cancelled_msg(eid, slot="slot-a", kind="OrderCancelledNotification"):
    return json.dumps(
        {
            "notificationInfo": {"notificationType": kind},
            "orderInfo": {"instanceId": eid, "slotId": slot},
        }
    )


def test_a_relayed_cancellation_is_checked_with_drs(make_device, emulator):
    dev = make_device(config={"order_check_s": 600}).start()
    eid = drain(dev)["event_instance_id"]
    # Replayed, forged or mistaken: DRS says the order is still open, so nothing changes.
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 1
    assert dev.run(5 * MIN)["state"] == "ordered" and len(emulator.orders) == 1
    assert len(only(emulator, "/getOrderInfo/")) == 1
    emulator.mark_delivered("slot-a")  # delivered, not yet put in
    dev.run(HOUR)
    assert dev.tagged("order-delivered")
    # A cancellation of a delivered order is not one: not even asked about.
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 0
    st = dev.run(2 * HOUR)
    assert (
        st["state"] == "ordered" and len(emulator.orders) == 1 and len(replenishes(emulator)) == 1
    )


def test_notifications_about_other_orders_never_rearm_a_recovered_order(device, emulator):
    # An order recovered after a lost answer carries an id that names no order: a
    # notification cannot be matched to it. A late one about an older, cancelled order of the
    # slot, or about the real one, changes nothing: the slot waits for the refill and orders
    # once (and no notification makes it call anybody).
    emulator.place_order("slot-a", "amzn1.dash.v2.o.ro.old")
    emulator.cancel_order("slot-a")
    device.run(10 * MIN)
    emulator.inject("/replenish/", "reset_after_processing")
    drain(device)
    assert device.run(2 * HOUR)["state"] == "ordered" and device.tagged("order-recovered")
    real = emulator.orders[1]["event_instance_id"]
    emulator.mark_delivered("slot-a")  # the episode's order arrives, not yet put in
    n = len(emulator.requests)
    for eid in ("amzn1.dash.v2.o.ro.old", real):
        for kind in ("OrderCancelledNotification", "OrderPlacedNotification"):
            assert device.command("relay", cancelled_msg(eid, kind=kind))["matched"] == 0
            device.run(HOUR)
    assert len(emulator.requests) == n
    assert device.run(8 * HOUR)["state"] == "ordered" and len(emulator.orders) == 2
    device.set_level(FULL)
    assert device.run(HOUR)["state"] == "monitor"


def test_a_cancellation_relayed_after_the_checks_ran_out_is_still_checked(make_device, emulator):
    dev = make_device(config={"order_check_s": 600, "order_checks_max": 2}).start()
    eid = drain(dev)["event_instance_id"]
    dev.run(HOUR)  # both checks used: "open"
    assert len(only(emulator, "/getOrderInfo/")) == 2
    assert emulator.cancel_order("slot-a") == eid
    # A stream of them is one more check, not five.
    assert [dev.command("relay", cancelled_msg(eid))["matched"] for _ in range(5)] == [1] + [0] * 4
    st = dev.run(DAY)
    assert len(only(emulator, "/getOrderInfo/" + eid)) == 3
    assert st["state"] == "ordered" and len(emulator.orders) == 2
    # Past the checks, a stream of relays about an order still open is one more check.
    eid = st["event_instance_id"]
    dev.run(HOUR)
    assert len(only(emulator, "/getOrderInfo/" + eid)) == 2
    for _ in range(6):
        dev.command("relay", cancelled_msg(eid))
        dev.run(HOUR)
    assert len(only(emulator, "/getOrderInfo/" + eid)) == 3


def test_a_cancellation_is_checked_after_drs_once_did_not_know_the_order(make_device, emulator):
    # One GetOrderInfo answered 404 ends the periodic checks; the customer then cancels, and
    # the relayed cancellation gets its one check.
    dev = make_device(config={"order_check_s": 600}).start()
    eid = drain(dev)["event_instance_id"]
    emulator.inject("/getOrderInfo/", "status", status=404)
    dev.run(HOUR)
    assert dev.tagged("order-info")[0]["status"] == "unknown"
    assert len(only(emulator, "/getOrderInfo/")) == 1
    assert emulator.cancel_order("slot-a") == eid
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 1
    st = dev.run(DAY)
    assert st["state"] == "ordered" and len(emulator.orders) == 2
    assert len(only(emulator, "/getOrderInfo/" + eid)) == 2


def test_without_periodic_checks_a_relayed_cancellation_is_checked_once(make_device, emulator):
    dev = make_device(config={"order_check_s": 600, "order_checks_max": 0}).start()
    eid = drain(dev)["event_instance_id"]
    dev.run(DAY)
    assert only(emulator, "/getOrderInfo/") == []
    assert emulator.cancel_order("slot-a") == eid
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 1
    st = dev.run(DAY)
    assert st["state"] == "ordered" and len(emulator.orders) == 2
    assert len(only(emulator, "/getOrderInfo/")) == 1


def test_a_cancellation_relayed_before_drs_shows_it_is_checked_again(make_device, emulator):
    # The relay's check comes at once, DRS still says open, and it was the last one: one more
    # follows an interval later.
    dev = make_device(config={"order_check_s": 600, "order_checks_max": 1}).start()
    eid = drain(dev)["event_instance_id"]
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 1
    dev.run(5 * MIN)
    assert len(only(emulator, "/getOrderInfo/")) == 1
    assert emulator.cancel_order("slot-a") == eid  # DRS shows it now
    assert dev.run(DAY)["state"] == "ordered" and len(emulator.orders) == 2
    assert len(only(emulator, "/getOrderInfo/" + eid)) == 2


def test_a_junk_answer_does_not_use_up_the_relayed_check(make_device, emulator):
    dev = make_device(config={"order_check_s": 600, "order_checks_max": 0}).start()
    eid = drain(dev)["event_instance_id"]
    assert emulator.cancel_order("slot-a") == eid
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 1
    emulator.inject("/getOrderInfo/", "invalid_json")
    assert dev.run(DAY)["state"] == "ordered" and len(emulator.orders) == 2
    emulator.inject("/getOrderInfo/", "invalid_json", times=100)  # never understood:
    eid = dev.status()["event_instance_id"]
    emulator.cancel_order("slot-a")
    dev.command("relay", cancelled_msg(eid))
    dev.run(3 * DAY)
    assert len(only(emulator, "/getOrderInfo/" + eid)) <= 4  # a few tries, not for ever


def test_an_order_cancelled_while_its_slot_was_suspended_is_checked_on_resuming(
    make_device, emulator
):
    dev = make_device(config={"order_check_s": 600, "order_checks_max": 1}).start()
    eid = drain(dev)["event_instance_id"]
    dev.run(HOUR)  # the one check: open
    emulator.revoke_all()
    msg = {"notificationInfo": {"notificationType": "DeviceDeregisteredNotification"}}
    dev.command("relay", json.dumps(msg))
    assert dev.run(2 * MIN)["state"] == "suspended"
    assert emulator.cancel_order("slot-a") == eid
    assert dev.command("relay", cancelled_msg(eid))["matched"] == 0  # suspended: not now
    secrets = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    dev.write_json("secrets.json", {**secrets, "refresh_token": emulator.add_refresh_token()})
    dev.restart()
    assert dev.run(DAY)["state"] == "ordered" and len(emulator.orders) == 2


def test_junk_relay_is_refused_cleanly(device):
    assert device.command("relay", "{not json")["ok"] is False
    assert device.command("relay", "[1, 2]")["ok"] is False
    assert device.run(MIN)["state"] == "monitor"


# -- Deregistration ---------------------------------------------------------------------


def test_deregister_command_leaves_no_token_and_no_order(device, emulator):
    drain(device)
    tokens = device.root / "tokens.json"
    rt = json.loads(tokens.read_bytes().rsplit(b"\n#", 1)[0])["rt"]
    answer = device.command("deregister")
    assert answer == {"ok": True, "drs_confirmed": True, "reason": ""}
    req = only(emulator, "/registration")[0]
    assert_drs_request(
        req, "DELETE", "/registration", "DrsDeregisterInput@2.0", "DrsDeregisterResult@1.0"
    )
    assert emulator.deregistrations == 1
    assert not tokens.exists()
    assert "refresh_token" not in json.loads((device.root / "secrets.json").read_text())
    assert "Atzr|" not in flash_text(device) and "Atza|" not in flash_text(device)
    assert rt not in flash_text(device)
    n = len(emulator.requests)
    emulator.mark_delivered("slot-a")
    device.set_level(FULL)
    device.run(HOUR)
    st = drain(device, 60)
    assert st["state"] == "suspended" and st["registered"] is False
    device.restart()
    device.run(2 * DAY)
    assert len(emulator.requests) == n  # not one call more, reboots included
    assert device.status()["registered"] is False


def test_revoked_registration_wipes_tokens(device, emulator):
    device.run(10 * MIN)
    emulator.revoke_all()
    emulator.expire_access_tokens()
    st = device.run(DAY + HOUR)  # the next daily duty needs a fresh token
    assert st["registered"] is False and st["state"] == "suspended"
    assert "invalid_grant" in st["reason"]
    assert not (device.root / "tokens.json").exists()
    assert "Atzr|" not in flash_text(device)


def test_a_registration_is_not_lost_to_a_flash_that_refuses_a_write(make_device, emulator):
    dev = make_device(config={"redirect_uri": REDIRECT}).start()
    dev.run(10 * MIN)
    emulator.revoke_all()
    emulator.expire_access_tokens()
    # secrets.json cannot be rewritten (its .tmp cannot be made): the revoked refresh token
    # provisioned there stays on flash for now.
    (dev.root / "secrets.json.tmp").mkdir()
    st = dev.run(DAY + HOUR)
    assert st["registered"] is False and st["state"] == "suspended"
    assert dev.tagged("unregistered") and "Atzr|" in (dev.root / "secrets.json").read_text()
    # A new registration is refused while the old token would come back at the next boot.
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    answer = dev.command("register", code)
    assert answer["ok"] is False and "secrets.json" in answer["reason"]
    (dev.root / "secrets.json.tmp").rmdir()
    assert dev.command("register", code)["ok"] is True
    assert "Atzr|" not in (dev.root / "secrets.json").read_text()
    dev.restart()
    st = dev.run(10 * MIN)
    assert st["registered"] is True and drain(dev)["state"] == "ordered"


def test_a_new_registration_after_a_credentials_refusal_orders(make_device, emulator):
    dev = make_device(config={"redirect_uri": REDIRECT}).start()
    dev.run(10 * MIN)
    emulator.expire_access_tokens()
    emulator.inject("/auth/", "status", status=401, body={"error": "invalid_client"})
    st = drain(dev, 10)
    assert st["state"] == "suspended" and not emulator.orders
    assert dev.command("deregister")["ok"]
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    assert dev.command("register", code)["ok"] is True  # LwA accepts the client again
    assert dev.run(HOUR)["state"] == "ordered" and len(emulator.orders) == 1


def test_a_new_registration_does_not_take_somebody_elses_order_as_ours(make_device, emulator):
    dev = make_device(config={"redirect_uri": REDIRECT}).start()
    dev.run(10 * MIN)
    emulator.place_order("slot-a")  # the customer's own order
    assert drain(dev, 10)["state"] == "inprogress"
    emulator.revoke_all()
    msg = {"notificationInfo": {"notificationType": "DeviceDeregisteredNotification"}}
    dev.command("relay", json.dumps(msg))
    assert dev.run(2 * MIN)["registered"] is False
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    assert dev.command("register", code)["ok"] is True
    assert dev.run(30 * MIN)["state"] == "inprogress" and not dev.tagged("order-recovered")
    emulator.cancel_order("slot-a")  # the customer cancels it: the slot, still low, orders
    dev.run(2 * DAY)
    assert len(emulator.orders) == 2 and dev.status()["state"] == "ordered"


def test_deregistered_notification_is_honoured(device, emulator):
    device.run(10 * MIN)
    emulator.revoke_all()  # what a deregistration does at Amazon
    msg = {"notificationInfo": {"notificationType": "DeviceDeregisteredNotification"}}
    device.command("relay", json.dumps(msg))
    st = device.run(2 * MIN)  # the next step asks LwA, which says invalid_grant
    assert st["registered"] is False and st["state"] == "suspended"
    assert "Atzr|" not in flash_text(device)


def test_a_stale_deregistered_notification_does_not_wipe_a_new_registration(device, emulator):
    device.run(10 * MIN)
    msg = {"notificationInfo": {"notificationType": "DeviceDeregisteredNotification"}}
    device.command("relay", json.dumps(msg))  # about an earlier registration, arriving late
    device.run(2 * MIN)
    assert device.status()["registered"] is True
    assert device.tagged("registration-confirmed")
    assert drain(device)["state"] == "ordered"


def test_relay_just_before_ordering_is_not_outrun(device, emulator):
    device.run(10 * MIN)
    emulator.set_subscribed("slot-a", False)
    relay = {"notificationInfo": {"notificationType": "SubscriptionChangedNotification"}}
    device.set_level(LOW)
    device.run(2 * MIN)  # low, not yet confirmed
    device.command("relay", json.dumps(relay))
    st = device.run(10 * MIN)
    assert st["state"] == "unsubscribed" and emulator.orders == []


def test_cancelled_notification_during_warmup_is_kept(device, emulator):
    drain(device)
    eid = device.status()["event_instance_id"]
    emulator.cancel_order("slot-a")
    device.restart()  # warming up: the machine is not yet back in "ordered"
    msg = {
        "notificationInfo": {"notificationType": "OrderCancelledNotification"},
        "orderInfo": {"instanceId": eid, "slotId": "slot-a"},
    }
    assert device.command("relay", json.dumps(msg))["matched"] == 1
    st = device.run(10 * MIN)
    assert st["state"] == "ordered" and len(emulator.orders) == 2


def test_reregistration_remembers_an_open_order(device, emulator):
    drain(device)
    emulator.revoke_all()
    msg = {"notificationInfo": {"notificationType": "DeviceDeregisteredNotification"}}
    device.command("relay", json.dumps(msg))
    assert device.run(2 * MIN)["registered"] is False
    # Registered again while the first order is still open: the slot goes back to waiting
    # for the refill, without asking DRS again, and there is no second order after delivery.
    device.write_json(
        "secrets.json",
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": emulator.add_refresh_token(),
        },
    )
    device.restart()
    st = device.run(30 * MIN)
    assert st["state"] == "ordered" and device.tagged("resumed")
    assert len(emulator.requests_to("/replenish/")) == 1
    emulator.mark_delivered("slot-a")
    assert device.run(DAY)["state"] == "ordered" and len(emulator.orders) == 1


def test_empty_subscription_answer_suspends_nothing(device, emulator):
    emulator.inject(
        "/subscriptionInfo", "status", status=200, body={"slotsSubscriptionStatus": {}}
    )
    device.restart()
    device.run(10 * MIN)
    assert device.tagged("duty-failed")
    assert drain(device, 60)["state"] == "ordered"


def test_retry_after_is_honoured_by_periodic_calls(make_device, emulator):
    dev = make_device(config={"retry_base_s": 30, "retry_cap_s": 7200})
    emulator.inject("/subscriptionInfo", "status", status=503, headers={"Retry-After": "3600"})
    dev.start()
    dev.run(HOUR - 2 * MIN)
    assert len(emulator.requests_to("/subscriptionInfo")) == 1
    dev.run(10 * MIN)
    assert len(emulator.requests_to("/subscriptionInfo")) == 2


@contextmanager
def cyan_and_magenta(certs, tmp_path, **config):
    """A two-slot device, both full, 20 minutes in (warmed up, SlotStatus baselines set)."""
    cfg = {"slots": [slot("cyan", "c.txt"), slot("magenta", "m.txt")], **config}
    with slots_device(certs, tmp_path / "d", ("cyan", "magenta"), cfg) as (emu, dev):
        dev.set_level(FULL, "c.txt")
        dev.set_level(FULL, "m.txt")
        dev.start()
        dev.run(20 * MIN)
        yield emu, dev


def test_lwa_retry_after_holds_for_every_slot(certs, tmp_path):
    with cyan_and_magenta(certs, tmp_path, retry_base_s=30) as (emu, dev):
        emu.expire_access_tokens()
        emu.inject("/auth/", "status", status=429, headers={"Retry-After": "3600"})
        n = len(emu.requests_to("/auth/"))
        dev.set_level(LOW, "c.txt")
        dev.run(MIN)
        dev.set_level(LOW, "m.txt")  # the other slot decides a minute after LwA's refusal
        dev.run(50 * MIN)
        assert len(emu.requests_to("/auth/")) == n + 1 and not emu.orders
        failed = {f["slot"]: f["retry_in_s"] for f in dev.tagged("order-failed")}
        assert failed["cyan"] == 3600 and 3000 < failed["magenta"] < 3600
        dev.run(2 * HOUR)
        assert len(emu.orders) == 2


def test_a_subscription_retry_after_met_by_an_order_holds_device_wide(certs, tmp_path):
    changed = {"notificationInfo": {"notificationType": "SubscriptionChangedNotification"}}
    with cyan_and_magenta(certs, tmp_path, retry_base_s=30) as (emu, dev):
        dev.set_level(LOW, "c.txt")
        dev.set_level(LOW, "m.txt")
        dev.run(4 * MIN)  # one sample short of both slots ordering
        assert not replenishes(emu)
        n = len(emu.requests_to("/subscriptionInfo"))
        assert dev.command("relay", json.dumps(changed))["ok"]
        emu.inject(
            "/subscriptionInfo", "status", times=100, status=429, headers={"Retry-After": "3600"}
        )
        dev.run(50 * MIN)
        assert len(emu.requests_to("/subscriptionInfo")) - n == 1


def test_one_slots_failing_call_does_not_starve_another(certs, tmp_path):
    with cyan_and_magenta(certs, tmp_path, slot_status_min_s=600, retry_base_s=3600) as (
        emu,
        dev,
    ):
        emu.inject("/slotStatus/cyan", "status", times=1000, status=500)
        dev.set_level(FULL - 300, "c.txt")
        dev.set_level(FULL - 300, "m.txt")
        dev.run(3 * HOUR)
        assert emu.slot_status["magenta"], "magenta never reported"


# -- Registration -----------------------------------------------------------------------


def test_register_with_pkce_and_the_verifier_stays_on_the_device(make_device, emulator):
    dev = make_device(refresh_token="-", client_secret="", config={"redirect_uri": REDIRECT})
    dev.write_json("secrets.json", {"client_id": CLIENT_ID})
    dev.start()
    assert dev.status()["registered"] is False
    st = drain(dev, 30)
    assert st["state"] == "suspended" and emulator.requests == []
    challenge = dev.command("challenge")
    assert challenge["code_challenge_method"] == "S256"
    assert dev.command("challenge") == challenge  # the same until used
    verifier = json.loads((dev.root / "pkce.json").read_bytes().rsplit(b"\n#", 1)[0])["v"]
    code = emulator.issue_auth_code(
        redirect_uri=REDIRECT, code_challenge=challenge["code_challenge"]
    )
    assert dev.command("register", code) == {"ok": True, "reason": ""}
    assert emulator.code_grants == 1
    st = dev.run(10 * MIN)
    assert st["registered"] is True and st["state"] == "ordered"
    assert not (dev.root / "pkce.json").exists()
    (grant,) = [r for r in emulator.requests if b"authorization_code" in r["body"]]
    assert b"code_verifier=" + verifier.encode() in grant["body"]
    assert b"client_secret" not in grant["body"]
    for r in emulator.requests:
        if r is not grant:
            assert verifier not in r["path"] + json.dumps(r["headers"]) + r["body"].decode()
    assert not any(verifier in line for line in dev.output)


def test_register_as_confidential_client(make_device, emulator):
    dev = make_device(refresh_token="-", config={"redirect_uri": REDIRECT})
    dev.write_json("secrets.json", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    dev.start()
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    assert dev.command("register", code)["ok"] is True
    (grant,) = [r for r in emulator.requests if b"authorization_code" in r["body"]]
    assert b"client_secret=" in grant["body"] and b"code_verifier" not in grant["body"]
    assert drain(dev)["state"] == "ordered"
    assert not any(CLIENT_SECRET in line for line in dev.output)


def test_expired_or_reused_code_is_a_clear_error(make_device, emulator):
    dev = make_device(refresh_token="-", config={"redirect_uri": REDIRECT})
    dev.write_json("secrets.json", {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
    dev.start()
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    emulator.expire_codes()
    answer = dev.command("register", code)
    assert answer["ok"] is False and "expired" in answer["reason"]
    code = emulator.issue_auth_code(redirect_uri=REDIRECT)
    assert dev.command("register", code)["ok"] is True
    dev.command("deregister")
    again = dev.command("register", code)
    assert again["ok"] is False and "already used" in again["reason"]
    assert dev.status()["registered"] is False


def test_register_needs_a_redirect_uri_and_a_challenge(make_device, emulator):
    dev = make_device(refresh_token="-", client_secret="")
    dev.write_json("secrets.json", {"client_id": CLIENT_ID})
    dev.start()
    assert "redirect_uri" in dev.command("register", "ANcode")["reason"]
    dev.write_json(
        "config.json",
        {**json.loads((dev.root / "config.json").read_text()), "redirect_uri": REDIRECT},
    )
    dev.restart()
    assert "challenge" in dev.command("register", "ANcode")["reason"]
    assert emulator.requests == []


# -- Several slots ----------------------------------------------------------------------


def slot(sid, path, **kw):
    return {
        "slot_id": sid,
        "low": 200,
        "high": 800,
        "confirm_samples": 3,
        "warmup_samples": 2,
        "sensor": {
            "kind": "file",
            "path": path,
            "raw_empty": 0,
            "raw_full": 1000,
            "capacity": 1000,
        },
        **kw,
    }


def test_several_slots_are_independent(certs, tmp_path):
    cfg = {"slots": [slot("cyan", "c.txt"), slot("magenta", "m.txt"), slot("yellow", "y.txt")]}
    inks = ("cyan", "magenta", "yellow")
    with slots_device(certs, tmp_path / "printer", inks, cfg) as (emu, dev):
        for p in ("c.txt", "m.txt", "y.txt"):
            dev.set_level(FULL, p)
        dev.start()
        dev.run(5 * MIN)
        emu.inject("/replenish/cyan", "status", times=2, status=500)
        dev.set_level(LOW, "c.txt")
        dev.set_level(LOW, "m.txt")
        (dev.root / "y.txt").write_text("garbage")  # yellow's sensor breaks
        st = dev.run(8 * MIN)
        by = {s["slot"]: s for s in st["slots"]}
        assert by["cyan"]["state"] == "retry"
        assert by["magenta"]["state"] == "ordered"
        assert by["yellow"]["state"] == "fault"
        st = dev.run(3 * HOUR)
        by = {s["slot"]: s for s in st["slots"]}
        assert by["cyan"]["state"] == "ordered" and by["magenta"]["orders_placed"] == 1
        assert sorted(o["slot"] for o in emu.orders) == ["cyan", "magenta"]
        dev.restart()
        rec = dev.device_record()["slots"]
        assert rec["cyan"]["ev"] != rec["magenta"]["ev"]


# -- Test devices -----------------------------------------------------------------------


def test_test_orders_are_visible_as_such(device, emulator):
    emulator.is_test_device = True
    st = drain(device)
    assert st["state"] == "ordered" and st["test_order"] is True
    assert st["detail_code"] == "TEST_ORDER_PLACED"
    assert device.tagged("order-placed")[0]["test"] is True
    assert device.state_record()["test"] == 1


# -- Every periodic call's errors ------------------------------------------------------

DUTIES = {
    # endpoint prefix: (the tag of success, how to make the call due)
    "/subscriptionInfo": ("subscription", None),
    "/deviceStatus": ("device-status", None),
    "/slotStatus/": ("slot-status", "use"),
    "/getOrderInfo/": ("order-info", "order"),
}


FAULTS = {
    "500": ("status", {"status": 500}),
    "400": ("status", {"status": 400, "body": {"message": "bad"}}),
    "429": ("status", {"status": 429, "headers": {"Retry-After": "60"}}),
    "reset": ("reset", {}),
    "junk": ("invalid_json", {}),
    "redirect": ("redirect", {}),
}
CASES = [
    (e, f)
    for e in DUTIES
    for f in FAULTS
    # The device reads no body from DeviceStatus and SlotStatus; a 400 from GetOrderInfo
    # means DRS does not know the id (tested below).
    if not (f == "junk" and e in ("/deviceStatus", "/slotStatus/"))
    and not (f == "400" and e == "/getOrderInfo/")
]


@pytest.mark.parametrize(("endpoint", "fault_name"), CASES)
def test_periodic_call_errors_back_off_then_recover(make_device, emulator, endpoint, fault_name):
    tag, setup = DUTIES[endpoint]
    fault = FAULTS[fault_name]
    cfg = {"retry_base_s": 1800, "retry_cap_s": 3600, "order_check_s": 600}
    cfg["slot_status_min_s"] = 600
    dev = make_device(config=cfg)
    if setup == "order":
        dev.start()
        drain(dev)
        dev.set_level(FULL - 700)  # still low: the order stays open
    elif setup == "use":
        dev.start()
        dev.run(20 * MIN)
        dev.set_level(FULL - 200)
    kind, kw = fault
    # A 400 is retried once with a fresh token: both attempts must fail to fail the call.
    emulator.inject(endpoint, kind, times=2 if kw.get("status") == 400 else 1, **kw)
    if setup is None:
        dev.start()
    n = len(dev.events)
    dev.run(20 * MIN)
    failed = [(u, f) for u, t, f in dev.events[n:] if t == "duty-failed"]
    assert failed, "the error was not reported"
    at, f = failed[0]
    assert f["retry_in_s"] >= 1800
    tried = len(emulator.requests_to(endpoint))
    assert emulator.pending_faults() == 0
    dev.run(at + f["retry_in_s"] - dev.elapsed - 60)  # up to just before the back-off ends
    assert len(emulator.requests_to(endpoint)) == tried, "asked again during the back-off"
    dev.run(2 * HOUR)
    assert [f for _, t, f in dev.events[n:] if t == tag], "never recovered"
    assert dev.status()["state"] in ("monitor", "ordered")


def test_order_info_for_an_id_drs_does_not_know_stops_asking(make_device, emulator):
    dev = make_device(config={"order_check_s": 600}).start()
    drain(dev)
    emulator.inject("/getOrderInfo/", "status", times=2, status=400, body={"message": "no"})
    dev.run(DAY)
    assert len(emulator.requests_to("/getOrderInfo/")) == 2  # the first, and its retry
    assert dev.tagged("order-info")[-1]["status"] == "unknown"
    assert dev.status()["state"] == "ordered" and len(emulator.orders) == 1


def bench_repl(dev, code):
    """What `mpremote exec "from dash import bench; bench.<code>"` runs on a board, here in
    the unix port in the device's directory; its JSON answer."""
    import os
    import subprocess

    from conftest import REPO
    from devicectl import MICROPYTHON

    p = subprocess.run(
        [MICROPYTHON, "-c", "from dash import bench; bench." + code],
        cwd=dev.root,
        env=dict(os.environ, MICROPYPATH=str(REPO / "lib")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_bring_up_commands_at_the_repl(make_device, emulator):
    """What `mpremote exec "from dash import bench; ..."` runs on a board, on the unix port
    with the real clock: challenge, register, status, deregister."""
    dev = make_device(refresh_token="-", client_secret="", config={"redirect_uri": REDIRECT})
    dev.write_json("secrets.json", {"client_id": CLIENT_ID})

    def repl(code):
        return bench_repl(dev, code)

    assert repl("status()")["registered"] is False
    ch = repl("challenge()")["code_challenge"]
    code = emulator.issue_auth_code(redirect_uri=REDIRECT, code_challenge=ch)
    assert repl("register(%r)" % code) == {"ok": True, "reason": ""}
    st = repl("status()")
    assert st["registered"] is True and st["token_expires_s"] > 3000
    emulator.revoke_all()  # deregistered elsewhere; the cloud relays the notification
    msg = json.dumps({"notificationInfo": {"notificationType": "DeviceDeregisteredNotification"}})
    assert repl("relay(%r)" % msg)["registered"] is False
    assert repl("status()")["registered"] is False
    assert "Atzr|" not in flash_text(dev)


def test_test_order_and_factory_reset_at_the_repl(make_device, emulator):
    emulator.is_test_device = True
    dev = make_device(config={"test_device": False})

    def repl(code):
        return bench_repl(dev, code)

    refused = repl("test_order('slot-a')")
    assert refused["ok"] is False and "test_device" in refused["reason"]
    assert emulator.orders == []
    cfg = json.loads((dev.root / "config.json").read_text())
    dev.write_json("config.json", {**cfg, "test_device": True})
    placed = repl("test_order('slot-a')")  # the level is full: it orders anyway, as asked
    assert placed["ok"] is True and placed["detail_code"] == "TEST_ORDER_PLACED"
    assert emulator.orders[0]["event_instance_id"] == placed["event_instance_id"]
    assert repl("status()")["event_instance_id"] == placed["event_instance_id"]
    gone = repl("factory_reset()")["removed"]
    assert set(gone) >= {"state.json", "tokens.json", "secrets.json"}
    assert (dev.root / "config.json").exists() and (dev.root / "ca.pem").exists()
    assert "Atzr|" not in flash_text(dev) and "test-secret" not in flash_text(dev)
    assert "Atza|" not in flash_text(dev)  # nor the access token kept in RTC memory


def test_a_subscription_taken_while_rebooting_is_seen(device, emulator):
    emulator.set_subscribed("slot-a", False)
    device.restart()
    assert drain(device, 30)["state"] == "unsubscribed"
    emulator.set_subscribed("slot-a", True)  # no notification reaches the device
    device.restart()  # the first SubscriptionInfo comes while the slot still warms up
    st = device.run(10 * MIN)
    assert st["state"] == "ordered" and len(emulator.orders) == 1


def test_no_wall_clock_after_a_reboot_starves_no_other_call(certs, tmp_path):
    # A SlotStatus cannot be dated without a clock; it must not stay "due" at every step and
    # keep the other slot's GetOrderInfo from ever running.
    with cyan_and_magenta(certs, tmp_path, slot_status_min_s=600, order_check_s=600) as (
        emu,
        dev,
    ):
        dev.set_level(LOW, "m.txt")
        dev.run(10 * MIN)  # magenta orders
        assert len(emu.orders) == 1
        dev.wall = 0  # the next boot finds no clock (NTP unreachable)
        dev.restart()
        dev.set_level(FULL - 300, "c.txt")  # cyan is used: a report is due, but undatable
        n = len(emu.requests_to("/getOrderInfo/"))
        dev.run(2 * HOUR)
        assert len(emu.requests_to("/getOrderInfo/")) > n
