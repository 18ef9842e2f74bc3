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
    assert summary["orders_placed"] == summary["drs_orders"] == 2
    assert summary["final_state"] == "ordered"
    assert summary["event_instance_id"].startswith("amzn1.dash.v2.o.ro.")
    text = "\n".join(lines)
    for milestone in (
        "ORDER PLACED",
        "ORDER_INPROGRESS",
        "request failed",
        "refilled",
        "power cut",
        "token refreshed",
    ):
        assert milestone in text, milestone
