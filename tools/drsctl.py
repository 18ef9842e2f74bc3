"""drsctl: Amazon Dash Replenishment (DRS v1) from an appliance maker's bring-up bench.

It acts as one registered device: it trades the device's Login with Amazon (LwA) refresh
token for an access token, then makes one DRS call and prints the result.

Usage:
  python3 tools/drsctl.py --credentials FILE [options] COMMAND [command options]

Commands:
  subscriptions                  which slots the customer subscribed, with product ASINs
                                 (SubscriptionInfo, result @2.0; --v1 asks for @1.0)
  order-info EVENT_ID            the order behind a Replenish eventInstanceId (GetOrderInfo)
  cancel-test-orders [--slot S]  cancel the open test orders of slot S, or of every slot
                                 (CancelTestOrder), so that Replenish can order again
  deregister [--yes]             deregister the device: every token of it stops working and
                                 the customer must register it again. Asks for confirmation
                                 on stdin ("yes") unless --yes is given.

Options (before or after the command):
  --credentials FILE  JSON {"client_id": "...", "client_secret": "...", "refresh_token":
                      "Atzr|..."}; leave client_secret out or empty for a public (PKCE)
                      client. When LwA rotates the refresh token, the new one is written back
                      to FILE (temp file + rename, mode 0600) before anything else happens;
                      other keys in FILE are kept.
  --drs-url URL       DRS API base (default https://dash-replenishment-service-na.amazon.com)
  --lwa-url URL       LwA token endpoint (default https://api.amazon.com/auth/o2/token;
                      api.amazon.co.uk serves EU, api.amazon.co.jp FE)
  --ca FILE           trust this CA bundle (PEM) instead of the system store
  --timeout SECONDS   bound on each network operation and on each request (default 20)
  --json              print the result as JSON instead of text

Certificates and host names are always verified, redirects are never followed, and no
token or client secret is ever printed. Exit status: 0 on success; 1 on any failure, with
one line on stderr (the HTTP status and the server's message where there is one).

Example:
  python3 tools/drsctl.py --credentials unit-7.json cancel-test-orders --slot detergent
"""

import argparse
import contextlib
import http.client
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.parse

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

DRS_URL = "https://dash-replenishment-service-na.amazon.com"
LWA_URL = "https://api.amazon.com/auth/o2/token"
TYPE_PREFIX = "com.amazon.dash.replenishment."
USER_AGENT = "drsctl/1.0"
MAX_ANSWER = 1024 * 1024
DEFAULT_TIMEOUT = 20.0


class Failure(Exception):
    """A failure to report in one line; the tool exits with status 1."""


class Redactor:
    """Keeps every secret the tool has seen out of anything it prints."""

    def __init__(self):
        self.secrets = set()

    def add(self, value):
        if isinstance(value, str) and len(value) >= 4:
            self.secrets.add(value)
            # Tokens contain '|', which shows up URL-encoded in echoed form bodies.
            self.secrets.add(urllib.parse.quote(value, safe=""))
            self.secrets.add(urllib.parse.quote_plus(value))

    def scrub(self, text):
        """`text` with every secret replaced by [redacted]."""
        text = str(text)
        for s in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(s, "[redacted]")
        return text

    def clean(self, text, limit=300):
        """One printable line of at most `limit` characters with every secret removed."""
        text = self.scrub(text)
        text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."


REDACT = Redactor()


# -- HTTPS --


