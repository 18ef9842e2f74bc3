"""The application: wires sensors, signal paths, state machines, tokens, DRS and flash together.

One step per sample: each slot reads, filters and decides; a slot whose machine says ORDERING
places its order. When no order went out in a step, at most one of the device's periodic DRS
duties runs (see `_upkeep`), so there is never more than one TLS connection at a time.
Everything that must survive a reboot or a power cut is in `state.json` (see `_persist`); it
is written only when something changed, and the intent to order is written before the request
leaves the device.
"""

import json
from binascii import crc32

from micropython import const

from dash import fsm, result
from dash.signal import FAULT_NAMES

STATE = "state.json"
_F_UNREADABLE = const(-5)
_IDLE_MS = const(60000)  # how often a suspended device looks at nothing in particular
_DAY = const(86400)
_FAR = const(365 * 86400)  # the latest expected replenishment date we ever report
_RATE_FRAC = const(16)  # consumption rate per day is kept with 4 fraction bits
# Why a slot is suspended (rec["sk"]); what may resume it.
K_SLOT = const(1)  # DRS does not know the slot: the config must change
K_CREDS = const(2)  # LwA refused the client credentials: the secrets must change
K_REG = const(3)  # no registration: a new one (register) resumes the slot
_BACKOFF_STATES = (fsm.INPROGRESS, fsm.RETRY)


class Slot:
    """One consumable: its sensor, signal path, state machine and persisted record."""

    def __init__(self, cfg, sensor, signal, machine):
        self.id = cfg["slot_id"]
        self.cfg = cfg
        self.sensor = sensor
        self.signal = signal
        self.fsm = machine
        self.level = -1
        self.orders = 0  # orders placed since boot
        self.reason = ""  # why suspended or unsubscribed
        self.deadline = -1  # back-off end, in uptime seconds; -1 = none
        self.check_at = -1  # next GetOrderInfo, in uptime seconds
        self.used_up = -1  # uptime s of the last consumption seen
        self.report_up = 0  # uptime s of the last SlotStatus (or its equivalent after boot)
        self.rec = {}


