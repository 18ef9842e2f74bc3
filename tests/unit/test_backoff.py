from dash.backoff import parse_retry_after, retry_delay_s


def test_ceiling_doubles_and_caps():
    for att, hi in ((0, 10), (1, 20), (2, 40), (3, 80), (10, 100), (40, 100)):
        for rnd in (0, 1, 7, 123456, 0xFFFFFF):
            d = retry_delay_s(att, 10, 100, rnd)
            assert 10 <= d <= hi, (att, rnd, d)
        assert retry_delay_s(att, 10, 100, hi - 10) == hi


def test_jitter_spreads():
    seen = {retry_delay_s(5, 10, 1000, r) for r in range(0, 5000, 37)}
    assert len(seen) > 50


def test_retry_after_is_a_floor_within_the_cap():
    assert retry_delay_s(0, 10, 3600, 0, 120) == 120
    assert retry_delay_s(0, 10, 3600, 0, 99999) == 3600
    assert retry_delay_s(3, 10, 3600, 70, 5) == 80


def test_parse_retry_after():
    assert parse_retry_after(b"120") == 120
    assert parse_retry_after(b" 7 ") == 7
    assert parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT") == -1  # no clock: no date
    assert parse_retry_after(b"") == -1
    assert parse_retry_after(None) == -1
    assert parse_retry_after(b"12a") == -1
    assert parse_retry_after(b"-5") == -1


def test_a_huge_retry_after_saturates_and_the_cap_bounds_it():
    # It was taken as no Retry-After at all: retried after retry_base_s, not retry_cap_s.
    for v in (b"200000000", b"99999999999999", b"9" * 40):
        ra = parse_retry_after(v)
        assert ra > 7 * 86400, (v, ra)  # above the longest retry_cap_s the config allows
        assert retry_delay_s(0, 30, 21600, 0, ra) == 21600
    assert parse_retry_after(b"99999999999999x") == -1  # still not a number


def test_a_retry_after_as_an_http_date_counts_from_the_clock():
    # RFC 9110 allows a date; it was ignored. 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT.
    date = b"Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date, 1445412480 - 90) == 90
    assert parse_retry_after(date, 1445412480 + 5) == 0  # past: no wait
    assert parse_retry_after(b"Tue, 29 Feb 2028 23:59:59 GMT", 1835481599 - 1) == 1
    for bad in (b"Wed, 21 Oct 2015 07:28:00 CET", b"Wed, 21 Okt 2015 07:28:00 GMT", b"21 Oct"):
        assert parse_retry_after(bad, 1445412480) == -1, bad
