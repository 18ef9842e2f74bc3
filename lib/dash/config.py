"""Load and validate config.json and secrets.json. Pure checks; the only I/O is reading them.

Every problem becomes one message naming the file and key; no message ever contains a
secret's value. The application idles (no order, no reboot loop) while any problem remains.
"""

import json

from micropython import const

from dash.check import octets, printable, valid_slot

CONFIG = "config.json"
_SECRETS = const("secrets.json")
MAX_FILE = const(6144)
_REQ = const(-1)  # marks a required key in the schema
_BIG = const(0x3FFFFFFF)

# Five items per key, in one flat tuple (a tuple per key would cost a heap object each):
# key, type, min, max, default. Type: "i" int, "s" slot id, "u" https URL, "f" file name,
# "k" sensor kind, "t" token-like secret, "w" Wi-Fi text, "r" region, "a" any text, "b" bool,
# "h" host name, "d" device id (a topic level), "p" topic prefix, "m" MQTT transport,
# "g" ADC attenuation in dB, "l" pull resistor.
# For strings min/max bound the length. Default None: derived after the check.
# fmt: off
_SCHEMA = const((
    "region", "r", 1, 8, "na",
    "drs_url", "u", 9, 200, None,
    "lwa_url", "u", 9, 200, None,
    "ca_file", "f", 1, 64, "ca.pem",
    "redirect_uri", "a", 0, 200, "",
    "sample_s", "i", 1, 86400, 60,
    "inprogress_backoff_s", "i", 60, 30 * 86400, 6 * 3600,
    "retry_base_s", "i", 1, 86400, 30,
    "retry_cap_s", "i", 1, 7 * 86400, 6 * 3600,
    "token_margin_s", "i", 0, 1800, 300,
    "http_timeout_s", "i", 1, 60, 15,  # 7 x 60 s: the worst call, well inside the watchdog
    "subscription_check_s", "i", 600, 86400, 86400,
    "order_check_s", "i", 600, 7 * 86400, 12 * 3600,
    "order_checks_max", "i", 0, 1000, 30,
    "slot_status_min_s", "i", 60, 7 * 86400, 3600,
    "test_device", "b", 0, 1, False,
    "safe_pin", "i", 0, 39, None,  # read by `liveness` itself
))
# Per slot: in a "slots" list, or at the top level for a device with one slot.
_SLOT = const((
    "slot_id", "s", 1, 128, _REQ,
    "low", "i", 0, _BIG, _REQ,
    "high", "i", 0, _BIG, _REQ,
    "confirm_samples", "i", 1, 1000, 3,
    "warmup_samples", "i", 1, 1000, 5,
    "report_delta", "i", 0, _BIG, 0,
))
# The hardware keys (pin to pull) belong to some kinds only (`_ONLY`); their defaults, and
# which are required, depend on the kind: see `_check_sensor`.
_SENSOR = const((
    "kind", "k", 1, 8, _REQ,
    "path", "f", 1, 64, "level.txt",
    "pin", "i", 0, 39, None,
    "dout", "i", 0, 39, None,
    "sck", "i", 0, 39, None,
    "gain", "i", 32, 128, None,
    "attenuation", "g", 0, 11, None,
    "samples", "i", 1, 64, None,
    "pull", "l", 2, 4, None,
    "raw_empty", "i", -_BIG, _BIG, _REQ,
    "raw_full", "i", -_BIG, _BIG, _REQ,
    "capacity", "i", 1, 1000000, _REQ,
    "margin", "i", 0, _BIG, 0,
    "raw_max", "i", 0, _BIG, 0,
    "stuck_samples", "i", 0, 10000, 0,
    "max_drop", "i", 0, _BIG, 0,
    "median", "i", 1, 15, 5,
    "ema_shift", "i", 0, 8, 0,
))
# The cloud link (`cloud`): present only when config.json has an "mqtt" object.
_MQTT = const((
    "host", "h", 1, 128, _REQ,
    "port", "i", 1, 65535, None,
    "transport", "m", 1, 8, "tls",
    "ca_file", "f", 1, 64, None,
    "client_cert", "f", 1, 64, "",
    "client_key", "f", 1, 64, "",
    "username", "a", 1, 128, "",
    "device_id", "d", 1, 64, None,
    "client_id", "d", 1, 64, None,
    "topic_prefix", "p", 1, 64, "dash",
    "keepalive_s", "i", 10, 1200, 60,
    "timeout_s", "i", 1, 30, 5,
    "max_message", "i", 512, 8192, 2048,
    "queue", "i", 1, 32, 8,
    "state_s", "i", 60, 86400, 3600,
    "retry_base_s", "i", 1, 3600, 5,
    "retry_cap_s", "i", 1, 86400, 600,
))
_SECRET = const((
    "client_id", "t", 1, 100, _REQ,
    "client_secret", "t", 0, 200, "",
    "refresh_token", "t", 0, 2048, "",
    "wifi_ssid", "w", 0, 32, "",
    "wifi_password", "w", 0, 64, "",
    "mqtt_password", "t", 0, 256, "",
))
# fmt: on
_MAX_SLOTS = const(8)
# LwA token hosts by region; DRS documents only its NA host, so elsewhere drs_url is required.
_LWA = {
    "na": "https://api.amazon.com/auth/o2/token",
    "eu": "https://api.amazon.co.uk/auth/o2/token",
    "fe": "https://api.amazon.co.jp/auth/o2/token",
}
_DRS_NA = const("https://dash-replenishment-service-na.amazon.com")
_SENSOR_KINDS = const(("file", "adc", "hx711", "pulse"))
# The kinds each kind-specific sensor key belongs to (any other kind: an error, as a typo is).
# fmt: off
_ONLY = const((
    "path", "file",
    "pin", "adc pulse",
    "dout", "hx711",
    "sck", "hx711",
    "gain", "hx711",
    "attenuation", "adc",
    "samples", "adc hx711",
    "pull", "pulse",
))
# fmt: on
_ATTEN = const((0, 2.5, 6, 11))  # dB: the ESP32 ADC's four input ranges
# ESP32 GPIOs (the config is for the appliance's board, whichever port checks it).
_STRAPPING = const((0, 2, 5, 12, 15))
_ADC2 = const((0, 2, 4, 12, 13, 14, 15, 25, 26, 27))


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
    # Visible ASCII only: it goes into the request line and the Host header as it is.
    if not hostport or not 0 < port < 65536 or not printable(url) or "@" in hostport:
        return None
    return hostport, port, path.rstrip("/") if path != "/" else ""


