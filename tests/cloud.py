"""Test helpers for the cloud link: the maker's cloud as a paho-mqtt client on a real mosquitto
(tools/broker.py), and brokers that misbehave (real TCP servers: one that accepts and never
answers, one that passes the broker's bytes on a byte at a time)."""

import json
import socket
import threading
import time

from broker import DEVICE_ID, Broker

DEVICE_PW = "device-pw"
# What may never be on a topic: LwA's tokens (the emulator's start so), the client secret, the
# broker password, a private key.
SECRETS = (b"Atza|", b"Atzr|", b"test-secret", DEVICE_PW.encode(), b"PRIVATE KEY")


def mqtt_config(broker, listener="tls", **kw):
    """The "mqtt" object of a device's config.json for this broker."""
    m = {
        "host": "localhost",
        "port": broker.ports[listener] if isinstance(listener, str) else listener,
        "username": DEVICE_ID,
        "device_id": DEVICE_ID,
        "timeout_s": 2,
        "keepalive_s": 60,
    }
    if listener == "plain":
        m["transport"] = "plain"
    m.update(kw)
    return m


class Cloud:
    """The maker's cloud: subscribed to every topic, it keeps what it receives and sends
    commands. `wait(pred)` waits for a condition on what has come (never a bare sleep)."""

    def __init__(self, broker, user="cloud"):
        self.broker = broker
        self.msgs = []  # (topic, payload bytes, retained)
        self.cv = threading.Condition()
        self.c = broker.client(user=user, client_id="cloud-%d" % id(self))
        self.c.on_message = self._on
        self.c.subscribe("#", 1)
        self.c.publish("dash/_ready", b"1", qos=1)
        self.wait(lambda: any(t == "dash/_ready" for t, _, _ in self.msgs))

    def _on(self, client, userdata, m):
        with self.cv:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.cv.notify_all()

    def wait(self, pred, timeout=30):
        with self.cv:
            if not self.cv.wait_for(pred, timeout):
                last = self.msgs[-8:]
                raise AssertionError("the cloud waited %ds in vain; it has %r" % (timeout, last))

    def on(self, topic):
        with self.cv:
            return [p for t, p, _ in self.msgs if t == topic]

    def events(self, tag=None, dev=DEVICE_ID):
        out = [json.loads(p) for p in self.on("dash/%s/event" % dev)]
        return [e for e in out if tag is None or e["t"] == tag]

    def commands(self, dev=DEVICE_ID):
        return [e["f"] for e in self.events("command", dev)]

    def state(self, dev=DEVICE_ID):
        got = self.on("dash/%s/state" % dev)
        return json.loads(got[-1]) if got else None

    def send(self, kind, payload, dev=DEVICE_ID, retain=False):
        if not isinstance(payload, bytes | bytearray):
            payload = json.dumps(payload).encode()
        info = self.c.publish("dash/%s/cmd/%s" % (dev, kind), payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def retained(self, dev=DEVICE_ID):
        """What a newcomer (the fleet view) finds retained for a device: {topic: payload}.
        A marker published after the subscription comes after every retained message."""
        got = {}
        done = threading.Event()
        late = self.broker.client(client_id="late-%d" % id(got))

        def on(client, userdata, m):
            if m.topic == "dash/_late":
                done.set()
            elif m.retain:
                got[m.topic] = bytes(m.payload)

        late.on_message = on
        late.subscribe([("dash/%s/#" % dev, 1), ("dash/_late", 1)])
        late.publish("dash/_late", b"1", qos=1)
        assert done.wait(30), "no marker"
        late.disconnect()  # first: it wakes the loop, which then ends at once
        late.loop_stop()
        return got

    def text(self):
        """All the device published (not the commands the cloud sent it)."""
        with self.cv:
            return b"\n".join(t.encode() + b" " + p for t, p, _ in self.msgs if "/cmd/" not in t)

    def close(self):
        """Also checks that nothing the device published holds a secret."""
        self.c.disconnect()  # first: it wakes the loop, which then ends at once
        self.c.loop_stop()
        text = self.text()
        for secret in SECRETS:
            assert secret not in text, secret


def command(dev, cloud, kind, payload, n=1):
    """Send a command and give the device the real time it takes to arrive; then one step,
    so that its answer goes out."""
    cloud.send(kind, payload)
    got = dev.command("link-wait", "10000 %d" % n)
    assert got["arrived"], got
    dev.run(60)


class Silent:
    """Accepts TCP connections and reads whatever comes, never answering."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    @staticmethod
    def _drain(c):
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass

    def close(self):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(): the port closes now
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()


class Proxy(Silent):
    """In front of a real server: each connection piped both ways through
    `_pipe(src, dst, out)`, `out` true for what the device sends. Subclasses spoil it."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        super().__init__()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.conns += [c, up]
            self._start(c, up)

    def _start(self, c, up):
        threading.Thread(target=self._pipe, args=(c, up, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(up, c, False), daemon=True).start()


class Trickle(Proxy):
    """In front of a real broker: what the device sends goes on at once, what the broker
    answers comes back a byte every `interval` seconds."""

    def __init__(self, upstream_port, interval=1.0):
        self.interval = interval
        super().__init__(upstream_port)

    def _pipe(self, src, dst, out):
        interval = 0 if out else self.interval
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                if not interval:
                    dst.sendall(data)
                    continue
                for i in range(len(data)):
                    if self._stop:
                        return
                    dst.sendall(data[i : i + 1])
                    time.sleep(interval)
        except OSError:
            pass


__all__ = ["Broker", "Cloud", "DEVICE_ID", "Proxy", "Silent", "Trickle", "command", "mqtt_config"]
