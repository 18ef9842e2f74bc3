"""Reading an answer's body, against a socket stand-in that hands out the bytes a few at a
time: with a length, until close, chunked; always in the one buffer (the body is then a view of
it), never in memory found while it is read; more than the buffer holds is too big; malformed
framing is a clean error."""

from dash import https
from dash.https import E_PROTO, E_RESET, E_TOOBIG, HttpError
from dash.tokens import ANSWER_MAX

BUF = len(https._buf)
MOST = BUF - 80  # the largest body taken: the buffer less one chunk's framing


class Sock:
    def __init__(self, data, piece=7):
        self.data = data
        self.pos = 0
        self.piece = piece

    def readinto(self, mv):
        n = min(len(mv), self.piece, len(self.data) - self.pos)
        mv[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def read(self, n):
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def answer(head, body, piece=7, max_body=8192, buf=None):
    """`buf`: a buffer other than the module's (one shorter than the head's 2 KB bound)."""
    h = https.Https("unused", 3)
    if buf is not None:
        h.buf = buf
    return h._response(Sock(head + body, piece), max_body)


SHORT = 1664  # a buffer shorter than a head may be: its lines pass through it in pieces


def chunked(body, size):
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += b"%x\r\n%s\r\n" % (len(part), part)
    return out + b"0\r\n\r\n"


def in_buffer(body, buf=https._buf):
    """True when `body` is a view into `buf`, by default the module's one buffer."""
    from uctypes import addressof

    start = addressof(buf)
    return start <= addressof(body) and addressof(body) + len(body) <= start + len(buf)


def err(fn):
    try:
        fn()
    except HttpError as e:
        return e.args[0]
    return None


def test_with_a_length_the_body_is_read_in_place():
    status, body, _ = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", b"hello world")
    assert status == 200 and bytes(body) == b"hello world" and in_buffer(body)


def test_without_a_length_the_body_runs_to_the_close():
    body = answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x" * MOST)[1]
    assert bytes(body) == b"x" * MOST and in_buffer(body)
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    assert err(lambda: answer(head, b"y" * (MOST + 1), 512)) == E_TOOBIG  # more than it holds
    assert err(lambda: answer(head, b"z" * 101, max_body=100)) == E_TOOBIG


def test_chunked_is_dechunked_in_place_even_when_the_framing_fills_the_buffer():
    # In 1-byte chunks, 5 bytes each on the wire: the framing alone overflows the buffer.
    data = bytes(range(48, 48 + 64)) * (BUF * 3 // 4 // 64)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = answer(head, chunked(data, 1), 13)[1]
    assert bytes(body) == data and in_buffer(body)
    body = answer(head, chunked(data, 1000), 64)[1]
    assert bytes(body) == data and in_buffer(body)
    assert err(lambda: answer(head, chunked(b"q" * (BUF + 500), 3000), 256)) == E_TOOBIG
    assert err(lambda: answer(head, chunked(b"r" * 200, 50), max_body=199)) == E_TOOBIG


def test_broken_chunking_is_a_clean_error():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for bad in (b"zz\r\nab\r\n0\r\n\r\n", b"-2\r\nab\r\n0\r\n\r\n", b"2\r\nabXY0\r\n\r\n"):
        assert err(lambda b=bad: answer(head, b)) == E_PROTO, bad
    assert err(lambda: answer(head, b"a" * 100)) == E_PROTO  # no size line at all
    assert err(lambda: answer(head, b"10\r\nshort")) == E_RESET


def test_the_largest_answer_taken_fits_the_buffer_in_every_framing():
    # LwA's largest answer (two 2 KB tokens) is read where it can never fail for want of
    # memory after LwA rotated the refresh token: in the buffer, however it is framed.
    data = bytes(range(32, 96)) * (ANSWER_MAX // 64)
    assert len(data) == ANSWER_MAX <= MOST
    for head, wire in (
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data), data),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", data),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunked(data, 700)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunked(data, len(data))),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunked(data, 3)),
    ):
        body = answer(head, wire, 300, max_body=ANSWER_MAX)[1]
        assert bytes(body) == data and in_buffer(body), head[17:]
    more = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (ANSWER_MAX + 1)
    assert err(lambda: answer(more, data + b"x", max_body=ANSWER_MAX)) == E_TOOBIG


def test_a_trust_store_that_cannot_be_read_leaves_the_context_made_at_import():
    import tls

    if not https._fresh:
        https._fresh.append(tls.SSLContext(tls.PROTOCOL_TLS_CLIENT))
    ctx = https._fresh[0]
    from dash import trust

    real = trust.ders

    def no_room(path):
        raise MemoryError

    trust.ders = no_room
    try:
        https.Https("ca.pem", 3).context()
    except MemoryError:
        pass
    finally:
        trust.ders = real
    assert https._fresh == [ctx]  # the next connection still has it, no 3 KB block to find


class Sink:
    """A TLS socket's write: takes at most `piece` bytes a call, as a record may."""

    def __init__(self, piece):
        self.piece = piece
        self.out = b""
        self.calls = 0

    def write(self, mv):
        n = min(len(mv), self.piece)
        self.out += bytes(mv[:n])
        self.calls += 1
        return n


def test_a_request_head_is_put_together_in_the_buffer_and_sent_when_it_is_full():
    s = Sink(5)
    buf = bytearray(8)
    limits = https.limits(3)
    n = https._put(s, buf, 0, b"GET ", limits)
    n = https._put(s, buf, n, "/a", limits)  # a str (a token, a path) goes in without a copy
    assert n == 6 and bytes(buf[:n]) == b"GET /a" and s.out == b""
    n = https._put(s, buf, n, "xyz", limits)  # does not fit: what is there goes first
    assert s.out == b"GET /a" and bytes(buf[:n]) == b"xyz"
    n = https._put(s, buf, n, b"0123456789", limits)  # bigger than the buffer: sent as it is
    https.send(s, memoryview(buf)[:n], limits)
    assert n == 0 and s.out == b"GET /axyz0123456789"


def test_the_head_passes_a_line_at_a_time_and_the_body_gets_the_whole_buffer():
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 100) for i in range(12))  # 1.4 KB
    head = b"HTTP/1.1 429 Slow down\r\nRetry-After: 120\r\n" + pad
    body = b"b" * MOST
    st, got, kept = answer(head + b"Content-Length: %d\r\n\r\n" % MOST, body, 100)
    assert st == 429 and bytes(got) == body and in_buffer(got)
    assert kept == {"retry-after": b"120"}


