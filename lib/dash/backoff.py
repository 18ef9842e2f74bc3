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


def parse_retry_after(value):
    """Seconds from a Retry-After header value (bytes), or -1. HTTP dates are not trusted.
    A huge number is still a long wait: it saturates, it is not taken as no Retry-After."""
    if not value:
        return -1
    n = 0
    for c in value.strip():
        if c < 48 or c > 57:
            return -1
        n = n * 10 + c - 48
        if n > _RA_MAX:
            n = _RA_MAX
    return n
