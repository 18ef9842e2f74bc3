"""The application: wires sensors, signal paths, state machines, tokens, DRS and flash together.

One step per sample: each slot reads, filters and decides; a slot whose machine says ORDERING
places its order. When no order went out in a step, at most one periodic DRS call (`duties`)
runs, so there is never more than one TLS connection at a time. Everything that must survive a
reboot or a power cut is in `state.json` (see `persist`); it is written only when something
changed, and the intent to order is written before the request leaves the device.

Resident code is what sampling needs. Start-up and the config checks, order placement, the
periodic calls, registration, the token refresh (`lwa`), the code of a DRS call (`link`,
`drs`) and of the rarer turns of an episode (`episode`) are imported when needed and dropped
again (`lib`, `drop_phase`).
"""

import gc
import json
from binascii import crc32

from micropython import const

# Resident. `check` is loaded now, not by the config checks that use it first, so it does not
# stand in the middle of their heap once they are gone; the rest comes with start-up (`boot`).
from dash import check, fsm, result  # noqa: F401

TYPE_CHECKING = False  # the type checker reads it as True: names for annotations only
if TYPE_CHECKING:
    from dash.https import Https
    from dash.store import Store
    from dash.tokens import Tokens

VERSION = "0.5.0"  # the firmware's, as package.json has it
STATE = "state.json"
_F_UNREADABLE = const(-5)
_NO_READING = const(-9)  # a slot's level before its first reading
_NOISY = const(("state", "sensor-fault", "sensor-ok"))  # a level hovering, a sensor flapping
_NOISY_MAX = const(6)  # lines of those a minute, the rest counted (`hushed`)
_IDLE_MS = const(60000)  # how often a suspended device looks at nothing in particular
_SICK = const(5)  # steps in a row that raise before the watchdog is no longer fed
_NAP_MS = const(30000)  # the longest sleep between two feeds
_REPL_WDT_MS = const(86400000)  # the watchdog's timeout once a person stopped the firmware
_DAY = const(86400)
BACKOFF_STATES = (fsm.INPROGRESS, fsm.RETRY)
OPEN = (fsm.ORDERING, fsm.ORDERED, fsm.INPROGRESS, fsm.RETRY)  # an order may be out
# The periodic calls, by the number `_duty()` answers (0: none); `_run_duty` makes them.
_D_VERIFY = const(1)
_D_SUBS = const(2)
_D_DEVICE = const(3)
_D_ORDER = const(4)  # from here on, a slot's call
_D_SLOT = const(5)


def lib(name):
    """Import one of our rarely used modules, into a collected heap: its code then fills the
    lowest holes instead of going above the last step's garbage (see `drop_phase`)."""
    gc.collect()
    return __import__("dash." + name, None, None, (name,))


def drop(name):
    """Forget a module `lib` imported, so the GC can take its code back."""
    import sys

    sys.modules.pop("dash." + name, None)
    pkg = sys.modules.get("dash")
    if pkg is not None and hasattr(pkg, name):
        delattr(pkg, name)


def drop_phase(name):
    """The end of an order, a periodic call or a provisioning step: drop its module and what
    it may have loaded on the way, and collect now (a few ms, after a network call of
    seconds): what the next phase makes then fills the lowest holes, packed, instead of going
    above the garbage and cutting the free heap up."""
    for n in (name, "link", "drs", "lwa", "episode", "provision", "daily", "trust"):
        drop(n)
    gc.collect()


class Slot:
    """One consumable: its sensor, signal path, state machine and persisted record."""

    def __init__(self, cfg, sensor, signal, machine):
        # Of its config only what reports need: the config's dicts (and their keys, each a
        # string object) are not kept. The thresholds are the machine's, the capacity the
        # signal's.
        self.id = cfg["slot_id"]
        self.delta = cfg["report_delta"]
        self.sensor = sensor
        self.signal = signal
        self.fsm = machine
        self.level = _NO_READING
        self.orders = 0  # orders placed since boot
        self.reason = ""  # why suspended or unsubscribed
        self.deadline = -1  # back-off end, in uptime seconds; -1 = none
        self.check_at = -1  # next GetOrderInfo, in uptime seconds
        self.used_up = -1  # uptime s of the last consumption seen
        self.report_up = 0  # uptime s of the last SlotStatus (negative: before this boot)
        self.duty_at = 0  # no periodic call for this slot before this uptime (after failures)
        self.duty_att = 0
        self.rec = {}


