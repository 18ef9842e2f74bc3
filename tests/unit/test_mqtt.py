"""The MQTT client's framing against a scripted socket: packet ids, oversized messages drained
through the inbox, a quiet poll that allocates nothing."""

import micropython

from dash.mqtt import Client


class Wire:
    """A non-blocking socket that hands out `incoming` and keeps what is written."""

    def __init__(self, incoming=b""):
        self.incoming = bytearray(incoming)
        self.out = bytearray()

    def write(self, data):
        self.out += data
        return len(data)

    def readinto(self, buf):
        if not self.incoming:
            return None  # nothing yet (EAGAIN)
        n = min(len(buf), len(self.incoming))
        buf[:n] = self.incoming[:n]
        self.incoming = self.incoming[n:]
        return n

    def close(self):
        pass


def client(incoming=b"", size=64):
    c = Client("h", 1, "dev", "", "", 60, 2, size, None)
    got = []
    c.cb = lambda topic, payload, retained, n: got.append(
        (topic and bytes(topic), payload and bytes(payload), retained, n)
    )
    c._s = Wire(incoming)
    c.sock = c  # as after connect: umqtt reads and writes through the client
    return c, got


def test_packet_ids_never_pass_65535():
    # umqtt counts ids up without end and packs them into 16 bits: 65536 would go out as 0,
    # and its acknowledgement would never match again.
    for start, expect in ((65530, 65531), (65531, 1), (65535, 1)):
        c, _ = client(b"\x40\x02" + bytes([expect >> 8, expect & 255]))
        c.pid = start
        c.arm()
        c.publish(b"t", b"m", False, 1)
        sent = c._s.out
        pid = sent[-3] << 8 | sent[-2]  # before the 1-byte payload
        assert pid == expect and 0 < pid <= 65535, (start, pid)


def test_a_message_bigger_than_the_inbox_is_drained_and_acknowledged():
    topic = b"dash/dev/cmd/relay"
    payload = b"x" * 500
    body = bytes([0, len(topic)]) + topic + b"\x12\x34" + payload
    n = len(body)
    pkt = bytes([0x32, n & 0x7F | 0x80, n >> 7]) + body
    c, got = client(pkt + b"\xd0\x00", size=64)
    c.arm()
    assert c.poll()
    assert got == [(topic, None, 0, 500)]  # the topic kept, the payload let go
    assert bytes(c._s.out) == b"\x40\x02\x12\x34"  # acknowledged: never sent again
    assert c.poll()  # and the stream is still in step: the PINGRESP after it
    assert not c.poll()


def test_a_quiet_poll_allocates_nothing():
    c, _ = client()
    micropython.heap_lock()
    try:
        quiet = not c.poll()
    finally:
        micropython.heap_unlock()
    assert quiet
