"""`make faults`: power cuts at every point of an order cycle and of a token rotation, hostile
servers under a small heap, and every back-off against the time the answer came. The real
firmware under the real `micropython`, against the DRS/LwA emulator; each case has a fresh
emulator (its ledger: the orders, the live refresh tokens) and a fresh flash.

- Kill points (`order`, `rotation`). The points are enumerated by instrumenting the firmware
  at run time (tools/vfaults.py, loaded by tools/vdevice.py when VDEVICE_FAULTS is set): flash
  writes, renames and removals, and the phases of each HTTPS request. One run counts them;
  then for every point k, a fresh device runs to k and is killed (SIGKILL), and the same flash
  is started again twice over: as after a power cut (`cut`: rtc.bin, its RTC memory, deleted)
  and as after a reset (`reset`: kept). It runs on for hours, the level still low, then is
  refilled and runs low again: a second episode. `order`: a cold order cycle from a fresh
  flash with the level low (token refresh and the rotated token persisted, SubscriptionInfo,
  the intent on flash, Replenish, the answer persisted). `rotation`: a token rotation alone
  (the access token expired a day later while nothing is ordered: the refresh, the rotated
  token saved, DeviceStatus).
- Hostile servers (`hostile`): the code as `.mpy` under `-X heapsize` at the bench's minimum
  (tools/bench.py: Bench.heap_min, computed once per run unless --heap-kb) and 4 KB above it,
  tokens of 400, 1000 and 2000 characters, and each fault kind the emulator has that matters
  to the token endpoint and to Replenish, on each: a cold cycle with the fault, then the
  faults cleared and the device run on with room to spare.
- Back-offs (`backoff`): real time passes inside each step (VDEVICE_LIVE), and answers take
  seconds before they fail (500, 429 with Retry-After, a connection closed without an answer)
  on Replenish, the token endpoint and DeviceStatus: no request of a kind that backs off
  leaves before the failure's log stamp plus its `retry_in_s` (LwA's Retry-After for the token
  endpoint), and no failure is stamped before its request's start plus the answer's delay.

Invariants, checked after every case: `duplicate_orders` (more orders for the slot than
depletions), `lost_event_ids` (an episode's order whose eventInstanceId the flash's
state.json does not hold, unless it holds the id of an ORDER_INPROGRESS answer DRS gave this
device: the README's known limit), `lost_registrations` (the refresh token on flash, in
tokens.json or else secrets.json, read as the next boot would, is not live at the emulator, or
the device says unregistered; not counted when LwA rotated the token in an answer that could
not reach flash: the cut or the fault came after LwA acted and before the new token was whole
on flash. Those are `registrations_lost_in_flight`), `leaked_secrets` (the client secret, any
token, the MQTT and Wi-Fi passwords in anything the process printed),
`memory_errors_uncaught` (hostile cases, under the small heap: the process died, printed a
traceback, or logged an `error` naming MemoryError), `backoff_violations`; besides,
`missed_orders` (an episode that never ordered while registered), `crashes` (a process that
died other than killed) and `unreached_points` (a kill point the run did not reach, or did
under another name: not deterministic; a back-off case whose fault never bit). Counted, and
failing nothing: `registrations_lost_in_flight`, `orders_recovered_by_inprogress_id`,
`memory_errors_caught` (a failure whose reason names MemoryError: a catch-all took it and the
call backs off), `hostile_faults_unserved` (the small heap kept every request of the cycle
from the server: the device said "low memory" first).

The last line printed is one JSON object with those counts, `cases`, `passed`, `seconds`,
`failed` (the ids of the failing cases) and `details` (the first of them, each with the
command that runs it again: `--case ID`, with `-v` for the device's output). Exit status 0
only when every case passed. `--quick` is a deterministic slice for `make test` (seven kill
points of the order cycle, one hostile case at 96 KB, one back-off case).

Usage: python3 tools/faults.py [--quick] [--scenario NAME ...] [--point N] [--variant cut|reset]
       [--case ID ...] [--heap-kb N] [--jobs N] [--lib DIR] [-v] [--keep]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import dashctl  # noqa: E402
from certs import ensure_certs  # noqa: E402
from devicectl import LOG_LINE, MICROPYTHON, Device  # noqa: E402
from drs_emulator import Emulator  # noqa: E402

REPO = HERE.parent
# The device code of the kill and back-off cases (sources); `--lib` points elsewhere, e.g. at
# an older revision, to see what the suite finds there.
LIB = REPO / "lib"
CERTS = REPO / "build" / "certs"
BUILD = REPO / "build" / "faults"
SLOT = bench.SLOT
CLIENT_ID = bench.CLIENT_ID
CLIENT_SECRET = bench.CLIENT_SECRET
MQTT_PASSWORD = "faults-mqtt-password-5c1e"
WIFI_PASSWORD = "faults-wifi-password-9a7d"
LOW, FULL = 100, 900
MIN, HOUR = 60, 3600
RERUN = ".venv/bin/python tools/faults.py"
COUNTS = (
    "duplicate_orders",
    "lost_event_ids",
    "lost_registrations",
    "leaked_secrets",
    "backoff_violations",
    "memory_errors_uncaught",
    "missed_orders",
    "crashes",
    "unreached_points",
)
INFO = (
    "registrations_lost_in_flight",
    "orders_recovered_by_inprogress_id",
    "memory_errors_caught",
    "hostile_faults_unserved",
)
TOKEN_PATH = "/auth/o2/token"
REPLENISH = "/replenish/"
# The emulator's faults that matter to the token endpoint and to Replenish, with their
# arguments (`silence` and `keep_open` short: a bit over the device's http_timeout_s).
HTTP_TIMEOUT_S = 2
HOSTILE_KINDS = {
    "status500": ("status", {"status": 500}),
    "status429": ("status", {"status": 429, "headers": {"Retry-After": "120"}}),
    "reset": ("reset", {}),
    "reset_after_processing": ("reset_after_processing", {}),
    "silence": ("silence", {"seconds": HTTP_TIMEOUT_S + 1}),
    "drip": ("drip", {"interval": 0.25}),
    "truncate": ("truncate", {}),
    "chunked": ("chunked", {}),
    "close_delimited": ("close_delimited", {}),
    "oversized": ("oversized", {}),
    "invalid_json": ("invalid_json", {}),
    "keep_open": ("keep_open", {"seconds": HTTP_TIMEOUT_S + 1}),
}
HOSTILE_PATHS = {"token": TOKEN_PATH, "replenish": REPLENISH}
# Faults that let the server act and then spoil the answer: a token rotated in one is lost.
SPOILERS = ("reset_after_processing", "truncate", "drip")
TOKEN_SIZES = (400, 1000, 2000)
HEAP_STEP_KB = 4
QUICK_HEAP_KB = 96
# Back-off cases: (path, fault kind, its arguments, the delay before it fails, level).
DELAY_S = 3
BACKOFF_CASES = {
    "replenish-500": (REPLENISH, "status", {"status": 500, "after": DELAY_S}, LOW),
    "replenish-429": (
        REPLENISH,
        "status",
        {"status": 429, "headers": {"Retry-After": "5"}, "after": DELAY_S},
        LOW,
    ),
    "replenish-reset": (REPLENISH, "silence", {"seconds": DELAY_S}, LOW),
    "token-500": (TOKEN_PATH, "status", {"status": 500, "after": DELAY_S}, LOW),
    "token-429": (
        TOKEN_PATH,
        "status",
        {"status": 429, "headers": {"Retry-After": "5"}, "after": DELAY_S},
        LOW,
    ),
    "token-reset": (TOKEN_PATH, "silence", {"seconds": DELAY_S}, LOW),
    "periodic-500": ("/deviceStatus", "status", {"status": 500, "after": DELAY_S}, FULL),
    "periodic-429": (
        "/deviceStatus",
        "status",
        {"status": 429, "headers": {"Retry-After": "5"}, "after": DELAY_S},
        FULL,
    ),
    "periodic-reset": ("/deviceStatus", "silence", {"seconds": DELAY_S}, FULL),
}
BACKOFF_CONFIG = {
    "sample_s": 1,
    "warmup_samples": 1,
    "confirm_samples": 1,
    "retry_base_s": 2,
    "retry_cap_s": 30,
    "http_timeout_s": 10,
}
BACKOFF_RUN_S = 60
BACKOFF_TIMES = 2
SLACK_MS = 50  # the device's clock against its own log stamps: rounding only


class Killed(Exception):
    pass


class FaultDevice(Device):
    """A Device whose output is also kept in order (`seq`): log events, the fault points and
    the ends of requests (VDEVICE_FAULTS=count), and each boot; a kill point (`@kill`)
    raises Killed with the process left waiting for its power cut (`cut`)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.seq = []
        self.points = []  # (n, device ms, name)
        self.killed = None  # (n, name)
        self.last_status = None

    def start(self):
        self.seq.append(("boot",))
        return super().start()

    def run(self, seconds):
        self._send("run %d" % int(seconds * 1000))
        # Counted before the answer: after a kill the power stays off for the rest of it.
        self.elapsed += int(seconds)
        self.last_status = self._wait("@done")
        return self.last_status

    def run_chunks(self, seconds, chunk):
        while seconds > 0:
            self.run(min(chunk, seconds))
            seconds -= chunk

    def _wait(self, marker, timeout=120):
        while True:
            line = self._next_line(timeout)
            if line.startswith("@point "):
                _, n, ms, name = line.split(" ", 3)
                self.points.append((int(n), int(ms), name))
                self.seq.append(("point", int(n), int(ms), name))
            elif line.startswith("@answer "):
                _, ms, target, outcome = line.split(" ", 3)
                self.seq.append(("answer", int(ms), target, outcome))
            elif line.startswith("@kill "):
                _, n, name = line.split(" ", 2)
                self.killed = (int(n), name)
                raise Killed(line)
            elif line.startswith(marker + " "):
                return json.loads(line[len(marker) + 1 :])
            else:
                m = LOG_LINE.match(line)
                if m:
                    ev = (int(m.group(1)), m.group(2), json.loads(m.group(3)))
                    self.events.append(ev)
                    self.seq.append(("log", *ev))

    def cut(self, power):
        """SIGKILL; `power`: RTC memory lost too (a power cut), else kept (a reset)."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        if power:
            (self.root / "rtc.bin").unlink(missing_ok=True)

    def close(self):
        """Stop it, whatever state it is in."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except (OSError, ValueError):
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Ledger:
    """What the emulator gave this device, beyond its own records: every Replenish answer
    (ORDER_INPROGRESS ids name no order) and every token, and which refresh token each
    rotation retired. Wraps the emulator instance's own methods; its file is not touched."""

    def __init__(self, emu):
        self.emu = emu
        self.replenish = []  # (slot, eventInstanceId, detailCode)
        self.grants = []  # (refresh token sent, refresh token issued)
        self.tokens = set()
        for name in ("_do_replenish", "_refresh_grant", "_issue_tokens"):
            if not hasattr(emu, name):
                raise RuntimeError("the emulator has no %s: tools/faults.py needs updating" % name)
        do_replenish, refresh_grant, issue = (
            emu._do_replenish,
            emu._refresh_grant,
            emu._issue_tokens,
        )

        def replenish(headers, doc, slot):
            ans = do_replenish(headers, doc, slot)
            if ans[0] == 200:
                body = json.loads(ans[2])
                self.replenish.append((slot, body["eventInstanceId"], body["detailCode"]))
            return ans

        def grant(params):
            ans = refresh_grant(params)
            if ans[0] == 200:
                self.grants.append(
                    (params.get("refresh_token"), json.loads(ans[2])["refresh_token"])
                )
            return ans

        def tokens(refresh):
            ans = issue(refresh)
            body = json.loads(ans[2])
            self.tokens.update((body["access_token"], body["refresh_token"]))
            return ans

        emu._do_replenish = replenish
        emu._refresh_grant = grant
        emu._issue_tokens = tokens

    def inprogress_ids(self, slot):
        return {e for s, e, c in self.replenish if s == slot and c == "ORDER_INPROGRESS"}

    def retired(self, token):
        """True when a rotation retired `token` (LwA answered with a new one)."""
        return any(old == token for old, _ in self.grants)

    def live(self, token):
        with self.emu._lock:
            return token in self.emu._refresh_tokens


