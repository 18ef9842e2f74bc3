"""The application: wires sensor, signal path, state machine, tokens, DRS and flash together.

One step per sample: read, filter, decide; when the machine says ORDERING, place the order.
Everything that must survive a reboot or a power cut is in `state.json` (see `_persist`);
it is written only when something changed, and the intent to order is written before the
request leaves the device.
"""

import json
from binascii import crc32

from micropython import const

from dash import fsm, result
from dash.signal import FAULT_NAMES

STATE = "state.json"
_F_UNREADABLE = const(-5)
_IDLE_MS = const(60000)  # how often a suspended device looks at nothing in particular


class App:
    def __init__(self, root=".", clock=None, out=None):
        if clock is None:
            from dash.platform import Clock

            clock = Clock()
        self.root = root
        self.clock = clock
        self.out = out or print
        self.cfg = None
        self.fsm = None
        self.level = -1
        self.orders = 0  # orders placed since boot
        self.reason = ""  # why suspended
        self._up_ms = 0  # uptime, accumulated from tick deltas (wrap-safe over weeks)
        self._last = clock.ticks_ms()
        self._deadline = -1  # back-off end, in uptime seconds; -1 = none
        self._rec = {}
        self._wifi = ("", "")

    # -- reporting ------------------------------------------------------------------------

    def log(self, tag, **fields):
        """One line per event: uptime seconds, a tag, JSON details. Never given a secret."""
        self.out("[%7d] %s %s" % (self._up_ms // 1000, tag, json.dumps(fields)))

    def status(self):
        st = self.fsm.state if self.fsm else fsm.SUSPENDED
        rec = self._rec
        return {
            "state": fsm.NAMES[st],
            "level": self.level,
            "orders_placed": self.orders,
            "event_instance_id": rec.get("ev"),
            "detail_code": rec.get("dc"),
            "backoff_s": self._remaining_s(),
            "token_expires_s": self.tokens.expires_in_s() if self.cfg else -1,
            "reason": self.reason,
            "handshakes": self.https.handshakes if self.cfg else 0,
            "flash_writes": self.store.writes if self.cfg else 0,
        }

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
        s = cfg["sensor"]
        if s["kind"] == "file":
            s["path"] = self._path(s["path"])
        self.sensor = open_sensor(s)
        self.signal = Signal(
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
        self.fsm = fsm.Machine(
            cfg["low"], cfg["high"], cfg["confirm_samples"], cfg["warmup_samples"]
        )
        self._fingerprint = self._files_crc()
        self._restore()
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
        rec = self.store.load(STATE)
        if rec is None:
            rec = {}
            if self.store.exists(STATE):
                # We cannot know whether an order is open; if DRS says one is, take it as ours.
                rec["unc"] = 1
                self.log("state-reset", reason="state file corrupt; starting from defaults")
        self._rec = rec
        st = rec.get("st", fsm.MONITOR)
        if not isinstance(st, int):
            st = fsm.MONITOR
        if st == fsm.SUSPENDED:
            if rec.get("sf") != self._fingerprint:
                # Config or secrets changed since: the human we waited for has acted.
                self.log("resumed", reason="configuration changed since suspension")
                st = fsm.MONITOR
                rec.pop("sr", None)
            else:
                self.reason = rec.get("sr", "")
                self.log("suspended", reason=self.reason)
        if rec.get("fl"):
            # The last request may have left before the power went: an open order may be ours.
            rec["unc"] = 1
            rec["fl"] = 0
        if st in (fsm.INPROGRESS, fsm.RETRY):
            left = rec.get("dr", 0)
            now, dw = self.clock.wall(), rec.get("dw", 0)
            if now and dw:
                left = dw - now
            self._deadline = max(0, min(left, rec.get("dr", left)))
        self.fsm.restore(st)
        self.log(
            "boot",
            state=fsm.NAMES[st],
            event_instance_id=rec.get("ev"),
            backoff_s=self._remaining_s(),
        )

    # -- persistence ----------------------------------------------------------------------

    def _remaining_s(self):
        if self._deadline < 0:
            return -1
        return max(0, self._deadline - self._up_ms // 1000)

    def _persist(self):
        rec = self._rec
        rec["st"] = self.fsm.durable()
        left = self._remaining_s()
        if left >= 0 and rec["st"] in (fsm.INPROGRESS, fsm.RETRY):
            now = self.clock.wall()
            rec["dr"] = left
            rec["dw"] = now + left if now else 0
        else:
            rec.pop("dr", None)
            rec.pop("dw", None)
        if rec["st"] == fsm.SUSPENDED:
            rec["sr"] = self.reason
            rec["sf"] = self._fingerprint
        self.store.save(STATE, rec)

    # -- the loop -------------------------------------------------------------------------

    def step(self):
        """Sample once, decide, act. Returns milliseconds until the next step is due."""
        now = self.clock.ticks_ms()
        self._up_ms += self.clock.ticks_diff(now, self._last)
        self._last = now
        period = self.cfg["sample_s"] * 1000
        m = self.fsm
        before = m.state
        if before == fsm.SUSPENDED:
            return _IDLE_MS
        raw = self.sensor.read()
        level = _F_UNREADABLE if raw is None else self.signal.feed(raw)
        self.level = level
        st = m.sample(level)
        if st != before:
            self._changed(before, st, level)
            before = st
        if (st == fsm.INPROGRESS or st == fsm.RETRY) and self._remaining_s() == 0:
            st = m.event(fsm.E_TIMER)
            self._changed(before, st, level)
        if st == fsm.ORDERING:
            self._order()
        left = self._remaining_s()
        if left > 0 and left * 1000 < period and m.state in (fsm.INPROGRESS, fsm.RETRY):
            return left * 1000
        return period

    def _changed(self, old, new, level):
        if new == fsm.FAULT:
            self.log("sensor-fault", fault=FAULT_NAMES.get(level, "unreadable"), raw_level=level)
        elif old == fsm.FAULT:
            self.log("sensor-ok", level=level)
        self.log("state", frm=fsm.NAMES[old], to=fsm.NAMES[new], level=level)
        if new == fsm.MONITOR and old in (fsm.ORDERED, fsm.INPROGRESS, fsm.RETRY):
            # Refilled: the depletion episode is over; the next one may order again.
            self.log("refilled", level=level)
            rec = self._rec
            rec["unc"] = 0
            rec["att"] = 0
            self._deadline = -1
        if new != fsm.ORDERING:  # _order() persists the intent in the same write
            self._persist()

    # -- ordering -------------------------------------------------------------------------

    def _order(self):
        rec = self._rec
        cfg = self.cfg
        rec["fl"] = 1
        self._persist()  # the intent is on flash before anything leaves the device
        self.log("order-request", slot=cfg["slot_id"], attempt=rec.get("att", 0))
        try:
            outcome, eid, code, reason, hdrs = self._replenish()
        except Exception as e:  # noqa: BLE001 - a bug or MemoryError must not stop the device
            rec["unc"] = 1
            outcome, eid, code, reason, hdrs = result.TRANSIENT, None, None, _describe(e), {}
        rec["fl"] = 0
        if outcome == result.OK or (outcome == result.INPROGRESS and rec.get("unc")):
            test = code == "TEST_ORDER_PLACED"
            rec["ev"] = eid
            rec["dc"] = code
            rec["ot"] = self.clock.wall()
            rec["att"] = 0
            self._deadline = -1
            if outcome == result.OK:
                self.orders += 1
                self.log("order-placed", event_instance_id=eid, detail_code=code, test=test)
            else:
                self.log(
                    "order-recovered",
                    event_instance_id=eid,
                    detail_code=code,
                    note="an earlier request of this episode may have placed it",
                )
            self._transition(fsm.E_PLACED)
        elif outcome == result.INPROGRESS:
            backoff = cfg["inprogress_backoff_s"]
            backoff += _rand() % (backoff // 10 + 1)
            self._deadline = self._up_ms // 1000 + backoff
            rec["att"] = 0
            self.log("order-inprogress", event_instance_id=eid, backoff_s=backoff)
            self._transition(fsm.E_INPROGRESS)
        elif outcome == result.SUSPEND:
            self.reason = reason
            self.log("suspended", reason=reason)
            self._transition(fsm.E_SUSPEND)
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
            self._deadline = self._up_ms // 1000 + delay
            self.log(
                "order-failed", reason=reason, detail_code=code, retry_in_s=delay, attempt=att + 1
            )
            self._transition(fsm.E_RETRY)

    def _transition(self, ev):
        old = self.fsm.state
        self._changed(old, self.fsm.event(ev), self.level)

    def _replenish(self):
        """(outcome, eventInstanceId, detailCode, reason, kept headers) of one Replenish,
        refreshing the token first when needed and once more if DRS refuses it."""
        from dash import drs
        from dash.https import E_TIMEOUT, ERROR_NAMES, HttpError
        from dash.platform import net_up

        if not net_up(*self._wifi):
            return result.TRANSIENT, None, None, "network: no Wi-Fi", {}
        rec = self._rec
        for again in (False, True):
            try:
                if not self.tokens.valid():
                    outcome, reason = self.tokens.renew(self.https, self.lwa_url)
                    self.log("token-refresh", ok=outcome == result.OK, reason=reason)
                    if outcome != result.OK:
                        return outcome, None, None, reason, {}
                status, body, hdrs = drs.replenish(
                    self.https, self.drs_url, self.cfg["slot_id"], self.tokens.access
                )
            except HttpError as e:
                code = e.args[0]
                if code >= E_TIMEOUT:
                    rec["unc"] = 1  # the request may have been acted on
                return result.TRANSIENT, None, None, "network: " + ERROR_NAMES[code], {}
            outcome, eid, dc, reason = drs.classify(status, body)
            if status >= 500:
                rec["unc"] = 1
            if outcome == result.AUTH and not again:
                self.log("order-auth-refused", status=status, action="refresh token, retry once")
                self.tokens.invalidate()
                continue
            return outcome, eid, dc, reason, hdrs


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
