"""HTTPS client transport: verified TLS, bounded everything, no redirects, always closed.

Why our own: micropython-lib `requests` sets CERT_NONE and follows redirects carrying the
Authorization header. Here the server certificate must chain to the configured trust store and
name the host; every socket operation has a timeout; the response is read into one buffer
allocated at start-up, the body within a caller-given limit; sockets are closed on every path.
This module reports what happened; it decides nothing (no retries, no redirects).

The head is read a line at a time through the buffer, so the body has all of it: every answer
the firmware takes (LwA's largest too) fits, and comes back as a memoryview of it, valid until
the next request: parse it at once. A request's head is put together in the buffer too, sent
whenever it is full. With a length, without one (read until close) or chunked (de-chunked in
place), reading the body allocates nothing, so it cannot fail for want of memory after the
server has acted on the request (LwA may have rotated the refresh token).
"""

import errno
import select
import socket
import time

import tls
from micropython import const

from dash.check import word

# Error codes (HttpError.args[0]).
E_DNS = const(1)
E_CONNECT = const(2)
E_TLS = const(3)  # handshake failed: untrusted certificate, wrong host name, protocol
E_TIMEOUT = const(4)
E_RESET = const(5)  # connection closed or reset before a whole answer arrived
E_PROTO = const(6)  # malformed answer
E_TOOBIG = const(7)  # answer larger than allowed
E_CA = const(8)  # trust store missing or unreadable
# A blocking connect out of time says ETIMEDOUT, or EAGAIN, by port.
TIMEDOUT = (errno.ETIMEDOUT, errno.EAGAIN)
# Their names, from E_DNS on: one string, not a tuple of them (each a heap object).
_ERRORS = const("dns connect tls timeout reset protocol too_big ca_file")


def error_name(code):
    """An error code's name, for the reason a failure is reported with."""
    return word(_ERRORS, code - 1) if E_DNS <= code <= E_CA else "unknown"


_HEAD_MAX = const(2048)  # status line plus headers
# The largest answer taken: LwA's, two 2 KB tokens and the JSON around them (4352 bytes, see
# `tokens`), with one chunk's framing; so every DRS body too (2 KB at most). The head passes a
# line at a time. Held for life, it spares each token refresh a 4 KB block found at the time.
_FRAMING = const(80)  # a chunk-size line (64 at most) and two CRLFs
_BUF = const(4352 + _FRAMING)
# Allocated when the module is imported (at boot, right after the config checks, before
# anything else that stays), while the heap is still in one piece; there is one connection
# at a time, so one buffer.
_buf = bytearray(_BUF)
# The first client's TLS context (3 KB) is made now too; its trust store is loaded later. A
# context is never reused with another trust store, nor after one failed to load.
_fresh = [tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)]


class HttpError(Exception):
    pass