# What the next boot would take from flash, read by the firmware's own code (dash.store,
# dash.tokens) from a copy of the files, so that the reading changes nothing on the device's
# flash and follows the record format wherever it goes.
_VIEW = """
import json, os
from dash.store import Store
from dash.tokens import Tokens
root = os.getenv("FAULTS_ROOT")
store = Store(root)
state = store.load("state.json")
try:
    with open(root + "/secrets.json") as f:
        sec = json.load(f)
except (OSError, ValueError):
    sec = {}
sec.setdefault("client_id", "")
sec.setdefault("refresh_token", "")
class Clock:
    def wall(self):
        return 0
tokens = Tokens(store, sec, Clock(), 300, {}, None)
print("@view " + json.dumps({"state": state, "refresh": tokens.refresh}))
"""


def flash_view(root):
    """{"state": state.json's record or None, "refresh": the refresh token} as the next boot
    would take them."""
    with tempfile.TemporaryDirectory(dir=BUILD) as d:
        for p in root.iterdir():
            if p.name.startswith(("state.json", "tokens.json", "secrets.json")):
                shutil.copy(p, d)
        proc = subprocess.run(
            [MICROPYTHON, "-c", _VIEW],
            env=dict(os.environ, MICROPYPATH=str(LIB), FAULTS_ROOT=d),
            capture_output=True,
            text=True,
            timeout=60,
        )
    for line in proc.stdout.splitlines():
        if line.startswith("@view "):
            return json.loads(line[6:])
    raise RuntimeError("reading the flash failed: %s" % (proc.stdout + proc.stderr)[-300:])


