"""`make sim`: the real firmware on the MicroPython unix port against the local DRS/LwA
emulator, living through two simulated weeks of a slot draining and being refilled.

The story: a full tank drains; the device confirms it is low, refreshes its LwA token and
orders; the parcel arrives and the tank is refilled. Next time the customer has already ordered
by hand, so DRS answers ORDER_INPROGRESS and the device backs off for hours instead of asking
again. Then the DRS service has a bad hour (500s) and the device backs off with jitter. The
power fails once along the way. Prints a timeline, then one JSON summary line. Exit 0 when the
run went as a device should (one order per depletion, persisted id matches DRS's).
"""

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from certs import ensure_certs  # noqa: E402
from devicectl import Device  # noqa: E402
from drs_emulator import Emulator  # noqa: E402

REPO = HERE.parent
CLIENT_ID = "amzn1.application-oa2-client.sim"
CLIENT_SECRET = "sim-secret"
STEP_S = 600  # the sim moves the level every 10 simulated minutes
CONFIG = {
    "slot_id": "detergent",
    "low": 200,
    "high": 800,
    "confirm_samples": 3,
    "warmup_samples": 2,
    "sample_s": 600,
    "inprogress_backoff_s": 6 * 3600,
    "retry_base_s": 120,
    "retry_cap_s": 3600,
    "http_timeout_s": 5,
    # A load cell: 0.1 g per count, 1000 g of detergent when full.
    "sensor": {
        "kind": "file",
        "path": "level.txt",
        "raw_empty": 2000,
        "raw_full": 12000,
        "capacity": 1000,
        "margin": 500,
        "max_drop": 150,
    },
}
SHOW = {
    "boot": "boot",
    "state": "state",
    "token-refresh": "token refreshed",
    "order-request": "Replenish request",
    "order-placed": "ORDER PLACED",
    "order-recovered": "order recovered",
    "order-inprogress": "ORDER_INPROGRESS, backing off",
    "order-failed": "request failed, backing off",
    "refilled": "refilled: slot re-armed",
    "sensor-fault": "SENSOR FAULT",
    "sensor-ok": "sensor ok",
    "suspended": "SUSPENDED",
    "state-reset": "state reset",
}


def clock(t):
    d, r = divmod(int(t), 86400)
    return "day %2d %02d:%02d" % (d, r // 3600, r % 3600 // 60)


class Sim:
    def __init__(self, emu, dev):
        self.emu = emu
        self.dev = dev
        self.t = 0  # simulated seconds since the start
        self.boot_t = 0  # when the current firmware process booted
        self.grams = 1000.0
        self.seen = 0
        self.placed = 0
        self.last_shown_level = None

    def set_grams(self, g):
        self.grams = max(0.0, min(1000.0, g))
        self.dev.set_level(int(2000 + self.grams * 10))

    def advance(self, seconds, use_per_hour=0.0):
        end = self.t + seconds
        while self.t < end:
            self.set_grams(self.grams - use_per_hour * STEP_S / 3600)
            st = self.dev.run(STEP_S)
            self.t += STEP_S
            self.show_events()
            if self.t % (12 * 3600) == 0:
                print("%s  %5d g  %-12s" % (clock(self.t), self.grams, st["state"]))
        return self.dev.status()

    def show_events(self):
        events = self.dev.events
        for up, tag, f in events[self.seen :]:
            if tag == "order-placed":
                self.placed += 1
            label = SHOW.get(tag, tag)
            detail = ""
            if tag == "state":
                detail = "%s -> %s" % (f["frm"], f["to"])
            elif tag in ("order-placed", "order-recovered"):
                detail = "%s %s" % (f["detail_code"], f["event_instance_id"])
            elif tag == "order-inprogress":
                detail = "retry in %.1f h" % (f["backoff_s"] / 3600)
            elif tag == "order-failed":
                detail = "%s; retry in %d s" % (f["reason"], f["retry_in_s"])
            elif tag == "token-refresh":
                detail = "ok" if f["ok"] else f["reason"]
            elif tag == "boot":
                detail = "persisted state: %s" % f["state"]
            elif tag in ("suspended", "state-reset", "sensor-fault"):
                detail = f.get("reason") or f.get("fault", "")
            print("%s  %5d g  %-30s %s" % (clock(self.boot_t + up), self.grams, label, detail))
        self.seen = len(events)

    def note(self, text):
        print("%s  %5d g  ** %s" % (clock(self.t), self.grams, text))

    def power_cut(self):
        self.note("power cut and restart")
        self.dev.kill()
        self.dev.events = []
        self.seen = 0
        self.boot_t = self.t
        self.dev.start()
        self.show_events()


def run(workdir):
    certs = ensure_certs(str(REPO / "build" / "certs"))
    with Emulator(
        str(REPO / "build" / "certs"),
        slots=("detergent",),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    ) as emu:
        dev = Device(
            Path(workdir) / "device",
            certs["ca"],
            emu.port,
            emu.add_refresh_token(),
            CLIENT_ID,
            CLIENT_SECRET,
            config=CONFIG,
        )
        sim = Sim(emu, dev)
        sim.set_grams(1000)
        dev.start()
        print("Simulated device: slot 'detergent', low 200 g, high 800 g, sample every 10 min")
        print("%-13s %7s  %s" % ("time", "level", "event"))
        sim.show_events()
        try:
            # Episode 1: drains ~12 g/h, orders when confirmed low.
            sim.advance(3 * 86400, use_per_hour=12)
            sim.power_cut()
            sim.advance(86400, use_per_hour=4)
            sim.note("parcel delivered (DRS order closed); customer refills the tank")
            emu.mark_delivered("detergent")
            sim.set_grams(1000)
            sim.advance(86400, use_per_hour=6)
            # Episode 2: the customer already ordered by hand.
            sim.note("customer orders a refill by hand on amazon")
            emu.place_order("detergent", "amzn1.dash.v2.o.ro.by-hand")
            sim.advance(3 * 86400, use_per_hour=12)
            sim.note("hand-ordered parcel delivered; customer refills the tank")
            emu.mark_delivered("detergent")
            sim.set_grams(1000)
            sim.advance(86400, use_per_hour=6)
            # Episode 3: DRS has a bad hour just as the slot runs low.
            emu.inject("/replenish/", "status", times=4, status=500)
            sim.note("DRS starts answering 500 for the next 4 requests")
            st = sim.advance(4 * 86400, use_per_hour=12)
        finally:
            dev.stop()
        placed_by_device = [o for o in emu.orders if not o["event_instance_id"].endswith("-hand")]
        persisted = dev.state_record().get("ev")
        summary = {
            "orders_placed": sim.placed,
            "event_instance_id": persisted,
            "final_state": st["state"],
            "drs_orders": len(placed_by_device),
            "replenish_requests": len(emu.requests_to("/replenish/")),
            "token_refreshes": emu.refresh_count,
            "flash_writes_last_boot": st["flash_writes"],
            "simulated_days": sim.t // 86400,
        }
        ok = (
            sim.placed == len(placed_by_device) == 2
            and persisted == placed_by_device[-1]["event_instance_id"]
            and st["state"] == "ordered"
        )
        print(json.dumps(summary))
        return 0 if ok else 1


def main():
    with tempfile.TemporaryDirectory(prefix="dash-sim-") as d:
        return run(d)


if __name__ == "__main__":
    sys.exit(main())
