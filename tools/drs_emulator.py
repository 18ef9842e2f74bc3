"""Emulator of Amazon DRS v1 and the Login with Amazon token endpoint, over HTTPS.

Three listeners on 127.0.0.1 share one state: `port` (valid certificate for localhost),
`port_wrong_name` (certificate for wrong.example) and `port_untrusted` (leaf from a rogue
CA). Every parsed request is recorded; tests inject one-shot faults per path prefix.
Each connection carries exactly one request and is closed after the answer.

Endpoints, as Amazon's DRS v1 pages list them (type names drop the common prefix
`com.amazon.dash.replenishment.`):

  POST   /replenish/{slot}          DrsReplenishInput@1.0       DrsReplenishResult@1.0
  POST   /slotStatus/{slot}         DrsSlotStatusInput@1.0      DrsSlotStatusResult@1.0
  POST   /deviceStatus              DrsDeviceStatusInput@1.0    DrsDeviceStatusResult@1.0
  GET    /subscriptionInfo          DrsSubscriptionInfoInput@1.0
                                    DrsSubscriptionInfoResult@1.0 or @2.0
  GET    /getOrderInfo/{eventId}    DrsOrderInfoInput@1.0       DrsOrderInfoResult@1.0
  DELETE /registration              DrsDeregisterInput@2.0      DrsDeregisterResult@1.0
  DELETE /testOrders[/slots/{slot}] DrsCancelTestOrdersInput@1.0
                                    DrsCancelTestOrdersResult@1.0
  POST   /auth/o2/token             LwA: grant_type refresh_token or authorization_code

A DRS call is checked in this order: method, x-amzn-type-version, x-amzn-accept-type, body
(Content-Type if present, then shape), bearer token, then the resource. Every refusal is
400 {"message": ...} (an unknown order id too) except an unknown slot, which is 404; every DRS
answer carries an x-amzn-type-version header naming the result type. Paths that match no
endpoint get 404 without it.

Order lifecycle (state in `orders`, each a dict with slot, event_instance_id, detail_code,
open, status, asin, expected_delivery_date): Replenish places an order "Pending" unless the
slot has an open one (then ORDER_INPROGRESS, with a fresh event id that names no order);
ship() -> "Shipped" (still open), mark_delivered() -> "Delivered", cancel_order() and
CancelTestOrder -> "Cancelled" (both close it), set_order_status() sets any status.

LwA: refresh tokens come from add_refresh_token() or from an authorization code made by
issue_auth_code() (confidential, or PKCE with a code_challenge), which the consent page
GET /ap/oa also gives out, as LwA's does once a customer agrees: it checks client_id,
response_type=code, scope=dash:replenish, scope_data and redirect_uri, then redirects to
redirect_uri?code=...&scope=dash%3Areplenish. From a shell, against a running emulator:
`drs_emulator.py auth-code --port PORT [--challenge C]` prints a fresh code. Tokens obtained
through a PKCE code are "public": they refresh without client_secret. DELETE /registration
and revoke_all() kill every token.

SNS notifications: Amazon sends every DRS notification to the maker's cloud over SNS; so does
the emulator, as SNS delivers to an https subscription. sns_subscribe(url, cafile) POSTs a
signed SubscriptionConfirmation; the endpoint confirms by GETting its SubscribeURL
(/sns/confirm on `port`, answered without DRS checks, like the signing certificate at
/sns/SimpleNotificationService-<hex>.pem: an RSA-2048 key and self-signed certificate made in
memory at start). Only confirmed subscriptions receive notifications, from then on. DRS actions
publish them: Replenish placing an order (STANDARD or TEST) -> OrderPlacedNotification,
ship() -> ItemShippedNotification, cancel_order() and CancelTestOrder closing an order ->
OrderCancelledNotification, set_subscribed() -> SubscriptionChangedNotification, a
successful authorization_code grant -> DeviceRegisteredNotification, DELETE /registration ->
DeviceDeregisteredNotification; notify() sends any by hand. The SNS "Message" is the DRS
notification as compact JSON:

  {"notificationInfo": {"notificationType": "OrderPlacedNotification",
                        "notificationTime": "2026-09-21T14:23:20Z",
                        "notificationId": "<uuid4>", "version": "2015-06-05"},
   "deviceInfo": {"deviceIdentifier": {"serialNumber": device_serial},
                  "productIdentifier": {"modelId": device_model}},
   "orderInfo": {"instanceId": "amzn1.dash.v2.o.ro....", "slotId": "slot-a",
                 "productInfo": [{"asin": "B0...", "quantity": 1, "unit": "count"}]}}

(order types carry orderInfo, SubscriptionChanged carries
"subscriptionInfo": {"slotsSubscriptionStatus": {slot: bool, ...}}). Envelopes are signed as
SNS documents it (SignatureVersion 2, SHA256withRSA, or 1, SHA1withRSA, over the canonical
string: each signed key and its value, each followed by a newline). Delivery is asynchronous
and in order on one sender thread, never delaying a DRS answer, with retries after a failure
or a non-2xx answer (sns_retry_delays);
sns_flush() waits until everything queued so far is delivered or given up; sns_deliveries
records each delivery; sns_replay() sends the last notification again, unchanged (SNS is
at-least-once).

CLI: python3 tools/drs_emulator.py --certs DIR [--slots slot-a,slot-b] [--unsubscribed slot-b]
     [--refresh-token TOKEN] [--test-device] [--serial SERIAL] [--model MODEL]
     [--sns-endpoint URL [--sns-ca FILE]]
It prints one JSON line (ports, CA paths, a refresh token, and `auth_code`, a confidential
authorization code for `redirect_uri`, valid 5 minutes; with --sns-endpoint the topic and
subscription ARNs and the signing host), then serves until SIGTERM/SIGINT.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import http
import http.client
import json
import logging
import math
import queue
import re
import secrets
import signal
import socket
import ssl
import string
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from xml.sax.saxutils import escape as xml_escape

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

try:
    from . import certs  # imported as tools.drs_emulator
except ImportError:
    import certs  # run as a script, or tools/ is on sys.path

log = logging.getLogger("drs_emulator")

TOKEN_PATH = "/auth/o2/token"
CONSENT_PATH = "/ap/oa"  # LwA's consent page (www.amazon.com/ap/oa)
REPLENISH_PATH = "/replenish/"
TYPE_PREFIX = "com.amazon.dash.replenishment."
REPLENISH_INPUT = TYPE_PREFIX + "DrsReplenishInput@1.0"
REPLENISH_RESULT = TYPE_PREFIX + "DrsReplenishResult@1.0"
DRS_HEADERS = {"x-amzn-type-version": REPLENISH_RESULT}
LWA_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
DEFAULT_REDIRECT_URI = "https://maker.example/dash/callback"

# endpoint -> (label, method, input type, accepted result types; the first is the default).
ENDPOINTS = {
    "replenish": ("Replenish", "POST", "DrsReplenishInput@1.0", ("DrsReplenishResult@1.0",)),
    "slot_status": ("SlotStatus", "POST", "DrsSlotStatusInput@1.0", ("DrsSlotStatusResult@1.0",)),
    "device_status": (
        "DeviceStatus",
        "POST",
        "DrsDeviceStatusInput@1.0",
        ("DrsDeviceStatusResult@1.0",),
    ),
    "subscription_info": (
        "SubscriptionInfo",
        "GET",
        "DrsSubscriptionInfoInput@1.0",
        ("DrsSubscriptionInfoResult@1.0", "DrsSubscriptionInfoResult@2.0"),
    ),
    "order_info": ("GetOrderInfo", "GET", "DrsOrderInfoInput@1.0", ("DrsOrderInfoResult@1.0",)),
    "deregister": ("Deregister", "DELETE", "DrsDeregisterInput@2.0", ("DrsDeregisterResult@1.0",)),
    "cancel_test_orders": (
        "CancelTestOrder",
        "DELETE",
        "DrsCancelTestOrdersInput@1.0",
        ("DrsCancelTestOrdersResult@1.0",),
    ),
}
# (path pattern, endpoint); groups are URL-decoded and passed to the handler.
ROUTES = (
    (re.compile(r"/replenish/([^/]*)"), "replenish"),
    (re.compile(r"/slotStatus/([^/]*)"), "slot_status"),
    (re.compile(r"/deviceStatus"), "device_status"),
    (re.compile(r"/subscriptionInfo"), "subscription_info"),
    (re.compile(r"/getOrderInfo/([^/]*)"), "order_info"),
    (re.compile(r"/registration"), "deregister"),
    (re.compile(r"/testOrders/slots/([^/]*)"), "cancel_test_orders"),
    (re.compile(r"/testOrders()"), "cancel_test_orders"),  # empty group: every slot
)
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?Z")
SLOT_STATUS_DATES = ("expectedReplenishmentDate", "lastUseDate")
SLOT_STATUS_NUMBERS = ("remainingQuantityInUnit", "originalQuantityInUnit", "totalQuantityOnHand")
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
DEVICE_ID = re.compile(r"[A-Za-z0-9+_-]{1,64}")  # a serial number or model id (scope_data)
CODE_CHARS = string.ascii_letters

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
IO_TIMEOUT = 10.0  # bounds reads from clients that connect and never finish a request
LISTENERS = (("good", "server"), ("wrong_name", "wrongname"), ("untrusted", "rogue"))
FAULT_KINDS = frozenset(
    {
        "status",
        "delay",
        "reset",
        "reset_after_processing",
        "truncate",
        "oversized",
        "oversized_headers",
        "invalid_json",
        "chunked",
        "close_delimited",
        "redirect",
        "silence",
        "keep_open",
        "drip",
    }
)


# SNS: what the emulator's topic sends, and how (see the module docstring).
SNS_TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:dash-emulator"
SNS_PREFIX = "/sns/"
SNS_CONFIRM_PATH = "/sns/confirm"
SNS_UNSUBSCRIBE_PATH = "/sns/unsubscribe"
SNS_XMLNS = "http://sns.amazonaws.com/doc/2010-03-31/"
SNS_USER_AGENT = "Amazon Simple Notification Service Agent"
SNS_CONTENT_TYPE = "text/plain; charset=UTF-8"
SNS_RETRY_DELAYS = (0.1, 0.3, 1.0)  # seconds before each retry: four attempts in all
SNS_TIMEOUT = 10.0  # one delivery attempt (SNS waits 15 s)
DRS_NOTIFICATION_VERSION = "2015-06-05"
# The keys each message type signs, in the order of the canonical string; Subject only if
# present (AWS, "Verifying the signatures of Amazon SNS messages").
SNS_SIGNED_KEYS = {
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
SNS_SIGNED_KEYS["UnsubscribeConfirmation"] = SNS_SIGNED_KEYS["SubscriptionConfirmation"]
SNS_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


def sns_string_to_sign(envelope):
    """The canonical string SNS signs for this envelope (a dict of its JSON fields), as
    bytes: each signed key of its Type and its value, each followed by a newline, in order;
    KeyError if one is missing, ValueError for an unknown Type."""
    keys = SNS_SIGNED_KEYS.get(envelope.get("Type"))
    if keys is None:
        raise ValueError(f"unknown SNS message type {envelope.get('Type')!r}")
    out = []
    for key in keys:
        if key == "Subject" and envelope.get("Subject") is None:
            continue
        out.append(f"{key}\n{envelope[key]}\n")
    return "".join(out).encode("utf-8")


def _sns_timestamp(when=None):
    when = time.time() if when is None else when
    ms = int(when * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + ".%03dZ" % ms


_sns_keys = []  # the process's one SNS signing key, made on first use
_sns_keys_lock = threading.Lock()


def _make_sns_signing_cert():
    """An RSA-2048 key and a self-signed certificate for it, as SNS's signing certificate
    (CN sns.amazonaws.com), in memory: (key, PEM bytes). Every emulator of a process shares
    the key (a suite starts hundreds of emulators; each key costs up to 0.1 s); each has a
    certificate of its own."""
    with _sns_keys_lock:
        if not _sns_keys:
            _sns_keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        key = _sns_keys[0]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def make_token(prefix, length):
    """prefix + `length` url-safe chars with '|' inside, as LwA tokens have."""
    s = secrets.token_urlsafe(length)[:length]
    # Real tokens contain '|': a client that forgets to URL-encode them must fail here too.
    third = length // 3
    return f"{prefix}{s[:third]}|{s[third + 1 : 2 * third]}|{s[2 * third + 1 :]}"


def make_asin(slot):
    """A stable, ASIN-shaped product id (B0 + 8 characters) for a slot."""
    return "B0" + hashlib.sha256(slot.encode()).hexdigest()[:8].upper()


def pkce_challenge(verifier, method="S256"):
    """The code_challenge a client sends for `verifier` (RFC 7636)."""
    if method == "plain":
        return verifier
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _encode(body):
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode()
    return body.encode() if isinstance(body, str) else bytes(body or b"")


def _json(status, obj, headers=None):
    return status, {"Content-Type": "application/json", **(headers or {})}, _encode(obj)


def _valid_date(value):
    if not isinstance(value, str) or not ISO_DATE.fullmatch(value):
        return False
    try:
        datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def _valid_quantity(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))  # a huge int overflows isfinite
        and value >= 0
    )


def _parse_json_object(body):
    """The request body as a dict; ValueError (with a reason) for anything else."""

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key in JSON object")
        return dict(pairs)

    def no_constants(name):
        raise ValueError(f"{name} is not valid JSON")

    try:
        doc = json.loads(
            body.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants
        )
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8")
    except json.JSONDecodeError as e:
        raise ValueError(f"body is not JSON: {e}")
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    return doc


def _check_keys(doc, wanted):
    missing = [k for k in wanted if k not in doc]
    extra = sorted(k for k in doc if k not in wanted)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(extra))
        raise ValueError("body fields: " + "; ".join(parts))


def _validate_slot_status(doc):
    _check_keys(doc, SLOT_STATUS_DATES[:1] + SLOT_STATUS_NUMBERS + SLOT_STATUS_DATES[1:])
    for key in SLOT_STATUS_DATES:
        if not _valid_date(doc[key]):
            raise ValueError(f"{key} must be an ISO-8601 UTC date like 2015-12-21T10:00:00Z")
    for key in SLOT_STATUS_NUMBERS:
        if not _valid_quantity(doc[key]):
            raise ValueError(f"{key} must be a non-negative number")


def _validate_device_status(doc):
    _check_keys(doc, ("mostRecentlyActiveDate",))
    if not _valid_date(doc["mostRecentlyActiveDate"]):
        raise ValueError(
            "mostRecentlyActiveDate must be an ISO-8601 UTC date like 2015-12-21T10:00:00Z"
        )


BODY_VALIDATORS = {"slot_status": _validate_slot_status, "device_status": _validate_device_status}


class _BadRequest(Exception):
    pass


class Emulator:
    """DRS v1 + LwA token endpoint. See the module docstring; use start()/stop().

    Public state (read it freely; change it through the methods): requests, orders,
    slot_status, device_status, subscriptions, asins, tls_failures, refresh_count,
    code_grants, deregistrations; for SNS: device_serial, device_model, topic_arn,
    sns_subscriptions, notifications (every DRS notification made, sent or not),
    sns_deliveries.
    """

    def __init__(
        self,
        cert_dir,
        slots=("slot-a",),
        client_id="amzn1.application-oa2-client.test",
        client_secret="test-secret",
        rotate_refresh_tokens=True,
        access_token_lifetime=3600,
        is_test_device=False,
        device_serial="dash-dev-1",
        device_model="dash-emulated",
        topic_arn=SNS_TOPIC_ARN,
        sns_signature_version="2",
        sns_retry_delays=SNS_RETRY_DELAYS,
        port=0,
    ):
        if sns_signature_version not in SNS_HASHES:
            raise ValueError(f"SignatureVersion must be 1 or 2, not {sns_signature_version!r}")
        self.cert_dir = cert_dir
        self.slots = tuple(slots)
        self.client_id = client_id
        self.client_secret = client_secret  # None: public (PKCE) client, no secret required
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.access_token_lifetime = access_token_lifetime
        self.is_test_device = is_test_device
        # Token lengths after the prefix; LwA documents up to 2048 bytes for either token.
        self.access_token_chars = 400
        self.refresh_token_chars = 300
        self.certs = None  # ensure_certs() dict once started
        self.port = self.port_wrong_name = self.port_untrusted = None
        self._want_port = port  # the good listener's (0: any free one)
        self.requests = []
        self.orders = []
        self.slot_status = {slot: [] for slot in self.slots}  # slot -> accepted report dicts
        self.device_status = []  # accepted mostRecentlyActiveDate strings
        self.subscriptions = dict.fromkeys(self.slots, True)
        self.asins = {slot: make_asin(slot) for slot in self.slots}
        self.tls_failures = 0
        self.refresh_count = 0  # successful refresh_token grants
        self.code_grants = 0  # successful authorization_code grants
        self.deregistrations = 0  # successful DELETE /registration calls
        # SNS (see the module docstring)
        self.device_serial = device_serial
        self.device_model = device_model
        self.topic_arn = topic_arn
        self.sns_signature_version = sns_signature_version
        self.sns_retry_delays = tuple(sns_retry_delays)
        self.sns_timeout = SNS_TIMEOUT
        self.sns_subscriptions = []  # dicts: arn, endpoint, cafile, token, confirmed
        self.notifications = []  # every DRS notification made, as dicts
        self.sns_deliveries = []  # one record per delivery to one subscription
        self._sns_key = None
        self._sns_cert_pem = None
        self._sns_cert_name = None  # SimpleNotificationService-<hex>.pem
        self._sns_queue = queue.Queue()
        self._sns_cond = threading.Condition()
        self._sns_queued = self._sns_done = 0
        self._sns_wake = threading.Event()  # cuts a retry's back-off short
        self._sns_last = None  # (message fields, subscriptions) of the last notification
        self._sns_contexts = {}  # cafile -> ssl context
        self._lock = threading.RLock()
        self._refresh_tokens = set()
        self._public_refresh_tokens = set()  # subset refreshable without client_secret
        self._access_tokens = {}  # token -> time.monotonic() expiry
        self._auth_codes = {}  # code -> dict(redirect_uri, challenge, method, expiry, used)
        self._faults = []  # [path_prefix, kind, kw, remaining], consumed FIFO
        self._stop = threading.Event()
        self._listeners = []
        self._threads = set()
        self._conns = set()

    # -- lifecycle --

    def start(self):
        self.certs = certs.ensure_certs(self.cert_dir)
        if self._sns_key is None:
            self._sns_key, self._sns_cert_pem = _make_sns_signing_cert()
            digest = hashlib.sha256(self._sns_cert_pem).hexdigest()[:32]
            self._sns_cert_name = f"SimpleNotificationService-{digest}.pem"
        self._stop.clear()
        for name, cert in LISTENERS:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certs[cert], self.certs[cert + "_key"])
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._want_port if name == "good" else 0))
            sock.listen(32)
            sock.settimeout(0.2)  # fallback wake-up for stop() where shutdown() does not
            self._listeners.append(sock)
            setattr(self, "port" if name == "good" else "port_" + name, sock.getsockname()[1])
            self._spawn(self._accept_loop, name, sock, ctx)
        self._spawn(self._sns_sender)
        return self

    def stop(self):
        self._stop.set()
        self._sns_wake.set()
        self._sns_queue.put(None)  # ends the sender once it is done with the job in hand
        with self._sns_cond:
            self._sns_cond.notify_all()
        with self._lock:
            socks = self._listeners + list(self._conns)
            threads = list(self._threads)
        for s in socks:
            try:  # wakes threads blocked in accept()/recv() at once, unlike close()
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        for t in threads:
            t.join(max(0, deadline - time.monotonic()))
        for s in self._listeners:
            s.close()
        self._listeners = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- state control: tokens --

    def add_refresh_token(self, token=None, public=False):
        """Register a refresh token (generated if None) and return it. public=True: it may
        be refreshed without client_secret, like one obtained through a PKCE code."""
        token = token or make_token("Atzr|", self.refresh_token_chars)
        with self._lock:
            self._refresh_tokens.add(token)
            if public:
                self._public_refresh_tokens.add(token)
        return token

    def revoke_all(self):
        """Invalidate every refresh and access token (authorization codes survive)."""
        with self._lock:
            self._refresh_tokens.clear()
            self._public_refresh_tokens.clear()
            self._access_tokens.clear()

    def expire_access_tokens(self):
        with self._lock:
            for token in self._access_tokens:
                self._access_tokens[token] = 0.0

    def issue_auth_code(
        self,
        redirect_uri=DEFAULT_REDIRECT_URI,
        code_challenge=None,
        code_challenge_method="S256",
        ttl=300,
    ):
        """An authorization code as LwA's consent page would hand the maker's app, valid
        for `ttl` seconds and once. With code_challenge it is a PKCE code (the exchange needs
        code_verifier, not client_secret); without, a confidential one."""
        if code_challenge is not None and code_challenge_method not in ("S256", "plain"):
            raise ValueError("code_challenge_method must be 'S256' or 'plain'")
        code = "AN" + "".join(secrets.choice(CODE_CHARS) for _ in range(18))
        with self._lock:
            self._auth_codes[code] = {
                "redirect_uri": redirect_uri,
                "challenge": code_challenge,
                "method": code_challenge_method,
                "expiry": time.monotonic() + ttl,
                "used": False,
            }
        return code

    def expire_codes(self):
        """Make every outstanding authorization code expired."""
        with self._lock:
            for info in self._auth_codes.values():
                info["expiry"] = 0.0

    # -- state control: slots and orders --

    def set_subscribed(self, slot, flag):
        """What SubscriptionInfo reports for `slot` (Replenish does not look at it); sends a
        SubscriptionChangedNotification naming every slot's status."""
        if slot not in self.slots:
            raise ValueError(f"unknown slot {slot!r}")
        with self._lock:
            self.subscriptions[slot] = bool(flag)
            status = {s: bool(self.subscriptions.get(s, False)) for s in self.slots}
            self.notify(
                "SubscriptionChanged", subscriptionInfo={"slotsSubscriptionStatus": status}
            )

    def open_order(self, slot):
        with self._lock:
            for order in self.orders:
                if order["slot"] == slot and order["open"]:
                    return order["event_instance_id"]
        return None

    def _new_order(self, slot, event_id, detail_code):
        order = {
            "slot": slot,
            "event_instance_id": event_id,
            "detail_code": detail_code,
            "open": True,
            "status": "Pending",
            "asin": self.asins.get(slot) or make_asin(slot),
            "expected_delivery_date": "",
        }
        with self._lock:
            self.orders.append(order)
        return order

    def place_order(self, slot, event_id="amzn1.dash.v2.o.ro.elsewhere"):
        """An order opened outside this device (the customer, another device): DRS will
        answer ORDER_INPROGRESS until it is delivered."""
        self._new_order(slot, event_id, "STANDARD_ORDER_PLACED")
        return event_id

    def _close_open(self, slot, status, close):
        with self._lock:
            for order in self.orders:
                if order["slot"] == slot and order["open"]:
                    order["status"] = status
                    order["open"] = not close
                    return order
        return None

    def ship(self, slot):
        """The slot's open order ships ("Shipped", still open, delivery expected in 2 days;
        an ItemShippedNotification); return its event id (None if there was none)."""
        order = self._close_open(slot, "Shipped", close=False)
        if order is None:
            return None
        when = time.gmtime(time.time() + 2 * 86400)
        with self._lock:
            order["expected_delivery_date"] = time.strftime("%Y-%m-%dT07:59:59.000Z", when)
            self._notify_order("ItemShipped", order)
        return order["event_instance_id"]

    def mark_delivered(self, slot):
        """Close the slot's open order ("Delivered"); return its event id (None if there was
        none)."""
        order = self._close_open(slot, "Delivered", close=True)
        return order and order["event_instance_id"]

    def cancel_order(self, slot):
        """Cancel the slot's open order ("Cancelled", closed; an OrderCancelledNotification);
        return its event id (None if there was none)."""
        with self._lock:
            order = self._close_open(slot, "Cancelled", close=True)
            if order is not None:
                self._notify_order("OrderCancelled", order)
        return order and order["event_instance_id"]

    def set_order_status(self, event_id, status, expected_delivery_date=None, open=None):
        """Set the status GetOrderInfo reports for every order with this event id (any
        string). `open` and the date change only when given. KeyError if there is none."""
        with self._lock:
            found = [o for o in self.orders if o["event_instance_id"] == event_id]
            if not found:
                raise KeyError(event_id)
            for order in found:
                order["status"] = status
                if expected_delivery_date is not None:
                    order["expected_delivery_date"] = expected_delivery_date
                if open is not None:
                    order["open"] = bool(open)

    # -- state control: faults and records --

    def inject(self, path_prefix, kind, times=1, **kw):
        """Queue a fault for the next `times` requests whose path starts with path_prefix.

        Faults that replace the answer skip processing (no order placed, no token issued):
        status (status=, body=, headers=, after= seconds before it is sent, process=True: the
        request is acted on all the same, as a server may do and still say no), reset, silence
        (seconds=30), redirect (location=), invalid_json, oversized (size=65536). The others
        process the request normally and spoil only the delivery: delay (seconds=5),
        reset_after_processing, truncate, chunked, close_delimited (no Content-Length: the
        body ends with the connection), oversized_headers (size=8192), keep_open (the whole
        answer, then the connection held open for seconds=30 despite "Connection: close"),
        drip (the answer a byte every interval=0.5 seconds).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if kind == "status" and "status" not in kw:
            raise ValueError("status fault needs status=")
        with self._lock:
            self._faults.append([path_prefix, kind, kw, times])

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def pending_faults(self):
        with self._lock:
            return sum(f[3] for f in self._faults)

    def requests_to(self, path_prefix):
        with self._lock:
            return [r for r in self.requests if r["path"].startswith(path_prefix)]

    # -- SNS: the maker's cloud's subscription to DRS notifications --

    @property
    def sns_signing_cert_url(self):
        return f"https://localhost:{self.port}{SNS_PREFIX}{self._sns_cert_name}"

    @property
    def sns_signing_cert_pem(self):
        return self._sns_cert_pem

    def sns_subscribe(self, endpoint_url, cafile=None):
        """Subscribe an http(s) endpoint to the topic, as SNS's Subscribe does: it is sent a
        signed SubscriptionConfirmation and gets notifications once it has GET its
        SubscribeURL. `cafile`: the CA that verifies the endpoint's certificate (None: the
        system's). Returns the subscription ARN."""
        scheme = urllib.parse.urlsplit(endpoint_url).scheme
        if scheme not in ("https", "http"):
            raise ValueError(f"an SNS endpoint is http or https, not {endpoint_url!r}")
        if self.port is None:
            raise RuntimeError("start() the emulator first: the SubscribeURL is on its port")
        sub = {
            "arn": f"{self.topic_arn}:{uuid.uuid4()}",
            "endpoint": endpoint_url,
            "cafile": cafile,
            "token": secrets.token_hex(64),
            "confirmed": False,
        }
        query = urllib.parse.urlencode(
            {"Action": "ConfirmSubscription", "TopicArn": self.topic_arn, "Token": sub["token"]}
        )
        fields = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": sub["token"],
            "TopicArn": self.topic_arn,
            "Message": (
                f"You have chosen to subscribe to the topic {self.topic_arn}.\n"
                "To confirm the subscription, visit the SubscribeURL included in this message."
            ),
            "SubscribeURL": f"https://localhost:{self.port}{SNS_CONFIRM_PATH}?{query}",
            "Timestamp": _sns_timestamp(),
        }
        with self._lock:
            self.sns_subscriptions.append(sub)
            self._sns_enqueue(fields, sub, None)
        return sub["arn"]

    def sns_confirmed(self):
        """The ARNs of the confirmed subscriptions."""
        with self._lock:
            return [s["arn"] for s in self.sns_subscriptions if s["confirmed"]]

    def notify(self, kind, serial=None, model=None, **members):
        """Publish a DRS notification to every confirmed subscription and return it (a dict).
        kind: "OrderPlaced" or "OrderPlacedNotification" (any type; the suffix is added).
        serial, model: the device's (default device_serial, device_model). members: more
        top-level members, as given, e.g. orderInfo={...} or subscriptionInfo={...}."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a notification type")
        if not kind.endswith("Notification"):
            kind += "Notification"
        doc = {
            "notificationInfo": {
                "notificationType": kind,
                "notificationTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "notificationId": str(uuid.uuid4()),
                "version": DRS_NOTIFICATION_VERSION,
            },
            "deviceInfo": {
                "deviceIdentifier": {"serialNumber": serial or self.device_serial},
                "productIdentifier": {"modelId": model or self.device_model},
            },
            **members,
        }
        fields = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": self.topic_arn,
            "Message": json.dumps(doc, separators=(",", ":")),
            "Timestamp": _sns_timestamp(),
        }
        with self._lock:
            self.notifications.append(doc)
            subs = [s for s in self.sns_subscriptions if s["confirmed"]]
            self._sns_last = (fields, subs)
            for sub in subs:
                self._sns_enqueue(fields, sub, kind)
        return doc

    def sns_replay(self):
        """Send the last notification again, the same message (MessageId, notificationId,
        Timestamp, Signature) to the same subscriptions, as SNS may; return its MessageId,
        None if there was none."""
        with self._lock:
            if self._sns_last is None:
                return None
            fields, subs = self._sns_last
            kind = json.loads(fields["Message"])["notificationInfo"]["notificationType"]
            for sub in subs:
                if sub in self.sns_subscriptions:
                    self._sns_enqueue(fields, sub, kind)
            return fields["MessageId"]

    def sns_flush(self, timeout=10):
        """Wait until everything queued so far was delivered or given up; False on timeout
        (or when the emulator stopped first)."""
        with self._sns_cond:
            target = self._sns_queued
            self._sns_cond.wait_for(
                lambda: self._sns_done >= target or self._stop.is_set(), timeout
            )
            return self._sns_done >= target

    def sns_retry_now(self):
        """Cut the back-off of a delivery waiting to be retried short: it is tried now."""
        self._sns_wake.set()

    def sns_envelope(self, fields, signature_version=None):
        """`fields` (Type, MessageId, TopicArn, Message, Timestamp, and for confirmations
        Token and SubscribeURL; Subject optional) signed as SNS signs them: a new dict with
        SignatureVersion, Signature, SigningCertURL (and UnsubscribeURL for a Notification
        without one). Tests use it to make messages of their own."""
        version = signature_version or self.sns_signature_version
        env = dict(fields)
        env["SignatureVersion"] = version
        signature = self._sns_key.sign(
            sns_string_to_sign(env), padding.PKCS1v15(), SNS_HASHES[version]()
        )
        env["Signature"] = base64.b64encode(signature).decode("ascii")
        env["SigningCertURL"] = self.sns_signing_cert_url
        return env

    def _sns_enqueue(self, fields, sub, notification_type):
        record = {
            "type": fields["Type"],
            "notification_type": notification_type,
            "message_id": fields["MessageId"],
            "notification_id": None,
            "message": fields["Message"],
            "endpoint": sub["endpoint"],
            "subscription_arn": sub["arn"],
            "status": None,  # the last attempt's HTTP status (None: no answer)
            "statuses": [],
            "attempts": 0,
            "error": None,
            "delivered": None,  # True, or False once given up
        }
        if notification_type is not None:
            info = json.loads(fields["Message"]).get("notificationInfo", {})
            record["notification_id"] = info.get("notificationId")
        with self._sns_cond:
            self.sns_deliveries.append(record)
            self._sns_queued += 1
        self._sns_queue.put((fields, sub, record))

    def _notify_order(self, kind, order):
        product = {"asin": order["asin"], "quantity": 1, "unit": "count"}
        info = {
            "instanceId": order["event_instance_id"],
            "slotId": order["slot"],
            "productInfo": [product],
        }
        return self.notify(kind, orderInfo=info)

    def _sns_sender(self):
        while True:
            job = self._sns_queue.get()
            if job is None:
                if self._stop.is_set():
                    return
                continue
            record = job[2]
            try:
                if self._stop.is_set():
                    record["error"] = "the emulator stopped"
                else:
                    self._sns_deliver(*job)
            except Exception as e:  # a bug must not stop every later delivery
                log.exception("SNS delivery failed")
                record["error"] = repr(e)
            finally:
                with self._sns_cond:
                    if record["delivered"] is None:
                        record["delivered"] = False
                    self._sns_done += 1
                    self._sns_cond.notify_all()

    def _sns_deliver(self, fields, sub, record):
        env = self.sns_envelope(fields)
        if env["Type"] == "Notification":
            query = urllib.parse.urlencode(
                {"Action": "Unsubscribe", "SubscriptionArn": sub["arn"]}
            )
            env["UnsubscribeURL"] = f"https://localhost:{self.port}{SNS_UNSUBSCRIBE_PATH}?{query}"
        body = json.dumps(env, indent=2).encode("utf-8")
        headers = {
            "Content-Type": SNS_CONTENT_TYPE,
            "User-Agent": SNS_USER_AGENT,
            "x-amz-sns-message-type": env["Type"],
            "x-amz-sns-message-id": env["MessageId"],
            "x-amz-sns-topic-arn": env["TopicArn"],
        }
        if env["Type"] != "SubscriptionConfirmation":
            headers["x-amz-sns-subscription-arn"] = sub["arn"]
        delays = list(self.sns_retry_delays)
        self._sns_wake.clear()
        while True:
            status, error = self._sns_post(sub, body, headers)
            with self._sns_cond:  # attempts last: a reader that sees it sees the rest
                record["statuses"].append(status)
                record["status"], record["error"] = status, error
                if status is not None and 200 <= status < 300:
                    record["delivered"] = True
                record["attempts"] += 1
            log.info(
                "SNS %s %s -> %s: %s",
                env["Type"],
                record["notification_type"] or "",
                sub["endpoint"],
                status if error is None else error,
            )
            if record["delivered"] or not delays or self._stop.is_set():
                return
            if self._sns_wake.wait(delays.pop(0)):
                self._sns_wake.clear()
            if self._stop.is_set():
                return

    def _sns_post(self, sub, body, headers):
        """One delivery attempt: (HTTP status, None) or (None, what went wrong)."""
        url = urllib.parse.urlsplit(sub["endpoint"])
        target = (url.path or "/") + ("?" + url.query if url.query else "")
        try:
            if url.scheme == "https":
                ctx = self._sns_contexts.get(sub["cafile"])
                if ctx is None:
                    ctx = ssl.create_default_context(cafile=sub["cafile"])
                    self._sns_contexts[sub["cafile"]] = ctx
                conn = http.client.HTTPSConnection(
                    url.hostname, url.port or 443, context=ctx, timeout=self.sns_timeout
                )
            else:
                conn = http.client.HTTPConnection(
                    url.hostname, url.port or 80, timeout=self.sns_timeout
                )
            try:
                conn.request("POST", target, body, headers)
                resp = conn.getresponse()
                resp.read(65536)
                return resp.status, None
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            return None, f"{type(e).__name__}: {e}"

    def _sns_route(self, method, path):
        """GET /sns/confirm (SubscribeURL), /sns/unsubscribe (UnsubscribeURL) and the
        signing certificate; no DRS checks, as SNS's own endpoints have none."""
        url = urllib.parse.urlsplit(path)
        if url.path == f"{SNS_PREFIX}{self._sns_cert_name}":
            if method != "GET":
                return _sns_error(405, "InvalidAction", f"{method} not allowed")
            return 200, {"Content-Type": "application/x-pem-file"}, self._sns_cert_pem
        if url.path not in (SNS_CONFIRM_PATH, SNS_UNSUBSCRIBE_PATH):
            return _sns_error(404, "NotFound", f"no such resource: {url.path}")
        if method != "GET":
            return _sns_error(405, "InvalidAction", f"{method} not allowed")
        form = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if any(len(v) > 1 for v in form.values()):
            return _sns_error(400, "InvalidParameter", "duplicate parameter")
        params = {k: v[0] for k, v in form.items()}
        if url.path == SNS_CONFIRM_PATH:
            return self._sns_confirm(params)
        return self._sns_unsubscribe(params)

    def _sns_confirm(self, params):
        if params.get("Action") != "ConfirmSubscription":
            return _sns_error(400, "InvalidAction", "Action must be ConfirmSubscription")
        if params.get("TopicArn") != self.topic_arn:
            return _sns_error(404, "NotFound", "Topic does not exist")
        token = params.get("Token", "").encode()
        with self._lock:
            for sub in self.sns_subscriptions:
                if hmac.compare_digest(sub["token"].encode(), token):
                    sub["confirmed"] = True
                    arn = f"<SubscriptionArn>{xml_escape(sub['arn'])}</SubscriptionArn>"
                    return _sns_xml("ConfirmSubscription", arn)
        return _sns_error(400, "InvalidParameter", "Invalid token")

    def _sns_unsubscribe(self, params):
        if params.get("Action") != "Unsubscribe":
            return _sns_error(400, "InvalidAction", "Action must be Unsubscribe")
        with self._lock:
            for sub in list(self.sns_subscriptions):
                if sub["arn"] == params.get("SubscriptionArn"):
                    self.sns_subscriptions.remove(sub)
                    return _sns_xml("Unsubscribe", "")
        return _sns_error(404, "NotFound", "Subscription does not exist")

    # -- connections --

    def _spawn(self, target, *args):
        t = threading.Thread(target=self._run, args=(target, *args), daemon=True)
        # Started under the lock: `stop` joins every thread it finds in the set, and a thread
        # joined before it started raises (a busy machine widened that gap).
        with self._lock:
            self._threads.add(t)
            t.start()

    def _run(self, target, *args):
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept_loop(self, name, sock, ctx):
        while not self._stop.is_set():
            try:
                raw, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, name, raw, ctx)

    def _serve(self, name, raw, ctx):
        raw.settimeout(IO_TIMEOUT)
        conn = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._lock:
            self._conns.add(conn)
        try:
            try:
                conn.do_handshake()
            except OSError as e:
                if self._stop.is_set():  # stop() cut it short; the client refused nothing
                    return
                with self._lock:
                    self.tls_failures += 1
                log.info("%s: TLS handshake failed: %s", name, e)
                return
            self._handle(name, conn)
        except OSError as e:  # the client went away; nobody to answer
            log.info("%s: connection error: %s", name, e)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _read_request(self, conn):
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEAD:
                raise _BadRequest("request head too large")
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(f"bad request line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(f"bad header line {line!r}")
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "transfer-encoding" in headers:
            raise _BadRequest("request Transfer-Encoding not supported; send Content-Length")
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY:
            raise _BadRequest(f"bad Content-Length {length!r}")
        while len(body) < int(length):
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return parts[0], parts[1], headers, body[: int(length)]

    def _take_fault(self, path):
        for fault in self._faults:
            if path.startswith(fault[0]):
                fault[3] -= 1
                if fault[3] <= 0:
                    self._faults.remove(fault)
                return fault[1], fault[2]
        return None, {}

    def _handle(self, name, conn):
        try:
            req = self._read_request(conn)
        except _BadRequest as e:
            log.warning("%s: unparsable request: %s", name, e)
            self._send(conn, None, *_json(400, {"message": str(e)}))
            return
        if req is None:
            return
        method, path, headers, body = req
        rec = {
            "port": name,
            "method": method,
            "path": path,
            "headers": headers,
            "body": body,
            "status": None,
        }
        with self._lock:
            self.requests.append(rec)
            kind, kw = self._take_fault(path)
        try:
            self._respond(conn, rec, kind, kw)
        finally:
            log.info(
                "%s: %s %s -> %s%s",
                name,
                method,
                path,
                rec["status"],
                f" (fault {kind})" if kind else "",
            )

    def _respond(self, conn, rec, kind, kw):
        if kind in ("reset", "reset_after_processing"):
            # Linger 0 turns close() into an RST, as a dropped link looks to the client.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if kind == "reset":
            return
        if kind == "silence":
            return self._silence(conn, kw.get("seconds", 30))
        if kind == "delay" and self._stop.wait(kw.get("seconds", 5)):
            return
        if kind == "status" and kw.get("after") and self._stop.wait(kw["after"]):
            return  # (a server that takes its time to say no)
        if kind == "status":
            if kw.get("process"):
                self._process(rec["method"], rec["path"], rec["headers"], rec["body"])
            answer = kw["status"], dict(kw.get("headers") or {}), _encode(kw.get("body"))
            if isinstance(kw.get("body"), dict):
                answer[1].setdefault("Content-Type", "application/json")
        elif kind == "redirect":
            where = kw.get("location", f"https://localhost:{self.port}/elsewhere")
            answer = 302, {"Location": where}, b""
        elif kind == "invalid_json":
            answer = 200, {"Content-Type": "application/json"}, b'{"eventInstanceId": '
        elif kind == "oversized":
            answer = _json(200, self._oversized(rec["path"], kw.get("size", 65536)))
        else:
            answer = self._process(rec["method"], rec["path"], rec["headers"], rec["body"])
        if kind != "reset_after_processing":
            wait = kw.get("interval", 0.5) if kind == "drip" else kw.get("seconds", 30)
            self._send(conn, rec, *answer, kind=kind, size=kw.get("size", 8192), wait=wait)

    def _send(self, conn, rec, status, headers, body, kind=None, size=0, wait=0.0):
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers.items())]
        if kind == "chunked":
            lines.append("Transfer-Encoding: chunked")
        elif kind != "close_delimited":  # truncate: promise more than will be sent
            length = max(len(body), 1) if kind == "truncate" else len(body)
            lines.append(f"Content-Length: {length}")
        lines.append("Connection: close")
        if kind == "oversized_headers":
            lines.append("X-Padding: " + "a" * max(0, size - len("X-Padding: ")))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if rec is not None:
            with self._lock:
                rec["status"] = status  # before sending, so a client that got it sees it here
        if kind == "truncate":
            conn.sendall(head + body[: len(body) // 2])
        elif kind == "drip":
            data = head + body
            for i in range(len(data)):
                if self._stop.wait(wait):
                    return
                try:
                    conn.sendall(data[i : i + 1])
                except OSError:
                    break  # the client hung up
                if rec is not None:
                    rec["dripped"] = i + 1  # of len(data) bytes
        elif kind == "keep_open":
            conn.sendall(head + body)
            self._silence(conn, wait)
        elif kind == "chunked":
            conn.sendall(head)
            for i in range(0, len(body), 16):  # separate writes: the client sees partial reads
                piece = body[i : i + 16]
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.sendall(b"0\r\n\r\n")
        else:
            conn.sendall(head + body)

    def _silence(self, conn, seconds):
        deadline = time.monotonic() + seconds
        conn.settimeout(0.2)
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if not conn.recv(4096):
                    return
            except TimeoutError:
                continue

    @staticmethod
    def _oversized(path, size):
        if path.startswith(TOKEN_PATH):
            obj = {
                "access_token": "Atza|",
                "refresh_token": "Atzr|x",
                "token_type": "bearer",
                "expires_in": 3600,
            }
            field = "access_token"
        else:
            obj = {"eventInstanceId": "amzn1.dash.v2.o.ro.", "detailCode": "STANDARD_ORDER_PLACED"}
            field = "eventInstanceId"
        obj[field] += "A" * max(0, size - len(_encode(obj)))
        return obj

    # -- endpoints --

    def _process(self, method, path, headers, body):
        route = urllib.parse.urlsplit(path).path
        if route == TOKEN_PATH:
            return self._lwa_token(method, headers, body)
        if route.startswith(SNS_PREFIX):
            return self._sns_route(method, path)
        if route == CONSENT_PATH:
            return self._consent(method, path)
        for pattern, endpoint in ROUTES:
            match = pattern.fullmatch(route)
            if match:
                args = [urllib.parse.unquote(g) for g in match.groups()]
                return self._drs(endpoint, method, headers, body, args)
        return _json(404, {"message": f"no such resource: {route}"})

    # LwA

    def _consent(self, method, path):
        """LwA's consent page (GET /ap/oa), where the customer says yes at once: checks the
        query as LwA documents it for DRS and redirects to redirect_uri with a fresh code."""
        if method != "GET":
            return 405, {"Content-Type": "text/plain"}, b"GET only"
        form = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query, keep_blank_values=True)
        q = {k: v[0] for k, v in form.items()}
        problem = None
        try:
            data = json.loads(q.get("scope_data", ""))["dash:replenish"]
        except (ValueError, KeyError, TypeError):
            data = None
        redirect = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id:
            problem = "unknown client_id"
        elif q.get("response_type") != "code":
            problem = "response_type must be code"
        elif q.get("scope") != "dash:replenish":
            problem = "scope must be dash:replenish"
        elif not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) and DEVICE_ID.fullmatch(data[k])
            for k in ("device_model", "serial")
        ):
            problem = 'scope_data must be {"dash:replenish": {"device_model", "serial"}}'
        elif not redirect.startswith("https://"):
            problem = "redirect_uri must be an https URL"
        elif self.client_secret is None and "code_challenge" not in q:
            problem = "a public client needs a code_challenge"
        if problem:
            return 400, {"Content-Type": "text/plain"}, problem.encode()
        try:
            code = self.issue_auth_code(
                redirect_uri=redirect,
                code_challenge=q.get("code_challenge"),
                code_challenge_method=q.get("code_challenge_method", "plain"),
            )
        except ValueError as e:
            return 400, {"Content-Type": "text/plain"}, str(e).encode()
        answer = {"code": code, "scope": "dash:replenish"}
        if "state" in q:
            answer["state"] = q["state"]
        where = redirect + ("&" if "?" in redirect else "?") + urllib.parse.urlencode(answer)
        return 302, {"Location": where, "Content-Type": "text/plain"}, b""

    def _lwa_token(self, method, headers, body):
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if method != "POST" or ctype != "application/x-www-form-urlencoded":
            return _lwa_error(
                400, "invalid_request", "POST an application/x-www-form-urlencoded body"
            )
        try:
            form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return _lwa_error(400, "invalid_request", "malformed form body")
        if any(len(v) > 1 for v in form.values()):
            return _lwa_error(400, "invalid_request", "duplicate parameter")
        params = {k: v[0] for k, v in form.items()}
        grant = params.get("grant_type")
        if grant == "authorization_code":
            return self._code_grant(params)
        if grant and grant != "refresh_token":
            return _lwa_error(400, "unsupported_grant_type", f"grant_type {grant!r} not supported")
        with self._lock:
            return self._refresh_grant(params)

    def _client_error(self, params, secret_required):
        """The answer for missing or wrong client credentials, None when they are fine."""
        if secret_required and self.client_secret is not None and not params.get("client_secret"):
            return _lwa_error(400, "invalid_request", "missing parameter(s): client_secret")
        if params["client_id"] != self.client_id or (
            self.client_secret is not None
            and params.get("client_secret")
            and params["client_secret"] != self.client_secret
        ):
            return _lwa_error(401, "invalid_client", "Client authentication failed")
        return None

    def _refresh_grant(self, params):
        missing = [k for k in ("grant_type", "refresh_token", "client_id") if not params.get(k)]
        refresh = params.get("refresh_token")
        # An unknown (revoked, rotated away) token is invalid_grant whoever asks, as at LwA.
        public = refresh in self._public_refresh_tokens or refresh not in self._refresh_tokens
        if self.client_secret is not None and not public and not params.get("client_secret"):
            missing.append("client_secret")
        if missing:
            return _lwa_error(
                400, "invalid_request", "missing parameter(s): " + ", ".join(missing)
            )
        error = self._client_error(params, secret_required=not public)
        if error:
            return error
        if refresh not in self._refresh_tokens:
            return _lwa_error(
                400, "invalid_grant", "The request has an invalid grant parameter : refresh_token"
            )
        if self.rotate_refresh_tokens:
            self._refresh_tokens.discard(refresh)
            self._public_refresh_tokens.discard(refresh)
            refresh = self.add_refresh_token(public=public)
        self.refresh_count += 1
        return self._issue_tokens(refresh)

    def _code_grant(self, params):
        missing = [k for k in ("code", "redirect_uri", "client_id") if not params.get(k)]
        if missing:
            return _lwa_error(
                400, "invalid_request", "missing parameter(s): " + ", ".join(missing)
            )
        with self._lock:
            info = self._auth_codes.get(params["code"])
            pkce = info is not None and info["challenge"] is not None
            error = self._client_error(params, secret_required=False)
            if error:
                return error
            if info is None:
                return _lwa_error(400, "invalid_grant", "authorization code is unknown")
            if info["used"]:
                return _lwa_error(400, "invalid_grant", "authorization code was already used")
            if info["expiry"] <= time.monotonic():
                return _lwa_error(400, "invalid_grant", "authorization code has expired")
            if params["redirect_uri"] != info["redirect_uri"]:
                return _lwa_error(
                    400,
                    "invalid_grant",
                    "redirect_uri does not match the one the code was issued for",
                )
            verifier = params.get("code_verifier")
            if pkce:
                if not verifier:
                    return _lwa_error(
                        400,
                        "invalid_request",
                        "missing parameter(s): code_verifier (the code was issued for PKCE)",
                    )
                if not PKCE_VERIFIER.fullmatch(verifier):
                    return _lwa_error(
                        400,
                        "invalid_request",
                        "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]",
                    )
                if not hmac.compare_digest(
                    pkce_challenge(verifier, info["method"]).encode(),
                    info["challenge"].encode(),
                ):
                    return _lwa_error(
                        400, "invalid_grant", "code_verifier does not match the code_challenge"
                    )
            else:
                if "code_verifier" in params:  # PKCE downgrade: the code had no challenge
                    return _lwa_error(
                        400,
                        "invalid_grant",
                        "code_verifier sent for a code issued without code_challenge",
                    )
                error = self._client_error(params, secret_required=True)
                if error:
                    return error
            info["used"] = True
            self.code_grants += 1
            answer = self._issue_tokens(self.add_refresh_token(public=pkce))
            self.notify("DeviceRegistered")
            return answer

    def _issue_tokens(self, refresh):
        access = make_token("Atza|", self.access_token_chars)
        with self._lock:
            self._access_tokens[access] = time.monotonic() + self.access_token_lifetime
        return _json(
            200,
            {
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "bearer",
                "expires_in": self.access_token_lifetime,
            },
            LWA_HEADERS,
        )

    # DRS

    def _drs(self, endpoint, method, headers, body, args):
        label, want_method, input_type, results = ENDPOINTS[endpoint]
        input_type = TYPE_PREFIX + input_type
        results = [TYPE_PREFIX + r for r in results]
        accept = headers.get("x-amzn-accept-type")
        answer_headers = {"x-amzn-type-version": accept if accept in results else results[0]}

        def bad(message):
            return _json(400, {"message": message}, answer_headers)

        if method != want_method:
            return bad(f"method {method} not supported, use {want_method}")
        type_version = headers.get("x-amzn-type-version")
        if type_version != input_type:
            return bad(f"x-amzn-type-version must be {input_type}, got {type_version!r}")
        if accept not in results:
            return bad(f"x-amzn-accept-type must be {' or '.join(results)}, got {accept!r}")
        validate = BODY_VALIDATORS.get(endpoint)
        doc = None
        if validate is None:
            if body:
                return bad(f"{label} takes no request body")
        else:
            ctype = headers.get("content-type")
            if ctype is not None and ctype.split(";")[0].strip().lower() != "application/json":
                return bad(f"Content-Type must be application/json, got {ctype!r}")
            try:
                doc = _parse_json_object(body)
                validate(doc)
            except ValueError as e:
                return bad(f"{label}: {e}")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return bad("missing or malformed Authorization: Bearer header")
        with self._lock:
            expiry = self._access_tokens.get(token)
            if expiry is None:
                return bad("invalid or revoked access token")
            if expiry <= time.monotonic():
                return bad("access token expired")
            return getattr(self, "_do_" + endpoint)(answer_headers, doc, *args)

    def _unknown_slot(self, headers, slot):
        return _json(404, {"message": f"slot {slot!r} does not exist"}, headers)

    def _do_replenish(self, headers, _doc, slot):
        if slot not in self.slots:
            return self._unknown_slot(headers, slot)
        event_id = "amzn1.dash.v2.o.ro." + str(uuid.uuid4())
        if self.open_order(slot):
            code = "ORDER_INPROGRESS"
        else:
            code = "TEST_ORDER_PLACED" if self.is_test_device else "STANDARD_ORDER_PLACED"
            self._notify_order("OrderPlaced", self._new_order(slot, event_id, code))
        return _json(200, {"eventInstanceId": event_id, "detailCode": code}, headers)

    def _do_slot_status(self, headers, doc, slot):
        if slot not in self.slots:
            return self._unknown_slot(headers, slot)
        self.slot_status.setdefault(slot, []).append(doc)
        return 200, headers, b""

    def _do_device_status(self, headers, doc):
        self.device_status.append(doc["mostRecentlyActiveDate"])
        return 200, headers, b""

    def _do_subscription_info(self, headers, _doc):
        v2 = headers["x-amzn-type-version"].endswith("@2.0")
        status = {}
        for slot in self.slots:
            subscribed = bool(self.subscriptions.get(slot, False))
            if v2:
                products = [{"asin": self.asins[slot], "quantity": 1, "unit": "count"}]
                status[slot] = {
                    "subscribed": subscribed,
                    "productInfoList": products if subscribed else [],
                }
            else:
                status[slot] = subscribed
        return _json(200, {"slotsSubscriptionStatus": status}, headers)

    def _do_order_info(self, headers, _doc, event_id):
        items = [
            {
                "asin": o["asin"],
                "expectedDeliveryDate": o["expected_delivery_date"],
                "quantity": 1,
                "slotId": o["slot"],
                "status": o["status"],
            }
            for o in self.orders
            if o["event_instance_id"] == event_id
        ]
        if not items:
            return _json(400, {"message": f"no order with instance id {event_id!r}"}, headers)
        return _json(
            200, {"orderInfoData": {"instanceId": event_id, "orderItems": items}}, headers
        )

    def _do_deregister(self, headers, _doc):
        self.revoke_all()
        self.deregistrations += 1
        self.notify("DeviceDeregistered")
        return 200, headers, b""

    def _do_cancel_test_orders(self, headers, _doc, slot):
        if slot and slot not in self.slots:  # "" is /testOrders: every slot
            return self._unknown_slot(headers, slot)
        statuses = []
        for s in [slot] if slot else self.slots:
            cancelled = False
            for order in self.orders:
                if (
                    order["slot"] == s
                    and order["open"]
                    and order["detail_code"] == "TEST_ORDER_PLACED"
                ):
                    order["open"], order["status"] = False, "Cancelled"
                    self._notify_order("OrderCancelled", order)
                    cancelled = True
            state = "CANCELLED" if cancelled else "NO_ORDER_IN_PROGRESS"
            statuses.append({"orderStatus": state, "slotId": s})
        return _json(200, {"slotOrderStatuses": statuses}, headers)


