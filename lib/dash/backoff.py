"""Back-off arithmetic: exponential with full jitter and a cap, honouring Retry-After. Pure."""

from micropython import const

_MAX_SHIFT = const(20)
# Longest Retry-After kept (over two years; the caller caps it with retry_cap_s): ten times it
# still fits a board's small int, so parsing a longer one never makes a big int.
_RA_MAX = const(0x3FFFFFF)


def retry_delay_s(attempt, base_s, cap_s, rnd, retry_after_s=-1):
    """Seconds to wait before retry number `attempt` (0-based).

    `rnd` is a random non-negative int supplied by the caller (keeps this function pure).
    The ceiling doubles with every attempt up to `cap_s`; the wait is drawn uniformly from
    [base_s, ceiling] so that many devices hit by the same outage spread out, yet none comes
    back sooner than `base_s`. A server's Retry-After is a floor, still bounded by the cap.
    """
    ceiling = base_s << min(attempt, _MAX_SHIFT)
    if ceiling > cap_s:
        ceiling = cap_s
    if ceiling < base_s:
        ceiling = base_s
    delay = base_s + rnd % (ceiling - base_s + 1)
    if retry_after_s > delay:
        delay = retry_after_s if retry_after_s < cap_s else cap_s
    return delay


def parse_retry_after(value, now=0):
    """Seconds from a Retry-After header value (bytes): delay-seconds, or an HTTP date
    (RFC 9110 10.2.3, IMF-fixdate) when the wall clock `now` (Unix seconds) is known; -1 when
    there is none, or it cannot be read. A huge number is still a long wait: it saturates,
    it is not taken as no Retry-After."""
    if not value:
        return -1
    value = value.strip()
    n = 0
    for c in value:
        if c < 48 or c > 57:
            return _date(value, now)
        n = n * 10 + c - 48
        if n > _RA_MAX:
            n = _RA_MAX
    return n


_MONTHS = const(b"JanFebMarAprMayJunJulAugSepOctNovDec")


def _date(value, now):
    """Seconds until an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), 0 when it is past."""
    try:
        _, d, mon, y, hms, gmt = value.split()
        m = _MONTHS.find(mon) // 3 + 1
        h, mi, sec = hms.split(b":")
        if not now or gmt != b"GMT" or m < 1 or len(mon) != 3:
            return -1
        y = int(y)
        # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
        y -= m <= 2
        era = y // 400
        yoe = y - era * 400
        doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * (m + (9 if m <= 2 else -3)) + 2) // 5
        days = era * 146097 + doe + int(d) - 1 - 719468
        at = days * 86400 + int(h) * 3600 + int(mi) * 60 + int(sec)
    except ValueError:
        return -1
    return min(max(0, at - now), _RA_MAX)