def flash_token(root):
    """The refresh token the device would boot with (dash.tokens.Tokens)."""
    return flash_view(root)["refresh"]


def flash_event_id(root):
    state = flash_view(root)["state"]
    try:
        return state["slots"][SLOT].get("ev")
    except (KeyError, TypeError, AttributeError):
        return None


class Case:
    """One case's outcome: counts, notes, and the command that runs it again."""

    def __init__(self, cid):
        self.id = cid
        self.counts = dict.fromkeys(COUNTS + INFO, 0)
        self.notes = []  # what failed
        self.said = []  # what is worth knowing, and failed nothing
        self.in_flight = False  # LwA may have rotated the token in an answer never on flash
        self.seconds = 0.0
        self.output = None  # the device's output, when asked for (--verbose)

    def bad(self, key, note, n=1):
        self.counts[key] += n
        self.notes.append("%s: %s" % (key, note))

    @property
    def ok(self):
        return not any(self.counts[k] for k in COUNTS)

    def as_dict(self):
        out = {
            "id": self.id,
            "ok": self.ok,
            "counts": self.counts,
            "notes": self.notes,
            "said": self.said,
            "seconds": round(self.seconds, 1),
            "rerun": "%s --case %s" % (RERUN, self.id),
        }
        if self.output is not None:
            out["output"] = self.output
        return out

    def keep_output(self, spec, dev):
        """With --verbose: what the device printed, and what its flash holds at the end."""
        if spec.get("verbose"):
            files = sorted(p.name for p in dev.root.iterdir()) if dev.root.exists() else []
            self.output = dev.output + ["# flash: " + " ".join(files)]


