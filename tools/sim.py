"""`make sim`: the real firmware on the MicroPython unix port against the local DRS/LwA
emulator, living through two simulated weeks of a washing machine with two consumables.

The story. Detergent (a load cell, grams) and softener (an analog level, millilitres) drain
as the machine runs. Detergent runs low first: the device confirms it, refreshes its LwA token
and orders; the power fails the next night; the parcel ships, arrives, the tank is refilled.
The softener's order is cancelled by the customer; Amazon's notification reaches the device
through the maker's cloud (SNS -> relay -> MQTT), the device asks GetOrderInfo at once and,
still low, orders again. Next time the customer has already ordered detergent by hand, so DRS
answers ORDER_INPROGRESS and the device backs off for hours instead of asking again. Later DRS
has a bad hour (500s) and the device backs off with jitter. All along it sends DeviceStatus
once a day and SlotStatus as contents are used.

The whole loop is real: a mosquitto broker with TLS (tools/broker.py), the maker's relay
(tools/relay.py) taking the emulator's signed SNS notifications over HTTPS, and the device's
cloud link publishing its state and events and taking the relayed notifications.

Prints a timeline and writes a chart (build/sim/levels.png), then one JSON summary line. Exit
0 when the run went as a device should: one order per depletion (plus the one replacing the
cancelled order, learned from the notification), and the persisted ids match DRS's.
"""

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from broker import CLOUD_USER, DEVICE_ID, Broker  # noqa: E402
from certs import ensure_certs  # noqa: E402
from devicectl import Device  # noqa: E402
from drs_emulator import Emulator  # noqa: E402
from relay import Relay  # noqa: E402

REPO = HERE.parent
OUT = REPO / "build" / "sim"
CLIENT_ID = "amzn1.application-oa2-client.sim"
CLIENT_SECRET = "sim-secret"
STEP_S = 600  # the sim moves the levels every 10 simulated minutes
HOUR = 3600
DAY = 86400
# Each slot: how its sensor maps to quantity, and what the firmware is told about it.
SLOTS = {
    "detergent": {
        "unit": "g",
        "capacity": 1000,
        "low": 200,
        "high": 800,
        "raw": (2000, 12000),  # load cell counts empty / full: 0.1 g per count
        "path": "detergent.txt",
    },
    "softener": {
        "unit": "ml",
        "capacity": 750,
        "low": 150,
        "high": 600,
        "raw": (3900, 400),  # float sensor on an ADC: counts fall as the tank fills
        "path": "softener.txt",
    },
}
CONFIG = {
    "sample_s": 600,
    "inprogress_backoff_s": 6 * HOUR,
    "retry_base_s": 120,
    "retry_cap_s": HOUR,
    "http_timeout_s": 5,
    "order_check_s": 12 * HOUR,  # a cancellation is learned from its notification, not this
    "slot_status_min_s": 6 * HOUR,
    "slots": [
        {
            "slot_id": sid,
            "low": s["low"],
            "high": s["high"],
            "confirm_samples": 3,
            "warmup_samples": 2,
            "sensor": {
                "kind": "file",
                "path": s["path"],
                "raw_empty": s["raw"][0],
                "raw_full": s["raw"][1],
                "capacity": s["capacity"],
                "margin": 300,
                "max_drop": s["capacity"] // 6,
            },
        }
        for sid, s in SLOTS.items()
    ],
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
    "order-cancelled": "ORDER CANCELLED: slot re-armed",
    "order-delivered": "order delivered (GetOrderInfo)",
    "refilled": "refilled: slot re-armed",
    "sensor-fault": "SENSOR FAULT",
    "sensor-ok": "sensor ok",
    "suspended": "SUSPENDED",
    "state-reset": "state reset",
    "device-status": "DeviceStatus sent",
    "slot-status": "SlotStatus sent",
    "subscription": "subscription",
    "duty-failed": "periodic call failed",
    "relay": "DRS notification (via MQTT)",
}
# In the chart and summary, not the timeline.
QUIET = ("order-info", "order-request", "command", "mqtt-up", "mqtt-down")


