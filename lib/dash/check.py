"""Small validity checks shared by the config, the DRS and the LwA code. Pure."""


def valid_slot(s, maxlen=128):
    """A slot id (or an event id) goes into a URL path verbatim: only unreserved characters."""
    if not isinstance(s, str) or not 0 < len(s) <= maxlen:
        return False
    for c in s:
        if not (c.isalpha() or c.isdigit() or c in "-._~") or ord(c) > 127:
            return False
    return True


def printable(s):
    """Visible ASCII only: what may go into a header or a log line."""
    for c in s:
        if not " " < c <= "~":
            return False
    return True