def new_emulator():
    return Emulator(
        str(CERTS), slots=(SLOT,), client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    ).start()


def new_device(emu, root, env=None, config=None, secrets=None, lib=None, harness=None, heap=None):
    """A device provisioned with a refresh token of the emulator's (of the size it makes)."""
    return FaultDevice(
        root,
        str(CERTS / "ca.pem"),
        emu.port,
        emu.add_refresh_token(),
        CLIENT_ID,
        CLIENT_SECRET,
        config=config,
        env=env,
        secrets=secrets,
        lib=lib or LIB,
        harness=harness,
        heap_kb=heap,
    )


# -- the checks ---------------------------------------------------------------------------------


def check_episode(case, dev, emu, ledger, n):
    """After depletion `n` (1-based): its order, once, and its id on flash."""
    orders = [o for o in emu.orders if o["slot"] == SLOT]
    if len(orders) < n:
        # Without its registration it cannot order: that is counted as the registration's.
        if ledger.live(flash_token(dev.root)):
            case.bad("missed_orders", "episode %d: %d orders in all" % (n, len(orders)))
        return
    ev = flash_event_id(dev.root)
    ours = {o["event_instance_id"] for o in orders[n - 1 :]}
    if ev in ours:
        return
    if ev in ledger.inprogress_ids(SLOT):
        case.counts["orders_recovered_by_inprogress_id"] += 1
        return
    case.bad(
        "lost_event_ids",
        "episode %d: state.json holds %r, DRS placed %s" % (n, ev, sorted(ours)),
    )


def check_orders(case, emu, episodes):
    orders = [o for o in emu.orders if o["slot"] == SLOT]
    if len(orders) > episodes:
        case.bad(
            "duplicate_orders",
            "%d orders for %d depletions" % (len(orders), episodes),
            len(orders) - episodes,
        )


def check_registration(case, dev, ledger):
    token = flash_token(dev.root)
    registered = (dev.last_status or {}).get("registered", True)
    if token and ledger.live(token) and registered:
        return
    if case.in_flight and (not token or ledger.retired(token)):
        # LwA retired the token in an answer that never reached flash; an invalid_grant for
        # it then unregistered the device (every token wiped), as it should.
        case.counts["registrations_lost_in_flight"] += 1
        return
    why = "the refresh token on flash is %s" % (
        "live" if token and ledger.live(token) else "dead" if token else "missing"
    )
    if not registered:
        why += "; the device says unregistered"
    case.bad("lost_registrations", why)


def check_secrets(case, dev, ledger, extra=()):
    secrets = [CLIENT_SECRET, "Atzr|", "Atza|", *extra]
    for t in ledger.tokens:  # a token's head or tail alone is a leak too
        secrets += [t[5:37], t[-32:]]
    out = "\n".join(dev.output)
    leaked = sorted({s[:12] + "..." for s in secrets if s and s in out})
    if leaked:
        case.bad("leaked_secrets", "printed: %s" % ", ".join(leaked), len(leaked))


def _last_error(lines):
    """The line that says what went wrong at the end of an output (a traceback's last)."""
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:160]
    return lines[-1].strip()[:160] if lines else ""


def check_memory(case, dev, died):
    """The process died, printed a traceback, or logged an `error` naming MemoryError. Failures
    whose reason names one (a catch-all caught it: the call backs off) are counted apart."""
    text = "\n".join(dev.output)
    if died:
        case.bad("memory_errors_uncaught", "the process died: %s" % _last_error(dev.output))
    elif "Traceback" in text:
        case.bad("memory_errors_uncaught", "a traceback: %s" % _last_error(dev.output))
    for _, tag, f in dev.events:
        if tag == "error" and "MemoryError" in json.dumps(f):
            case.bad("memory_errors_uncaught", "error: %s" % str(f.get("reason", f))[:120])
        elif "MemoryError" in str(f.get("reason", "")):
            case.counts["memory_errors_caught"] += 1
            case.said.append("%s: %s" % (tag, str(f["reason"])[:100]))


# -- kill points ---------------------------------------------------------------------------------


class Scenario:
    """A run whose fault points are counted (`drive`), the points a kill is tried at
    (`window`), and what the restarted device lives through (`after`)."""

    name = ""
    level = LOW

    def drive(self, dev):
        raise NotImplementedError

    def window(self, dev):
        return [p[0] for p in dev.points]

    def after(self, case, dev, emu, ledger):
        raise NotImplementedError


class OrderCycle(Scenario):
    name = "order"
    level = LOW

    def drive(self, dev):
        dev.set_level(LOW)
        dev.start()
        dev.run_chunks(15 * MIN, 5 * MIN)

    def after(self, case, dev, emu, ledger):
        dev.start()
        dev.run(3 * HOUR)
        check_episode(case, dev, emu, ledger, 1)
        check_orders(case, emu, 1)
        emu.mark_delivered(SLOT)
        dev.set_level(FULL)
        dev.run(HOUR)
        dev.set_level(LOW)
        dev.run(2 * HOUR)
        check_episode(case, dev, emu, ledger, 2)
        check_orders(case, emu, 2)


