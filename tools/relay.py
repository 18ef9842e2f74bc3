"""The maker's cloud relay: DRS notifications from Amazon SNS to each device over MQTT.

Amazon sends every DRS notification to the maker's cloud over SNS: HTTPS POSTs of a signed
JSON envelope to a subscribed endpoint. This relay is that endpoint. It verifies each message
as AWS documents it (SignatureVersion 1, SHA1withRSA, or 2, SHA256withRSA, over the canonical
string of the message type; the signing certificate fetched over verified HTTPS from an
allowed host only and cached), confirms subscriptions by GETting their SubscribeURL, and
publishes each notification's "Message" (the DRS notification JSON, its UTF-8 bytes unchanged)
to the device it names, deviceInfo.deviceIdentifier.serialNumber:

  {prefix}/{serial}/cmd/relay      QoS 1, not retained; answered 200 only after the PUBACK

A broker that is down or gives no PUBACK within `publish_timeout` makes the answer 503, so SNS
tries again: delivery is at least once, and the device drops a notificationId it has seen.
Refused, with nothing published: a message type header that does not match the envelope
(400), a bad envelope, Message that is not a JSON object, or a serial that is not 1-64
characters of [A-Za-z0-9-_] (400); a bad signature, a SigningCertURL or SubscribeURL that is
not https on an allowed host, a topic not in `topic_arns` when that is given (403). Allowed
hosts: sns.<region>.amazonaws.com (and .com.cn) on port 443, and the `signing_hosts` given
("host:port", e.g. the DRS emulator's "localhost:<port>").

It also shows the fleet: it subscribes {prefix}/+/state (retained JSON status), {prefix}/+/online
(retained {"online": true, "fw": "..."}, last will {"online": false}) and {prefix}/+/event
(JSON events {"n": 7, "t": "command", "up": 120, "f": {...}}) and keeps, per device, the last
state, the online flag and firmware, the last events and when it was last heard (fleet()).

Commands to a device go to {prefix}/{id}/cmd/{kind} (state, register, deregister,
test-order, config, challenge): a JSON object with "id" (1-64 printable characters) and the
command's arguments, QoS 1, not retained; the device answers with an event whose "t" is
"command" and whose f.id is that id.

CLI (`--help` on each):
  relay.py serve --broker HOST:PORT --ca FILE --user U --password-file FILE
                 [--listen HOST:PORT] [--cert F --key F] [--prefix P] [--signing-host H]...
                 [--fetch-ca FILE] [--topic-arn ARN]...
      prints {"url": ..., "port": ...} as one JSON line, then relays until Ctrl-C/SIGTERM
  relay.py fleet [broker options] [--json]
      the retained state and online flag of every device, then exits
  relay.py command DEVICE KIND [JSON] [broker options] [--timeout S]
      sends one command with a fresh id; prints the device's answering event (exit 1 if none
      comes within the timeout)
"""

import argparse
import base64
import collections
import copy
import datetime
import http.client
import http.server
import json
import logging
import os
import queue
import re
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

try:
    from . import certs  # imported as tools.relay
except ImportError:
    import certs  # run as a script, or tools/ is on sys.path

log = logging.getLogger("relay")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "dash"
SNS_PATH = "/sns"
# A DRS serial may hold "+" too, but that is a wildcard in MQTT: no topic can carry it.
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
COMMAND_ID = re.compile(r"[\x21-\x7e]{1,64}")
KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
COMMAND_KINDS = ("state", "register", "deregister", "test-order", "config", "challenge")
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
# The keys each message type signs, in the order of the canonical string (AWS, "Verifying
# the signatures of Amazon SNS messages"); Subject only when present.
SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_KEYS["UnsubscribeConfirmation"] = SIGNED_KEYS["SubscriptionConfirmation"]
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
ENVELOPE_KEYS = ("SignatureVersion", "Signature", "SigningCertURL")

MAX_BODY = 256 * 1024  # an SNS message is at most 256 KB
MAX_HEAD = 16 * 1024  # request line and headers
MAX_FETCH = 64 * 1024  # a signing certificate, a ConfirmSubscription answer
IO_TIMEOUT = 10.0  # each read or write of a client's connection
REQUEST_DEADLINE = 30.0  # a whole connection: handshake, request, answer
MAX_CONNECTIONS = 64
FETCH_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 5.0  # PUBACK wait, well inside SNS's 15 s
CERT_CACHE = 16
EVENTS_KEPT = 50
REJECTIONS_KEPT = 100