def _keys(schema):
    return [schema[i] for i in range(0, len(schema), 5)]


def _check(src, schema, out, errors, where, prefix="", text=None):
    for i in range(0, len(schema), 5):
        key, typ, lo, hi, default = schema[i : i + 5]
        name = prefix + key
        if key not in src:
            if default == _REQ:
                errors.append("%s: '%s' is missing" % (where, name))
            elif default is not None:
                out[key] = default
            continue
        v = src[key]
        if typ == "b":
            if not isinstance(v, bool):
                errors.append("%s: '%s' must be true or false" % (where, name))
                continue
        elif typ == "i":
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                msg = "must be a whole number from %d to %d" % (lo, hi)
                errors.append("%s: '%s' %s" % (where, name, msg))
                continue
        elif typ == "g":
            if isinstance(v, bool) or v not in _ATTEN:
                errors.append("%s: '%s' must be 0, 2.5, 6 or 11 (dB)" % (where, name))
                continue
        else:
            if not isinstance(v, str) or not lo <= len(v) <= hi:
                msg = "must be text of %d to %d characters" % (lo, hi)
                errors.append("%s: '%s' %s" % (where, name, msg))
                continue
            bad = None
            if typ == "s" and not valid_slot(v):
                bad = "may only hold letters, digits and - . _ ~, and not only dots"
            elif typ == "u" and parse_url(v) is None:
                bad = "must be an https:// URL"
            elif typ == "f" and ".." in v:
                bad = "must be a file name on the device"
            elif typ == "k" and v not in _SENSOR_KINDS:
                bad = "must be one of " + ", ".join(_SENSOR_KINDS)
            elif typ == "r" and v not in _LWA:
                bad = "must be one of na, eu, fe"
            elif typ == "a" and v and not printable(v):
                bad = "must be visible ASCII, without spaces"
            elif typ == "t" and not printable(v):
                bad = "must be visible ASCII, without spaces or line breaks"
            elif typ == "h" and not _chars(v, b"-."):
                bad = "must be a host name: letters, digits, - and ."
            elif typ == "d" and not _chars(v, b"-_"):
                bad = "may only hold letters, digits, - and _ (it is a topic level)"
            elif typ == "p" and (not _chars(v, b"-_/") or v[0] == "/" or v[-1] == "/"):
                bad = "may only hold letters, digits, - _ and /, not at either end"
            elif typ == "m" and v not in ("tls", "plain"):
                bad = "must be tls, or plain for a broker on the bench"
            elif typ == "l" and v not in ("up", "down", "none"):
                bad = "must be up, down or none"
            if bad:
                errors.append("%s: '%s' %s" % (where, name, bad))
                continue
        out[key] = v
    known = _keys(schema)
    for key in src:
        if key not in known:
            if where == _SECRETS:
                # Never echoed: a password pasted as a key would land in the log. Where it is.
                # (The file's text is bytes, as read; a test may give str.)
                k = json.dumps(key)
                s = isinstance(text, str)
                at = text.find(k if s else k.encode()) if text else -1
                nl = "\n" if s else b"\n"
                line = " on line %d" % (text.count(nl, 0, at) + 1) if at >= 0 else ""
                errors.append("%s: a key%s is not a known key (not shown)" % (where, line))
                continue
            errors.append("%s: '%s%s' is not a known key" % (where, prefix, key))


