import gc

from dash import config


def good():
    return {
        "slot_id": "slot-a",
        "low": 200,
        "high": 800,
        "sensor": {"kind": "file", "raw_empty": 0, "raw_full": 1000, "capacity": 1000},
    }


SECRETS = {"client_id": "amzn1.application-oa2-client.x", "refresh_token": "Atzr|abc"}


def errors_of(raw, sec=SECRETS):
    return config.validate(raw, sec)[2]


def test_good_config_fills_defaults():
    cfg, sec, errors = config.validate(good(), SECRETS)
    assert errors == []
    assert cfg["drs_url"] == "https://dash-replenishment-service-na.amazon.com"
    assert cfg["lwa_url"] == "https://api.amazon.com/auth/o2/token"
    (slot,) = cfg["slots"]
    assert slot["slot_id"] == "slot-a" and slot["sensor"]["median"] == 5
    assert slot["report_delta"] == 10  # 1 % of the capacity
    assert sec["client_secret"] == ""


def test_each_bad_key_is_named():
    raw = good()
    raw["low"] = "200"
    raw["sample_s"] = 0
    raw["slot_id"] = "../admin"
    raw["drs_url"] = "http://plain.example"
    raw["sensor"]["kind"] = "laser"
    raw["colour"] = "red"
    errors = errors_of(raw)
    for key in ("'low'", "'sample_s'", "'slot_id'", "'drs_url'", "'sensor.kind'", "'colour'"):
        assert sum(1 for e in errors if key in e) == 1, (key, errors)


def test_missing_required_keys():
    errors = errors_of({"sensor": {}}, {})
    for key in (
        "slot_id",
        "low",
        "high",
        "sensor.kind",
        "sensor.capacity",
        "client_id",
    ):
        assert any("'%s' is missing" % key in e for e in errors), key


def test_cross_field_rules():
    raw = good()
    raw["low"] = 900
    assert any("'low' must be below 'high'" in e for e in errors_of(raw))
    raw = good()
    raw["sensor"]["raw_full"] = 0
    assert any("raw_full" in e for e in errors_of(raw))


def test_secret_values_never_in_messages():
    sec = {"client_id": "x", "refresh_token": "Atzr|SECRET VALUE", "client_secret": 5}
    errors = errors_of(good(), sec)
    assert len(errors) == 2
    assert not any("SECRET" in e for e in errors)
    # No key of secrets.json is echoed (a password pasted as a key would land in the log);
    # its line is named instead.
    text = '{"client_id": "x",\n "hunter2": 1,\n "Atzr|SECRET": 1}'
    sec = {"client_id": "x", "hunter2": 1, "Atzr|SECRET": 1}
    errors = config.validate(good(), sec, text)[2]
    assert len(errors) == 2 and not any("SECRET" in e or "hunter2" in e for e in errors)
    assert sorted(e.split("line ")[1][0] for e in errors) == ["2", "3"], errors


def test_not_json_and_missing_files(tmp="/tmp/dash-unit-cfg"):
    import os

    from scratch import scratch

    scratch(tmp, {"config.json": "{not json"})
    try:
        os.remove(tmp + "/secrets.json")
    except OSError:
        pass
    errors = config.load(tmp)[2]
    assert any("config.json: not valid JSON" in e for e in errors)
    assert any("secrets.json: file is missing" in e for e in errors)


def test_parse_url():
    assert config.parse_url("https://h.example") == ("h.example", 443, "")
    assert config.parse_url("https://localhost:8443/auth/o2/token") == (
        "localhost",
        8443,
        "/auth/o2/token",
    )
    assert config.parse_url("http://h") is None
    assert config.parse_url("https://h:x/") is None
    # Into the request line and the Host header as it is: visible ASCII only.
    assert config.parse_url("https://drs.example/v1/\u00e9") is None
    assert config.parse_url("https://h.example/a\tb") is None
    assert config.parse_url("https://u@h/") is None


def test_valid_slot():
    assert config.valid_slot("6a1b-Z_9.~")
    for bad in ("", "a/b", "a b", "a?b", "a%2F", "x" * 129, "é"):
        assert not config.valid_slot(bad), bad


def test_refresh_token_is_optional_until_registration():
    cfg, sec, errors = config.validate(good(), {"client_id": "c"})
    assert errors == [] and sec["refresh_token"] == ""


def test_several_slots_each_checked_and_named():
    a = good()
    b = good()
    b["slot_id"] = "ink-cyan"
    b["low"] = 900
    b["sensor"]["kind"] = "adc"
    b["sensor"]["pin"] = 34
    raw = {"slots": [a, b], "sample_s": 30}
    cfg, _, errors = config.validate(raw, SECRETS)
    assert errors == ["config.json: 'slots[1].low' must be below 'slots[1].high'"], errors
    b["low"] = 100
    cfg, _, errors = config.validate(raw, SECRETS)
    assert errors == [] and [s["slot_id"] for s in cfg["slots"]] == ["slot-a", "ink-cyan"]
    assert cfg["slots"][1]["sensor"]["pin"] == 34 and cfg["sample_s"] == 30