class App:
    def __init__(self, root=".", clock=None, out=None):
        if clock is None:
            from dash.platform import Clock

            clock = Clock()
        self.root = root
        self.clock = clock
        self.out = out or print
        self.cfg = None
        self.slots = []
        self.reason = ""  # why the whole device idles (bad config)
        # Uptime in seconds plus a millisecond remainder, accumulated from tick deltas: wrap-safe,
        # and small ints for years (a board's small ints end at 2**30).
        self._up_s = 0
        self._ms = 0
        self._last = clock.ticks_ms()
        self._state = {"slots": {}}
        self._wifi = ("", "")
        self._sub_at = -1  # uptime s of the last SubscriptionInfo; -1 = not this boot
        self._sub_dirty = False
        self._duty_at = 0  # uptime s before which no periodic duty is tried (after failures)
        self._duty_att = 0
        self._ds_up = -1  # uptime s when DeviceStatus is due; -1 = wall clock not known yet
        self._wall_retry = 0

    # -- reporting ------------------------------------------------------------------------

    def log(self, tag, **fields):
        """One line per event: uptime seconds, a tag, JSON details. Never given a secret."""
        self.out("[%7d] %s %s" % (self._up_s, tag, json.dumps(fields)))

    def status(self):
        """What the device would show a maker: per slot and for the device. No secret."""
        slots = []
        for sl in self.slots:
            rec = sl.rec
            sub = self._state.get("sub", {}).get(sl.id)
            slots.append(
                {
                    "slot": sl.id,
                    "state": fsm.NAMES[sl.fsm.state],
                    "level": sl.level,
                    "orders_placed": sl.orders,
                    "event_instance_id": rec.get("ev"),
                    "detail_code": rec.get("dc"),
                    "test_order": bool(rec.get("test")),
                    "backoff_s": self._left(sl),
                    "reason": sl.reason,
                    "subscribed": None if sub is None or sub < 0 else sub == 1,
                }
            )
        out = {
            "registered": bool(self.cfg) and self.tokens.registered,
            "slots": slots,
            "token_expires_s": self.tokens.expires_in_s() if self.cfg else -1,
            "device_status_sent": self._state.get("ds", 0),
            "handshakes": self.https.handshakes if self.cfg else 0,
            "flash_writes": self.store.writes if self.cfg else 0,
        }
        if len(slots) == 1:
            out.update(slots[0])  # a one-slot device shows its slot at the top level
        elif not slots:
            out.update(state="suspended", reason=self.reason, orders_placed=0)
        return out

    # -- boot -----------------------------------------------------------------------------

    def boot(self):
        """Load config and persisted state. Returns False (and idles) when config is bad."""
        from dash import config
        from dash.store import Store

        cfg, sec, errors = config.load(self.root)
        if errors:
            for e in errors:
                self.log("config-error", message=e)
            self.reason = "config"
            self.log("suspended", reason="config", hint="fix the files above, then reset")
            return False
        from dash import lwa
        from dash.https import Https
        from dash.platform import open_sensor
        from dash.signal import Signal

        self.cfg = cfg
        self._wifi = (sec["wifi_ssid"], sec["wifi_password"])
        self.store = Store(self.root)
        self.https = Https(self._path(cfg["ca_file"]), cfg["http_timeout_s"])
        self.drs_url = config.parse_url(cfg["drs_url"])
        self.lwa_url = config.parse_url(cfg["lwa_url"])
        self.tokens = lwa.Tokens(self.store, sec, self.clock, cfg["token_margin_s"])
        for sc in cfg["slots"]:
            s = sc["sensor"]
            if s["kind"] == "file":
                s["path"] = self._path(s["path"])
            signal = Signal(
                s["raw_empty"],
                s["raw_full"],
                s["capacity"],
                s["margin"],
                s["raw_max"],
                s["stuck_samples"],
                s["max_drop"],
                s["median"],
                s["ema_shift"],
            )
            machine = fsm.Machine(
                sc["low"], sc["high"], sc["confirm_samples"], sc["warmup_samples"]
            )
            self.slots.append(Slot(sc, open_sensor(s), signal, machine))
        self._fingerprint = self._files_crc()
        self._restore()
        now = self.clock.wall()
        if now:
            self._ds_up = max(0, self._state.get("ds", 0) + _DAY - now)
            for sl in self.slots:
                rw = sl.rec.get("rw", 0)
                sl.report_up = rw - now if rw else 0  # negative: that long before boot
        if not self.tokens.registered:
            self.log("unregistered", hint="register the device to let it order")
        return True

    def _path(self, name):
        return name if name.startswith("/") else self.root + "/" + name

    def _files_crc(self):
        """Identifies the provisioning a suspension was decided under (not the secrets)."""
        c = 0
        for name in ("config.json", "secrets.json"):
            try:
                with open(self._path(name), "rb") as f:
                    c = crc32(f.read(), c)
            except OSError:
                pass
        return c

    def _restore(self):
        st = self.store.load(STATE)
        corrupt = st is None and self.store.exists(STATE)
        if corrupt:
            self.log("state-reset", reason="state file corrupt; starting from defaults")
        if st is None or not isinstance(st.get("slots"), dict):
            st = {"slots": {}}
        old = st["slots"]
        st["slots"] = {}  # slots no longer configured are forgotten
        self._state = st
        for sl in self.slots:
            rec = old.get(sl.id)
            if not isinstance(rec, dict):
                # Without a record we cannot know whether an order is open; if DRS says one
                # is, take it as ours.
                rec = {"unc": 1} if corrupt else {}
            st["slots"][sl.id] = rec
            sl.rec = rec
            self._restore_slot(sl)

    def _restore_slot(self, sl):
        rec = sl.rec
        st = rec.get("st", fsm.MONITOR)
        if not isinstance(st, int) or not 0 <= st < fsm.N_STATES:
            st = fsm.MONITOR
        if st == fsm.SUSPENDED:
            if rec.get("sk") == K_REG:
                human = self.tokens.registered  # registered again (new secrets, or a code)
            else:
                human = rec.get("sf") != self._fingerprint  # config or secrets changed
            if human:
                self.log("resumed", slot=sl.id, reason="provisioning changed since suspension")
                st = fsm.MONITOR
                rec.pop("sr", None)
                rec.pop("sk", None)
            else:
                sl.reason = rec.get("sr", "")
                self.log("suspended", slot=sl.id, reason=sl.reason)
        if rec.get("fl"):
            # The last request may have left before the power went: an open order may be ours.
            rec["unc"] = 1
            rec["fl"] = 0
        if st in _BACKOFF_STATES:
            left = rec.get("dr", 0)
            now, dw = self.clock.wall(), rec.get("dw", 0)
            if now and dw:
                left = dw - now
            sl.deadline = max(0, min(left, rec.get("dr", left)))
        if st == fsm.ORDERED:
            sl.check_at = min(600, self.cfg["order_check_s"])
        sl.fsm.restore(st)
        self.log(
            "boot",
            slot=sl.id,
            state=fsm.NAMES[st],
            event_instance_id=rec.get("ev"),
            backoff_s=self._left(sl),
        )

    # -- persistence ----------------------------------------------------------------------

    def _up(self):
        return self._up_s

    def _left(self, sl):
        if sl.deadline < 0:
            return -1
        return max(0, sl.deadline - self._up())

    def _persist(self):
        for sl in self.slots:
            rec = sl.rec
            rec["st"] = sl.fsm.durable()
            left = self._left(sl)
            if left >= 0 and rec["st"] in _BACKOFF_STATES:
                now = self.clock.wall()
                rec["dr"] = left
                rec["dw"] = now + left if now else 0
            else:
                rec.pop("dr", None)
                rec.pop("dw", None)
            if rec["st"] == fsm.SUSPENDED:
                rec["sr"] = sl.reason
                rec["sf"] = self._fingerprint
        self.store.save(STATE, self._state)

    # -- the loop -------------------------------------------------------------------------

    def step(self):
        """Sample once, decide, act. Returns milliseconds until the next step is due."""
        now = self.clock.ticks_ms()
        ms = self._ms + self.clock.ticks_diff(now, self._last)
        if ms >= 1000:
            self._up_s += ms // 1000
            ms %= 1000
        self._ms = ms
        self._last = now
        wait = self.cfg["sample_s"] * 1000
        ordered = False
        for sl in self.slots:
            if self._step_slot(sl):
                ordered = True
            left = self._left(sl)
            if left > 0 and left * 1000 < wait and sl.fsm.state in _BACKOFF_STATES:
                wait = left * 1000
        if not ordered and self.tokens.registered and self._up() >= self._duty_at:
            self._upkeep()
        return wait

    def _step_slot(self, sl):
        """One sample of one slot. True when it placed (or tried) an order."""
        m = sl.fsm
        before = m.state
        if before == fsm.SUSPENDED:
            return False
        raw = sl.sensor.read()
        level = _F_UNREADABLE if raw is None else sl.signal.feed(raw)
        if 0 <= level < sl.level:
            sl.used_up = self._up_s
        sl.level = level
        st = m.sample(level)
        if st != before:
            self._changed(sl, before, st)
            before = st
        if st in _BACKOFF_STATES and self._left(sl) == 0:
            st = m.event(fsm.E_TIMER)
            self._changed(sl, before, st)
        if st == fsm.ORDERING:
            self._order(sl)
            return True
        return False

    def _changed(self, sl, old, new):
        level = sl.level
        if new == fsm.FAULT:
            fault = FAULT_NAMES.get(level, "unreadable")
            self.log("sensor-fault", slot=sl.id, fault=fault, raw_level=level)
        elif old == fsm.FAULT:
            self.log("sensor-ok", slot=sl.id, level=level)
        self.log("state", slot=sl.id, frm=fsm.NAMES[old], to=fsm.NAMES[new], level=level)
        if new == fsm.MONITOR and old in (fsm.ORDERED, fsm.INPROGRESS, fsm.RETRY):
            rec = sl.rec
            if level >= sl.cfg["high"]:
                # Refilled: the depletion episode is over; the next one may order again.
                self.log("refilled", slot=sl.id, level=level)
            rec["unc"] = 0
            rec["att"] = 0
            rec.pop("oc", None)
            rec.pop("od", None)
            sl.deadline = -1
            sl.check_at = -1
        if new != fsm.ORDERING:  # _order() persists the intent in the same write
            self._persist()

    def _transition(self, sl, ev):
        old = sl.fsm.state
        new = sl.fsm.event(ev)
        if new != old:
            self._changed(sl, old, new)

    def _suspend(self, sl, kind, reason):
        sl.reason = reason
        sl.rec["sk"] = kind
        self.log("suspended", slot=sl.id, reason=reason)
        self._transition(sl, fsm.E_SUSPEND)

    # -- talking to DRS -------------------------------------------------------------------

    def _call(self, kind, path, body=b"", max_body=1024):
        """One authorised DRS call: ((status, body, headers), None), or (None, (outcome,
        reason, maybe_sent)) when no answer came. Refreshes the access token when needed and
        once more when DRS refuses it (400/401/403)."""
        from dash import drs
        from dash.https import E_TIMEOUT, ERROR_NAMES, HttpError
        from dash.platform import net_up

        if not net_up(*self._wifi):
            return None, (result.TRANSIENT, "network: no Wi-Fi", False)
        for again in (False, True):
            try:
                if not self.tokens.valid():
                    outcome, reason = self.tokens.renew(self.https, self.lwa_url)
                    self.log("token-refresh", ok=outcome == result.OK, reason=reason)
                    if outcome != result.OK:
                        self._token_refused(outcome, reason)
                        return None, (outcome, reason, False)
                ans = drs.call(
                    self.https, self.drs_url, kind, path, self.tokens.access, body, max_body
                )
            except HttpError as e:
                code = e.args[0]
                return None, (result.TRANSIENT, "network: " + ERROR_NAMES[code], code >= E_TIMEOUT)
            if ans[0] in (400, 401, 403) and not again:
                self.log(
                    "auth-refused", path=path, status=ans[0], action="refresh token, retry once"
                )
                self.tokens.invalidate()
                continue
            return ans, None

    def _token_refused(self, outcome, reason):
        if outcome == result.REVOKED:
            self._unregister(reason)
        elif outcome == result.SUSPEND:
            for sl in self.slots:
                if sl.fsm.state != fsm.SUSPENDED:
                    self._suspend(sl, K_CREDS, reason)

    # -- ordering -------------------------------------------------------------------------

    def _order(self, sl):
        rec = sl.rec
        cfg = self.cfg
        try:
            outcome, eid, code, reason, hdrs = self._replenish(sl)
        except Exception as e:  # noqa: BLE001 - a bug or MemoryError must not stop the device
            rec["unc"] = 1
            outcome, eid, code, reason, hdrs = result.TRANSIENT, None, None, _describe(e), {}
        rec["fl"] = 0
        if sl.fsm.state != fsm.ORDERING:
            self._persist()  # the registration or the credentials went away: suspended
            return
        if outcome == result.OK or (outcome == result.INPROGRESS and rec.get("unc")):
            test = code == "TEST_ORDER_PLACED"
            rec["ev"] = eid
            rec["dc"] = code
            rec["ot"] = self.clock.wall()
            rec["att"] = 0
            rec["test"] = 1 if test else 0
            rec.pop("oc", None)
            rec.pop("od", None)
            sl.deadline = -1
            sl.check_at = self._up() + cfg["order_check_s"]
            if outcome == result.OK:
                sl.orders += 1
                self.log(
                    "order-placed", slot=sl.id, event_instance_id=eid, detail_code=code, test=test
                )
            else:
                self.log(
                    "order-recovered",
                    slot=sl.id,
                    event_instance_id=eid,
                    detail_code=code,
                    note="an earlier request of this episode may have placed it",
                )
            self._transition(sl, fsm.E_PLACED)
        elif outcome == result.INPROGRESS:
            backoff = cfg["inprogress_backoff_s"]
            backoff += _rand() % (backoff // 10 + 1)
            sl.deadline = self._up() + backoff
            rec["att"] = 0
            self.log("order-inprogress", slot=sl.id, event_instance_id=eid, backoff_s=backoff)
            self._transition(sl, fsm.E_INPROGRESS)
        elif outcome == result.UNSUBSCRIBED:
            sl.reason = "no subscription for this slot"
            self.log("slot-unsubscribed", slot=sl.id, action="no order until subscribed")
            self._transition(sl, fsm.E_UNSUB)
        elif outcome == result.SUSPEND:
            self._suspend(sl, K_SLOT, reason)
        else:
            if outcome == result.UNKNOWN:
                rec["unc"] = 1
            from dash.backoff import parse_retry_after, retry_delay_s

            att = rec.get("att", 0)
            delay = retry_delay_s(
                att,
                cfg["retry_base_s"],
                cfg["retry_cap_s"],
                _rand(),
                parse_retry_after(hdrs.get("retry-after")),
            )
            rec["att"] = att + 1
            sl.deadline = self._up() + delay
            self.log(
                "order-failed",
                slot=sl.id,
                reason=reason,
                detail_code=code,
                retry_in_s=delay,
                attempt=att + 1,
            )
            self._transition(sl, fsm.E_RETRY)

    def _replenish(self, sl):
        """(outcome, eventInstanceId, detailCode, reason, kept headers) of one order attempt:
        registration and subscription first, then the intent on flash, then Replenish."""
        from dash import drs

        rec = sl.rec
        if not self.tokens.registered:
            self._suspend(sl, K_REG, "not registered: register the device to let it order")
            return result.SUSPEND, None, None, "", {}
        subs = self._state.get("sub")
        if not subs or sl.id not in subs:
            failed = self._fetch_subscriptions()
            if failed:
                return failed[0], None, None, failed[1], {}
            subs = self._state["sub"]
        if sl.fsm.state != fsm.ORDERING:
            return result.SUSPEND, None, None, "", {}  # the answer showed the slot unknown
        if subs.get(sl.id) != 1:
            return result.UNSUBSCRIBED, None, None, "", {}
        rec["fl"] = 1
        self._persist()  # the intent is on flash before anything leaves the device
        self.log("order-request", slot=sl.id, attempt=rec.get("att", 0))
        ans, fail = self._call(drs.REPLENISH, drs.replenish_path(sl.id))
        if fail:
            if fail[2]:
                rec["unc"] = 1  # the request may have been acted on
            return fail[0], None, None, fail[1], {}
        status, body, hdrs = ans
        outcome, eid, dc, reason = drs.classify(status, body)
        if status >= 500:
            rec["unc"] = 1
        return outcome, eid, dc, reason, hdrs

    # -- periodic duties ------------------------------------------------------------------

    def _upkeep(self):
        """At most one periodic DRS call per step, most important first. What is due is
        decided on uptime alone; the wall clock (a big int on a board) is read only when a
        call is to be made, so a step with nothing to do allocates nothing."""
        up = self._up_s
        failed = None
        if self._subscriptions_stale():
            failed = self._fetch_subscriptions()
        elif 0 <= self._ds_up <= up or (self._ds_up < 0 and up >= self._wall_retry):
            now = self.clock.wall()
            if not now:
                self._wall_retry = up + 600  # no clock yet: look again in ten minutes
                return
            ds = self._state.get("ds", 0)
            if now - ds < _DAY:  # learned the clock just now, and it is not due yet
                self._ds_up = up + ds + _DAY - now
                return
            failed = self._device_status(now)
        else:
            for sl in self.slots:
                if self._order_check_due(sl):
                    failed = self._order_info(sl)
                    break
                if self._slot_status_due(sl):
                    now = self.clock.wall()
                    if now:
                        failed = self._slot_status(sl, now)
                        break
            else:
                return
        if failed:
            from dash.backoff import retry_delay_s

            delay = retry_delay_s(
                self._duty_att, self.cfg["retry_base_s"], self.cfg["retry_cap_s"], _rand()
            )
            self._duty_att += 1
            self._duty_at = self._up() + delay
            self.log("duty-failed", reason=failed[1], retry_in_s=delay)
        else:
            self._duty_att = 0

    def _subscriptions_stale(self):
        if self._sub_dirty or self._sub_at < 0:
            return True
        return self._up() - self._sub_at >= self.cfg["subscription_check_s"]

    def _fetch_subscriptions(self):
        """SubscriptionInfo into the cache. None on success, else (outcome, reason)."""
        from dash import drs

        ans, fail = self._call(drs.SUBSCRIPTION, "/subscriptionInfo", max_body=2048)
        if fail:
            return fail[:2]
        if ans[0] != 200:
            return drs.status_outcome(ans[0]), drs.status_reason(ans[0])
        subs = drs.parse_subscriptions(ans[1], [sl.id for sl in self.slots])
        if subs is None:
            return result.TRANSIENT, "SubscriptionInfo answer not understood"
        self._sub_at = self._up()
        self._sub_dirty = False
        old = self._state.get("sub") or {}
        new = {}
        for sl in self.slots:
            on = subs[sl.id]
            new[sl.id] = on
            if old.get(sl.id) != on:
                self.log("subscription", slot=sl.id, subscribed=on == 1, known=on >= 0)
            if on == 1 and sl.fsm.state == fsm.UNSUBSCRIBED:
                sl.reason = ""
                self._transition(sl, fsm.E_REARM)
            elif on < 0 and sl.fsm.state != fsm.SUSPENDED:
                self._suspend(sl, K_SLOT, "slot does not exist (not in SubscriptionInfo)")
        self._state["sub"] = new
        self._persist()
        return None

    def _device_status(self, now):
        from dash import drs

        ans, fail = self._call(drs.DEVICE_STATUS, "/deviceStatus", drs.device_status_body(now))
        if fail:
            return fail[:2]
        if not 200 <= ans[0] < 300:
            return drs.status_outcome(ans[0]), drs.status_reason(ans[0])
        self._state["ds"] = now
        self._ds_up = self._up_s + _DAY
        self._persist()
        self.log("device-status", sent=drs.iso8601(now))
        return None

    def _order_check_due(self, sl):
        rec = sl.rec
        return (
            sl.fsm.state == fsm.ORDERED
            and rec.get("ev")
            and not rec.get("od")
            and rec.get("oc", 0) < self.cfg["order_checks_max"]
            and 0 <= sl.check_at <= self._up()
        )

    def _order_info(self, sl):
        from dash import drs

        rec = sl.rec
        eid = rec["ev"]
        path = drs.order_info_path(eid)
        if path is None:
            rec["od"] = 1
            self._persist()
            return None
        ans, fail = self._call(drs.ORDER_INFO, path, max_body=2048)
        if fail:
            return fail[:2]
        status, body, _ = ans
        sl.check_at = self._up() + self.cfg["order_check_s"]
        if status in (400, 404):
            # DRS does not know the id (an ORDER_INPROGRESS answer's, say): stop asking.
            rec["od"] = 1
            self.log("order-info", slot=sl.id, event_instance_id=eid, status="unknown")
            self._persist()
            return None
        if status != 200:
            return drs.status_outcome(status), drs.status_reason(status)
        o = drs.parse_order_status(body, eid)
        if o is None:
            return result.TRANSIENT, "GetOrderInfo answer not understood"
        if o == drs.O_CANCELLED:
            self._cancelled(sl, "GetOrderInfo")
        elif o == drs.O_DONE:
            rec["od"] = 1
            self.log("order-delivered", slot=sl.id, event_instance_id=eid)
            self._persist()
        else:
            rec["oc"] = rec.get("oc", 0) + 1
            self.log("order-info", slot=sl.id, event_instance_id=eid, status="open")
            self._persist()
        return None

    def _cancelled(self, sl, source):
        rec = sl.rec
        self.log("order-cancelled", slot=sl.id, event_instance_id=rec.get("ev"), source=source)
        rec["unc"] = 0  # the open order was ours and is gone: a new one is not a duplicate
        sl.check_at = -1
        self._transition(sl, fsm.E_REARM)

    def _slot_status_due(self, sl):
        level = sl.level
        st = sl.fsm.state
        if level < 0 or st == fsm.WARMUP or st == fsm.FAULT or st == fsm.SUSPENDED:
            return False
        rec = sl.rec
        last = rec.get("rl", -1)
        if last < 0:
            # First sane reading ever: the baseline, no report.
            now = self.clock.wall()
            if now:
                rec["rl"] = level
                rec["rw"] = now
                sl.report_up = self._up_s
                self._persist()
            return False
        return (
            abs(last - level) >= sl.cfg["report_delta"]
            and self._up_s - sl.report_up >= self.cfg["slot_status_min_s"]
        )

    def _slot_status(self, sl, now):
        from dash import drs

        rec = sl.rec
        level = sl.level
        rate = rec.get("rate", 0)
        used = rec.get("rl", level) - level
        dt = now - rec.get("rw", now)
        if used > 0 and dt > 0:
            # Units per day, fixed point; an EMA over about four reports.
            sample = used * _DAY * _RATE_FRAC // dt
            rate = sample if rate <= 0 else rate + (sample - rate) // 4
        low = sl.cfg["low"]
        if level <= low:
            expected = now
        elif rate > 0:
            expected = now + min((level - low) * _DAY * _RATE_FRAC // rate, _FAR)
        else:
            expected = now + _FAR
        last_use = now - (self._up_s - sl.used_up) if sl.used_up >= 0 else rec.get("lu") or now
        body = drs.slot_status_body(level, sl.cfg["sensor"]["capacity"], level, last_use, expected)
        ans, fail = self._call(drs.SLOT_STATUS, "/slotStatus/" + sl.id, body)
        if fail:
            return fail[:2]
        if not 200 <= ans[0] < 300:
            return drs.status_outcome(ans[0]), drs.status_reason(ans[0])
        rec["rl"] = level
        rec["rw"] = now
        sl.report_up = self._up_s
        rec["rate"] = rate
        rec["lu"] = last_use
        self.log(
            "slot-status",
            slot=sl.id,
            remaining=level,
            per_day=rate // _RATE_FRAC,
            expected=drs.iso8601(expected),
        )
        self._persist()
        return None

    # -- registration and relayed notifications -------------------------------------------

    def challenge(self):
        """The PKCE challenge for the maker's registration page (the verifier stays here)."""
        from dash import provision

        c = provision.challenge(provision.verifier(self.store))
        return {"code_challenge": c, "code_challenge_method": "S256"}

    def register(self, code):
        """Exchange an authorization code from the registration page for the device's tokens."""
        from dash import provision
        from dash.config import printable
        from dash.https import ERROR_NAMES, HttpError

        def refuse(why):
            self.log("register-failed", reason=why)
            return {"ok": False, "reason": why}

        if self.tokens.registered:
            return refuse("already registered: deregister first")
        redirect = self.cfg["redirect_uri"]
        if not redirect:
            return refuse("config.json: 'redirect_uri' is needed to register")
        if not isinstance(code, str) or not 0 < len(code) <= 512 or not printable(code):
            return refuse("that is not an authorization code")
        verifier = ""
        if not self.tokens.client_secret:
            if not self.store.exists(provision.PKCE):
                return refuse("no PKCE challenge was given out: ask for the challenge first")
            verifier = provision.verifier(self.store)
        try:
            outcome, reason = self.tokens.exchange(
                self.https, self.lwa_url, code, redirect, verifier
            )
        except HttpError as e:
            return refuse("network: " + ERROR_NAMES[e.args[0]])
        if outcome != result.OK:
            return refuse(reason)
        self.store.remove(provision.PKCE)  # a verifier is good for one exchange
        self.log("registered", pkce=bool(verifier))
        self._sub_dirty = True
        for sl in self.slots:
            if sl.fsm.state == fsm.SUSPENDED and sl.rec.get("sk") == K_REG:
                sl.reason = ""
                sl.rec.pop("sk", None)
                sl.rec.pop("sr", None)
                self._transition(sl, fsm.E_REARM)
        return {"ok": True, "reason": ""}

    def deregister(self):
        """Tell DRS the registration ends, then forget every token whatever DRS said."""
        from dash import drs

        confirmed = False
        if self.tokens.registered:
            ans, _ = self._call(drs.DEREGISTER, "/registration")
            confirmed = ans is not None and 200 <= ans[0] < 300
        self._unregister("deregistered on request")
        return {"ok": True, "drs_confirmed": confirmed}

    def _unregister(self, reason):
        """No registration any more: no token stays on flash and no slot orders."""
        from dash import provision

        self.tokens.wipe()
        provision.forget_provisioned_token(self.root)
        self._fingerprint = self._files_crc()
        self._state.pop("sub", None)
        self.log("unregistered", reason=reason)
        for sl in self.slots:
            if sl.fsm.state != fsm.SUSPENDED:
                self._suspend(sl, K_REG, reason)
        self._persist()

    def relay(self, msg):
        """A DRS notification relayed by the maker's cloud (SNS -> MQTT -> here)."""
        info = msg.get("notificationInfo") if isinstance(msg, dict) else None
        kind = info.get("notificationType") if isinstance(info, dict) else None
        if not isinstance(kind, str):
            self.log("relay-ignored", reason="not a DRS notification")
            return {"ok": False, "reason": "not a DRS notification"}
        kind = kind.replace("Notification", "")
        self.log("relay", type=kind)
        if kind == "SubscriptionChanged":
            self._sub_dirty = True
        elif kind == "DeviceDeregistered":
            if self.tokens.registered:
                self._unregister("deregistered (notification)")
        elif kind == "OrderCancelled":
            order = msg.get("orderInfo")
            eid = order.get("instanceId") if isinstance(order, dict) else None
            for sl in self.slots:
                if eid and sl.rec.get("ev") == eid and sl.fsm.state == fsm.ORDERED:
                    self._cancelled(sl, "notification")
        return {"ok": True, "reason": ""}


def _describe(e):
    return "internal error: %s %s" % (type(e).__name__, str(e)[:60])


def _rand():
    from os import urandom

    b = urandom(3)
    return b[0] << 16 | b[1] << 8 | b[2]


def main():
    from dash.platform import Clock, net_up

    clock = Clock()
    app = App(".", clock)
    if not app.boot():
        while True:
            clock.sleep_ms(_IDLE_MS)
    net_up(*app._wifi)  # early, so the clock is set before the first token is stored
    while True:
        try:
            wait = app.step()
        except Exception as e:  # noqa: BLE001 - report, wait, carry on: never a reboot loop
            app.log("error", reason=_describe(e))
            wait = _IDLE_MS
        clock.sleep_ms(wait)