def _lwa_error(status, code, description):
    return _json(status, {"error": code, "error_description": description}, LWA_HEADERS)


def _sns_xml(action, result):
    body = (
        f'<{action}Response xmlns="{SNS_XMLNS}">'
        f"<{action}Result>{result}</{action}Result>"
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )
    return 200, {"Content-Type": "text/xml"}, body.encode()


def _sns_error(status, code, message):
    body = (
        f'<ErrorResponse xmlns="{SNS_XMLNS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{xml_escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    )
    return status, {"Content-Type": "text/xml"}, body.encode()


def auth_code(argv):
    """`auth-code`: what a customer's consent gives the maker's registration page, from a
    running emulator's consent page (GET /ap/oa), printed alone on a line."""
    ap = argparse.ArgumentParser(prog="drs_emulator.py auth-code", description=auth_code.__doc__)
    ap.add_argument("--port", type=int, required=True, help="the emulator's port")
    ap.add_argument("--certs", default="build/certs", help="its certificate directory")
    ap.add_argument("--client-id", default="amzn1.application-oa2-client.test")
    ap.add_argument("--redirect-uri", default=DEFAULT_REDIRECT_URI)
    ap.add_argument("--serial", default="dash-dev-1")
    ap.add_argument("--model", default="dash-emulated")
    ap.add_argument("--challenge", help="the device's PKCE code_challenge (S256)")
    args = ap.parse_args(argv)
    data = {"device_model": args.model, "serial": args.serial, "is_test_device": True}
    query = {
        "client_id": args.client_id,
        "scope": "dash:replenish",
        "scope_data": json.dumps({"dash:replenish": data}),
        "response_type": "code",
        "redirect_uri": args.redirect_uri,
    }
    if args.challenge:
        query.update(code_challenge=args.challenge, code_challenge_method="S256")
    ctx = ssl.create_default_context(cafile=f"{args.certs}/ca.pem")
    conn = http.client.HTTPSConnection("localhost", args.port, context=ctx, timeout=10)
    try:
        conn.request("GET", CONSENT_PATH + "?" + urllib.parse.urlencode(query))
        resp = conn.getresponse()
        body = resp.read(4096).decode(errors="replace")
    except OSError as e:
        sys.exit(f"no emulator answered on port {args.port} ({e}): start it with `make emulator`")
    finally:
        conn.close()
    where = urllib.parse.urlsplit(resp.getheader("Location") or "")
    code = urllib.parse.parse_qs(where.query).get("code")
    if resp.status != 302 or not code:
        sys.exit(f"the consent page said {resp.status}: {body}")
    print(code[0])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["auth-code"]:
        return auth_code(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--certs", required=True, help="certificate directory (made if needed)")
    ap.add_argument("--port", type=int, default=0, help="the (trusted) port; default: any free")
    ap.add_argument("--slots", default="slot-a", help="comma-separated slot ids")
    ap.add_argument("--unsubscribed", default="", help="comma-separated slots not subscribed")
    ap.add_argument("--refresh-token", help="register this refresh token (default: generate)")
    ap.add_argument("--test-device", action="store_true", help="answer TEST_ORDER_PLACED")
    ap.add_argument("--client-id", default="amzn1.application-oa2-client.test")
    ap.add_argument("--client-secret", default="test-secret")
    ap.add_argument("--no-rotate", action="store_true", help="keep refresh tokens on refresh")
    ap.add_argument("--access-token-lifetime", type=int, default=3600)
    ap.add_argument("--serial", default="dash-dev-1", help="the device's serial in notifications")
    ap.add_argument("--model", default="dash-emulated", help="its model id in notifications")
    ap.add_argument(
        "--sns-endpoint",
        metavar="URL",
        help="subscribe this http(s) endpoint to DRS notifications over SNS at start",
    )
    ap.add_argument(
        "--sns-ca",
        metavar="FILE",
        help="CA file that verifies the SNS endpoint's certificate (default: the test CA)",
    )
    args = ap.parse_args(argv)
    if args.sns_endpoint and urllib.parse.urlsplit(args.sns_endpoint).scheme not in (
        "http",
        "https",
    ):
        ap.error("--sns-endpoint must be an http or https URL")
    if not DEVICE_ID.fullmatch(args.serial) or not DEVICE_ID.fullmatch(args.model):
        ap.error("--serial and --model are 1-64 characters of [A-Za-z0-9-+_]")
    slots = [s for s in args.slots.split(",") if s]
    unsubscribed = [s for s in args.unsubscribed.split(",") if s]
    unknown = [s for s in unsubscribed if s not in slots]
    if unknown:
        ap.error("--unsubscribed names slots not in --slots: " + ", ".join(unknown))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    emu = Emulator(
        args.certs,
        slots=slots,
        client_id=args.client_id,
        client_secret=args.client_secret,
        rotate_refresh_tokens=not args.no_rotate,
        access_token_lifetime=args.access_token_lifetime,
        is_test_device=args.test_device,
        device_serial=args.serial,
        device_model=args.model,
        port=args.port,
    )
    for slot in unsubscribed:
        emu.set_subscribed(slot, False)
    try:
        emu.start()
    except OSError as e:
        emu.stop()
        sys.exit(f"drs_emulator: cannot listen on port {args.port}: {e.strerror}")
    try:
        token = emu.add_refresh_token(args.refresh_token)
        sns = {"topic_arn": emu.topic_arn, "signing_host": f"localhost:{emu.port}"}
        if args.sns_endpoint:
            sns["subscription_arn"] = emu.sns_subscribe(
                args.sns_endpoint, cafile=args.sns_ca or emu.certs["ca"]
            )
        print(
            json.dumps(
                {
                    "port": emu.port,
                    "port_wrong_name": emu.port_wrong_name,
                    "port_untrusted": emu.port_untrusted,
                    "ca": emu.certs["ca"],
                    "ca_der": emu.certs["ca_der"],
                    "refresh_token": token,
                    "auth_code": emu.issue_auth_code(),
                    "redirect_uri": DEFAULT_REDIRECT_URI,
                    "serial": emu.device_serial,
                    "sns": sns,
                }
            ),
            flush=True,
        )
        while not done.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