class TokenRotation(Scenario):
    name = "rotation"
    level = FULL
    SETTLE_S = 30 * MIN

    def drive(self, dev):
        dev.set_level(FULL)
        dev.start()
        dev.run(self.SETTLE_S)
        dev.seq.append(("mark",))
        dev.run_chunks(25 * HOUR, HOUR)

    def window(self, dev):
        mark = next(i for i, s in enumerate(dev.seq) if s[0] == "mark")
        return [s[1] for s in dev.seq[mark:] if s[0] == "point"]

    def after(self, case, dev, emu, ledger):
        dev.start()
        dev.run(2 * HOUR)
        dev.set_level(LOW)  # an order needs the registration: does it still work?
        dev.run(3 * HOUR)
        check_episode(case, dev, emu, ledger, 1)
        check_orders(case, emu, 1)


SCENARIOS = {s.name: s for s in (OrderCycle(), TokenRotation())}


def kill_device(emu, root, env, config=None):
    return new_device(
        emu,
        root,
        env=env,
        config=config,
        secrets={"mqtt_password": MQTT_PASSWORD, "wifi_password": WIFI_PASSWORD},
    )


def count_points(scenario, work):
    """The scenario once with VDEVICE_FAULTS=count: its points, in order, with each one's
    name, and the number of requests the server had whole by then."""
    emu = new_emulator()
    dev = kill_device(emu, work / ("count-" + scenario), {"VDEVICE_FAULTS": "count"})
    try:
        SCENARIOS[scenario].drive(dev)
        window = set(SCENARIOS[scenario].window(dev))
    finally:
        dev.close()
        emu.stop()
    points = []
    sent = 0
    last_token_sent = None  # the point at which the last token request was sent whole
    for n, _, name in dev.points:
        if name.startswith("net-sent "):
            sent += 1
            if name.endswith(TOKEN_PATH):
                last_token_sent = n
        if name.startswith("close tokens.json"):
            last_token_sent = None  # the rotated token is whole on flash from here on
        if n in window:
            points.append(
                {"n": n, "name": name, "requests": sent, "in_flight": last_token_sent is not None}
            )
    return points


def _settle(emu, requests, timeout=5.0):
    """Until the server has had `requests` requests whole and answered every one: a request
    the device sent whole is acted on before the power goes, as it would be."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with emu._lock:
            done = len(emu.requests) >= requests and all(
                r["status"] is not None for r in emu.requests
            )
        if done:
            return
        time.sleep(0.01)


def run_kill_case(spec):
    """spec: scenario, point (dict from count_points), variant, id, work."""
    case = Case(spec["id"])
    t0 = time.monotonic()
    sc = SCENARIOS[spec["scenario"]]
    point = spec["point"]
    root = Path(spec["work"]) / spec["id"].replace("/", "-")
    emu = new_emulator()
    ledger = Ledger(emu)
    dev = kill_device(emu, root, {"VDEVICE_FAULTS": "kill:%d" % point["n"]})
    try:
        try:
            sc.drive(dev)
        except Killed:
            pass
        if dev.killed is None:
            dev.close()
            case.bad("unreached_points", "point %d was never reached" % point["n"])
            return _done(case, t0)
        if dev.killed[1] != point["name"]:
            case.bad(
                "unreached_points",
                "point %d is %r, was %r when counted" % (point["n"], dev.killed[1], point["name"]),
            )
        case.in_flight = point["in_flight"]
        _settle(emu, point["requests"])
        dev.cut(power=spec["variant"] == "cut")
        dev.extra_env = {}  # the restarted firmware runs as it is, without fault points
        try:
            sc.after(case, dev, emu, ledger)
        except (RuntimeError, TimeoutError) as e:
            case.bad("crashes", str(e).splitlines()[0][:200])
        dev.close()
        check_registration(case, dev, ledger)
        check_secrets(case, dev, ledger, (MQTT_PASSWORD, WIFI_PASSWORD))
        if "Traceback" in "\n".join(dev.output):
            case.bad("crashes", "a traceback was printed")
    except (RuntimeError, TimeoutError) as e:
        case.bad("crashes", "before the kill: %s" % str(e).splitlines()[0][:200])
    finally:
        _clean_up(case, spec, dev, emu, root)
    return _done(case, t0)


def _clean_up(case, spec, dev, emu, root):
    """A case's end, whatever happened: the device and server stopped, the output kept and
    the case's folder gone."""
    dev.close()
    case.keep_output(spec, dev)
    emu.stop()
    shutil.rmtree(root, ignore_errors=True)


def _done(case, t0):
    case.seconds = time.monotonic() - t0
    return case.as_dict()


# -- hostile servers under a small heap -----------------------------------------------------------


