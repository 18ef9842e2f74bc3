"""Emulator of Amazon DRS v1 Replenish and the Login with Amazon token endpoint, over HTTPS.

Three listeners on 127.0.0.1 share one state: `port` (valid certificate for localhost),
`port_wrong_name` (certificate for wrong.example) and `port_untrusted` (leaf from a rogue
CA). Every parsed request is recorded; tests inject one-shot faults per path prefix.
Each connection carries exactly one request and is closed after the answer.

CLI: python3 tools/drs_emulator.py --certs DIR [--slots slot-a,slot-b]
     [--refresh-token TOKEN] [--test-device]
"""

import argparse
import http
import json
import logging
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import uuid

try:
    from . import certs  # imported as tools.drs_emulator
except ImportError:
    import certs  # run as a script, or tools/ is on sys.path

log = logging.getLogger("drs_emulator")

TOKEN_PATH = "/auth/o2/token"
REPLENISH_PATH = "/replenish/"
REPLENISH_INPUT = "com.amazon.dash.replenishment.DrsReplenishInput@1.0"
REPLENISH_RESULT = "com.amazon.dash.replenishment.DrsReplenishResult@1.0"
DRS_HEADERS = {"x-amzn-type-version": REPLENISH_RESULT}
LWA_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
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
        "redirect",
        "silence",
    }
)


def make_token(prefix, length):
    """prefix + `length` url-safe chars with '|' inside, as LwA tokens have."""
    s = secrets.token_urlsafe(length)[:length]
    # Real tokens contain '|': a client that forgets to URL-encode them must fail here too.
    third = length // 3
    return f"{prefix}{s[:third]}|{s[third + 1 : 2 * third]}|{s[2 * third + 1 :]}"


def _encode(body):
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode()
    return body.encode() if isinstance(body, str) else bytes(body or b"")


def _json(status, obj, headers=None):
    return status, {"Content-Type": "application/json", **(headers or {})}, _encode(obj)


class _BadRequest(Exception):
    pass


