"""Small validity checks shared by the config, the DRS and the LwA code, and the lookup of a
name in a list of names held as one string. Pure. The host tools run them too (`dashctl`
checks a config before it goes onto a board).

They look at a string byte by byte through a memoryview: iterating the str itself would make a
string of every character, and intern it for good (a qstr per distinct character, allocated
while an answer is being checked)."""

from micropython import const

_UNRESERVED = const(b"-._~")


def octets(s):
    """The bytes of a str or of bytes, to look at one by one."""
    try:
        return memoryview(s)  # MicroPython: a str has the buffer protocol; no copy
    except TypeError:
        return s.encode()  # CPython


def unreserved(c):
    """A byte that goes into a URL as it is (RFC 3986: letters, digits, - . _ ~)."""
    return 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in _UNRESERVED


def valid_slot(s, maxlen=128):
    """A slot id (or an event id) goes into a URL path verbatim: only unreserved characters,
    and not only dots."""
    if not isinstance(s, str) or not 0 < len(s) <= maxlen:
        return False
    dots = True
    for c in octets(s):
        if not unreserved(c):
            return False
        dots = dots and c == 46
    return not dots  # "." or "..": a dot-segment, not a name (RFC 3986 5.2.4)


def printable(s):
    """Visible ASCII only: what may go into a header or a log line."""
    for c in octets(s):
        if not 32 < c < 127:
            return False
    return True


def word(text, i):
    """The i-th space-separated word of `text` (i counts from 0, and is in range). A list of
    names kept as one string is one heap object, not one per name; reading one allocates only
    that name."""
    start = 0
    for _ in range(i):
        start = text.index(" ", start) + 1
    end = text.find(" ", start)
    return text[start:end] if end >= 0 else text[start:]