class Https:
    # Called before each request opens its TLS session: the cloud link closes its own, so that
    # there is one TLS session at a time (each costs ~20 KB of the ESP32's IDF heap).
    pause = None
    done = None  # called when each request ends, answered or not (the app's clock catches up)

    def __init__(self, ca_path, timeout_s):
        self.ca_path = ca_path
        self.timeout_s = timeout_s
        self.handshakes = 0  # TLS handshakes since boot, for tests and benchmarks
        # The last request was sent whole (so the server may have acted on it, whatever came
        # back); False when it failed before: the DNS, the connect, the handshake.
        self.sent = False
        self._ctx = None
        self._addr = {}
        self.buf = _buf

    def context(self):
        """The TLS context, its trust store loaded: on the first request, or sooner (start-up
        asks at boot, while the heap is in one piece: the certificates pass through it)."""
        if self._ctx is None:
            # The trust store first: when reading it fails (a MemoryError, say), the context
            # made at import is still there for the next try, not a 3 KB block to find again.
            from dash.trust import context  # dropped with the phase that made it

            self._ctx = context(self.ca_path, _fresh)
        return self._ctx

    def request(self, method, host, port, path, headers=(), body=b"", max_body=1024):
        """Send one request; return (status, body, headers dict of the few we keep).

        `headers`: complete header lines (each ending CRLF) in pieces, bytes or ASCII str,
        put together in `buf` (which the answer only needs once the request is out): a
        header with a token in it is never built as one more heap object. The answer's
        header names we keep: retry-after, content-type, location (values as bytes).
        `max_body`: the largest body taken (at most the buffer's size, less a chunk's framing).
        """
        self.sent = False
        if self.pause is not None:
            self.pause()
        ctx = self.context()
        key = (host, port)
        ai = self._addr.get(key)  # resolved once per host, forgotten when a request fails
        if ai is None:
            try:
                ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
            except (OSError, IndexError):
                raise HttpError(E_DNS, host)
            ai = (ai[0], ai[-1])
            self._addr[key] = ai
        family, addr = ai
        raw = socket.socket(family, socket.SOCK_STREAM)
        s = None
        try:
            raw.settimeout(self.timeout_s)
            try:
                raw.connect(addr)
            except OSError as e:
                timeout = e.errno in TIMEDOUT
                raise HttpError(E_TIMEOUT if timeout else E_CONNECT, host)
            # From here on the socket is non-blocking and each step waits in `poll` against a
            # deadline: the handshake and the request within three socket timeouts, then the
            # answer within three more (see `recv`). Blocking, a peer sending a byte at a time
            # could hold the device for hours, each byte inside the socket timeout.
            raw.setblocking(False)
            lim = limits(self.timeout_s)
            self.handshakes += 1
            try:
                s = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
                # The first write makes the handshake, then goes out with the head.
                buf = self.buf
                n = 0
                at = b"" if port == 443 else b":%d" % port  # RFC 9110 7.2: a port, if not 443
                for piece in (method, b" ", path, b" HTTP/1.1\r\nHost: ", host, at, b"\r\n"):
                    n = _put(s, buf, n, piece, lim)
                for piece in headers:
                    n = _put(s, buf, n, piece, lim)
                piece = b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                n = _put(s, buf, n, piece, lim)
                send(s, memoryview(buf)[:n], lim)
                if body:
                    send(s, body, lim)
                self.sent = True
            except OSError as e:
                # The request is not whole yet: the server cannot have acted on it. mbedTLS's
                # errors are negative numbers: the handshake failed, not the connection. (No
                # timeout comes as an OSError on the non-blocking socket: see `_left`.)
                raise HttpError(E_TLS if (e.errno or 0) < 0 else E_RESET, host)
            except ValueError as e:
                # mbedTLS verification failures arrive as ValueError with a reason.
                raise HttpError(E_TLS, str(e).strip())
            try:
                return self._response(s, max_body)
            except OSError:
                raise HttpError(E_RESET, host)
        except HttpError:
            # The address may be stale (a cloud host moves, another service gets its IP): the
            # next request resolves the name again.
            self._addr.pop(key, None)
            raise
        finally:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
            raw.close()
            if self.done is not None:
                self.done()

    def _response(self, s, max_body):
        buf = self.buf
        mv = memoryview(buf)
        size = len(buf)
        max_body = min(max_body, size - _FRAMING)
        lim = limits(self.timeout_s)
        # The head is parsed a line at a time and each line's bytes are let go of at once,
        # so the buffer holds the longest line, not the whole head; the body then starts at
        # the buffer's start. A line longer than the buffer is skipped (none we keep is).
        n = pos = 0  # bytes in buf; where the unparsed ones start
        head = 0  # head bytes read so far, bounded as a whole
        skip = False  # in the middle of a line too long for the buffer
        status = 0
        kept: dict = {}
        length = -1
        chunked = False
        while True:
            if head - (n - pos) > _HEAD_MAX:  # what is parsed or let go of: head, all of it
                raise HttpError(E_TOOBIG, "head")
            eol = buf.find(b"\r\n", pos, n)
            if eol < 0:
                if skip or pos == 0 and n == size:
                    if not status:
                        raise HttpError(E_TOOBIG, "head")
                    if not skip and _framing(buf):
                        # Skipped, a second Content-Length could hide there: no framing
                        # header may be longer than the buffer.
                        raise HttpError(E_PROTO, "header")
                    # Keep a last CR: its LF may come next.
                    pos = n - 1 if buf[n - 1] == 13 else n
                    skip = True
                mv[: n - pos] = mv[pos:n]
                n -= pos
                pos = 0
                got = recv(s, mv[n:], lim)
                if not got:
                    raise HttpError(E_RESET, "head")
                n += got
                head += got
                continue
            if skip:
                skip = False
            elif not status:
                # The status line: HTTP/1.x NNN reason.
                line = bytes(mv[pos:eol])
                if line[:7] != b"HTTP/1." or len(line) < 12 or line[12:13] not in (b" ", b""):
                    raise HttpError(E_PROTO, "status")
                try:
                    status = int(line[9:12])
                except ValueError:
                    raise HttpError(E_PROTO, "status")
                if not 100 <= status <= 599:
                    raise HttpError(E_PROTO, "status")
                del line  # not held through the body
            elif eol == pos:
                pos += 2
                if status >= 200:
                    break
                # An interim answer (100 Continue, 103 Early Hints): the real one follows.
                status = 0
                kept = {}
                length = -1
                chunked = False
            else:
                colon = buf.find(b":", pos, eol)
                # No blank before the colon (RFC 9112): "Content-Length :" is no header to skip.
                if colon <= pos or buf[colon - 1] in b" \t":
                    raise HttpError(E_PROTO, "header")
                name = bytes(mv[pos:colon]).lower()
                value = bytes(mv[colon + 1 : eol]).strip()
                if name == b"content-length":
                    # Digits only (int() would take "+5" and "1_0"), and one length: two that
                    # differ mean the answer cannot be framed.
                    if not value.isdigit() or 0 <= length != int(value):
                        raise HttpError(E_PROTO, "content-length")
                    length = int(value)
                elif name == b"transfer-encoding":
                    # Only chunked is ever decoded: anything else cannot be read.
                    if value.lower() != b"chunked":
                        raise HttpError(E_PROTO, "transfer-encoding")
                    chunked = True
                elif name in (b"retry-after", b"content-type", b"location"):
                    kept[name.decode()] = value
            pos = eol + 2
        if chunked and length >= 0:
            raise HttpError(E_PROTO, "framing")  # two ways to frame one body (RFC 9112 6.3)
        n -= pos
        mv[:n] = mv[pos : pos + n]
        if chunked:
            body = _read_chunked(s, buf, n, max_body, lim)
        else:
            if length > max_body:
                raise HttpError(E_TOOBIG, "body")
            body = _read_body(s, mv, n, length, max_body, lim)
        return status, body, kept