def run_hostile_case(spec):
    """spec: path (token|replenish), kind, tokens, heap, art, work, id."""
    case = Case(spec["id"])
    t0 = time.monotonic()
    kind, kw = HOSTILE_KINDS[spec["kind"]]
    path = HOSTILE_PATHS[spec["path"]]
    root = Path(spec["work"]) / spec["id"].replace("/", "-")
    art = spec["art"]
    emu = new_emulator()
    ledger = Ledger(emu)
    # Provisioned with a token of the usual size; LwA's next ones have the case's size (the
    # device must make room for what comes, not for what it holds).
    dev = new_device(
        emu,
        root,
        config={"http_timeout_s": HTTP_TIMEOUT_S},
        lib=Path(art["mpy"]),
        harness=Path(art["harness"]),
        heap=spec["heap"],
    )
    emu.access_token_chars = emu.refresh_token_chars = spec["tokens"]
    case.in_flight = spec["path"] == "token" and spec["kind"] in SPOILERS
    died = None
    try:
        emu.inject(path, kind, times=2, **kw)
        dev.set_level(LOW)
        try:
            dev.start()
            dev.run(HOUR)  # the cold cycle, with the faults
            dev.stop()
        except (RuntimeError, TimeoutError) as e:
            died = str(e)
        check_memory(case, dev, died)
        dev.close()
        if emu.pending_faults() == 2:  # the small heap kept every request from the server
            case.counts["hostile_faults_unserved"] += 1
            case.said.append("no request reached the server under the small heap")
        emu.clear_faults()
        dev.heap_kb = None  # the same flash, now with room to spare
        try:
            dev.start()
            dev.run(3 * HOUR)
            dev.stop()
        except (RuntimeError, TimeoutError) as e:
            case.bad("crashes", "with room to spare: %s" % str(e).splitlines()[0][:200])
        check_episode(case, dev, emu, ledger, 1)
        check_orders(case, emu, 1)
        check_registration(case, dev, ledger)
        check_secrets(case, dev, ledger)
    finally:
        _clean_up(case, spec, dev, emu, root)
    return _done(case, t0)


def heap_minimum(art, work):
    """The bench's figure: the smallest heap (KB) from which a cold order cycle succeeds, as
    `.mpy`, at that size and the 8 KB above it."""
    emu = Emulator(
        str(CERTS), slots=(SLOT,), client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    ).start()
    try:
        certs = ensure_certs(str(CERTS))
        b = bench.Bench(emu, certs, art, work)
        return b.heap_min(lambda kb: b.cold_cycle_ok("mpy", kb)[0])
    finally:
        emu.stop()


# -- back-offs against the time the answer came ---------------------------------------------------


def _kind(target):
    """A request's kind, by its path: what a back-off holds back."""
    path = target[target.index("/") :] if "/" in target else target
    if path.startswith(TOKEN_PATH):
        return "token"
    if path.startswith(REPLENISH):
        return "replenish"
    if path.startswith(("/subscriptionInfo", "/deviceStatus")):
        return "device"
    return "slot"