class Rejected(Exception):
    """A message the relay refuses: `status` is the HTTP answer, `reason` says why."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sns_string_to_sign(envelope):
    """The bytes SNS signs for this envelope: each signed key of its Type and its value, each
    followed by a newline; Subject only when present. KeyError if a key is missing."""
    out = []
    for key in SIGNED_KEYS[envelope["Type"]]:
        if key == "Subject" and envelope.get("Subject") is None:
            continue
        out.append(f"{key}\n{envelope[key]}\n")
    return "".join(out).encode("utf-8")


def allowed_host(url, signing_hosts=()):
    """None if `url` is https on an allowed host (sns.<region>.amazonaws.com[.cn] on port
    443, or a "host:port" of `signing_hosts`), else why not."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as e:
        return f"not a URL: {e}"
    if u.scheme != "https":
        return f"not https: {url!r}"
    if "@" in u.netloc:
        return f"user info in {url!r}"
    host = u.hostname or ""
    if u.netloc.lower() in signing_hosts:
        return None
    if SNS_HOST.fullmatch(host) and port in (None, 443):
        return None
    return f"host {u.netloc!r} is not an allowed SNS host"


def parse_json(data, what="body"):
    """UTF-8 JSON (no NaN, Infinity or duplicate keys) as a dict; Rejected(400) otherwise."""

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise Rejected(400, f"{what} is not JSON: {e}")
    if not isinstance(doc, dict):
        raise Rejected(400, f"{what} is not a JSON object")
    return doc


def notification_serial(doc):
    """deviceInfo.deviceIdentifier.serialNumber of a DRS notification, if it is a valid
    device id; Rejected(400) otherwise."""
    serial = doc.get("deviceInfo")
    for key in ("deviceIdentifier", "serialNumber"):
        serial = serial.get(key) if isinstance(serial, dict) else None
    if not isinstance(serial, str) or not DEVICE_ID.fullmatch(serial):
        raise Rejected(400, f"no valid deviceInfo.deviceIdentifier.serialNumber: {serial!r}")
    return serial