class Https:
    """One request per connection, certificate and host name verified, no redirects."""

    def __init__(self, ca=None, timeout=DEFAULT_TIMEOUT):
        try:
            self.context = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise Failure(f"cannot load CA file {ca}: {getattr(e, 'strerror', None) or e}")
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout

    def request(self, method, url, headers, body=None):
        """(status, {lower-case header: value}, body bytes); Failure on any transport error."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise Failure(f"not an https:// URL: {REDACT.clean(url)}")
        try:
            port = parts.port
        except ValueError:
            raise Failure(f"bad port in URL: {REDACT.clean(url)}")
        host = parts.hostname if port is None else f"{parts.hostname}:{port}"
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        deadline = time.monotonic() + self.timeout
        conn = http.client.HTTPSConnection(
            parts.hostname, port, context=self.context, timeout=self.timeout
        )
        try:
            conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **headers})
            resp = conn.getresponse()
            data = b""
            while True:
                chunk = resp.read(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise Failure(f"{host}: answer larger than {MAX_ANSWER} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError
            if resp.length:  # read(amt) returns b"" at a premature end instead of raising
                raise http.client.IncompleteRead(data, resp.length)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except ssl.SSLCertVerificationError as e:
            raise Failure(
                f"TLS certificate of {host} not trusted ({e.verify_message}); "
                "for a private CA pass --ca FILE"
            )
        except ssl.SSLError as e:
            raise Failure(f"TLS error with {host}: {e.reason or e}")
        except TimeoutError:
            raise Failure(f"{host}: no answer within {self.timeout:g} s")
        except http.client.HTTPException as e:
            raise Failure(f"{host}: broken HTTP answer: {REDACT.clean(repr(e), 120)}")
        except OSError as e:
            raise Failure(f"cannot reach {host}: {e.strerror or e}")
        finally:
            conn.close()


def _server_message(body, reason):
    """The explanation a server gave in an error answer, as one clean line."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("message"), str):
            return REDACT.clean(doc["message"])
        if isinstance(doc.get("error"), str):
            text = doc["error"]
            if isinstance(doc.get("error_description"), str):
                text += ": " + doc["error_description"]
            return REDACT.clean(text)
    text = REDACT.clean(body.decode("utf-8", "replace"), 200)
    return text or reason


def _retry_after(headers):
    value = headers.get("retry-after")
    return f" (server asks to retry after {REDACT.clean(value, 40)})" if value else ""


def _check_redirect(what, status, headers):
    if 300 <= status < 400:
        where = REDACT.clean(headers.get("location", "nowhere"), 200)
        raise Failure(f"{what}: HTTP {status} redirect to {where} (redirects are not followed)")


# -- credentials and LwA --


def load_credentials(path):
    try:
        with open(path, encoding="utf-8") as f:
            creds = json.load(f)
    except OSError as e:
        raise Failure(f"cannot read credentials {path}: {e.strerror or e}")
    except ValueError as e:
        raise Failure(f"credentials {path} are not valid JSON ({getattr(e, 'msg', 'bad text')})")
    if not isinstance(creds, dict):
        raise Failure(f"credentials {path} must hold a JSON object")
    for key in ("client_id", "refresh_token"):
        if not isinstance(creds.get(key), str) or not creds[key]:
            raise Failure(f"credentials {path}: {key} must be a non-empty string")
    if creds.get("client_secret") is not None and not isinstance(creds["client_secret"], str):
        raise Failure(f"credentials {path}: client_secret must be a string")
    REDACT.add(creds["refresh_token"])
    REDACT.add(creds.get("client_secret"))
    return creds