def test_a_header_line_longer_than_the_buffer_is_skipped_when_it_is_not_one_we_keep():
    buf = bytearray(SHORT)
    long = b"Set-Cookie: " + b"c" * (SHORT + 200) + b"\r\n"
    ok = b"HTTP/1.1 200 OK\r\n"
    st, got, kept = answer(ok + long + b"Location: /x\r\n\r\n", b"ok", 97, buf=buf)
    assert st == 200 and bytes(got) == b"ok" and kept == {"location": b"/x"}
    # Within the head's bound only: more than 2 KB of head is too big, however it is cut.
    longer = b"Set-Cookie: " + b"c" * 2100 + b"\r\n"
    assert err(lambda: answer(b"HTTP/1.1 200 OK\r\n" + longer + b"\r\n", b"ok", 97)) == E_TOOBIG
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(300))
    assert err(lambda: answer(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n", b"ok", 500)) == E_TOOBIG
    # A status line longer than the buffer is no answer at all.
    status = b"HTTP/1.1 200 " + b"O" * SHORT + b"\r\n\r\n"
    assert err(lambda: answer(status, b"", 97, buf=buf)) == E_TOOBIG
    assert err(lambda: answer(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", b"")) == E_PROTO
    assert err(lambda: answer(b"HTTP/2 200\r\n\r\n", b"")) == E_PROTO
    assert err(lambda: answer(b"HTTP/1.1 200 OK\r\nX: 1\r\n", b"")) == E_RESET


def test_a_write_that_takes_nothing_is_a_reset_not_a_hang():
    assert err(lambda: https.send(Sink(0), b"abc", https.limits(3))) == E_RESET


def test_interim_answers_are_passed_over_for_the_real_one():
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    st, got, kept = answer(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"{}")
    assert st == 200 and bytes(got) == b"{}"


def test_an_answer_that_cannot_be_framed_one_way_only_is_refused():
    ok = b"HTTP/1.1 200 OK\r\n"
    for head in (
        b"Content-Length: 2\r\nContent-Length: 5\r\n",  # two lengths
        b"Content-Length: +2\r\n",
        b"Content-Length: 1_0\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length : 2\r\n",  # a blank before the colon
        b"Transfer-Encoding: gzip, chunked\r\n",  # nothing here un-gzips
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",  # a length and chunks
    ):
        assert err(lambda h=head: answer(ok + h + b"\r\n", b"{}abc")) == E_PROTO, head
    st, got, _ = answer(ok + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n", b"{}")
    assert st == 200 and bytes(got) == b"{}"  # the same length twice is one length


def test_each_transport_error_has_its_name():
    codes = (https.E_DNS, https.E_CONNECT, https.E_TLS, https.E_TIMEOUT, E_RESET, E_PROTO)
    names = [https.error_name(c) for c in codes + (E_TOOBIG, https.E_CA)]
    assert names == ["dns", "connect", "tls", "timeout", "reset", "protocol", "too_big", "ca_file"]
    assert https.error_name(0) == https.error_name(9) == "unknown"  # never another's name


def test_no_framing_header_hides_in_a_line_too_long_for_the_buffer():
    buf = bytearray(SHORT)
    long = b"X-Padding: " + b"a" * (SHORT + 100) + b"\r\n"
    ok = answer(b"HTTP/1.1 200 OK\r\n" + long + b"Content-Length: 2\r\n\r\n", b"ok", buf=buf)
    assert bytes(ok[1]) == b"ok"  # a long line of another name is passed over
    hidden = b"Content-Length: 9" + b"0" * (SHORT + 100) + b"\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + hidden + b"\r\n"
    assert err(lambda: answer(head, b"ok", buf=buf)) == E_PROTO