def _framing(buf):
    """The line at the start of `buf` is a Content-Length or Transfer-Encoding header."""
    head = bytes(buf[:18]).lower()
    return head.startswith((b"content-length", b"transfer-encoding"))


def _put(s, buf, n, piece, limits):
    """Copy `piece` into `buf` at `n`, first sending what is there when it would not fit;
    returns where it ends. A piece bigger than the whole buffer is sent as it is."""
    end = n + len(piece)
    if end > len(buf):
        send(s, memoryview(buf)[:n], limits)
        n, end = 0, len(piece)
        if end > len(buf):
            send(s, piece, limits)
            return 0
    buf[n:end] = memoryview(piece) if isinstance(piece, str) else piece  # type: ignore[arg-type]
    return end


def limits(timeout_s, lim=None):
    """[deadline in ticks, longest wait for the peer in ms]: three socket timeouts in all,
    and never one without progress. Filled in when `lim` is given, so arming allocates nothing
    (the cloud link arms one for every keep-alive)."""
    if lim is None:
        lim = [0, 0]
    lim[0] = time.ticks_add(time.ticks_ms(), timeout_s * 3000)
    lim[1] = timeout_s * 1000
    return lim


def _left(limits):
    """How long the next wait for the peer may be: never past the deadline (a peer moving a
    byte at a time, each in time, ends there), never more than one socket timeout."""
    left = time.ticks_diff(limits[0], time.ticks_ms())
    if left <= 0:
        raise HttpError(E_TIMEOUT, "slow")
    return min(left, limits[1])