def backoff_violations(dev, fault_path, times, delay_s, retry_after, cap):
    """Each failure against the requests around it (see the module docstring). Returns a list
    of violations, each a sentence."""
    out = []
    requests = []  # [seq index, start ms, target, end ms, outcome]
    faulted = 0
    for i, s in enumerate(dev.seq):
        if s[0] == "point" and s[3].startswith("net-out "):
            target = s[3].split(" ", 1)[1]
            path = target[target.index("/") :]
            delay = 0
            if path.startswith(fault_path) and faulted < times:
                faulted += 1
                delay = delay_s
            requests.append([i, s[2], target, None, None, delay])
        elif s[0] == "answer" and requests and requests[-1][3] is None:
            requests[-1][3], requests[-1][4] = s[1], s[3]
    for i, s in enumerate(dev.seq):
        if s[0] != "log":
            continue
        stamp, tag, f = s[1], s[2], s[3]
        token_refused = tag == "token-refresh" and not f.get("ok", True)
        if tag not in ("order-failed", "duty-failed") and not token_refused:
            continue
        before = [r for r in requests if r[0] < i]
        failed = before[-1] if before else None
        if failed is not None and failed[3] is not None:
            came = max(failed[3], failed[1] + failed[5] * 1000)
            if stamp * 1000 + 999 < came - SLACK_MS:
                out.append(
                    "%s stamped %d s, but its request (%s) left at %.1f s and its answer "
                    "took %d s" % (tag, stamp, failed[2], failed[1] / 1000, failed[5])
                )
        if token_refused:
            if retry_after is None or failed is None or _kind(failed[2]) != "token":
                continue
            kinds, wait = ("token",), min(retry_after, cap)
        elif tag == "order-failed":
            kinds, wait = ("replenish",), f.get("retry_in_s", 0)
        else:
            kinds = ("slot",) if "slot" in f else ("device",)
            wait = f.get("retry_in_s", 0)
        # From when the answer came: the stamp, or by the device's own clock the end of the
        # request, if that was later (the stamp then lags behind, as flagged above).
        came = stamp
        if failed is not None and failed[3] is not None:
            came = max(stamp, failed[3] // 1000)
        due = (came + wait) * 1000 - SLACK_MS
        for r in requests:
            if r[0] > i and _kind(r[2]) in kinds and r[1] < due:
                out.append(
                    "%s at %d s (the answer came at %d s) said retry in %d s; %s left at %.1f s"
                    % (tag, stamp, came, wait, r[2], r[1] / 1000)
                )
                break
        if tag == "order-failed":  # the slot's next attempt, whatever it needs first
            for s2 in dev.seq[i + 1 :]:
                if s2[0] == "log" and s2[2].startswith("order-") and s2[1] < stamp + wait:
                    out.append(
                        "order-failed at %d s said retry in %d s; %s at %d s"
                        % (stamp, wait, s2[2], s2[1])
                    )
                    break
    return out


def run_backoff_case(spec):
    """spec: name, id, work."""
    case = Case(spec["id"])
    t0 = time.monotonic()
    path, kind, kw, level = BACKOFF_CASES[spec["name"]]
    root = Path(spec["work"]) / spec["id"].replace("/", "-")
    emu = new_emulator()
    ledger = Ledger(emu)
    env = {"VDEVICE_FAULTS": "count", "VDEVICE_LIVE": "1"}
    dev = kill_device(emu, root, env, BACKOFF_CONFIG)
    try:
        emu.inject(path, kind, times=BACKOFF_TIMES, **kw)
        dev.set_level(level)
        try:
            dev.start()
            dev.run(BACKOFF_RUN_S)
            dev.stop()
        except (RuntimeError, TimeoutError) as e:
            case.bad("crashes", str(e).splitlines()[0][:200])
        delay = kw.get("after", kw.get("seconds", 0))
        ra = kw.get("headers", {}).get("Retry-After")
        found = backoff_violations(
            dev,
            path,
            BACKOFF_TIMES,
            delay,
            int(ra) if ra else None,
            BACKOFF_CONFIG["retry_cap_s"],
        )
        for v in found:
            case.bad("backoff_violations", v)
        failures = [t for _, t, _ in dev.events if t in ("order-failed", "duty-failed")]
        if not failures:
            case.bad("unreached_points", "no failure was logged: the fault never bit")
        if level == LOW:
            check_episode(case, dev, emu, ledger, 1)
        check_orders(case, emu, 1 if level == LOW else 0)
        check_registration(case, dev, ledger)
        check_secrets(case, dev, ledger, (MQTT_PASSWORD, WIFI_PASSWORD))
    finally:
        _clean_up(case, spec, dev, emu, root)
    return _done(case, t0)


# -- the plan -----------------------------------------------------------------------------------


def quick_points(points):
    """A handful of the order cycle's points, spread over its flash and network phases: a
    token answer in flight, the rotated token whole but not renamed, the intent half
    written, Replenish before it leaves, sent, answered, and the answer's rename."""
    picks = []

    def first(pred, after=0):
        for p in points:
            if p["n"] > after and pred(p["name"]):
                return p
        return None

    tok = first(lambda s: s == "net-sent localhost" + TOKEN_PATH)
    close = first(lambda s: s == "close tokens.json.tmp")
    out = first(lambda s: s.startswith("net-out ") and REPLENISH in s)
    picks += [tok, close]
    if out is not None:
        # The intent: the last state.json save before Replenish leaves, cut half written.
        opened = [
            p["n"] for p in points if p["n"] < out["n"] and p["name"] == "open state.json.tmp"
        ]
        writes = [
            p
            for p in points
            if opened and opened[-1] < p["n"] < out["n"] and p["name"].startswith("write ")
        ]
        picks.append(writes[len(writes) // 2] if writes else None)
        picks.append(out)
        picks.append(first(lambda s: s.startswith("net-sent ") and REPLENISH in s))
        picks.append(first(lambda s: s.startswith("net-done ") and REPLENISH in s))
        picks.append(first(lambda s: s == "rename state.json.tmp state.json", out["n"]))
    return [p for p in picks if p is not None]


def plan(args, work, say):
    """The cases to run: a list of (runner, spec)."""
    only = {}
    for cid in dict.fromkeys(args.case or ()):  # each once: a case's flash is named after it
        parts = cid.split("/")
        only.setdefault(parts[0], []).append(parts[1:])
    scenarios = set(args.scenario or ())
    if only:
        scenarios = set(only)
    elif args.quick and not scenarios:
        scenarios = {"order", "hostile", "backoff"}
    elif not scenarios:
        scenarios = {"order", "rotation", "hostile", "backoff"}
    cases = []
    info = {}
    for name in ("order", "rotation"):
        if name not in scenarios:
            continue
        points = count_points(name, work)
        flash = sum(1 for p in points if not p["name"].startswith("net-"))
        say(
            "%s: %d kill points (%d flash, %d network)"
            % (name, len(points), flash, len(points) - flash)
        )
        info[name + "_points"] = len(points)
        variants = [args.variant] if args.variant else ["cut", "reset"]
        picks = points
        if args.quick and name == "order":
            picks = quick_points(points)
        if args.point is not None:
            picks = [p for p in points if p["n"] == args.point]
        if name in only:
            want = {(int(p[0]), p[1] if len(p) > 1 else None) for p in only[name]}
            picks = [p for p in points if any(p["n"] == n for n, _ in want)]
        for p in picks:
            vs = variants
            if name in only:
                vs = [v for n, v in want if n == p["n"]]
                vs = ["cut", "reset"] if None in vs else vs
            elif args.quick:  # a reset where a power cut would not tell more
                sent = p["name"].startswith("net-sent") and REPLENISH in p["name"]
                vs = ["reset"] if sent else ["cut"]
            for v in vs:
                cid = "%s/%d/%s" % (name, p["n"], v)
                spec = {"scenario": name, "point": p, "variant": v, "id": cid, "work": str(work)}
                cases.append((run_kill_case, spec))
    if "hostile" in scenarios:
        dashctl.LIB = LIB  # what bench.build compiles
        built = bench.build((work / "art").resolve())
        art = {"mpy": str(built["mpy"]), "harness": str(built["harness"])}
        wanted = only.get("hostile")
        if wanted:
            grid = [(p, k, int(t), int(h)) for p, k, t, h in wanted]
        else:
            if args.heap_kb:
                heap = args.heap_kb
            elif args.quick:
                heap = QUICK_HEAP_KB
            else:
                say("hostile: finding the bench's heap minimum (.mpy)")
                heap = heap_minimum(built, work / "min")
                if heap is None:
                    raise SystemExit("no heap size let a cold order cycle succeed")
            info["heap_kb"] = heap
            if not args.quick:
                say("hostile: heaps %d and %d KB" % (heap, heap + HEAP_STEP_KB))
            if args.quick:
                grid = [("token", "chunked", 2000, heap)]
            else:
                grid = [
                    (p, k, t, h)
                    for h in (heap, heap + HEAP_STEP_KB)
                    for t in TOKEN_SIZES
                    for p in HOSTILE_PATHS
                    for k in HOSTILE_KINDS
                ]
        for p, k, t, h in grid:
            cid = "hostile/%s/%s/%d/%d" % (p, k, t, h)
            spec = {"path": p, "kind": k, "tokens": t, "heap": h, "art": art}
            spec.update(id=cid, work=str(work))
            cases.append((run_hostile_case, spec))
    if "backoff" in scenarios:
        names = [w[0] for w in only["backoff"]] if "backoff" in only else list(BACKOFF_CASES)
        if args.quick and "backoff" not in only:
            names = ["replenish-429"]
        for n in names:
            cases.append((run_backoff_case, {"name": n, "id": "backoff/" + n, "work": str(work)}))
    return cases, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small deterministic slice")
    ap.add_argument(
        "--scenario",
        action="append",
        choices=["order", "rotation", "hostile", "backoff"],
        help="run only this scenario (repeatable)",
    )
    ap.add_argument("--point", type=int, help="only this kill point (with --scenario)")
    ap.add_argument("--variant", choices=["cut", "reset"], help="only power cuts, or resets")
    ap.add_argument(
        "--case",
        action="append",
        metavar="ID",
        help="run this case again, as a failure names it (repeatable)",
    )
    ap.add_argument("--heap-kb", type=int, help="hostile cases at this heap and 4 KB above")
    ap.add_argument("--jobs", "-j", type=int, default=2, help="cases at a time (2)")
    ap.add_argument("--keep", action="store_true", help="keep build/faults/ afterwards")
    ap.add_argument(
        "--lib",
        type=Path,
        help="the device code to test (default lib/), e.g. an older revision's",
    )
    ap.add_argument("--verbose", "-v", action="store_true", help="print each device's output")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.lib:
        global LIB
        LIB = args.lib.resolve()  # the workers are forked from here on: they have it too

    def say(msg):
        print("[%5.0fs] %s" % (time.monotonic() - t0, msg), flush=True)

    ensure_certs(str(CERTS))
    BUILD.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=BUILD))
    try:
        cases, info = plan(args, work, say)
        for _, spec in cases:
            spec["verbose"] = args.verbose
        say("%d cases, %d at a time" % (len(cases), args.jobs))
        results = []
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(fn, spec): spec["id"] for fn, spec in cases}
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - a harness failure is a failed case
                    res = Case(futures[fut])
                    res.bad("crashes", "harness: %r" % e)
                    res = res.as_dict()
                results.append(res)
                for line in res.pop("output", ()):
                    print("    | " + line)
                say(
                    "%4d/%d %-44s %s"
                    % (
                        len(results),
                        len(cases),
                        res["id"],
                        ("ok" + "".join(" (%s)" % n for n in res["said"]))
                        if res["ok"]
                        else "FAIL " + "; ".join(res["notes"])[:300],
                    )
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results.sort(key=lambda r: r["id"])
    summary = {"cases": len(results), "passed": sum(1 for r in results if r["ok"])}
    for key in COUNTS + INFO:
        summary[key] = sum(r["counts"][key] for r in results)
    summary.update(info)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    failed = [r for r in results if not r["ok"]]
    summary["failed"] = [r["id"] for r in failed]
    # Passed, but worth a look: a MemoryError a catch-all took (the call backed off).
    summary["memory_errors_caught_in"] = [
        {"case": r["id"], "said": [n for n in r["said"] if "MemoryError" in n][:2]}
        for r in results
        if r["counts"]["memory_errors_caught"]
    ][:8]
    summary["details"] = [
        {"case": r["id"], "notes": r["notes"][:4], "rerun": r["rerun"]} for r in failed[:8]
    ]
    print(json.dumps(summary))
    return 0 if results and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
