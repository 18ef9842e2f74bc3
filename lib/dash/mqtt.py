"""MQTT 3.1.1 for the cloud link: micropython-lib's `umqtt.simple` with every read and write
bounded. An I/O adapter: it decides nothing (`cloud` says when to connect, publish and read).

umqtt.simple is frozen into stock ESP32 firmware, so its code costs no heap there. Used as it
is, after a packet's first byte its reads block with no deadline, and it allocates whatever
length the broker announces. Here the client is its own socket: umqtt reads and writes through
`self.sock`, which `wrap_socket` makes this object. Underneath, the socket is non-blocking and
each wait for the broker is bounded by the deadline `arm` sets for the operation, with the
HTTPS transport's rule (three socket timeouts in all, never one without progress). Incoming
packets are read by `wait_msg` (replaced) a byte at a time into small buffers, and a message
into one buffer allocated with the client; a message bigger than that is read through it and
dropped, never allocated. Looking for a packet when none has come allocates nothing, and
neither does a keep-alive.
"""

import time

from micropython import const
from umqtt.simple import MQTTClient

from dash.https import (
    E_CONNECT,
    E_DNS,
    E_PROTO,
    E_RESET,
    E_TIMEOUT,
    E_TLS,
    TIMEDOUT,
    HttpError,
    limits,
    recv,
    send,
)

TYPE_CHECKING = False  # the type checker reads it as True: names for annotations only
if TYPE_CHECKING:
    from typing import Any

_PINGRESP = const(0xD0)
_PUBLISH = const(0x30)
_DISCONNECT = const(b"\xe0\x00")