def mqtt_client(client_id, username=None, password=None, ca_file=None, tls=True):
    """A paho client (MQTT 3.1.1), TLS verified with ca_file (None: the system's CAs)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if username is not None:
        c.username_pw_set(username, password)
    if tls:
        c.tls_set(ca_certs=ca_file)
    return c


class _BoundedReader:
    """The request's read side, at most `limit` bytes (the head, then the head and the
    announced body): past it, the head is refused (431) instead of read on."""

    def __init__(self, raw, limit):
        self.raw = raw
        self.limit = limit
        self.used = 0

    def allow(self, n):
        self.limit = self.used + n

    def readline(self, size=-1):
        room = self.limit - self.used
        line = self.raw.readline(room + 1 if size is None or size < 0 else min(size, room + 1))
        self.used += len(line)
        if self.used > self.limit:
            raise http.client.LineTooLong(f"request head over {MAX_HEAD} bytes")
        return line

    def read(self, size=-1):
        room = self.limit - self.used
        want = room if size is None or size < 0 else min(size, room)
        parts = []
        while want > 0:
            chunk = self.raw.read1(min(want, 65536))
            if not chunk:
                break
            parts.append(chunk)
            want -= len(chunk)
            self.used += len(chunk)
        return b"".join(parts)

    def close(self):
        self.raw.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "dash-relay"
    sys_version = ""
    timeout = IO_TIMEOUT

    def setup(self):
        super().setup()
        self.rfile = _BoundedReader(self.rfile, MAX_HEAD)

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def _answer(self, status, reason, extra=None):
        body = json.dumps({"ok": 200 <= status < 300, "reason": reason, **(extra or {})})
        body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _refuse(self, status, reason):
        self.server.relay.reject(status, reason)
        self._answer(status, reason)

    def do_POST(self):
        if urllib.parse.urlsplit(self.path).path != SNS_PATH:
            return self._answer(404, f"POST SNS messages to {SNS_PATH}")
        if "transfer-encoding" in self.headers:
            return self._refuse(411, "send Content-Length, not Transfer-Encoding")
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            return self._refuse(411, "Content-Length required")
        if int(length) > MAX_BODY:
            return self._refuse(413, f"body over {MAX_BODY} bytes")
        self.rfile.allow(int(length))
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            return  # the client went away
        status, reason = self.server.relay.handle_sns(self.headers, body)
        self._answer(status, reason)

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path in ("/", "/health"):
            return self._answer(200, "", self.server.relay.stats())
        self._answer(404, "no such resource")

    def do_PUT(self):
        self._answer(405, "POST SNS messages, GET /health")

    do_DELETE = do_PATCH = do_PUT


class _Server(http.server.ThreadingHTTPServer):
    """HTTPS, the handshake in each connection's thread; at most MAX_CONNECTIONS at a time,
    each cut off REQUEST_DEADLINE after it was accepted."""

    request_queue_size = 64

    def server_bind(self):  # HTTPServer's asks DNS for the host's name, which may hang
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def __init__(self, address, ctx, relay):
        self.ctx = ctx
        self.relay = relay
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._live = {}  # socket -> deadline
        self._live_lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__(address, _Handler)
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.warning("%s: too many connections; closed", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address):
        request.settimeout(IO_TIMEOUT)
        with self._live_lock:
            self._live[request] = time.monotonic() + REQUEST_DEADLINE
        try:
            try:
                conn = self.ctx.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as e:
                log.info("%s: TLS handshake failed: %s", client_address[0], e)
                return
            with self._live_lock:
                self._live.pop(request, None)
                self._live[conn] = time.monotonic() + REQUEST_DEADLINE
            try:
                self.RequestHandlerClass(conn, client_address, self)
                _drain(conn)
            finally:
                with self._live_lock:
                    self._live.pop(conn, None)
                conn.close()
        finally:
            with self._live_lock:
                self._live.pop(request, None)

    def handle_error(self, request, client_address):
        log.info("%s: connection error: %s", client_address[0], sys.exc_info()[1])

    def _reap(self):
        while not self._closing.wait(0.5):
            now = time.monotonic()
            with self._live_lock:
                late = [s for s, deadline in self._live.items() if deadline < now]
            for s in late:
                log.info("connection over %.0f s: cut off", REQUEST_DEADLINE)
                _shutdown(s)

    def server_close(self):
        self._closing.set()
        with self._live_lock:
            live = list(self._live)
        for s in live:
            _shutdown(s)
        super().server_close()


def _drain(conn, limit=MAX_HEAD + MAX_BODY, seconds=1.0):
    """Read what the client still sends (a body refused unread, the rest of a head too
    large) for a moment before closing: closing with unread data resets the connection, and
    the client may lose the answer to that."""
    deadline = time.monotonic() + seconds
    try:
        conn.settimeout(0.2)
        while limit > 0 and time.monotonic() < deadline:
            data = conn.recv(min(limit, 65536))
            if not data:
                return
            limit -= len(data)
    except (OSError, ValueError):
        pass


def _shutdown(sock):
    try:  # wakes a thread blocked in recv() at once, unlike close()
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Relay:
    """The SNS endpoint and MQTT side of the maker's cloud; see the module docstring.

    start()/stop() or a context manager. `url`: the SNS endpoint to subscribe. Counters:
    notifications_relayed, subscriptions_confirmed, unsubscribe_confirmations, unavailable
    (answered 503), rejected (a list of {"status", "reason", "time"}, the last
    REJECTIONS_KEPT).
    """

    def __init__(
        self,
        broker_host,
        broker_port,
        ca_file=None,
        username=None,
        password=None,
        prefix=PREFIX,
        listen=("127.0.0.1", 0),
        certfile=None,
        keyfile=None,
        signing_hosts=(),
        fetch_ca=None,
        tls=True,
        topic_arns=(),
        client_id=None,
        publish_timeout=PUBLISH_TIMEOUT,
        events_kept=EVENTS_KEPT,
    ):
        self.broker_host = broker_host
        self.broker_port = int(broker_port)
        self.ca_file = ca_file
        self.username = username
        self.password = password
        self.prefix = prefix
        self.listen = tuple(listen)
        self.certfile = certfile
        self.keyfile = keyfile
        self.signing_hosts = frozenset(h.lower() for h in signing_hosts)
        self.fetch_ca = fetch_ca
        self.tls = tls
        self.topic_arns = frozenset(topic_arns)
        self.client_id = client_id or "dash-relay-" + secrets.token_hex(4)
        self.publish_timeout = publish_timeout
        self.events_kept = events_kept
        self.port = None
        self.notifications_relayed = 0
        self.subscriptions_confirmed = 0
        self.unsubscribe_confirmations = 0
        self.unavailable = 0
        self.rejected = []
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._is_ready = False
        self._sub_mid = None
        self._devices = {}
        self._keys = {}  # SigningCertURL -> RSA public key
        self._fetch_ctx = None
        self._server = None
        self._client = None

    # -- lifecycle --

    def start(self):
        if self.certfile is None:
            paths = certs.ensure_certs(os.path.join(REPO, "build", "certs"))
            self.certfile, self.keyfile = paths["server"], paths["server_key"]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certfile, self.keyfile)
        self._fetch_ctx = ssl.create_default_context(cafile=self.fetch_ca)
        self._server = _Server(self.listen, ctx, self)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        ).start()
        c = mqtt_client(self.client_id, self.username, self.password, self.ca_file, self.tls)
        c.reconnect_delay_set(min_delay=0.25, max_delay=2)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self._client = c
        c.connect_async(self.broker_host, self.broker_port, keepalive=30)
        c.loop_start()  # retries the first connection too, and reconnects after a loss
        log.info("relay: %s -> mqtt %s:%d", self.url, self.broker_host, self.broker_port)
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        host = self.listen[0]
        if host in ("", "0.0.0.0", "127.0.0.1", "::", "::1", "localhost"):
            host = "localhost"  # the name the test server certificate is for
        return f"https://{host}:{self.port}{SNS_PATH}"

    @property
    def connected(self):
        c = self._client
        return c is not None and c.is_connected()

    def wait_ready(self, timeout=10, ready=True):
        """Wait until connected to the broker and subscribed (ready=False: until not);
        False on timeout."""
        with self._ready:
            return self._ready.wait_for(lambda: self._is_ready == ready, timeout)

    def stats(self):
        with self._lock:
            return {
                "notifications_relayed": self.notifications_relayed,
                "subscriptions_confirmed": self.subscriptions_confirmed,
                "unsubscribe_confirmations": self.unsubscribe_confirmations,
                "unavailable": self.unavailable,
                "rejected": len(self.rejected),
                "mqtt_connected": self.connected,
            }

    def fleet(self):
        """device id -> {"state": the last state (parsed JSON), "online": the flag (None if
        unknown), "fw": firmware, "events": the last events (oldest first), "last_heard":
        time.time() of its last message}."""
        with self._lock:
            out = {}
            for dev, rec in self._devices.items():
                out[dev] = copy.deepcopy({**rec, "events": list(rec["events"])})
            return out

    def reject(self, status, reason):
        log.warning("refused (%d): %s", status, reason)
        with self._lock:
            self.rejected.append({"status": status, "reason": reason, "time": time.time()})
            del self.rejected[:-REJECTIONS_KEPT]

    # -- SNS --

    def handle_sns(self, headers, body):
        """One POSTed SNS message: (HTTP status, reason). `headers`: a case-insensitive
        mapping (http.client.HTTPMessage) or a dict with lowercase keys."""
        try:
            return self._handle_sns(headers, body)
        except Exception as e:
            if not isinstance(e, Rejected):
                log.exception("SNS message")
                e = Rejected(500, f"internal error: {type(e).__name__}")
            if e.status == 503:
                log.warning("unavailable (503): %s", e.reason)
                with self._lock:
                    self.unavailable += 1
            else:
                self.reject(e.status, e.reason)
            return e.status, e.reason

    def _handle_sns(self, headers, body):
        mtype = headers.get("x-amz-sns-message-type")
        if mtype not in SIGNED_KEYS:
            raise Rejected(400, f"x-amz-sns-message-type {mtype!r} is not an SNS message type")
        env = parse_json(body, "SNS message")
        if env.get("Type") != mtype:
            raise Rejected(400, f"Type {env.get('Type')!r} does not match the header {mtype}")
        for key in (*SIGNED_KEYS[mtype], *ENVELOPE_KEYS):
            value = env.get(key)
            if key == "Subject" and value is None:
                continue
            if not isinstance(value, str) or (not value and key != "Message"):
                raise Rejected(400, f"SNS message without a valid {key}")
        topic = headers.get("x-amz-sns-topic-arn")
        if topic is not None and topic != env["TopicArn"]:
            raise Rejected(400, "x-amz-sns-topic-arn does not match TopicArn")
        if self.topic_arns and env["TopicArn"] not in self.topic_arns:
            raise Rejected(403, f"topic {env['TopicArn']!r} is not one of ours")
        self._verify(env)
        if mtype == "SubscriptionConfirmation":
            return self._confirm(env)
        if mtype == "UnsubscribeConfirmation":
            with self._lock:
                self.unsubscribe_confirmations += 1
            log.info("unsubscribed from %s", env["TopicArn"])
            return 200, "unsubscribed"
        return self._relay(env)

    def _verify(self, env):
        digest = HASHES.get(env["SignatureVersion"])
        if digest is None:
            raise Rejected(403, f"SignatureVersion {env['SignatureVersion']!r} not supported")
        why = allowed_host(env["SigningCertURL"], self.signing_hosts)
        if why:
            raise Rejected(403, "SigningCertURL: " + why)
        try:
            signature = base64.b64decode(env["Signature"], validate=True)
        except ValueError:
            raise Rejected(403, "Signature is not base64")
        key = self._signing_key(env["SigningCertURL"])
        try:
            signed = sns_string_to_sign(env)
        except UnicodeEncodeError:
            raise Rejected(400, "SNS message is not valid Unicode")
        try:
            key.verify(signature, signed, padding.PKCS1v15(), digest())
        except InvalidSignature:
            raise Rejected(403, "bad signature")

    def _fetch(self, url, what):
        """GET url over verified HTTPS (no redirects): (status, body); Rejected(503) when it
        cannot be reached (SNS tries again), Rejected(403) for an oversized answer."""
        u = urllib.parse.urlsplit(url)
        target = (u.path or "/") + ("?" + u.query if u.query else "")
        conn = http.client.HTTPSConnection(
            u.hostname, u.port or 443, context=self._fetch_ctx, timeout=FETCH_TIMEOUT
        )
        try:
            conn.request("GET", target, headers={"User-Agent": "dash-relay"})
            resp = conn.getresponse()
            data = resp.read(MAX_FETCH + 1)
        except (OSError, http.client.HTTPException) as e:
            raise Rejected(503, f"{what}: {type(e).__name__}: {e}")
        finally:
            conn.close()
        if len(data) > MAX_FETCH:
            raise Rejected(403, f"{what}: answer over {MAX_FETCH} bytes")
        if resp.status >= 500:
            raise Rejected(503, f"{what}: HTTP {resp.status}")
        return resp.status, data

    def _signing_key(self, url):
        with self._lock:
            key = self._keys.get(url)
        if key is not None:
            return key
        status, pem = self._fetch(url, "SigningCertURL")
        if status != 200:
            raise Rejected(403, f"SigningCertURL: HTTP {status}")
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Rejected(403, "SigningCertURL: not a PEM certificate")
        now = datetime.datetime.now(datetime.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise Rejected(403, "SigningCertURL: certificate not valid now")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Rejected(403, "SigningCertURL: not an RSA certificate")
        with self._lock:
            if len(self._keys) >= CERT_CACHE:
                self._keys.clear()
            self._keys[url] = key
        return key

    def _confirm(self, env):
        why = allowed_host(env["SubscribeURL"], self.signing_hosts)
        if why:
            raise Rejected(403, "SubscribeURL: " + why)
        status, _ = self._fetch(env["SubscribeURL"], "SubscribeURL")
        if status != 200:
            raise Rejected(400, f"SubscribeURL answered HTTP {status}")
        with self._lock:
            self.subscriptions_confirmed += 1
        log.info("subscribed to %s", env["TopicArn"])
        return 200, "subscription confirmed"

    def _relay(self, env):
        message = env["Message"]
        serial = notification_serial(parse_json(message, "Message"))
        try:
            payload = message.encode("utf-8")
        except UnicodeEncodeError:
            raise Rejected(400, "Message is not valid Unicode")
        c = self._client
        if c is None or not c.is_connected():
            raise Rejected(503, "MQTT broker not connected")
        topic = f"{self.prefix}/{serial}/cmd/relay"
        try:
            info = c.publish(topic, payload, qos=1, retain=False)
            info.wait_for_publish(self.publish_timeout)
            published = info.is_published()
        except (ValueError, RuntimeError) as e:
            raise Rejected(503, f"publish to {topic}: {e}")
        if not published:
            raise Rejected(503, f"no PUBACK for {topic} within {self.publish_timeout} s")
        with self._lock:
            self.notifications_relayed += 1
        log.info("relayed %s -> %s", env["MessageId"], topic)
        return 200, "relayed to " + topic

    # -- MQTT --

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.warning("mqtt: connection refused: %s", reason_code)
            return
        log.info("mqtt: connected to %s:%d", self.broker_host, self.broker_port)
        filters = [(f"{self.prefix}/+/{leaf}", 1) for leaf in ("state", "online", "event")]
        rc, mid = client.subscribe(filters)
        with self._lock:
            self._sub_mid = mid

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.warning("mqtt: subscription refused: %s", failed)
        with self._ready:
            if mid == self._sub_mid and not failed:
                self._is_ready = True
                self._ready.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        log.info("mqtt: disconnected: %s", reason_code)
        with self._ready:
            self._is_ready = False
            self._ready.notify_all()

    def _on_message(self, client, userdata, msg):
        head = self.prefix + "/"
        if not msg.topic.startswith(head):
            return
        dev, _, leaf = msg.topic[len(head) :].partition("/")
        if not DEVICE_ID.fullmatch(dev) or leaf not in ("state", "online", "event"):
            return
        doc = None
        if msg.payload:
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                log.info("%s: not JSON", msg.topic)
                return
        with self._lock:
            rec = self._devices.setdefault(
                dev,
                {
                    "state": None,
                    "online": None,
                    "fw": None,
                    "events": collections.deque(maxlen=self.events_kept),
                    "last_heard": None,
                },
            )
            rec["last_heard"] = time.time()
            if leaf == "state":
                rec["state"] = doc  # an empty payload cleared the retained state
            elif leaf == "online":
                doc = doc if isinstance(doc, dict) else {}
                online = doc.get("online")
                rec["online"] = online if isinstance(online, bool) else None
                rec["fw"] = doc.get("fw", rec["fw"])
            elif doc is not None:
                rec["events"].append(doc)


# -- the command-line tools' MQTT session --


class Session:
    """A connected paho client for one job: received messages queue up; subscribe() and
    publish() wait for the broker's SUBACK and PUBACK."""

    def __init__(self, host, port, ca_file=None, username=None, password=None, tls=True):
        self._q = queue.Queue()
        self._acks = {}
        self._cond = threading.Condition()
        self._connack = None
        c = mqtt_client("dash-cli-" + secrets.token_hex(4), username, password, ca_file, tls)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = lambda client, userdata, msg: self._q.put(msg)
        self.client = c
        self.host, self.port = host, int(port)

    def connect(self, timeout=10):
        self.client.connect(self.host, self.port, keepalive=30)  # OSError if unreachable
        self.client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connack is not None, timeout):
                raise TimeoutError("no CONNACK from the broker")
            if self._connack.is_failure:
                raise ConnectionError(f"the broker refused the connection: {self._connack}")
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self._connack = reason_code
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._acks[mid] = reason_codes
            self._cond.notify_all()

    def subscribe(self, filters, timeout=10):
        rc, mid = self.client.subscribe([(f, 1) for f in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe: {mqtt.error_string(rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks, timeout):
                raise TimeoutError("no SUBACK from the broker")
            codes = self._acks.pop(mid)
        if any(rc.is_failure for rc in codes):
            raise PermissionError(f"subscription to {filters} refused: {codes}")

    def publish(self, topic, payload, timeout=10):
        info = self.client.publish(topic, payload, qos=1, retain=False)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic}")

    def get(self, timeout):
        try:
            return self._q.get(timeout=max(0, timeout))
        except queue.Empty:
            return None

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_retained(session, filters, prefix=PREFIX, timeout=10):
    """Every message of `filters` up to now, the retained ones (msg.retain) first, as a list
    of paho messages, without waiting on a clock: after the SUBACK, one message to a private
    echo topic; the broker sends the retained messages before it."""
    echo = f"{prefix}/-echo-{secrets.token_hex(8)}/echo"
    session.subscribe([*filters, echo], timeout)
    session.publish(echo, b"", timeout)
    deadline = time.monotonic() + timeout
    got = []
    while True:
        msg = session.get(deadline - time.monotonic())
        if msg is None:
            raise TimeoutError("the echo did not come back")
        if msg.topic == echo:
            return got
        got.append(msg)


def fleet_snapshot(session, prefix=PREFIX, timeout=10):
    """device id -> {"state", "online", "fw"} from the retained messages."""
    fleet = {}
    head = prefix + "/"
    filters = [f"{prefix}/+/state", f"{prefix}/+/online"]
    for msg in read_retained(session, filters, prefix, timeout):
        dev, _, leaf = msg.topic[len(head) :].partition("/")
        rec = fleet.setdefault(dev, {"state": None, "online": None, "fw": None})
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = {"unparsable": msg.payload.decode("utf-8", "replace")}
        if leaf == "state":
            rec["state"] = doc
        elif isinstance(doc, dict):
            rec["online"] = doc.get("online") if isinstance(doc.get("online"), bool) else None
            rec["fw"] = doc.get("fw")
    return fleet


def send_command(session, device, kind, args=None, prefix=PREFIX, timeout=10):
    """Publish one command with a fresh id to {prefix}/{device}/cmd/{kind}; return the
    device's answering event (a dict), None if none came within `timeout`."""
    if not DEVICE_ID.fullmatch(device):
        raise ValueError(f"device id {device!r} is not 1-64 characters of [A-Za-z0-9-_]")
    if not KIND.fullmatch(kind) or kind == "relay":
        raise ValueError(f"command kind {kind!r}: one of {', '.join(COMMAND_KINDS)}")
    args = dict(args or {})
    if "id" in args:
        raise ValueError('the command id is made here: leave "id" out')
    command_id = "c" + secrets.token_hex(6)
    deadline = time.monotonic() + timeout
    session.subscribe([f"{prefix}/{device}/event"], timeout)
    payload = json.dumps({"id": command_id, **args}).encode()
    session.publish(f"{prefix}/{device}/cmd/{kind}", payload, timeout)
    while True:
        msg = session.get(deadline - time.monotonic())
        if msg is None:
            return None
        try:
            event = json.loads(msg.payload)
        except ValueError:
            continue
        fields = event.get("f") if isinstance(event, dict) else None
        if event.get("t") == "command" and isinstance(fields, dict):
            if fields.get("id") == command_id:
                return event


# -- CLI --


def _host_port(text, default_port=None):
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, default_port
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"HOST:PORT expected, not {text!r}")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host.strip("[]") or "127.0.0.1", port


def _broker_options():
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("broker")
    g.add_argument(
        "--broker",
        type=lambda t: _host_port(t, 8883),
        default=("localhost", 8883),
        metavar="HOST:PORT",
        help="the MQTT broker (default localhost:8883)",
    )
    g.add_argument("--ca", metavar="FILE", help="CA file for the broker (default: system CAs)")
    g.add_argument("--user", default="cloud", help="MQTT username (default cloud)")
    g.add_argument("--password-file", metavar="FILE", help="file holding the MQTT password")
    g.add_argument("--no-tls", action="store_true", help="plain TCP (a bench broker)")
    g.add_argument("--prefix", default=PREFIX, help=f"topic prefix (default {PREFIX})")
    return p


def _password(args):
    if not args.password_file:
        return None
    with open(args.password_file) as f:
        return f.readline().rstrip("\r\n")


def _session(args):
    host, port = args.broker
    return Session(host, port, args.ca, args.user, _password(args), tls=not args.no_tls)


def _serve(args):
    relay = Relay(
        *args.broker,
        ca_file=args.ca,
        username=args.user,
        password=_password(args),
        prefix=args.prefix,
        listen=args.listen,
        certfile=args.cert,
        keyfile=args.key,
        signing_hosts=args.signing_host,
        fetch_ca=args.fetch_ca,
        tls=not args.no_tls,
        topic_arns=args.topic_arn,
    )
    if not args.topic_arn:
        log.warning("no --topic-arn: subscriptions to any SNS topic are confirmed")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    relay.start()
    try:
        print(json.dumps({"url": relay.url, "port": relay.port}), flush=True)
        while not done.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        relay.stop()
    return 0


def _fleet(args):
    with _session(args) as s:
        s.connect(args.timeout)
        fleet = fleet_snapshot(s, args.prefix, args.timeout)
    if args.json:
        print(json.dumps(fleet, sort_keys=True))
        return 0
    rows = [("DEVICE", "ONLINE", "FW", "STATE")]
    for dev in sorted(fleet):
        rec = fleet[dev]
        online = {True: "yes", False: "no", None: "?"}[rec["online"]]
        state = "-" if rec["state"] is None else json.dumps(rec["state"], sort_keys=True)
        rows.append((dev, online, str(rec["fw"] or "-"), state))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3])
    if not fleet:
        print("(no device has a retained state or online flag)")
    return 0


