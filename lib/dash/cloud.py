"""The cloud link: the device's MQTT session with the maker's cloud. Policy only; `mqtt` does
the I/O. Loaded at boot when config.json has an "mqtt" object, and then resident.

Topics, under `<topic_prefix>/<device_id>/`:
  state       retained: the device's status (`status`): when it changed, on request, and
              every `state_s` at least
  online      retained: {"online": true, ...} at each connect; the last will: {"online": false}
  event       each event once (QoS 1): {"n": sequence, "t": tag, "up": uptime s, "f": fields}
  cmd/<kind>  commands to the device (QoS 1), taken by `commands`

Ordering never waits for the link: nothing here runs inside a step. Between steps
(`idle`), `service` connects when its back-off allows, sends what is queued, keeps the
session alive and takes commands. Each operation ends within its deadline (three
`timeout_s` in all, as the HTTPS transport's), and no new one starts once the link has used
`timeout_s` of a turn: a step is late by at most four `timeout_s` (see the README). Events
made while the link is down wait in a small queue: the oldest go first, and are counted.
Before each HTTPS call the link closes (`pause`), cleanly so that the last will stays unsaid,
and the next turn reconnects: one TLS session at a time.
"""

import time
from binascii import crc32

from micropython import const

from dash.app import VERSION, describe, drop
from dash.backoff import retry_delay_s

_STABLE_MS = const(60000)  # up this long, a link's failures are forgiven
_IDS = const(16)  # command ids remembered, against repeats
_SLICE_MS = const(200)  # between steps, how often the link looks for a command
# What goes out as an event: what a maker's support team acts on, not the routine.
_EVENTS = const(
    (
        "config-error",
        "suspended",
        "resumed",
        "state-reset",
        "sensor-fault",
        "sensor-ok",
        "refilled",
        "order-placed",
        "order-recovered",
        "order-inprogress",
        "order-failed",
        "order-cancelled",
        "order-delivered",
        "slot-unsubscribed",
        "auth-refused",
        "token-refresh",
        "duty-failed",
        "registered",
        "register-failed",
        "unregistered",
        "relay",
        "relay-ignored",
        "test-order",
        "persist-postponed",
        "error",
        "command",
    )
)