class Client(MQTTClient):
    """`ctx`: the TLS context (None: plain TCP). `cb(topic, payload, retained, size)` gets each
    message: memoryviews into the inbox, valid until the next packet; a payload bigger than the
    inbox comes as None (and a topic bigger than it too), with its size."""

    def __init__(self, host, port, client_id, user, password, keepalive_s, timeout_s, size, ctx):
        super().__init__(client_id, host, port, user, password, keepalive_s, True)
        self.ssl = self  # umqtt's connect() has `self.ssl.wrap_socket()` make its socket
        self.ctx = ctx
        self.timeout_s = timeout_s
        self.inbox = bytearray(size)
        self._b = bytearray(1)
        self._ack = bytearray(b"\x40\x02\x00\x00")
        self._lim = limits(timeout_s)
        self._s: Any = None
        self._raw: Any = None
        self.sent_ms = time.ticks_ms()  # when a packet last went out: keep-alives count from it
        self._ping_ms = self.sent_ms  # when the PINGREQ went out, while `_pinged`
        self._pinged = False  # a PINGREQ is unanswered

    def arm(self):
        """The deadline of one operation (a connect, a publish with its acknowledgement, one
        incoming packet) starts now."""
        limits(self.timeout_s, self._lim)
        if self.pid > 65530:
            # umqtt counts packet ids up without end, and packs them into 16 bits: past 65535
            # they would wrap to 0 (no id) and no acknowledgement would match again. An
            # operation takes at most two.
            self.pid = 0

    # -- what umqtt.simple calls ---------------------------------------------------------

    def wrap_socket(self, raw, server_hostname=None):
        # TCP_NODELAY (6, 1 on Linux and lwIP alike): umqtt writes a packet in pieces, and
        # Nagle's algorithm would hold each piece for the broker's delayed ACK.
        try:
            raw.setsockopt(6, 1, 1)
        except OSError:
            pass  # slower, not wrong
        raw.setblocking(False)
        self._raw = raw
        s = raw
        if self.ctx is not None:
            # The handshake happens in the first write (the CONNECT), within its deadline.
            s = self.ctx.wrap_socket(
                raw, server_hostname=self.server, do_handshake_on_connect=False
            )
        self._s = s
        return self

    def write(self, buf, n=-1):
        if n >= 0:
            buf = memoryview(buf)[:n]
        send(self._s, buf, self._lim)
        self.sent_ms = time.ticks_ms()
        return len(buf)

    def read(self, n):
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return buf

    def close(self):
        for s in (self._s, self._raw, None if self.sock is self else self.sock):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._s = self._raw = self.sock = None
        self._pinged = False

    def wait_msg(self):
        """One packet, waiting for it (umqtt's publish() and subscribe() wait here for their
        acknowledgement)."""
        return self._packet(self._byte())

    # -- ours ----------------------------------------------------------------------------

    def open(self):
        """TCP connect (its own timeout), TLS handshake and CONNECT/CONNACK within one
        deadline. True when the broker kept our session (and our subscription)."""
        self.arm()
        try:
            return self.connect(False, self.timeout_s)
        except ValueError as e:  # mbedTLS: the certificate or the host name is not good
            self.close()
            raise HttpError(E_TLS, str(e).strip())
        except OSError as e:
            before = self._raw is None  # no socket yet to wrap
            self.close()
            code = e.errno
            if before:
                # Before the handshake: the name lookup (its errors are text on the unix port,
                # negative on an ESP32) or the TCP connect (out of time: ETIMEDOUT or EAGAIN).
                if not isinstance(code, int) or code < 0:
                    raise HttpError(E_DNS, self.server)
                raise HttpError(E_TIMEOUT if code in TIMEDOUT else E_CONNECT, self.server)
            if isinstance(code, int) and code < 0:  # mbedTLS's errors: the handshake failed
                raise HttpError(E_TLS, "handshake %d" % code)
            raise HttpError(E_RESET, self.server)
        except BaseException:
            self.close()
            raise

    def drop(self, clean=True):
        """Close at once. `clean`: a DISCONNECT first, so the broker keeps the last will to
        itself; tried once, never waited for."""
        if clean and self._s is not None:
            try:
                self._s.write(_DISCONNECT)
            except OSError:
                pass
        self.close()

    def poll(self):
        """One packet when its first byte is there (True); False at once when none is."""
        got = self._s.readinto(self._b)
        if got is None:
            return False
        if not got:
            raise HttpError(E_RESET, "mqtt closed")
        self.arm()
        op = self._packet(self._b[0])
        if op is not None and op & 0xF0 != _PUBLISH:
            self._skip(memoryview(self.inbox), self._length())  # an ack nobody waits for now
        return True

    def keep(self, keepalive_ms):
        """A PINGREQ when nothing went out for half the keep-alive; HttpError(E_TIMEOUT) when
        the broker left one unanswered for a whole keep-alive (a dead connection)."""
        now = time.ticks_ms()
        if self._pinged:
            if time.ticks_diff(now, self._ping_ms) > keepalive_ms:
                raise HttpError(E_TIMEOUT, "keep-alive")
        elif time.ticks_diff(now, self.sent_ms) >= keepalive_ms >> 1:
            self.arm()
            self.ping()
            self._ping_ms = now
            self._pinged = True

    def _packet(self, op):
        self._pinged = False  # the broker is there
        if op == _PINGRESP:
            if self._byte():
                raise HttpError(E_PROTO, "mqtt")
            return None
        if op & 0xF0 != _PUBLISH:
            return op  # the caller reads the rest
        qos = op >> 1 & 3
        n = self._length()
        if qos > 1:
            raise HttpError(E_PROTO, "mqtt qos")  # we subscribe with QoS 1: never more
        tl = self._byte() << 8 | self._byte()
        size = n - 2 - tl - (2 if qos else 0)
        if size < 0:
            raise HttpError(E_PROTO, "mqtt publish")
        mv = memoryview(self.inbox)
        topic = payload = None
        if tl < len(mv):
            topic = mv[:tl]
            self._fill(topic)
        else:
            self._skip(mv, tl)
        if qos:
            self._ack[2] = self._byte()
            self._ack[3] = self._byte()
        if topic is not None and tl + size <= len(mv):
            payload = mv[tl : tl + size]
            self._fill(payload)
        else:
            if qos:
                # Acknowledged before it is read: it will be dropped anyway, and if reading it
                # takes longer than its deadline (a slow link), the broker must not send it
                # again at each reconnect of the session.
                self.write(self._ack)
                qos = 0
            # Read through the inbox (past the topic) and dropped: never allocated.
            self._skip(mv[0 if topic is None else tl :], size)
        self.cb(topic, payload, op & 1, size)
        if qos:
            self.write(self._ack)
        return op

    def _byte(self):
        if not recv(self._s, self._b, self._lim):
            raise HttpError(E_RESET, "mqtt closed")
        return self._b[0]

    def _length(self):
        """A packet's remaining length (at most four bytes, MQTT 2.2.3)."""
        n = sh = 0
        while True:
            c = self._byte()
            n |= (c & 0x7F) << sh
            if not c & 0x80:
                return n
            sh += 7
            if sh > 21:
                raise HttpError(E_PROTO, "mqtt length")

    def _fill(self, mv):
        have = 0
        while have < len(mv):
            got = recv(self._s, mv[have:], self._lim)
            if not got:
                raise HttpError(E_RESET, "mqtt closed")
            have += got

    def _skip(self, mv, n):
        """Read `n` bytes through `mv` and let them go."""
        while n > 0:
            k = min(n, len(mv))
            self._fill(mv[:k])
            n -= k