def _chars(v, extra):
    """Letters, digits and the characters of `extra` only."""
    for c in octets(v):
        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in extra):
            return False
    return True


def read(path, errors, texts=None):
    """The JSON object in the file at `path`, or None (and why, in `errors`). `texts`: a list
    the file's text is put in too."""
    import os

    try:
        size = os.stat(path)[6]
    except OSError:
        errors.append("%s: file is missing" % path)
        return None
    if size > MAX_FILE:
        errors.append("%s: file is larger than %d bytes" % (path, MAX_FILE))
        return None
    try:
        with open(path, "rb") as f:
            text = f.read(size)  # its size, not the limit: no buffer bigger than the file
    except OSError:
        errors.append("%s: file is missing" % path)
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        errors.append("%s: not valid JSON" % path)
        return None
    if not isinstance(obj, dict):
        errors.append("%s: must be a JSON object" % path)
        return None
    if texts is not None:
        texts.append(text)
    return obj


def _gpio(n, use):
    """Why ESP32 GPIO `n` cannot serve `use` ("a" an ADC, "i" an input, "p" an input with a
    pull resistor, "o" an output), or None."""
    if n in (20, 24) or 28 <= n <= 31:
        return "does not exist on an ESP32"
    if 6 <= n <= 11:
        return "is wired to the flash chip (GPIO 6 to 11)"
    if n in (1, 3):
        return "is the serial console (UART0), which the REPL and dashctl need"
    strap = n in _STRAPPING
    if use == "a" and n < 32:
        if n in _ADC2:
            why = "is an ADC2 pin, which cannot be read while Wi-Fi is on"
            if strap:
                why += ", and a strapping pin"
        else:
            why = "has no ADC"
        return why + ": use an ADC1 pin, 32 to 39"
    if strap:
        return "is a strapping pin: its level at reset decides the boot mode or flash voltage"
    if n >= 34 and use == "o":
        return "is input only (GPIO 34 to 39)"
    if n >= 34 and use == "p":
        return "has no pull resistor (GPIO 34 to 39): fit one and set 'pull' to none"
    return None