def clock(t):
    d, r = divmod(int(t), DAY)
    return "day %2d %02d:%02d" % (d, r // 3600, r % 3600 // 60)


class Sim:
    def __init__(self, emu, dev):
        self.emu = emu
        self.dev = dev
        self.t = 0  # simulated seconds since the start
        self.boot_t = 0  # when the current firmware process booted
        self.amount = {sid: float(s["capacity"]) for sid, s in SLOTS.items()}
        self.use = dict.fromkeys(SLOTS, 0.0)  # units per hour
        self.seen = 0
        self.history = []  # (t, {slot: (amount, state)})
        self.marks = []  # (t, slot or None, tag, fields)
        self.relay = None
        self.link = dict.fromkeys(("published", "commands", "reconnects"), 0)  # earlier boots

    def set_amount(self, sid, v):
        s = SLOTS[sid]
        v = max(0.0, min(float(s["capacity"]), v))
        self.amount[sid] = v
        empty, full = s["raw"]
        self.dev.set_level(int(empty + (full - empty) * v / s["capacity"]), s["path"])

    def advance(self, seconds):
        end = self.t + seconds
        while self.t < end:
            for sid in SLOTS:
                self.set_amount(sid, self.amount[sid] - self.use[sid] * STEP_S / HOUR)
            st = self.dev.run(STEP_S)
            self.t += STEP_S
            self.history.append(
                (self.t, {s["slot"]: (self.amount[s["slot"]], s["state"]) for s in st["slots"]})
            )
            self.show_events()
            if self.t % DAY == 0:
                states = ", ".join(
                    "%s %d%s %s" % (s["slot"], s["level"], SLOTS[s["slot"]]["unit"], s["state"])
                    for s in st["slots"]
                )
                print("%s  %-10s %s" % (clock(self.t), "", states))
        return self.dev.status()

    def show_events(self):
        events = self.dev.events
        for up, tag, f in events[self.seen :]:
            t = self.boot_t + up
            sid = f.get("slot")
            self.marks.append((t, sid, tag, f))
            if tag in QUIET or (tag == "state" and f["to"] in ("ordering", "confirm")):
                continue
            label = SHOW.get(tag, tag)
            detail = ""
            if tag == "state":
                detail = "%s -> %s" % (f["frm"], f["to"])
            elif tag in ("order-placed", "order-recovered", "order-cancelled"):
                detail = f["event_instance_id"][-12:]
            elif tag == "order-inprogress":
                detail = "retry in %.1f h" % (f["backoff_s"] / 3600)
            elif tag == "order-failed":
                detail = "%s; retry in %d s" % (f["reason"], f["retry_in_s"])
            elif tag == "token-refresh":
                detail = "ok" if f["ok"] else f["reason"]
            elif tag == "boot":
                detail = "persisted state: %s" % f["state"]
            elif tag == "slot-status":
                detail = "%d left, %d/day, replenish by %s" % (
                    f["remaining"],
                    f["per_day"],
                    f["expected"][:16],
                )
            elif tag == "device-status":
                detail = f["sent"]
            elif tag == "subscription":
                detail = "subscribed" if f["subscribed"] else "NOT subscribed"
            elif tag == "relay":
                detail = f["type"]
            elif tag in ("suspended", "state-reset", "sensor-fault", "duty-failed"):
                detail = f.get("reason") or f.get("fault", "")
            print("%s  %-10s %-30s %s" % (clock(t), sid or "device", label, detail))
        self.seen = len(events)

    def note(self, text, sid=None):
        self.marks.append((self.t, sid, "note", {"text": text}))
        print("%s  %-10s ** %s" % (clock(self.t), sid or "", text))

    def refill(self, sid):
        self.note("parcel delivered; customer refills", sid)
        self.emu.mark_delivered(sid)
        self.set_amount(sid, SLOTS[sid]["capacity"])

    def settle(self):
        """Every notification sent so far through SNS, the relay and the broker to the device
        (the cloud's part runs in real time, the device's in virtual time)."""
        self.emu.sns_flush()
        want = self.relay.notifications_relayed - self.link["relayed_before"]
        have = self.dev.status()["mqtt"]["commands"]
        if want > have:
            got = self.dev.command("link-wait", "20000 %d" % (want - have))
            if not got["arrived"]:
                raise RuntimeError("relayed notifications did not reach the device: %r" % got)

    def power_cut(self):
        self.note("power cut and restart")
        self.settle()
        m = self.dev.status()["mqtt"]
        for k in ("published", "commands", "reconnects"):
            self.link[k] += m[k]
        self.link["relayed_before"] = self.relay.notifications_relayed
        self.dev.kill()
        self.dev.events = []
        self.seen = 0
        self.boot_t = self.t
        self.dev.start()
        self.show_events()


def story(sim, emu):
    """Two weeks of a washing machine. Times are when the sim acts, not when the firmware
    does: the firmware decides for itself when to order."""
    sim.use.update(detergent=12.0, softener=5.0)
    sim.advance(3 * DAY)  # detergent runs low on day 2
    sim.power_cut()
    sim.advance(DAY // 2)
    sim.note("parcel shipped", "detergent")
    emu.ship("detergent")
    sim.advance(DAY // 2)
    sim.refill("detergent")  # day 4
    sim.advance(DAY + 12 * HOUR)  # softener runs low on day 5
    sim.note("customer cancels the order on amazon", "softener")
    emu.cancel_order("softener")
    sim.settle()  # Amazon's notification is on its way: SNS, the maker's relay, MQTT
    sim.advance(12 * HOUR)  # day 6: the device learns it and orders again
    sim.note("customer orders detergent by hand", "detergent")
    emu.place_order("detergent", "amzn1.dash.v2.o.ro.by-hand")
    sim.advance(DAY)  # day 7: detergent low, DRS says ORDER_INPROGRESS
    sim.refill("softener")
    sim.advance(DAY)
    sim.refill("detergent")  # day 8: the hand-ordered parcel
    sim.advance(2 * DAY)
    sim.note("DRS starts answering 500 for the next 4 Replenish calls")
    emu.inject("/replenish/", "status", times=4, status=500)
    sim.advance(DAY + 12 * HOUR)  # day 11.5: detergent low through the storm
    sim.refill("detergent")
    sim.advance(DAY)
    sim.refill("softener")  # day 13.5
    return sim.advance(DAY + DAY // 2)  # day 14


def chart(sim, path):
    """Each slot's level with its thresholds, order events and back-offs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SLOTS), 1, figsize=(12, 3.6 * len(SLOTS)), sharex=True)
    style = {
        "order-placed": ("^", "tab:green", "order placed"),
        "order-inprogress": ("s", "tab:orange", "ORDER_INPROGRESS"),
        "order-failed": ("x", "tab:red", "request failed"),
        "order-cancelled": ("v", "tab:purple", "order cancelled"),
        "slot-status": (".", "tab:gray", "SlotStatus"),
    }
    for ax, sid in zip(axes, SLOTS, strict=True):
        s = SLOTS[sid]
        days = [t / DAY for t, _ in sim.history]
        level = [row[sid][0] for _, row in sim.history]
        ax.plot(days, level, color="tab:blue", lw=1.5, label="level")
        ax.axhline(s["low"], color="tab:red", ls="--", lw=0.8, label="low threshold")
        ax.axhline(s["high"], color="tab:green", ls="--", lw=0.8, label="high threshold")
        # Shade back-off periods.
        start = None
        for t, row in sim.history + [(sim.t + STEP_S, {sid: (0, "end")})]:
            backing = row[sid][1] in ("inprogress", "retry")
            if backing and start is None:
                start = t
            elif not backing and start is not None:
                ax.axvspan(start / DAY, t / DAY, color="tab:orange", alpha=0.15, lw=0)
                start = None
        ax.fill_between([], [], color="tab:orange", alpha=0.15, label="backing off")
        for tag, (marker, color, name) in style.items():
            pts = [
                (t / DAY, _level_at(sim, sid, t))
                for t, s2, g, _ in sim.marks
                if s2 == sid and g == tag
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(
                    xs,
                    ys,
                    marker=marker,
                    color=color,
                    s=60 if marker != "." else 12,
                    zorder=3,
                    label=name,
                )
        for t, s2, g, _f in sim.marks:
            if g == "note" and (s2 == sid or s2 is None):
                ax.axvline(t / DAY, color="0.6", lw=0.6, ls=":")
        ax.set_ylabel("%s (%s)" % (sid, s["unit"]))
        ax.set_ylim(0, s["capacity"] * 1.35)  # headroom for the legend
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("simulated days")
    fig.suptitle("dash firmware on the MicroPython unix port against the DRS emulator")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _level_at(sim, sid, t):
    best = sim.history[0][1][sid][0] if sim.history else 0
    for ht, row in sim.history:
        if ht > t:
            break
        best = row[sid][0]
    return best


def run(workdir):
    certs = ensure_certs(str(REPO / "build" / "certs"))
    with (
        Broker(Path(workdir) / "broker", certs=certs) as broker,
        Emulator(
            str(REPO / "build" / "certs"),
            slots=tuple(SLOTS),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            device_serial=DEVICE_ID,
        ) as emu,
        Relay(
            "localhost",
            broker.ports["tls"],
            certs["ca"],
            CLOUD_USER,
            broker.users[CLOUD_USER],
            signing_hosts=("localhost:%d" % emu.port,),
            fetch_ca=certs["ca"],
            topic_arns=(emu.topic_arn,),
        ) as relay,
    ):
        relay.wait_ready()
        emu.sns_subscribe(relay.url, certs["ca"])
        config = dict(CONFIG)
        config["mqtt"] = {
            "host": "localhost",
            "port": broker.ports["tls"],
            "username": DEVICE_ID,
            "device_id": DEVICE_ID,
            "timeout_s": 5,
        }
        dev = Device(
            Path(workdir) / "device",
            certs["ca"],
            emu.port,
            emu.add_refresh_token(),
            CLIENT_ID,
            CLIENT_SECRET,
            config=config,
            secrets={"mqtt_password": broker.users[DEVICE_ID]},
        )
        sim = Sim(emu, dev)
        sim.relay = relay
        sim.link["relayed_before"] = 0
        for sid in SLOTS:
            sim.set_amount(sid, SLOTS[sid]["capacity"])
        dev.start()
        print(
            "Simulated washing machine: "
            + ", ".join(
                "%s (low %d, high %d %s)" % (sid, s["low"], s["high"], s["unit"])
                for sid, s in SLOTS.items()
            )
            + "; a sample every 10 min; its cloud link on a local MQTT broker"
        )
        print("%-13s %-10s %s" % ("time", "slot", "event"))
        sim.show_events()
        try:
            st = story(sim, emu)
            sim.settle()
            st = dev.run(STEP_S)
        finally:
            dev.stop()
        chart(sim, OUT / "levels.png")
        return summarise(sim, emu, dev, st)


def summarise(sim, emu, dev, st):
    records = dev.device_record()["slots"]
    per = {}
    ok = True
    for s in st["slots"]:
        sid = s["slot"]
        mine = [
            o
            for o in emu.orders
            if o["slot"] == sid and not o["event_instance_id"].endswith("-hand")
        ]
        placed = sum(1 for _, s2, g, _ in sim.marks if s2 == sid and g == "order-placed")
        per[sid] = {
            "orders_placed": placed,
            "drs_orders": len(mine),
            "cancelled": sum(1 for o in mine if o.get("status") == "Cancelled"),
            "event_instance_id": records[sid].get("ev"),
            "final_state": s["state"],
            "final_level": s["level"],
            "slot_status_reports": len(emu.slot_status.get(sid, [])),
            "inprogress_answers": sum(
                1 for _, s2, g, _ in sim.marks if s2 == sid and g == "order-inprogress"
            ),
            "failed_requests": sum(
                1 for _, s2, g, _ in sim.marks if s2 == sid and g == "order-failed"
            ),
        }
        ok = (
            ok
            and placed == len(mine)
            and records[sid].get("ev") == (mine[-1]["event_instance_id"] if mine else None)
        )
    latest = max(SLOTS, key=lambda sid: records[sid].get("ot") or 0)
    # A cancellation learned from its notification: the relay that matched it, then the
    # order-cancelled it led to, with no GetOrderInfo poll due in between (12 h apart).
    notified = 0
    relayed_at = None
    for t, _sid, tag, f in sim.marks:
        if tag == "command" and f.get("cmd") == "relay" and f.get("matched"):
            relayed_at = t
        elif tag == "order-cancelled" and relayed_at is not None and t - relayed_at <= HOUR:
            notified += 1
            relayed_at = None
    summary = {
        "orders_placed": sum(p["orders_placed"] for p in per.values()),
        "event_instance_id": records[latest].get("ev"),
        "final_state": per[latest]["final_state"],
        "latest_order_slot": latest,
        "drs_orders": sum(p["drs_orders"] for p in per.values()),
        "replenish_requests": len(emu.requests_to("/replenish/")),
        "token_refreshes": emu.refresh_count,
        "device_status_days": len(emu.device_status),
        "simulated_days": sim.t // DAY,
        "chart": str((OUT / "levels.png").relative_to(REPO)),
        "slots": per,
        "mqtt": {
            "published": sim.link["published"] + st["mqtt"]["published"],
            "commands": sim.link["commands"] + st["mqtt"]["commands"],
            "notifications_relayed": sim.relay.notifications_relayed,
            "reconnects": sim.link["reconnects"] + st["mqtt"]["reconnects"],
            "cancellations_notified": notified,
        },
    }
    # Detergent: three depletions, one covered by the customer's own order. Softener: two
    # depletions, the first order cancelled and replaced.
    ok = ok and per["detergent"]["orders_placed"] == 2 and per["softener"]["orders_placed"] == 3
    ok = ok and per["softener"]["cancelled"] == 1 and per["detergent"]["inprogress_answers"] >= 1
    ok = ok and notified == 1 and summary["mqtt"]["notifications_relayed"] > 0
    print(json.dumps(summary))
    return 0 if ok else 1


def main():
    with tempfile.TemporaryDirectory(prefix="dash-sim-") as d:
        return run(d)


if __name__ == "__main__":
    sys.exit(main())