def save_credentials(path, creds):
    """Replace `path` atomically: a 0600 temp file beside it, fsync, rename, fsync the dir."""
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(creds, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextlib.contextmanager
def credentials_lock(path, timeout):
    """An exclusive flock on the directory of `path` (the file itself is replaced by
    rename, so it cannot carry the lock), waited for at most `timeout` seconds."""
    if fcntl is None:  # no flock here (Windows): run unlocked
        yield
        return
    try:
        fd = os.open(os.path.dirname(os.path.realpath(path)), os.O_RDONLY)
    except OSError as e:
        raise Failure(f"cannot open the directory of {path}: {e.strerror or e}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Failure(f"credentials {path} are in use by another drsctl; try again")
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def access_token(https, lwa_url, creds_path, creds):
    """Refresh an access token; persist a rotated refresh token before returning."""
    form = {
        "grant_type": "refresh_token",
        "refresh_token": creds["refresh_token"],
        "client_id": creds["client_id"],
    }
    if creds.get("client_secret"):
        form["client_secret"] = creds["client_secret"]
    status, headers, body = https.request(
        "POST",
        lwa_url,
        {
            "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
            "Accept": "application/json",
        },
        urllib.parse.urlencode(form).encode(),
    )
    _check_redirect("LwA token request", status, headers)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        if error == "invalid_grant":
            raise Failure("refresh token revoked or expired: register again")
        if error == "invalid_client":
            raise Failure(
                "LwA rejected the client credentials (invalid_client): "
                "check client_id and client_secret in " + creds_path
            )
        message = _server_message(body, http.client.responses.get(status, ""))
        raise Failure(f"LwA token request failed: HTTP {status}: {message}{_retry_after(headers)}")
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise Failure("LwA token answer has no access_token")
    token = answer["access_token"]
    REDACT.add(token)
    rotated = answer.get("refresh_token")
    if isinstance(rotated, str) and rotated and rotated != creds["refresh_token"]:
        REDACT.add(rotated)
        try:
            save_credentials(creds_path, {**creds, "refresh_token": rotated})
        except OSError as e:
            raise Failure(
                f"LwA rotated the refresh token but it could not be saved to {creds_path} "
                f"({e.strerror or e}); the old one may no longer work: register again"
            )
        creds["refresh_token"] = rotated
    return token


# -- DRS --


def drs_call(https, base_url, token, label, method, path, input_type, result_type):
    """One DRS call; the parsed JSON answer (None for an empty one) or Failure."""
    url = base_url.rstrip("/") + path
    status, headers, body = https.request(
        method,
        url,
        {
            "Authorization": "Bearer " + token,
            "x-amzn-type-version": TYPE_PREFIX + input_type,
            "x-amzn-accept-type": TYPE_PREFIX + result_type,
        },
    )
    _check_redirect(f"DRS {label}", status, headers)
    if not 200 <= status < 300:
        reason = http.client.responses.get(status, "")
        message = _server_message(body, reason)
        raise Failure(f"DRS {label} failed: HTTP {status}: {message}{_retry_after(headers)}")
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise Failure(f"DRS {label}: answer is not JSON")


def _unexpected(label):
    return Failure(f"DRS {label}: unexpected answer")


def cmd_subscriptions(https, args, token):
    version = "1.0" if args.v1 else "2.0"
    answer = drs_call(
        https,
        args.drs_url,
        token,
        "SubscriptionInfo",
        "GET",
        "/subscriptionInfo",
        "DrsSubscriptionInfoInput@1.0",
        "DrsSubscriptionInfoResult@" + version,
    )
    slots = answer.get("slotsSubscriptionStatus") if isinstance(answer, dict) else None
    if not isinstance(slots, dict):
        raise _unexpected("SubscriptionInfo")
    if args.json:
        return answer
    lines = []
    for slot, info in slots.items():
        if isinstance(info, bool):
            info = {"subscribed": info}
        if not isinstance(info, dict):
            raise _unexpected("SubscriptionInfo")
        line = f"{slot}: {'subscribed' if info.get('subscribed') else 'not subscribed'}"
        products = [
            f"ASIN {p.get('asin', '?')} x{p.get('quantity', '?')} {p.get('unit', '')}".rstrip()
            for p in info.get("productInfoList") or []
            if isinstance(p, dict)
        ]
        if products:
            line += " (" + ", ".join(products) + ")"
        lines.append(REDACT.clean(line, 500))
    return "\n".join(lines) or "no slots"


def cmd_order_info(https, args, token):
    answer = drs_call(
        https,
        args.drs_url,
        token,
        "GetOrderInfo",
        "GET",
        "/getOrderInfo/" + urllib.parse.quote(args.event_id, safe=""),
        "DrsOrderInfoInput@1.0",
        "DrsOrderInfoResult@1.0",
    )
    data = answer.get("orderInfoData") if isinstance(answer, dict) else None
    items = data.get("orderItems") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _unexpected("GetOrderInfo")
    if args.json:
        return answer
    lines = [REDACT.clean(f"order {data.get('instanceId', args.event_id)}: {len(items)} item(s)")]
    for item in items:
        when = item.get("expectedDeliveryDate") or "not known yet"
        lines.append(
            "  "
            + REDACT.clean(
                f"{item.get('slotId', '?')}: {item.get('status', '?')} "
                f"(ASIN {item.get('asin', '?')} x{item.get('quantity', '?')}, "
                f"expected delivery {when})",
                500,
            )
        )
    return "\n".join(lines)


def cmd_cancel_test_orders(https, args, token):
    path = "/testOrders"
    if args.slot is not None:
        path += "/slots/" + urllib.parse.quote(args.slot, safe="")
    answer = drs_call(
        https,
        args.drs_url,
        token,
        "CancelTestOrder",
        "DELETE",
        path,
        "DrsCancelTestOrdersInput@1.0",
        "DrsCancelTestOrdersResult@1.0",
    )
    statuses = answer.get("slotOrderStatuses") if isinstance(answer, dict) else None
    if not isinstance(statuses, list) or not all(isinstance(s, dict) for s in statuses):
        raise _unexpected("CancelTestOrder")
    if args.json:
        return answer
    words = {"CANCELLED": "test order cancelled", "NO_ORDER_IN_PROGRESS": "no test order open"}
    lines = [
        REDACT.clean(
            f"{s.get('slotId', '?')}: {words.get(s.get('orderStatus'), s.get('orderStatus'))}"
        )
        for s in statuses
    ]
    return "\n".join(lines) or "no slots"


def cmd_deregister(https, args, token):
    drs_call(
        https,
        args.drs_url,
        token,
        "Deregister",
        "DELETE",
        "/registration",
        "DrsDeregisterInput@2.0",
        "DrsDeregisterResult@1.0",
    )
    if args.json:
        return {"deregistered": True}
    return "device deregistered: all of its tokens are now invalid; register it again to use DRS"


def confirm_deregistration(creds_path):
    sys.stderr.write(
        f"Deregister the device of {creds_path} from DRS? Every token of it stops working and "
        "the customer must register it again. Type 'yes' to continue: "
    )
    sys.stderr.flush()
    reply = sys.stdin.readline() if sys.stdin is not None else ""
    if sys.stdin is None or not sys.stdin.isatty():  # nobody's Enter ended the prompt line
        sys.stderr.write("\n")
    if reply.strip().lower() not in ("yes", "y"):
        raise Failure("deregistration not confirmed; nothing done")


# -- command line --


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 1, like every other failure
        self.exit(1, f"drsctl: error: {message} (see {self.prog} --help)\n")


def _add_common(parser, suppress):
    """The global options, accepted before the command and (suppress=True) after it."""

    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--credentials", metavar="FILE", default=default(None), help="device credentials JSON"
    )
    parser.add_argument(
        "--drs-url", metavar="URL", default=default(DRS_URL), help="DRS API base URL"
    )
    parser.add_argument(
        "--lwa-url", metavar="URL", default=default(LWA_URL), help="LwA token endpoint URL"
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        default=default(None),
        help="trust this CA (PEM), not the system store",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help="network timeout",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON, not text"
    )


COMMANDS = {
    "subscriptions": cmd_subscriptions,
    "order-info": cmd_order_info,
    "cancel-test-orders": cmd_cancel_test_orders,
    "deregister": cmd_deregister,
}


def parse_args(argv):
    ap = _Parser(
        prog="drsctl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(ap, suppress=False)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("subscriptions", help="slots and their subscription state")
    p.add_argument("--v1", action="store_true", help="ask for DrsSubscriptionInfoResult@1.0")
    _add_common(p, suppress=True)
    p = sub.add_parser("order-info", help="status of an order by its eventInstanceId")
    p.add_argument("event_id", metavar="EVENT_ID")
    _add_common(p, suppress=True)
    p = sub.add_parser("cancel-test-orders", help="cancel open test orders")
    p.add_argument("--slot", metavar="S", help="only this slot (default: every slot)")
    _add_common(p, suppress=True)
    p = sub.add_parser("deregister", help="deregister the device (asks first)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_common(p, suppress=True)
    args = ap.parse_args(argv)
    if not args.credentials:
        ap.error("--credentials FILE is required")
    for option, url in (("--drs-url", args.drs_url), ("--lwa-url", args.lwa_url)):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            ap.error(f"{option} must be an https:// URL, got {url!r}")
    if not args.timeout > 0:
        ap.error("--timeout must be positive")
    if args.command == "order-info" and not args.event_id:
        ap.error("EVENT_ID must not be empty")
    if args.command == "cancel-test-orders" and args.slot == "":
        ap.error("--slot must not be empty")
    return args


def run(args):
    load_credentials(args.credentials)  # a broken file fails before any question or request
    if args.command == "deregister" and not args.yes:
        confirm_deregistration(args.credentials)
    https = Https(args.ca, args.timeout)
    # Two runs refreshing the same token at once would lose one rotation: take turns.
    with credentials_lock(args.credentials, args.timeout):
        creds = load_credentials(args.credentials)
        token = access_token(https, args.lwa_url, args.credentials, creds)
    return COMMANDS[args.command](https, args, token)


def main(argv=None):
    args = parse_args(argv)
    try:
        result = run(args)
    except Failure as e:
        print(f"drsctl: error: {REDACT.clean(e, 500)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("drsctl: error: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or a surprise: still one line, still no secrets
        print(f"drsctl: error: unexpected {type(e).__name__}: {REDACT.clean(e)}", file=sys.stderr)
        return 1
    text = result if isinstance(result, str) else json.dumps(result, indent=2)
    print(REDACT.scrub(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