def _check_sensor(src, s, errors, name, gpios):
    """The kind's own keys: which apply, which are required, their defaults; and whether each
    GPIO can do its job (`gpios`: GPIO -> the key that has it, over the whole device)."""
    kind = s.get("kind")
    pins: tuple = ()  # (key, use) pairs, flat
    for i in range(0, len(_ONLY), 2):
        key = _ONLY[i]
        if key in src and kind is not None and kind not in _ONLY[i + 1].split():
            errors.append("%s: '%s%s' does not apply to kind %s" % (CONFIG, name, key, kind))
    if kind == "adc":
        s.setdefault("attenuation", 11)
        s.setdefault("samples", 8)
        pins = ("pin", "a")
    elif kind == "hx711":
        s.setdefault("gain", 128)
        s.setdefault("samples", 1)
        if s["gain"] not in (128, 64, 32):
            errors.append(
                "%s: '%sgain' must be 128 or 64 (channel A), or 32 (channel B)" % (CONFIG, name)
            )
        pins = ("dout", "i", "sck", "o")
    elif kind == "pulse":
        s.setdefault("pull", "up")
        pins = ("pin", "i" if s["pull"] == "none" else "p")
    else:
        return
    if kind == "hx711" and s.get("raw_max"):
        # The saturation check takes a count at or below 0 for a rail; an HX711's go negative
        # (it checks its own rails).
        errors.append("%s: '%sraw_max' must be 0 for an hx711" % (CONFIG, name))
    if kind == "pulse" and s.get("stuck_samples"):
        # A meter repeats its count for as long as nothing flows: that is no stuck sensor.
        errors.append("%s: '%sstuck_samples' must be 0 for a pulse sensor" % (CONFIG, name))
    for i in range(0, len(pins), 2):
        key = pins[i]
        n = s.get(key)
        if n is None:
            if key not in src:  # (a bad value is said already)
                errors.append("%s: '%s%s' is missing" % (CONFIG, name, key))
            continue
        why = _gpio(n, pins[i + 1])
        if why is None and n in gpios:
            why = "is used by '%s' already" % gpios[n]
        if why:
            errors.append("%s: '%s%s' GPIO %d %s" % (CONFIG, name, key, n, why))
        gpios.setdefault(n, name + key)


def _check_slot(src, out, errors, prefix, gpios=None):
    rest = {k: src[k] for k in src if k != "sensor"}
    _check(rest, _SLOT, out, errors, CONFIG, prefix)
    sensor = src.get("sensor")
    if not isinstance(sensor, dict):
        errors.append("%s: '%ssensor' must be an object with at least 'kind'" % (CONFIG, prefix))
        return
    s: dict = {}
    _check(sensor, _SENSOR, s, errors, CONFIG, prefix + "sensor.")
    _check_sensor(sensor, s, errors, prefix + "sensor.", {} if gpios is None else gpios)
    out["sensor"] = s
    if s.get("raw_empty") is not None and s.get("raw_empty") == s.get("raw_full"):
        errors.append(
            "%s: '%ssensor.raw_full' must differ from '%ssensor.raw_empty'"
            % (CONFIG, prefix, prefix)
        )
    cap = s.get("capacity")
    if cap and "high" in out and out["high"] > cap:
        errors.append(
            "%s: '%shigh' must not exceed '%ssensor.capacity'" % (CONFIG, prefix, prefix)
        )
    if "low" in out and "high" in out and out["low"] >= out["high"]:
        errors.append("%s: '%slow' must be below '%shigh'" % (CONFIG, prefix, prefix))
    if cap and not out.get("report_delta"):
        out["report_delta"] = cap // 100 or 1  # report consumption in steps of 1 %