def test_slot_list_shape_and_duplicates():
    a = good()
    errors = errors_of({"slots": [a, dict(a)]})
    assert any("'slots[1].slot_id' repeats slot slot-a" in e for e in errors), errors
    assert any("'slots' must be a list" in e for e in errors_of({"slots": []}))
    assert any("'slots' must be a list" in e for e in errors_of({"slots": [a] * 9}))
    assert any("'slots[0]' must be an object" in e for e in errors_of({"slots": [5]}))
    raw = {"slots": [a], "low": 5}
    assert any("'low' is not a known key" in e for e in errors_of(raw))


def test_regions_pick_the_lwa_host_and_need_a_drs_host():
    raw = good()
    raw["region"] = "eu"
    errors = errors_of(raw)
    assert any("'drs_url' is missing" in e and "eu" in e for e in errors), errors
    raw["drs_url"] = "https://drs-eu.example.com"
    cfg, _, errors = config.validate(raw, SECRETS)
    assert errors == [] and cfg["lwa_url"] == "https://api.amazon.co.uk/auth/o2/token"
    raw["region"] = "fe"
    assert config.validate(raw, SECRETS)[0]["lwa_url"] == "https://api.amazon.co.jp/auth/o2/token"
    raw["region"] = "mars"
    assert any("'region' must be one of na, eu, fe" in e for e in errors_of(raw))


def test_checking_text_leaves_nothing_behind():
    # Built without a string per character, which would itself intern them.
    s = bytes(range(33, 127)).decode() * 3
    gc.collect()
    before = gc.mem_alloc()
    assert config.printable(s) and not config.valid_slot(s, 500)
    gc.collect()
    assert gc.mem_alloc() == before  # no qstr interned per character


def test_the_cloud_links_settings_are_checked_and_its_trouble_kept_apart():
    raw = good()
    raw["mqtt"] = {"host": "broker.example", "username": "dev-1", "device_id": "dev-1"}
    cfg, _, errors = config.validate(raw, dict(SECRETS, mqtt_password="pw"))
    assert errors == [] and cfg["mqtt"]["port"] == 8883 and cfg["mqtt"]["ca_file"] == "ca.pem"
    bad = [
        ({"host": "broker/x"}, "'mqtt.host'"),
        ({"device_id": "dev+1"}, "'mqtt.device_id'"),  # "+" is an MQTT wildcard
        ({"topic_prefix": "/dash"}, "'mqtt.topic_prefix'"),
        ({"transport": "udp"}, "'mqtt.transport'"),
        ({"client_cert": "c.pem"}, "go together"),
        ({"transport": "plain"}, "in clear"),  # the password would cross in clear
        ({"retry_base_s": 60, "retry_cap_s": 30}, "'mqtt.retry_cap_s'"),
        ({"colour": 1}, "'mqtt.colour' is not a known key"),
    ]
    for change, want in bad:
        m = dict(raw["mqtt"], **change)
        cfg, _, errors = config.validate(dict(raw, mqtt=m), dict(SECRETS, mqtt_password="pw"))
        assert any(want in e for e in errors), (change, errors)
        # The link's own trouble: the device can order without it (see App.boot).
        assert cfg["mqtt_errors"] == errors and "mqtt" not in cfg
    # A password the rules refuse is the link's trouble too, not the device's.
    cfg, _, errors = config.validate(raw, dict(SECRETS, mqtt_password="has space"))
    assert errors and cfg["mqtt_errors"] == errors


def test_a_slot_id_of_dots_only_is_no_name():
    for sid in (".", "..", "..."):
        raw = dict(good(), slot_id=sid)
        assert any("'slot_id'" in e for e in errors_of(raw)), sid  # "/replenish/.." is ".."
    assert errors_of(dict(good(), slot_id="a.b")) == []


def test_an_unknown_key_in_secrets_json_is_named_by_its_line_never_shown():
    import json
    import os

    from scratch import scratch

    pasted = '{"client_id": "amzn1.application-oa2-client.x",\n "hunter2-pasted": 1}\n'
    files = {"config.json": json.dumps(good()), "secrets.json": pasted}
    d = scratch("/tmp/dash-unit-secrets", files)
    errors = config.load(d)[2]
    assert errors == ["secrets.json: a key on line 2 is not a known key (not shown)"], errors
    for name in ("config.json", "secrets.json"):
        os.remove(d + "/" + name)


def test_the_safe_mode_pin_must_be_a_button_the_board_can_read():
    assert errors_of(dict(good(), safe_pin=0)) == []  # the BOOT button
    (e,) = errors_of(dict(good(), safe_pin=36))  # no pull-up: it would float into safe mode
    assert "'safe_pin' GPIO 36 has no pull-up" in e, e
    (e,) = errors_of(dict(good(), safe_pin=7))
    assert "'safe_pin' GPIO 7 is wired to the flash chip" in e, e
    raw = dict(good(), safe_pin=26)
    pulse = {"kind": "pulse", "pin": 26, "raw_empty": 4500, "raw_full": 0, "capacity": 1000}
    raw["sensor"] = pulse
    (e,) = errors_of(raw)
    assert "is used by 'safe_pin' already" in e, e