class Link:
    def __init__(self, app, m, password):
        """`m`: the checked "mqtt" object of config.json. ValueError (a config error's text)
        when a file it names cannot be used or the device has no id."""
        from dash.https import HttpError
        from dash.mqtt import Client
        from dash.platform import unique_id
        from dash.trust import context, ders

        self.app = app
        dev = m.get("device_id") or unique_id()
        if not dev:
            raise ValueError("config.json: 'mqtt.device_id' is missing (this board has no id)")
        self.device_id = dev
        self.base = ("%s/%s/" % (m["topic_prefix"], dev)).encode()
        ctx = None
        self.ca = None  # the trust store's path, while the context is yet to be made
        if m["transport"] == "tls":
            ca = app._path(m["ca_file"])
            try:
                if m["client_cert"]:
                    # A context of its own: it holds the client's certificate and key.
                    ctx = context(
                        ca, None, app._path(m["client_cert"]), app._path(m["client_key"])
                    )
                else:
                    ders(ca)  # readable now: a config error at boot, not a failure later
                    self.ca = ca
            except HttpError as e:
                key = "ca_file"
                for k in ("client_cert", "client_key"):
                    if m[k] and app._path(m[k]) == e.args[1]:
                        key = k
                raise ValueError(
                    "config.json: 'mqtt.%s': %s cannot be read, or holds no certificate or key"
                    % (key, e.args[1])
                )
        c = Client(
            m["host"],
            m["port"],
            m.get("client_id") or dev,
            m["username"],
            password,
            m["keepalive_s"],
            m["timeout_s"],
            m["max_message"],
            ctx,
        )
        c.set_last_will(self.base + b"online", b'{"online": false}', True, 1)
        c.cb = self._message
        self.client = c
        self.keepalive_ms = m["keepalive_s"] * 1000
        self.budget_ms = m["timeout_s"] * 1000
        self.state_ms = m["state_s"] * 1000
        self.qmax = m["queue"]
        self.retry = (m["retry_base_s"], m["retry_cap_s"])
        self.q: list = []  # events not yet out, oldest first
        self.seq = 0
        self.dropped = 0  # events the queue had no room for
        self.published = 0
        self.commands = 0  # messages taken on the command topic
        self.connects = 0
        self.reconnects = 0  # sessions regained after one was lost (not after a pause)
        self._lost = False
        self.failures = 0  # failed connects or sessions in a row: the back-off's attempt
        self.up = False
        self.subscribed = False  # this boot: the broker's session may have lost it
        self._sending = None  # the event being published
        now = app.clock.ticks_ms()
        self.retry_at = now
        self.up_at = now
        self.state_at = now
        self.dirty = True  # the state is to be published (a state changed, an event was made)
        self.levels: list = []  # the slots' levels as last published
        self._ids = [0] * _IDS  # checksums of command ids taken lately (`seen`)
        self._idi = 0
        self.longest_ms = 0  # the longest turn so far (real time): the budget, measured
        self._cmds = False  # `commands` loaded during this turn

    # -- what the application calls -------------------------------------------------------

    def event(self, tag, f, fields):
        """A log line that is an event: queued for the `event` topic (`f`: its fields' JSON).
        A full queue lets its oldest event go."""
        if tag not in _EVENTS or tag == "token-refresh" and fields.get("ok"):
            return
        self.seq += 1
        self.dirty = True
        try:
            self.q.append(
                (
                    '{"n": %d, "t": "%s", "up": %d, "f": %s}' % (self.seq, tag, self.app.up_s, f)
                ).encode()
            )
        except MemoryError:
            self.dropped += 1
            return
        if len(self.q) > self.qmax:
            # The oldest goes, unless it is on its way out (its acknowledgement awaited).
            self.q.pop(1 if self.q[0] is self._sending else 0)
            self.dropped += 1

    def idle(self, ms):
        """Between steps, `ms` until the next: a turn, then a slice of sleep, and again. A step
        is late by at most the budget a turn has (see above). A device a command has just
        started (it was idle for a bad config) steps at once."""
        app = self.app
        clock = app.clock
        running = app.running
        end = clock.ticks_add(clock.ticks_ms(), ms)
        while True:
            self.service()
            app.feed()  # a turn ended, within its budget
            left = clock.ticks_diff(end, clock.ticks_ms())
            if left <= 0 or app.running != running:
                return
            clock.sleep_ms(min(left, _SLICE_MS))

    def pause(self):
        """Close the session for an HTTPS call: cleanly (the broker keeps the last will to
        itself), and the next turn reconnects at once."""
        if self.up:
            self._forgive()
            self.client.drop(True)
            self.up = False
            self.retry_at = self.app.clock.ticks_ms()

    def service(self):
        """One turn: connect when due, send what waits, keep alive, take commands. Never
        raises; a failure closes the session and backs off."""
        t0 = time.ticks_ms()
        clock = self.app.clock
        try:
            if not self.up:
                if clock.ticks_diff(self.retry_at, clock.ticks_ms()) > 0:
                    return
                self._connect()
            c = self.client
            while self.q and self._within(t0):
                # (A command taken while the PUBACK is awaited may queue more events.)
                self._sending = self.q[0]
                c.arm()
                c.publish(self.base + b"event", self._sending, False, 1)
                self.q.pop(0)
                self._sending = None
                self.published += 1
            if self._within(t0) and self._state_due():
                self._publish_state()
            while self._within(t0) and c.poll():
                pass
            if self._within(t0):  # (after reading: a PINGRESP that came is seen first)
                c.keep(self.keepalive_ms)
            self._forgive()
        except Exception as e:  # noqa: BLE001 - a hostile or broken broker, or a bug
            self._sending = None
            self._down(e)
        finally:
            if self._cmds:
                self._cmds = False
                drop("commands")
            ms = time.ticks_diff(time.ticks_ms(), t0)
            if ms > self.longest_ms:
                self.longest_ms = ms

    # -- for `commands` -------------------------------------------------------------------

    def seen(self, cid):
        """True when a command (or notification) with this id was taken lately."""
        return crc32(cid) & 0x3FFFFFFF in self._ids

    def remember(self, cid):
        self._ids[self._idi] = crc32(cid) & 0x3FFFFFFF
        self._idi = (self._idi + 1) % _IDS

    # -- inside -----------------------------------------------------------------------------

    def _within(self, t0):
        return time.ticks_diff(time.ticks_ms(), t0) < self.budget_ms

    def _connect(self):
        c = self.client
        app = self.app
        if self.ca is not None:
            # With the transport's trust store, the transport's context (3 KB of heap less).
            https = app.https if app.running else None
            if https is not None and https.ca_path == self.ca:
                c.ctx = https.context()
            else:
                from dash.trust import context

                c.ctx = context(self.ca)
            drop("trust")
            self.ca = None
        from dash.platform import net_down

        ssid, password = app.wifi
        down = net_down(ssid, password, self.budget_ms)  # (a board: joined again if need be)
        if down:
            raise OSError(down)
        try:
            # One deadline for all of it (armed in `open`): a connect ends within it.
            present = c.open()
            if not present or not self.subscribed:
                self.subscribed = False
                c.subscribe(self.base + b"cmd/#", 1)
                self.subscribed = True
            hello = '{"online": true, "device_id": "%s", "fw": "%s"}' % (self.device_id, VERSION)
            c.publish(self.base + b"online", hello.encode(), True, 1)
        except Exception:
            c.drop(False)
            raise
        self.up = True
        self.dirty = True
        self.connects += 1
        self.up_at = app.clock.ticks_ms()
        if self._lost:
            self._lost = False
            self.reconnects += 1
            app.log("mqtt-up", after_failures=self.failures)

    def _down(self, e):
        app = self.app
        self.client.drop(False)  # broken: no DISCONNECT, so the broker says the last will
        self.up = False
        self._lost = True
        try:
            delay = retry_delay_s(self.failures, self.retry[0], self.retry[1], app.rand())
        except MemoryError:  # (the random bytes are an allocation)
            delay = self.retry[1]
        self.failures += 1
        self.retry_at = app.clock.ticks_add(app.clock.ticks_ms(), delay * 1000)
        try:
            app.log("mqtt-down", reason=_why(e), retry_in_s=delay, attempt=self.failures)
        except MemoryError:
            pass  # backing off is what matters

    def _forgive(self):
        """A link that stayed up a while starts its next back-off from the beginning."""
        clock = self.app.clock
        if self.failures and clock.ticks_diff(clock.ticks_ms(), self.up_at) >= _STABLE_MS:
            self.failures = 0

    def _state_due(self):
        clock = self.app.clock
        if self.dirty or clock.ticks_diff(clock.ticks_ms(), self.state_at) >= self.state_ms:
            return True
        slots = self.app.slots
        if len(slots) != len(self.levels):
            return True
        i = 0
        for sl in slots:
            if abs(sl.level - self.levels[i]) >= sl.delta:
                return True
            i += 1
        return False

    def _publish_state(self):
        import json

        app = self.app
        st = app.status()
        self.levels = [sl.level for sl in app.slots]
        self.dirty = False
        self.state_at = app.clock.ticks_ms()
        body = json.dumps(st).encode()
        del st
        self.client.arm()
        self.client.publish(self.base + b"state", body, True, 1)
        self.published += 1

    def _message(self, topic, payload, retained, size):
        """A message on the command topic (from inside `mqtt`): `commands` takes it."""
        self.commands += 1
        try:
            from dash import commands

            self._cmds = True
            commands.take(self.app, self, topic, payload, retained, size)
        except Exception as e:  # noqa: BLE001 - a bad command or a bug: said, never fatal
            self.app.log("command", ok=False, reason=describe(e))


def _why(e):
    from dash.https import HttpError, error_name

    if isinstance(e, HttpError):
        return "%s (%s)" % (error_name(e.args[0]), e.args[1] if len(e.args) > 1 else "")
    if type(e).__name__ == "MQTTException":
        code = e.args[0] if e.args else 0
        if code == 0x80:
            return "broker refused the subscription (its ACL?)"
        return "broker refused the connection: code %d" % code
    if isinstance(e, OSError):
        return "network: %s" % e
    return describe(e)