class App:
    # Set by `start.boot` once the config is good (annotations only: no code on the device).
    store: "Store"
    https: "Https"
    tokens: "Tokens"
    drs_url: tuple
    lwa_url: tuple

    def __init__(self, root=".", clock=None, out=None, rtc=None):
        if clock is None:
            from dash.platform import Clock

            clock = Clock()
        if rtc is None:
            from dash.platform import RtcMem

            rtc = RtcMem(root + "/rtc.bin")
        self.root = root
        self.clock = clock
        self.rtc = rtc
        # Kept in RTC memory, not on flash: lost only with the power. DeviceStatus's last-sent
        # time and the access token (with its expiry and the registration it belongs to).
        self.warm: dict = {}
        self.out = out or print
        self.cfg: dict = {}
        self.slots = []
        self.reason = ""  # why the whole device idles (bad config)
        # Uptime in seconds plus a millisecond remainder, accumulated from tick deltas:
        # wrap-safe, and small ints for years (a board's small ints end at 2**30).
        self.up_s = 0
        self._ms = 0
        self._last = clock.ticks_ms()
        self.state: dict = {"slots": {}}
        self.wifi = ("", "")
        self.wdt = None  # the watchdog, when `main` armed one
        self.console = False  # `main` on a board: Ctrl-C waits while a token refresh runs
        self.sick = 0  # steps in a row that raised: from _SICK on the watchdog goes hungry
        self.sub_at = -1  # uptime s of the last SubscriptionInfo; -1 = not this boot
        self.sub_dirty = False  # a SubscriptionChanged was relayed
        self.ds_up = -1  # uptime s when DeviceStatus is due; -1 = wall clock not known yet
        self.wall_retry = 0
        self.duty_at = 0  # no device-wide periodic call before this uptime (after failures)
        self.lwa_at = 0  # no token refresh before this uptime (LwA's back-off, or Retry-After)
        self.lwa_att = 0
        self.duty_att = 0
        self.verify_reg = False  # a DeviceDeregistered was relayed: ask LwA
        self.creds_bad = False  # LwA refused the client: no call until the secrets change
        self._refused = None  # this step's refused token refresh: not tried twice in a step
        self._due_slot = None
        self._unsaved = False  # a persist() found no memory: the next step writes the state
        self._noisy = 0  # noisy lines this minute (`log`)
        self._noisy_at = 0
        self._hushed = 0
        self.running = False  # booted with a good config: steps run
        self.link = None  # the cloud link (`cloud`), when config.json has "mqtt"
        self.pending = None  # a command from the cloud that calls DRS: (kind, arg, id)

    # -- reporting ------------------------------------------------------------------------

    def log(self, tag, **fields):
        """One line per event: uptime seconds, a tag, JSON details. Never given a secret.
        Never raises for want of memory: then the line is the tag alone. The noisy ones (a
        level hovering at a threshold, a sensor flapping) are at most `_NOISY_MAX` a minute;
        the next one says how many were left out (`hushed`)."""
        if tag in _NOISY:
            if self.up_s - self._noisy_at >= 60:
                self._noisy_at = self.up_s
                self._noisy = 0
            self._noisy += 1
            if self._noisy > _NOISY_MAX:
                self._hushed += 1
                return
            if self._hushed:
                fields["hushed"] = self._hushed
                self._hushed = 0
        f = "{}"
        try:
            f = json.dumps(fields)
            line = "[%7d] %s %s" % (self.up_s, tag, f)
        except MemoryError:
            line = tag
        self.out(line)
        if self.link is not None:
            self.link.event(tag, f, fields)

    def status(self):
        """What the device would show a maker: per slot and for the device. No secret."""
        out = lib("status").status(self)
        drop("status")
        return out

    # -- boot -----------------------------------------------------------------------------

    def boot(self):
        """Load config and persisted state. Returns False (and idles) when config is bad. A
        boot without memory enough says so and is tried again (`main`): the firmware never
        ends for want of memory at boot."""
        try:
            ok = self._boot()
        except MemoryError:
            drop_phase("config")  # and whatever else it had loaded
            self.log("error", reason="low memory at boot: tried again in a minute")
            ok = False
        if ok:
            # Uptime counts from here: a device idle for a bad config took no steps.
            self._last = self.clock.ticks_ms()
            self._ms = 0
        self.running = ok
        return ok

    def _boot(self):
        # The config checks (our biggest code) run before the rest of the resident code is
        # loaded, and their heap is collected before anything that stays is made: what stays
        # is then not strewn through where they were, cutting the free heap into pieces.
        config = lib("config")
        cfg, sec, errors = config.load(self.root)
        # The cloud link's own trouble is reported (below) and never stops ordering.
        off = cfg.pop("mqtt_errors", ())
        errors = [e for e in errors if e not in off]
        urls = None
        if not errors:
            urls = (config.parse_url(cfg["drs_url"]), config.parse_url(cfg["lwa_url"]))
        del config
        drop("config")
        lib("https")  # first: its buffer and TLS context are big blocks
        mq = cfg.get("mqtt")
        if mq is not None and self.link is None:  # then the cloud link's (see `start`)
            try:
                self.link = lib("cloud").Link(self, mq, sec.get("mqtt_password", ""))
            except Exception as e:  # noqa: BLE001 - said by `start`; never stops ordering
                off = [e]
        # Then the rest of the resident code, below start-up's, which is dropped after boot:
        # the room it leaves is then in one piece above what stays, not holes between it.
        from dash import platform, signal, store, tokens  # noqa: F401

        try:
            return lib("start").boot(self, cfg, sec, errors, urls, off)
        finally:
            drop_phase("start")  # and `episode`, if a slot resumed

    def _path(self, name):
        return name if name.startswith("/") else self.root + "/" + name

    def keep(self):
        """Write `warm` to RTC memory (no flash wear). What does not fit is not kept."""
        from dash.store import pack

        try:
            if self.rtc.write(pack(self.warm)[0]):
                return
        except MemoryError:
            pass
        self.warm.pop("at", None)  # only costs a token refresh after a reboot
        self.rtc.write(pack(self.warm)[0])

    def refingerprint(self):
        """Identify the provisioning a suspension is decided under (not the secrets)."""
        c = 0
        buf = bytearray(128)  # a piece at a time: secrets.json may hold a 2 KB token
        for name in ("config.json", "secrets.json"):
            try:
                with open(self._path(name), "rb") as f:
                    while True:
                        n = f.readinto(buf)
                        if not n:
                            break
                        c = crc32(memoryview(buf)[:n], c)
            except OSError:
                pass
        self._fingerprint = c

    # -- persistence ----------------------------------------------------------------------

    def _left(self, sl):
        if sl.deadline < 0:
            return -1
        return max(0, sl.deadline - self.up_s)

    def persist(self):
        """Write state.json (only when it changed). False when it could not be written (no
        memory, or the flash refused): then flash is as it was, the next step tries again, and
        nothing that needs the write on flash first (an order's intent) may go ahead."""
        try:
            for sl in self.slots:
                rec = sl.rec
                rec["st"] = sl.fsm.durable()
                left = self._left(sl)
                if left >= 0 and rec["st"] in BACKOFF_STATES:
                    now = self.clock.wall()
                    rec["dr"] = left
                    rec["dw"] = now + left if now else 0
                else:
                    rec.pop("dr", None)
                    rec.pop("dw", None)
                if rec["st"] == fsm.SUSPENDED:
                    rec["sr"] = sl.reason
                    rec["sf"] = self._fingerprint
            self.store.save(STATE, self.state)
        except (MemoryError, OSError) as e:  # no heap, or flash full or failing: next step
            self._unsaved = True
            why = "low memory" if isinstance(e, MemoryError) else "flash: %s" % e
            self.log("persist-postponed", reason=why)
            return False
        self._unsaved = False
        return True

    # -- the loop -------------------------------------------------------------------------

    def tick(self):
        """Uptime brought up to now: at each step, and when a network call ends, so that a
        back-off (a server's Retry-After) and a log line count from when the answer came, not
        from when the step began (a failing request can take a minute)."""
        now = self.clock.ticks_ms()
        ms = self._ms + self.clock.ticks_diff(now, self._last)
        if ms >= 1000:
            self.up_s += ms // 1000
            ms %= 1000
        self._ms = ms
        self._last = now
        self.feed()

    def feed(self):
        """Feed the watchdog: the main loop is alive (a step, a network call, a cloud link
        turn, a slice of sleep has just ended, each bounded), unless the steps keep failing:
        then the board is reset, and a crash loop ends in safe mode (`liveness`)."""
        if self.wdt is not None and self.sick < _SICK:
            self.wdt.feed()

    def step(self):
        """Sample once, decide, act. Returns milliseconds until the next step is due."""
        self.tick()
        self._refused = None
        if self._unsaved:
            self.persist()
        if self.tokens.unsaved:
            self.tokens.save()
        period = self.cfg["sample_s"]
        wait = period
        ordered = False
        for sl in self.slots:
            if self._step_slot(sl):
                ordered = True
            left = self._left(sl)
            if 0 < left < wait and sl.fsm.state in BACKOFF_STATES:
                wait = left
        if not ordered and self.pending is not None:
            # A command from the cloud that calls DRS: this step's network call.
            ordered = True
            try:
                lib("commands").run(self)
            finally:
                drop_phase("commands")
        if not ordered:
            duty = self._duty()
            if duty:
                if duty != _D_VERIFY:  # that one refreshes on purpose, in `duties`
                    self.authorise()
                failed = self._run_duty(duty, self._due_slot)
                self._duty_done(duty, self._due_slot, failed)
                self._due_slot = None
        return wait * 1000

    def _run_duty(self, duty, sl):
        """Make periodic call `duty` with its module loaded for it, and drop that again. None,
        or why it failed (outcome, reason, Retry-After). Calls, not a table of names: each
        name in a table would be one more heap object."""
        name = "duties" if duty <= _D_SUBS else "daily" if duty == _D_DEVICE else "reports"
        try:
            mod = lib(name)
            if duty == _D_VERIFY:
                return mod.verify_registration(self, sl)
            if duty == _D_SUBS:
                return mod.fetch_subscriptions(self, sl)
            if duty == _D_DEVICE:
                return mod.device_status(self, sl)
            if duty == _D_ORDER:
                return mod.order_info(self, sl)
            return mod.slot_status(self, sl)
        except Exception as e:  # noqa: BLE001 - a bug or MemoryError: back off too
            return (result.TRANSIENT, describe(e), None)
        finally:
            drop_phase(name)

    def _duty_done(self, duty, sl, failed):
        """Back off after a failed periodic call: per slot for a slot's, else device-wide."""
        owner = sl if duty >= _D_ORDER else self
        if not failed:
            owner.duty_att = 0
            return
        delay = self.backoff_s(owner.duty_att, failed[2])
        owner.duty_att += 1
        owner.duty_at = self.up_s + delay
        if duty >= _D_ORDER:
            self.log("duty-failed", slot=sl.id, reason=failed[1], retry_in_s=delay)
        else:
            self.log("duty-failed", reason=failed[1], retry_in_s=delay)

    def _step_slot(self, sl):
        """One sample of one slot. True when it placed (or tried) an order."""
        m = sl.fsm
        before = m.state
        # Through warm-up or a fault, the state they resume is what a refill closes.
        was = m.durable()
        raw = sl.sensor.read()
        level = _F_UNREADABLE if raw is None else sl.signal.feed(raw)
        prev = sl.level
        if 0 <= level < prev:
            sl.used_up = self.up_s
        sl.level = level
        if before == fsm.WARMUP and (level < 0) != (prev < 0 and prev != _NO_READING):
            # Warm-up does not count a fault, and no state change says it: said here (a sensor
            # wired wrong shows from the first reading).
            self._sensor(sl, level)
        if before == fsm.SUSPENDED:
            # Still read: a refill while suspended ends the episode, or the slot would resume
            # waiting for one that came and went. As many high readings in a row as a warm-up.
            rec = sl.rec
            if level < m.high or rec.get("sp", fsm.MONITOR) not in OPEN:
                m._count = 0
            else:
                m._count += 1
                if m._count >= m.warmup:
                    self.log("refilled", slot=sl.id, level=level)
                    rec["sp"] = fsm.MONITOR
                    self._close(sl)
                    self.persist()
            return False
        st = m.sample(level)
        if st != before:
            self._changed(sl, before, st, was)
            before = st
        if st in BACKOFF_STATES and self._left(sl) == 0 and level <= m.low:
            # Back-off over, and still low. Topped up above low (not refilled to high: the
            # episode, and an order of it that may be open, go on) it waits to be low again.
            st = m.event(fsm.E_TIMER)
            self._changed(sl, before, st)
        if st == fsm.ORDERING:
            self.order(sl)
            return True
        return False

    def _changed(self, sl, old, new, was=-1):
        """Log a state change and persist it; a return to MONITOR from an open episode (`was`:
        the state it left, or the one a warm-up or a fault was to resume) closes it."""
        level = sl.level
        if new == fsm.FAULT or old == fsm.FAULT:
            self._sensor(sl, level)
        self.log("state", slot=sl.id, frm=fsm.name(old), to=fsm.name(new), level=level)
        if self.link is not None:
            self.link.dirty = True  # the cloud's retained state is behind
        if new == fsm.MONITOR and (old if was < 0 else was) in OPEN:
            if level >= sl.fsm.high:
                self.log("refilled", slot=sl.id, level=level)
            self._close(sl)
        if new != fsm.ORDERING:  # _order() persists the intent in the same write
            self.persist()

    def _sensor(self, sl, level):
        """A sensor's reading turned faulty (`level` < 0), or sane again."""
        if level < 0:
            from dash.signal import fault_name

            self.log("sensor-fault", slot=sl.id, fault=fault_name(level), raw_level=level)
        else:
            self.log("sensor-ok", slot=sl.id, level=level)

    @staticmethod
    def _close(sl):
        """The depletion episode is over: the next one may order again."""
        rec = sl.rec
        rec["unc"] = 0
        rec["att"] = 0
        for k in ("oc", "od", "ox"):
            rec.pop(k, None)
        sl.deadline = -1
        sl.check_at = -1

    def transition(self, sl, ev):
        old = sl.fsm.state
        new = sl.fsm.event(ev)
        if new != old:
            self._changed(sl, old, new)

    # -- ordering -------------------------------------------------------------------------

    def order(self, sl):
        """Place this slot's order now (see `ordering`, loaded for it and dropped again)."""
        self.authorise()
        try:
            ordering = lib("ordering")
        except MemoryError:
            # Nothing left the device: back off as after any transient failure.
            retry = self.cfg["retry_base_s"]
            sl.deadline = self.up_s + retry
            self.log("order-failed", slot=sl.id, reason="low memory", retry_in_s=retry)
            self.transition(sl, fsm.E_RETRY)
            return
        ordering.order(self, sl)
        drop_phase("ordering")

    def authorise(self):
        """A good access token, refreshed by `lwa` when it is not. Called before an order or a
        periodic call loads its own code, so the refresh's code and that code are never in the
        heap together. None, or why not: (outcome, reason, False, Retry-After); a refusal
        stands for the rest of the step, so LwA is asked once per step at most."""
        if self._refused is None and not self.tokens.valid():
            if not self.tokens.registered:
                return (result.REVOKED, "not registered", False, None)
            wait = self.lwa_at - self.up_s
            if wait > 0:  # LwA's back-off holds for every slot and call, not one
                return (result.TRANSIENT, "LwA backing off", False, b"%d" % wait)
            from dash.platform import net_down

            down = net_down(*self.wifi)  # (a board: joined again if need be)
            if down:  # not LwA's fault: no LwA back-off for it
                return (result.TRANSIENT, "network: " + down, False, None)
            # Between LwA's answer and the rotated refresh token whole on flash, a Ctrl-C
            # (mpremote taking the board) would cost the registration: it waits till then.
            if self.console:
                from dash.platform import hold_interrupt

                hold_interrupt()
            try:
                # The room for LwA's answer first, then the code: big blocks while the heap
                # has them, the code's small ones in what holes are left. (None: `lwa` tries
                # again, and says so when it cannot.)
                from dash.tokens import room

                reserve = room()
                self._refused = lib("lwa").refresh(self, reserve)
                del reserve
            except Exception as e:  # noqa: BLE001 - a bug or MemoryError: back off, as any fault
                self._refused = (result.TRANSIENT, describe(e), False, None)
            finally:
                if self.console:
                    from dash.platform import release_interrupt

                    release_interrupt()
            drop_phase("lwa")  # with what a refusal loaded (`provision`, `episode`)
            r = self._refused
            if r is None:
                self.lwa_att = 0
            elif r[0] == result.TRANSIENT:
                # Device-wide, as its Retry-After: an LwA outage costs the same few requests
                # for eight slots as for one.
                self.lwa_at = self.up_s + self.backoff_s(self.lwa_att, r[3])
                self.lwa_att += 1
        return self._refused

    # -- periodic duties: decided here on uptime alone, made in `duties` ---------------------

    def subscriptions_stale(self):
        if self.sub_dirty or self.sub_at < 0:
            return True
        return self.up_s - self.sub_at >= self.cfg["subscription_check_s"]

    def _duty(self):
        """Which periodic call is due (0 for none; the slot in `_due_slot`). Nothing here
        allocates: a step with nothing to do must not."""
        if not self.tokens.registered or self.creds_bad:
            return 0
        up = self.up_s
        if up >= self.duty_at:
            if self.verify_reg:
                return _D_VERIFY
            if self.subscriptions_stale():
                return _D_SUBS
            if self.ds_up < 0 and up >= self.wall_retry:
                # When DeviceStatus is due, once the clock is known (without one, look for one
                # every ten minutes: NTP may have come). A last-sent time ahead of the clock
                # (it was ahead, then set back) is unknown: due now.
                now = self.clock.wall()
                if not now:
                    self.wall_retry = up + 600
                else:
                    d = now - self.warm["ds"]
                    self.ds_up = up + (_DAY - d if 0 <= d < _DAY else 0)
            if 0 <= self.ds_up <= up:
                return _D_DEVICE
        # Per slot (inline, not a method each: a function is some 100 bytes of heap).
        for sl in self.slots:
            if up < sl.duty_at:
                continue
            self._due_slot = sl
            rec = sl.rec
            st = sl.fsm.state
            if (  # an open order to ask GetOrderInfo about
                st == fsm.ORDERED
                and rec.get("ev")
                and not rec.get("od")
                and (rec.get("oc", 0) < self.cfg["order_checks_max"] or rec.get("ox") == 1)
                and 0 <= sl.check_at <= up
            ):
                return _D_ORDER
            level = sl.level
            if level < 0 or st == fsm.WARMUP or st == fsm.FAULT or st == fsm.SUSPENDED:
                continue
            last = rec.get("rl", -1)
            if last < 0:
                # First sane reading ever: the baseline for SlotStatus, no report.
                now = self.clock.wall()
                if now:
                    rec["rl"] = level
                    rec["rw"] = now
                    sl.report_up = up
                    self.persist()
            elif (
                abs(last - level) >= sl.delta
                and up - sl.report_up >= self.cfg["slot_status_min_s"]
            ):
                return _D_SLOT
        self._due_slot = None
        return 0

    # -- registration and relayed notifications (see `provision`) -------------------------

    def provision(self, fn, *args):
        """Run `provision.<fn>(app, *args)`: "give_challenge", "register" (code), "deregister",
        "relay" (message) or "test_order" (slot id). One entry, not a method each: rarely
        used, so the resident code carries one function for them, not five."""
        self._refused = None
        out = getattr(lib("provision"), fn)(self, *args)
        drop_phase("provision")
        return out

    @staticmethod
    def rand():
        from os import urandom

        b = urandom(3)
        return b[0] << 16 | b[1] << 8 | b[2]

    def backoff_s(self, attempt, retry_after=None):
        """Seconds to wait before retry number `attempt` of anything that failed: the config's
        retry keys, jittered, a server's Retry-After (the header's bytes) as a floor."""
        from dash.backoff import parse_retry_after, retry_delay_s

        cfg = self.cfg
        ra = parse_retry_after(retry_after, self.clock.wall())
        return retry_delay_s(attempt, cfg["retry_base_s"], cfg["retry_cap_s"], self.rand(), ra)