def _wait(s, events, ms):
    """Until the socket may go on (`events`); a timeout when it cannot within `ms`."""
    p = select.poll()
    p.register(s, events)
    if not p.poll(ms):
        raise HttpError(E_TIMEOUT, "silent")


def send(s, data, limits):
    """All of `data` (a TLS write may take only part of it, or none yet: the handshake). A
    write taken whole at once allocates nothing."""
    sent = s.write(data)
    if sent == len(data):
        return
    if sent == 0:
        raise HttpError(E_RESET, "write")
    mv = memoryview(data)[sent or 0 :]
    while mv:
        ms = _left(limits)
        sent = s.write(mv)
        if sent is None:
            # The handshake wants to read, or the socket's buffer is full.
            _wait(s, select.POLLIN | select.POLLOUT, ms)
            continue
        if not sent:
            raise HttpError(E_RESET, "write")
        mv = mv[sent:]


def recv(s, mv, limits):
    """Into `mv`, what has arrived (at least a byte), or 0 at the end of the answer. The socket
    is non-blocking: a blocking read would wait for all of `mv` (MicroPython makes no short
    reads), so a server keeping the connection open after its answer, or sending a byte at a
    time, could hold the device for hours. `limits`: (deadline of the whole answer in ticks,
    the longest wait for a byte in ms)."""
    while True:
        ms = _left(limits)
        got = s.readinto(mv)
        if got is not None:
            return got
        _wait(s, select.POLLIN, ms)


def _read_body(s, mv, have, length, max_body, limits):
    """`length` bytes (at most `max_body`), or with no length until the server closes, into
    `mv`, which holds the `have` bytes that came with the head and has room for them all."""
    want = length if length >= 0 else max_body + 1
    have = min(have, want)
    while have < want:
        got = recv(s, mv[have:want], limits)
        if not got:
            if length < 0:
                return mv[:have]
            raise HttpError(E_RESET, "body")
        have += got
    if length < 0:
        raise HttpError(E_TOOBIG, "body")
    return mv[:have]


def _read_chunked(s, buf, end, max_body, limits):
    """De-chunk in place: `buf[:end]` holds the raw bytes that came after the head, and each
    chunk's data is moved down over the framing before it, so the body ends at buf[:out].
    Unparsed raw bytes are buf[pos:end]."""
    out = pos = 0
    while True:
        eol = buf.find(b"\r\n", pos, end)
        while eol < 0:
            if end - pos > 64:
                raise HttpError(E_PROTO, "chunk")
            pos, end = _more(s, buf, out, pos, end, limits)
            eol = buf.find(b"\r\n", pos, end)
        try:
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        except ValueError:
            raise HttpError(E_PROTO, "chunk")
        if size < 0:
            raise HttpError(E_PROTO, "chunk")
        pos = eol + 2
        if size == 0:
            return memoryview(buf)[:out]  # trailers, if any, are not read
        if out + size > max_body:
            raise HttpError(E_TOOBIG, "body")
        while end - pos < size + 2:
            pos, end = _more(s, buf, out, pos, end, limits)
        if buf[pos + size] != 13 or buf[pos + size + 1] != 10:
            raise HttpError(E_PROTO, "chunk")
        buf[out : out + size] = memoryview(buf)[pos : pos + size]
        out += size
        pos += size + 2


def _more(s, buf, out, pos, end, limits):
    """Read more raw bytes after `end`: when the buffer is full, first move the unparsed ones
    down to `out`. Full even so, the body with one chunk's framing is more than `max_body`
    allows (`_response` keeps it a framing's size under the buffer's)."""
    if end == len(buf):
        if pos > out:
            buf[out : out + end - pos] = memoryview(buf)[pos:end]
            pos, end = out, out + end - pos
        if end == len(buf):
            raise HttpError(E_TOOBIG, "body")
    got = recv(s, memoryview(buf)[end:], limits)
    if not got:
        raise HttpError(E_RESET, "chunk")
    return pos, end + got