class Emulator:
    """DRS Replenish + LwA token endpoint. See the module docstring; use start()/stop()."""

    def __init__(
        self,
        cert_dir,
        slots=("slot-a",),
        client_id="amzn1.application-oa2-client.test",
        client_secret="test-secret",
        rotate_refresh_tokens=True,
        access_token_lifetime=3600,
        is_test_device=False,
    ):
        self.cert_dir = cert_dir
        self.slots = tuple(slots)
        self.client_id = client_id
        self.client_secret = client_secret  # None: public (PKCE) client, no secret required
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.access_token_lifetime = access_token_lifetime
        self.is_test_device = is_test_device
        self.certs = None  # ensure_certs() dict once started
        self.port = self.port_wrong_name = self.port_untrusted = None
        self.requests = []
        self.orders = []
        self.tls_failures = 0
        self.refresh_count = 0  # successful refresh_token grants
        self._lock = threading.RLock()
        self._refresh_tokens = set()
        self._access_tokens = {}  # token -> time.monotonic() expiry
        self._faults = []  # [path_prefix, kind, kw, remaining], consumed FIFO
        self._stop = threading.Event()
        self._listeners = []
        self._threads = set()
        self._conns = set()

    # -- lifecycle --

    def start(self):
        self.certs = certs.ensure_certs(self.cert_dir)
        self._stop.clear()
        for name, cert in LISTENERS:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certs[cert], self.certs[cert + "_key"])
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(32)
            sock.settimeout(0.2)  # fallback wake-up for stop() where shutdown() does not
            self._listeners.append(sock)
            setattr(self, "port" if name == "good" else "port_" + name, sock.getsockname()[1])
            self._spawn(self._accept_loop, name, sock, ctx)
        return self

    def stop(self):
        self._stop.set()
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

    # -- state control --

    def add_refresh_token(self, token=None):
        token = token or make_token("Atzr|", 300)
        with self._lock:
            self._refresh_tokens.add(token)
        return token

    def revoke_all(self):
        with self._lock:
            self._refresh_tokens.clear()
            self._access_tokens.clear()

    def expire_access_tokens(self):
        with self._lock:
            for token in self._access_tokens:
                self._access_tokens[token] = 0.0

    def open_order(self, slot):
        with self._lock:
            for order in self.orders:
                if order["slot"] == slot and order["open"]:
                    return order["event_instance_id"]
        return None

    def place_order(self, slot, event_id="amzn1.dash.v2.o.ro.elsewhere"):
        """An order opened outside this device (the customer, another device): DRS will
        answer ORDER_INPROGRESS until it is delivered."""
        with self._lock:
            self.orders.append(
                {
                    "slot": slot,
                    "event_instance_id": event_id,
                    "detail_code": "STANDARD_ORDER_PLACED",
                    "open": True,
                }
            )
        return event_id

    def mark_delivered(self, slot):
        """Close the slot's open order; return its event id (None if there was none)."""
        with self._lock:
            for order in self.orders:
                if order["slot"] == slot and order["open"]:
                    order["open"] = False
                    return order["event_instance_id"]
        return None

    def inject(self, path_prefix, kind, times=1, **kw):
        """Queue a fault for the next `times` requests whose path starts with path_prefix.

        Faults that replace the answer skip processing (no order placed, no token issued):
        status (status=, body=, headers=), reset, silence (seconds=30), redirect (location=),
        invalid_json, oversized (size=65536). The others process the request normally and
        spoil only the delivery: delay (seconds=5), reset_after_processing, truncate,
        chunked, oversized_headers (size=8192).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if kind == "status" and "status" not in kw:
            raise ValueError("status fault needs status=")
        with self._lock:
            self._faults.append([path_prefix, kind, kw, times])

    def pending_faults(self):
        with self._lock:
            return sum(f[3] for f in self._faults)

    def requests_to(self, path_prefix):
        with self._lock:
            return [r for r in self.requests if r["path"].startswith(path_prefix)]

    # -- connections --

    def _spawn(self, target, *args):
        t = threading.Thread(target=self._run, args=(target, *args), daemon=True)
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
        if not length.isdigit() or int(length) > MAX_BODY:
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
        if kind == "status":
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
            self._send(conn, rec, *answer, kind=kind, size=kw.get("size", 8192))

    def _send(self, conn, rec, status, headers, body, kind=None, size=0):
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers.items())]
        if kind == "chunked":
            lines.append("Transfer-Encoding: chunked")
        else:  # truncate: promise more than will be sent
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
        if route.startswith(REPLENISH_PATH):
            return self._replenish(method, route, headers, body)
        return _json(404, {"message": f"no such resource: {route}"})

    def _lwa_token(self, method, headers, body):
        def error(status, code, description):
            return _json(status, {"error": code, "error_description": description}, LWA_HEADERS)

        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if method != "POST" or ctype != "application/x-www-form-urlencoded":
            return error(400, "invalid_request", "POST an application/x-www-form-urlencoded body")
        try:
            form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return error(400, "invalid_request", "malformed form body")
        if any(len(v) > 1 for v in form.values()):
            return error(400, "invalid_request", "duplicate parameter")
        params = {k: v[0] for k, v in form.items()}
        grant = params.get("grant_type")
        if grant and grant != "refresh_token":
            return error(400, "unsupported_grant_type", f"grant_type {grant!r} not supported")
        needed = ["grant_type", "refresh_token", "client_id"]
        if self.client_secret is not None:
            needed.append("client_secret")
        missing = [k for k in needed if not params.get(k)]
        if missing:
            return error(400, "invalid_request", "missing parameter(s): " + ", ".join(missing))
        if params["client_id"] != self.client_id or (
            self.client_secret is not None and params["client_secret"] != self.client_secret
        ):
            return error(401, "invalid_client", "Client authentication failed")
        with self._lock:
            refresh = params["refresh_token"]
            if refresh not in self._refresh_tokens:
                return error(
                    400,
                    "invalid_grant",
                    "The request has an invalid grant parameter : refresh_token",
                )
            if self.rotate_refresh_tokens:
                self._refresh_tokens.discard(refresh)
                refresh = self.add_refresh_token()
            access = make_token("Atza|", 400)
            self._access_tokens[access] = time.monotonic() + self.access_token_lifetime
            self.refresh_count += 1
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

    def _replenish(self, method, route, headers, body):
        def bad(message):
            return _json(400, {"message": message}, DRS_HEADERS)

        if method != "POST":
            return bad(f"method {method} not supported, use POST")
        for name, want in (
            ("x-amzn-type-version", REPLENISH_INPUT),
            ("x-amzn-accept-type", REPLENISH_RESULT),
        ):
            if headers.get(name) != want:
                return bad(f"{name} must be {want}, got {headers.get(name)!r}")
        if body:
            return bad("Replenish takes no request body")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return bad("missing or malformed Authorization: Bearer header")
        slot = urllib.parse.unquote(route[len(REPLENISH_PATH) :])
        with self._lock:
            expiry = self._access_tokens.get(token)
            if expiry is None:
                return bad("invalid or revoked access token")
            if expiry <= time.monotonic():
                return bad("access token expired")
            if slot not in self.slots:
                return _json(404, {"message": f"slot {slot!r} does not exist"}, DRS_HEADERS)
            event_id = "amzn1.dash.v2.o.ro." + str(uuid.uuid4())
            if self.open_order(slot):
                code = "ORDER_INPROGRESS"
            else:
                code = "TEST_ORDER_PLACED" if self.is_test_device else "STANDARD_ORDER_PLACED"
                self.orders.append(
                    {
                        "slot": slot,
                        "event_instance_id": event_id,
                        "detail_code": code,
                        "open": True,
                    }
                )
        return _json(200, {"eventInstanceId": event_id, "detailCode": code}, DRS_HEADERS)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--certs", required=True, help="certificate directory (made if needed)")
    ap.add_argument("--slots", default="slot-a", help="comma-separated slot ids")
    ap.add_argument("--refresh-token", help="register this refresh token (default: generate)")
    ap.add_argument("--test-device", action="store_true", help="answer TEST_ORDER_PLACED")
    ap.add_argument("--client-id", default="amzn1.application-oa2-client.test")
    ap.add_argument("--client-secret", default="test-secret")
    ap.add_argument("--no-rotate", action="store_true", help="keep refresh tokens on refresh")
    ap.add_argument("--access-token-lifetime", type=int, default=3600)
    args = ap.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    emu = Emulator(
        args.certs,
        slots=[s for s in args.slots.split(",") if s],
        client_id=args.client_id,
        client_secret=args.client_secret,
        rotate_refresh_tokens=not args.no_rotate,
        access_token_lifetime=args.access_token_lifetime,
        is_test_device=args.test_device,
    ).start()
    try:
        token = emu.add_refresh_token(args.refresh_token)
        print(
            json.dumps(
                {
                    "port": emu.port,
                    "port_wrong_name": emu.port_wrong_name,
                    "port_untrusted": emu.port_untrusted,
                    "ca": emu.certs["ca"],
                    "ca_der": emu.certs["ca_der"],
                    "refresh_token": token,
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