def validate(raw, secrets, secrets_text=None):
    """(config dict, secrets dict, errors list) from already-parsed JSON objects.

    The config always comes out with a "slots" list, whichever form the file used."""
    errors: list = []
    cfg: dict = {}
    sec: dict = {}
    if raw is not None:
        slot_keys = _keys(_SLOT) + ["sensor"]
        if "slots" in raw:
            rest = {k: raw[k] for k in raw if k != "slots" and k != "mqtt"}
            slots = raw["slots"]
            if not isinstance(slots, list) or not 0 < len(slots) <= _MAX_SLOTS:
                errors.append(
                    "%s: 'slots' must be a list of 1 to %d objects" % (CONFIG, _MAX_SLOTS)
                )
                slots = []
        else:
            rest = {k: raw[k] for k in raw if k not in slot_keys and k != "mqtt"}
            slots = [{k: raw[k] for k in raw if k in slot_keys}]
        _check(rest, _SCHEMA, cfg, errors, CONFIG)
        cfg["slots"] = []
        seen = []
        gpios: dict = {}
        sp = cfg.get("safe_pin")
        if sp is not None:
            # A button to ground, read with the pull-up at boot: a strapping pin serves (the
            # BOOT button is GPIO 0), one without a pull-up would float into safe mode.
            why = None if sp in _STRAPPING else _gpio(sp, "i")
            if why is None and sp >= 34:
                why = "has no pull-up (GPIO 34 to 39): it would float, and start safe mode"
            if why is not None:
                errors.append("%s: 'safe_pin' GPIO %d %s" % (CONFIG, sp, why))
            gpios[sp] = "safe_pin"
        for i, src in enumerate(slots):
            prefix = "slots[%d]." % i if "slots" in raw else ""
            if not isinstance(src, dict):
                errors.append("%s: '%s' must be an object" % (CONFIG, prefix[:-1]))
                continue
            one: dict = {}
            _check_slot(src, one, errors, prefix, gpios)
            sid = one.get("slot_id")
            if sid in seen:
                errors.append("%s: '%sslot_id' repeats slot %s" % (CONFIG, prefix, sid))
            seen.append(sid)
            cfg["slots"].append(one)
        region = cfg.get("region", "na")
        if cfg.get("lwa_url") is None:
            cfg["lwa_url"] = _LWA.get(region, _LWA["na"])
        if cfg.get("drs_url") is None:
            if region == "na":
                cfg["drs_url"] = _DRS_NA
            elif "drs_url" not in raw:
                errors.append(
                    "%s: 'drs_url' is missing (Amazon names no DRS host for region %s)"
                    % (CONFIG, region)
                )
        if "retry_base_s" in cfg and cfg.get("retry_cap_s", 0) < cfg["retry_base_s"]:
            errors.append("%s: 'retry_cap_s' must not be below 'retry_base_s'" % CONFIG)
    if secrets is not None:
        _check(secrets, _SECRET, sec, errors, _SECRETS, text=secrets_text)
    # The cloud link's password is the link's trouble, not the device's (see `_check_mqtt`).
    pw = [e for e in errors if "'mqtt_password'" in e]
    if raw is not None and "mqtt" in raw:
        _check_mqtt(raw["mqtt"], cfg, sec, errors, pw)
    elif pw:
        cfg["mqtt_errors"] = pw
    return cfg, sec, errors


def _check_mqtt(src, cfg, sec, errors, pw):
    """The cloud link's settings: cfg["mqtt"] when they are all good (so that the link can
    report the rest of a bad config), else cfg["mqtt_errors"], their share of `errors`."""
    bad: list = []
    m: dict = {}
    if not isinstance(src, dict):
        bad.append("%s: 'mqtt' must be an object with at least 'host'" % CONFIG)
    else:
        _check(src, _MQTT, m, bad, CONFIG, "mqtt.")
        plain = m.get("transport") == "plain"
        if m.get("port") is None:
            m["port"] = 1883 if plain else 8883
        if m.get("ca_file") is None:
            m["ca_file"] = cfg.get("ca_file", "ca.pem")
        if bool(m.get("client_cert")) != bool(m.get("client_key")):
            bad.append("%s: 'mqtt.client_cert' and 'mqtt.client_key' go together" % CONFIG)
        if plain and m.get("client_cert"):
            bad.append("%s: 'mqtt.client_cert' needs 'mqtt.transport' tls" % CONFIG)
        if sec.get("mqtt_password") and not m.get("username"):
            bad.append("%s: 'mqtt_password' is set, but 'mqtt.username' is not" % _SECRETS)
        if sec.get("mqtt_password") and plain:
            bad.append("%s: 'mqtt_password' would go in clear over plain TCP" % _SECRETS)
        if m.get("retry_cap_s", 0) < m.get("retry_base_s", 0):
            bad.append("%s: 'mqtt.retry_cap_s' must not be below 'mqtt.retry_base_s'" % CONFIG)
    errors.extend(bad)
    if bad or pw:
        cfg["mqtt_errors"] = bad + pw  # the device orders without the link: see `App.boot`
    else:
        cfg["mqtt"] = m


def load(root="."):
    """Read and validate both files under `root`. Returns (config, secrets, errors)."""
    errors: list = []
    raw = read(root + "/" + CONFIG, errors)
    texts: list = []
    secrets = read(root + "/" + _SECRETS, errors, texts)
    cfg, sec, more = validate(raw, secrets, texts[0] if texts else None)
    return cfg, sec, errors + more