def describe(e):
    return "internal error: %s %s" % (type(e).__name__, str(e)[:60])


current = None  # the App `main` runs: the bench tool reads it live (`bench.status`)


def main():
    """The firmware: never returns, and ends at the REPL only by Ctrl-C or in safe mode."""
    global current
    from dash import platform

    clock = platform.Clock()
    app = App(".", clock)
    live = lib("liveness")
    cause, unclean, why = live.check(".", app.rtc)
    wdt_ms, clean_s = live.WDT_MS, live.CLEAN_S
    del live
    drop("liveness")
    if why:
        # (also what `dashctl` waits for after a reset: it then says the firmware is stopped)
        print("dash: SAFE MODE (%s): the application does not run and the REPL is free;" % why)
        print("dash: fix the cause, then `dashctl restart` (or a power cycle)")
        return
    print("dash: firmware %s started" % VERSION)  # what `dashctl` waits for after a reset
    current = app
    app.wdt = platform.watchdog(wdt_ms)
    app.console = True
    try:
        app.log("start", cause=cause, unclean=unclean)
        _loop(app, clock, unclean, clean_s * 1000)
    except BaseException:
        # At the REPL now (Ctrl-C, or what even the loop could not catch): the watchdog, which
        # cannot be stopped, waits a day, for a person; not ten minutes into a reset loop.
        platform.watchdog(_REPL_WDT_MS)
        raise


