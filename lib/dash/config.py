"""Load and validate config.json and secrets.json. Pure checks; the only I/O is reading them.

Every problem becomes one message naming the file and key; no message ever contains a
secret's value. The application idles (no order, no reboot loop) while any problem remains.
"""

import json

from micropython import const

CONFIG = "config.json"
SECRETS = "secrets.json"
_MAX_FILE = const(6144)
_REQ = const(-1)  # marks a required key in the schema
_BIG = const(0x3FFFFFFF)

# (key, type, min, max, default). Type: "i" int, "s" slot id, "u" https URL, "f" file name,
# "k" sensor kind, "t" token-like secret, "w" Wi-Fi text. For strings min/max bound the length.
_SCHEMA = (
    ("slot_id", "s", 1, 128, _REQ),
    ("drs_url", "u", 9, 200, "https://dash-replenishment-service-na.amazon.com"),
    ("lwa_url", "u", 9, 200, "https://api.amazon.com/auth/o2/token"),
    ("ca_file", "f", 1, 64, "ca.pem"),
    ("low", "i", 0, _BIG, _REQ),
    ("high", "i", 0, _BIG, _REQ),
    ("confirm_samples", "i", 1, 1000, 3),
    ("warmup_samples", "i", 1, 1000, 5),
    ("sample_s", "i", 1, 86400, 60),
    ("inprogress_backoff_s", "i", 60, 30 * 86400, 6 * 3600),
    ("retry_base_s", "i", 1, 86400, 30),
    ("retry_cap_s", "i", 1, 7 * 86400, 6 * 3600),
    ("token_margin_s", "i", 0, 1800, 300),
    ("http_timeout_s", "i", 1, 120, 15),
)
_SENSOR = (
    ("kind", "k", 1, 8, _REQ),
    ("path", "f", 1, 64, "level.txt"),
    ("pin", "i", 0, 255, 0),
    ("raw_empty", "i", -_BIG, _BIG, _REQ),
    ("raw_full", "i", -_BIG, _BIG, _REQ),
    ("capacity", "i", 1, 1000000, _REQ),
    ("margin", "i", 0, _BIG, 0),
    ("raw_max", "i", 0, _BIG, 0),
    ("stuck_samples", "i", 0, 10000, 0),
    ("max_drop", "i", 0, _BIG, 0),
    ("median", "i", 1, 15, 5),
    ("ema_shift", "i", 0, 8, 0),
)
_SECRET = (
    ("client_id", "t", 1, 100, _REQ),
    ("client_secret", "t", 0, 200, ""),
    ("refresh_token", "t", 1, 2048, _REQ),
    ("wifi_ssid", "w", 0, 32, ""),
    ("wifi_password", "w", 0, 64, ""),
)
SENSOR_KINDS = ("file", "adc")
_SLOT_CHARS = "-._~"


class ConfigError(Exception):
    pass


def parse_url(url):
    """(host, port, path) of an https URL, or None."""
    if not url.startswith("https://"):
        return None
    rest = url[8:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    port = 443
    j = hostport.find(":")
    if j >= 0:
        try:
            port = int(hostport[j + 1 :])
        except ValueError:
            return None
        hostport = hostport[:j]
    if not hostport or not 0 < port < 65536 or " " in url or "@" in hostport:
        return None
    return hostport, port, path.rstrip("/") if path != "/" else ""


def valid_slot(s):
    """A slot id goes into a URL path verbatim, so only unreserved characters pass."""
    if not isinstance(s, str) or not 0 < len(s) <= 128:
        return False
    for c in s:
        if not (c.isalpha() or c.isdigit() or c in _SLOT_CHARS) or ord(c) > 127:
            return False
    return True


def printable(s):
    """Visible ASCII only: what may go into a header or a log line."""
    for c in s:
        if not " " < c <= "~":
            return False
    return True


def _check(src, schema, out, errors, where, prefix=""):
    for key, typ, lo, hi, default in schema:
        name = prefix + key
        if key not in src:
            if default == _REQ:
                errors.append("%s: '%s' is missing" % (where, name))
            else:
                out[key] = default
            continue
        v = src[key]
        if typ == "i":
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                msg = "must be a whole number from %d to %d" % (lo, hi)
                errors.append("%s: '%s' %s" % (where, name, msg))
                continue
        else:
            if not isinstance(v, str) or not lo <= len(v) <= hi:
                msg = "must be text of %d to %d characters" % (lo, hi)
                errors.append("%s: '%s' %s" % (where, name, msg))
                continue
            bad = None
            if typ == "s" and not valid_slot(v):
                bad = "may only hold letters, digits and - . _ ~"
            elif typ == "u" and parse_url(v) is None:
                bad = "must be an https:// URL"
            elif typ == "f" and ".." in v:
                bad = "must be a file name on the device"
            elif typ == "k" and v not in SENSOR_KINDS:
                bad = "must be one of " + ", ".join(SENSOR_KINDS)
            elif typ == "t" and not printable(v):
                bad = "must be visible ASCII, without spaces or line breaks"
            if bad:
                errors.append("%s: '%s' %s" % (where, name, bad))
                continue
        out[key] = v
    for key in src:
        if not any(key == s[0] for s in schema):
            errors.append("%s: '%s%s' is not a known key" % (where, prefix, key))


def _read(path, errors):
    try:
        with open(path) as f:
            text = f.read(_MAX_FILE + 1)
    except OSError:
        errors.append("%s: file is missing" % path)
        return None
    if len(text) > _MAX_FILE:
        errors.append("%s: file is larger than %d bytes" % (path, _MAX_FILE))
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        errors.append("%s: not valid JSON" % path)
        return None
    if not isinstance(obj, dict):
        errors.append("%s: must be a JSON object" % path)
        return None
    return obj


def validate(raw, secrets):
    """(config dict, secrets dict, errors list) from already-parsed JSON objects."""
    errors = []
    cfg = {}
    sec = {}
    if raw is not None:
        sensor = raw.get("sensor")
        rest = {k: raw[k] for k in raw if k != "sensor"}
        _check(rest, _SCHEMA, cfg, errors, CONFIG)
        if not isinstance(sensor, dict):
            errors.append("%s: 'sensor' must be an object with at least 'kind'" % CONFIG)
        else:
            s = {}
            _check(sensor, _SENSOR, s, errors, CONFIG, "sensor.")
            cfg["sensor"] = s
            if s.get("raw_empty") is not None and s.get("raw_empty") == s.get("raw_full"):
                errors.append("%s: 'sensor.raw_full' must differ from 'sensor.raw_empty'" % CONFIG)
            cap = s.get("capacity")
            if cap and "high" in cfg and cfg["high"] > cap:
                errors.append("%s: 'high' must not exceed 'sensor.capacity'" % CONFIG)
        if "low" in cfg and "high" in cfg and cfg["low"] >= cfg["high"]:
            errors.append("%s: 'low' must be below 'high'" % CONFIG)
        if "retry_base_s" in cfg and cfg.get("retry_cap_s", 0) < cfg["retry_base_s"]:
            errors.append("%s: 'retry_cap_s' must not be below 'retry_base_s'" % CONFIG)
    if secrets is not None:
        _check(secrets, _SECRET, sec, errors, SECRETS)
    return cfg, sec, errors


def load(root="."):
    """Read and validate both files under `root`. Returns (config, secrets, errors)."""
    errors = []
    raw = _read(root + "/" + CONFIG, errors)
    secrets = _read(root + "/" + SECRETS, errors)
    cfg, sec, more = validate(raw, secrets)
    return cfg, sec, errors + more