def _command(args):
    try:
        cmd_args = json.loads(args.json) if args.json else {}
    except ValueError as e:
        raise SystemExit(f"relay.py command: JSON: {e}")
    if not isinstance(cmd_args, dict):
        raise SystemExit("relay.py command: JSON must be an object of the command's arguments")
    if "id" in cmd_args:
        raise SystemExit('relay.py command: the command "id" is made here; leave it out')
    with _session(args) as s:
        s.connect(args.timeout)
        event = send_command(s, args.device, args.kind, cmd_args, args.prefix, args.timeout)
    if event is None:
        print(f"no answer from {args.device} within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(json.dumps(event))
    return 0


def main(argv=None):
    broker = _broker_options()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Each subcommand has its own --help.",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser(
        "serve",
        parents=[broker],
        help="receive SNS over HTTPS and publish DRS notifications to the devices",
        description="Receive SNS deliveries over HTTPS and publish each DRS notification to "
        "{prefix}/{serial}/cmd/relay. Prints the endpoint URL as one JSON line; Ctrl-C stops.",
    )
    p.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="HTTPS address (default 127.0.0.1:0, a free port)",
    )
    p.add_argument("--cert", help="server certificate (default: the test one, build/certs)")
    p.add_argument("--key", help="its key")
    p.add_argument(
        "--signing-host",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also allow SigningCertURL and SubscribeURL on this host (e.g. the DRS "
        "emulator's localhost:PORT); repeatable",
    )
    p.add_argument(
        "--fetch-ca",
        metavar="FILE",
        help="CA file for fetching signing certificates (default: system CAs)",
    )
    p.add_argument(
        "--topic-arn",
        action="append",
        default=[],
        metavar="ARN",
        help="accept only this SNS topic; repeatable (default: any)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "fleet",
        parents=[broker],
        help="print every device's retained state and online flag, then exit",
        description="Print every device's retained state and online flag, then exit.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--timeout", type=float, default=10, help="seconds (default 10)")
    p.set_defaults(func=_fleet)

    p = sub.add_parser(
        "command",
        parents=[broker],
        help="send a device one command and print its answer",
        description="Publish one command with a fresh id to {prefix}/DEVICE/cmd/KIND and "
        'print the device\'s event with "t": "command" and that id (exit 1 on timeout).',
    )
    p.add_argument("device", metavar="DEVICE", help="the device id (its DRS serial number)")
    p.add_argument("kind", metavar="KIND", help="one of " + ", ".join(COMMAND_KINDS))
    p.add_argument(
        "json",
        metavar="JSON",
        nargs="?",
        help='the arguments as a JSON object, e.g. \'{"code": "ANabc"}\' for register',
    )
    p.add_argument("--timeout", type=float, default=10, help="seconds (default 10)")
    p.set_defaults(func=_command)

    args = ap.parse_args(argv)
    if args.cmd == "command":
        if not DEVICE_ID.fullmatch(args.device):
            ap.error(f"DEVICE {args.device!r} is not 1-64 characters of [A-Za-z0-9-_]")
        if not KIND.fullmatch(args.kind) or args.kind == "relay":
            ap.error(f"KIND {args.kind!r}: one of {', '.join(COMMAND_KINDS)}")
    level = logging.INFO if args.verbose or args.cmd == "serve" else logging.WARNING
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(message)s")
    try:
        return args.func(args)
    except (OSError, TimeoutError, ConnectionError) as e:
        print(f"relay.py {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
