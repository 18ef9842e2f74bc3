"""`make sim` is part of the product: it must keep telling the truth."""

import json
import subprocess
import sys

from conftest import REPO


def test_sim_runs_end_to_end_and_summarises():
    p = subprocess.run(
        [sys.executable, str(REPO / "tools" / "sim.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    per = summary["slots"]
    assert per["detergent"]["orders_placed"] == per["detergent"]["drs_orders"] == 2
    assert per["softener"]["orders_placed"] == per["softener"]["drs_orders"] == 3
    assert per["softener"]["cancelled"] == 1
    assert summary["orders_placed"] == 5
    assert summary["event_instance_id"].startswith("amzn1.dash.v2.o.ro.")
    assert summary["device_status_days"] == summary["simulated_days"] == 14
    assert all(p["slot_status_reports"] > 0 for p in per.values())
    # The whole loop: device -> DRS -> SNS -> relay -> MQTT -> device.
    mqtt = summary["mqtt"]
    assert mqtt["published"] > 0 and mqtt["reconnects"] >= 0
    assert mqtt["notifications_relayed"] >= 6  # an OrderPlaced for each order, a cancellation
    assert mqtt["commands"] == mqtt["notifications_relayed"]  # each reached the device
    assert mqtt["cancellations_notified"] == 1
    chart = REPO / summary["chart"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 20000
    text = "\n".join(lines)
    for milestone in (
        "ORDER PLACED",
        "ORDER_INPROGRESS",
        "ORDER CANCELLED",
        "request failed",
        "refilled",
        "power cut",
        "token refreshed",
        "DeviceStatus sent",
        "SlotStatus sent",
        "DRS notification (via MQTT)    OrderCancelled",
    ):
        assert milestone in text, milestone