def _loop(app, clock, unclean, clean_ms):
    since = clock.ticks_ms()  # the clean run's start: now, and after each failed step
    while True:
        wait = _IDLE_MS
        try:
            if app.running:
                wait = app.step()
            elif not app.reason:
                # The first boot, or again after one that failed (no memory, a bug): an
                # exception here is an error line like a step's, never the end. A bad config
                # idles: no step runs, the cloud link (if any) reports why.
                if app.boot():
                    wait = 0
            app.sick = 0
        except Exception as e:  # noqa: BLE001 - report, wait, carry on: never a reboot loop
            app.sick += 1
            since = clock.ticks_ms()
            try:
                app.log("error", reason=describe(e))
            except MemoryError:
                pass  # no room even to say why: the next step is the next try
            wait = _IDLE_MS
        app.feed()
        # Minutes of steps that all went well (an idle device's too, by the clock: its uptime
        # stands still): the unclean restarts before them no longer count.
        if unclean and not app.sick and clock.ticks_diff(clock.ticks_ms(), since) >= clean_ms:
            unclean = 0
            _clean_run(app)
        link = app.link
        if link is not None:
            try:
                link.idle(wait)  # the cloud link's turns: a command may fix what is wrong
                continue
            except Exception:  # noqa: BLE001 - the link reports its own; never a crash here
                pass
        while wait > 0:  # in naps, each followed by a feed: a long sample period is no hang
            nap = min(wait, _NAP_MS)
            clock.sleep_ms(nap)
            wait -= nap
            app.feed()


def _clean_run(app):
    """Minutes without a crash: the unclean restarts before them no longer count."""
    if app.warm.pop("cr", None) is not None:
        app.keep()
